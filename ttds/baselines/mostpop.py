"""MostPop: every user gets the same list, the items with the most training events first.

Ties in the event count go to the smaller item_idx. Only events of the "train" split count, so the validation
and test targets never raise an item's rank. History items are not excluded, as in the benchmark protocol.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ttds.baselines import SPLITS, check_cutoffs, evaluate_scorer, write_evaluation
from ttds.data.config import build_strict
from ttds.data.dataset import ProcessedDataset

log = logging.getLogger(__name__)


@dataclass
class MostPopConfig:
    """MostPop options from conf/bench.yaml (``registry.mostpop.options``)."""

    cutoffs: list[int] = field(default_factory=lambda: [1, 5, 10])  # HR/NDCG cutoffs; MRR is always @10

    def __post_init__(self) -> None:
        self.cutoffs = check_cutoffs(self.cutoffs, "mostpop")


def training_counts(dataset: ProcessedDataset) -> np.ndarray:
    """Count the training events of each item: int64 (n_items,), indexed by item_idx."""
    items = dataset.events.filter(pl.col("split") == "train")["item_idx"].to_numpy()
    return np.bincount(items.astype(np.int64), minlength=dataset.n_items)


def popularity_ranking(dataset: ProcessedDataset) -> torch.Tensor:
    """Return every item_idx (n_items,), most training events first, ties broken by the smaller item_idx."""
    counts = training_counts(dataset)
    # np.lexsort sorts by the last key first: descending count, then ascending item_idx.
    order = np.lexsort((np.arange(len(counts)), -counts))
    return torch.from_numpy(order.astype(np.int64))


def run(dataset: ProcessedDataset, run_dir: str | Path, seed: int, options: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Score MostPop on the valid and test users and write the evaluate-stage outputs under ``run_dir``.

    MostPop has no randomness, so ``seed`` changes nothing; it is accepted so every baseline has one signature.
    """
    cfg = build_strict(MostPopConfig, dict(options or {}), "mostpop")
    ranking = popularity_ranking(dataset)  # (n_items,)
    top = ranking[: max(*cfg.cutoffs, 10)]

    def scorer(users: list[int], histories: list[list[int]]) -> torch.Tensor:
        return top.unsqueeze(0).expand(len(users), -1)  # (B, K), one shared list

    rows, per_user = {}, {}
    for split in SPLITS:
        # MostPop reads no history, so max_history only has to be valid; the users are the same for any value.
        rows[split], per_user[split] = evaluate_scorer(dataset, split, 1, scorer, cfg.cutoffs)
        log.info("mostpop seed %d %s: %s", seed, split, {key: round(value, 4) for key, value in rows[split].items()})
    write_evaluation(Path(run_dir), rows, per_user)
    return rows
