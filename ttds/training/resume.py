"""Lightning callback that saves and restores a ResumableSampler's position in checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L

from ttds.training.sampler import ResumableSampler


class SamplerResume(L.Callback):
    """Count the batches of the running epoch so that a mid-epoch checkpoint resumes at the next batch."""

    def __init__(self, sampler: ResumableSampler, epoch_listeners: Sequence[Callable[[int], None]] = ()):
        self.sampler = sampler
        self.epoch_listeners = list(epoch_listeners)  # e.g. a dataset that draws a new task mixture per epoch
        self.batches_done = 0
        self._restored = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored:
            # The sampler already contains the epoch and the batches to skip from the checkpoint.
            self._restored = False
        else:
            self.sampler.set_epoch(trainer.current_epoch)
            self.batches_done = 0
        for listener in self.epoch_listeners:
            listener(self.sampler.epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches_done += 1

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict(self.batches_done)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state_dict)
        self.batches_done = state_dict["batches_done"]
        self._restored = True
