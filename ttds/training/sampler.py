"""A seeded, rank-aware sampler that can resume in the middle of an epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffle with a seed per epoch, split evenly over ranks, and skip what a resumed run already saw.

    Every rank gets ``len(dataset) // world_size`` indices, and the remainder is dropped so that ranks step
    in lockstep. The permutation depends only on (seed, epoch), so one process and N processes with the
    same global batch see the same examples per step. ``skip_batches`` (set from a checkpoint)
    drops the first batches of the next epoch that starts.
    """

    def __init__(self, n_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        if n_samples <= 0:
            raise ValueError(f"n_samples={n_samples}: the dataset is empty, so there is nothing to train on.")
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip_batches = 0

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n_samples, generator=generator).tolist()
        else:
            order = list(range(self.n_samples))
        rank, world = self._rank_and_world()
        per_rank = self.n_samples // world
        # Interleave so that global batch b contains the same examples whatever the number of ranks.
        return order[: per_rank * world][rank::world]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        skip = self.skip_batches * self.batch_size
        self.skip_batches = 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        _, world = self._rank_and_world()
        return self.n_samples // world

    def state_dict(self, batches_done: int) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} differs from the configured seed {self.seed}; resume with the original seed.")
        self.epoch = state["epoch"]
        self.skip_batches = state["batches_done"]
