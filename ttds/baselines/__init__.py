"""Non-generative baselines, scored by the same RankingMetrics as the evaluate stage.

Each baseline is a function ``run(dataset, run_dir, seed, options) -> {split: metrics}`` that writes
``<run_dir>/evaluate/metrics.json`` (and ``<split>_per_user.parquet``) in the layout of the evaluate stage, so
the benchmark report reads baselines and LM runs the same way. Every user of ``evaluation_examples`` counts,
as in the evaluate stage: users whose split target has at least one earlier event.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch

from ttds.data.dataset import ProcessedDataset
from ttds.data.views import evaluation_examples
from ttds.eval.metrics import RankingMetrics, user_results_frame, write_metrics

log = logging.getLogger(__name__)

# Baseline name -> "module:function". Imported on first use, so the registry does not import torch models.
BASELINES: dict[str, str] = {
    "mostpop": "ttds.baselines.mostpop:run",
    "sasrec": "ttds.baselines.sasrec:run",
}
SPLITS = ("valid", "test")

# scorer(users, histories) -> ranked item_idx (B, K), best first, -1 for empty slots.
Scorer = Callable[[list[int], list[list[int]]], torch.Tensor]


def baseline_function(name: str) -> Callable[..., dict[str, dict[str, float]]]:
    """Import and return the ``run`` function of baseline ``name``."""
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} is unknown; use one of {sorted(BASELINES)}.")
    module, function = BASELINES[name].split(":")
    return getattr(importlib.import_module(module), function)


def pad_ranked(ranked: torch.Tensor, length: int) -> torch.Tensor:
    """Pad ranked lists (B, K) with -1 columns up to ``length`` slots; a catalogue smaller than K leaves slots empty."""
    missing = length - ranked.shape[1]
    if missing <= 0:
        return ranked[:, :length]
    return torch.cat([ranked, torch.full((ranked.shape[0], missing), -1, dtype=ranked.dtype, device=ranked.device)], dim=1)


def evaluate_scorer(
    dataset: ProcessedDataset,
    split: str,
    max_history: int,
    scorer: Scorer,
    cutoffs: Sequence[int],
    batch_size: int = 512,
) -> tuple[dict[str, float], pl.DataFrame]:
    """Rank the catalogue for every ``split`` user with ``scorer`` and return the metrics and the per-user results."""
    examples = evaluation_examples(dataset, split, max_history)
    users = examples["user_idx"].to_list()
    histories = examples["history"].to_list()
    targets = torch.tensor(examples["target"].to_list(), dtype=torch.long)

    metrics = RankingMetrics(dataset.n_items, cutoffs=cutoffs)
    frames = []
    for start in range(0, len(users), batch_size):
        stop = start + batch_size
        ranked = pad_ranked(scorer(users[start:stop], histories[start:stop]).cpu(), metrics.list_length)
        ranks = metrics.update(ranked, targets[start:stop])
        frames.append(user_results_frame(users[start:stop], targets[start:stop], ranks, metrics.cutoffs))
    return metrics.compute(), pl.concat(frames) if frames else pl.DataFrame()


def write_evaluation(run_dir: Path, rows: dict[str, dict[str, float]], per_user: dict[str, pl.DataFrame]) -> Path:
    """Write ``<run_dir>/evaluate/metrics.json`` and ``<split>_per_user.parquet`` as the evaluate stage does."""
    out = Path(run_dir) / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    for split, frame in per_user.items():
        temporary = out / f".{split}_per_user.parquet.tmp"
        frame.write_parquet(temporary)
        temporary.replace(out / f"{split}_per_user.parquet")
    json_path, _ = write_metrics(out / "metrics.json", rows)
    return json_path


def check_cutoffs(cutoffs: Sequence[int], where: str) -> list[int]:
    """Return ``cutoffs`` as a list of ints, or raise when it is empty or has a value below 1."""
    values = [int(k) for k in cutoffs]
    if not values or min(values) < 1:
        raise ValueError(f"{where}.cutoffs={list(cutoffs)} must be a non-empty list of positive integers, e.g. [1, 5, 10].")
    return values


__all__ = ["BASELINES", "SPLITS", "baseline_function", "check_cutoffs", "evaluate_scorer", "pad_ranked", "write_evaluation"]
