"""SASRec as a baseline: train on training sequences, stop early on the validation split, rank the full catalogue.

Protocol, the same as the evaluate stage except for the history length:
- Training reads only "train" events (``training_sequences``). Each epoch ends with validation, which predicts
  each user's valid item from their training sequence, and the weights of the best valid NDCG@10 are kept.
- Valid and test users are those of ``evaluation_examples``. The test history is every event before the test
  item (so it includes the valid item), and the valid history is every event before the valid item.
- Histories are truncated to the last ``max_history`` items, by default SASRec's ``max_len`` (50), the window
  it was trained on. The LM prompts keep ``dataset.preprocess.max_history`` (20) items; set ``max_history: 20``
  to give SASRec the same input.
- Every catalogue item is scored; the top K of the full scores go through RankingMetrics. History items are
  not excluded unless ``exclude_history`` is set, which drops every item the user had before the target, as the
  S3-Rec code behind the published P5 baselines does. Ties in score are broken by ``torch.topk``, which has no defined order among equal values.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from ttds.baselines import SPLITS, check_cutoffs, evaluate_scorer, write_evaluation
from ttds.data.config import build_strict
from ttds.data.dataset import ProcessedDataset
from ttds.data.views import evaluation_examples, training_sequences
from ttds.models.sasrec import SASRec, pad_histories
from ttds.models.sasrec_module import SASRecConfig, sequences_by_user, targets_by_user, train_sasrec
from ttds.stages.context import write_json_atomic

log = logging.getLogger(__name__)

EVERY_ITEM = 1_000_000  # history length that keeps every event of a user


@dataclass
class SASRecBaselineConfig:
    """SASRec baseline options from conf/bench.yaml (``registry.sasrec.options``)."""

    sasrec: dict[str, Any] = field(default_factory=dict)  # SASRecConfig fields; its seed is replaced by the run's seed
    max_history: int | None = None  # history items read at evaluation; None = sasrec.max_len
    cutoffs: list[int] = field(default_factory=lambda: [1, 5, 10])  # HR/NDCG cutoffs; MRR is always @10
    accelerator: str = "auto"  # Lightning accelerator for training: cpu, gpu or auto
    precision: str = "32-true"  # Lightning precision for training, e.g. bf16-mixed on a GPU
    eval_batch_size: int = 512  # users scored per forward pass at evaluation
    # NOTE: the evaluate stage's eval.exclude_history does not reach the baselines, and MostPop has no such option.
    exclude_history: bool = False  # drop every item the user had before the target from the ranking (the S3-Rec protocol)

    def __post_init__(self) -> None:
        self.cutoffs = check_cutoffs(self.cutoffs, "sasrec")
        if "seed" in self.sasrec:
            raise ValueError("sasrec.options.sasrec.seed is set, but each run's seed comes from `seeds=[...]`; remove the key.")
        if self.eval_batch_size < 1:
            raise ValueError(f"sasrec.eval_batch_size={self.eval_batch_size} must be at least 1.")

    def model_config(self, seed: int) -> SASRecConfig:
        return SASRecConfig.from_dict({**self.sasrec, "seed": seed})

    def history_length(self) -> int:
        """Return the number of history items read at evaluation: max_history, or sasrec.max_len when it is None."""
        max_len = self.model_config(seed=0).max_len
        length = max_len if self.max_history is None else self.max_history
        if not 1 <= length <= max_len:
            raise ValueError(f"sasrec.max_history={length} must be in 1..sasrec.max_len={max_len}; SASRec reads at most max_len items.")
        return length


def full_ranking_scorer(model: SASRec, device: torch.device, list_length: int, excluded: dict[int, list[int]] | None = None):
    """Return a scorer that ranks all items for each history by SASRec's next-item score, best first.

    ``excluded`` maps a user_idx to items that must not be ranked (scored -inf), e.g. the user's whole history.
    """
    k = min(list_length, model.n_items)

    @torch.inference_mode()
    def scorer(users: list[int], histories: list[list[int]]) -> torch.Tensor:
        input_ids = pad_histories(histories, model.max_len).to(device)  # (B, max_len)
        scores = model.predict(input_ids).float()  # (B, n_items)
        if excluded is not None:
            rows = [row for row, user in enumerate(users) for _ in excluded.get(user, ())]
            columns = [item for user in users for item in excluded.get(user, ())]
            index = (torch.tensor(rows, dtype=torch.long, device=scores.device), torch.tensor(columns, dtype=torch.long, device=scores.device))
            scores[index] = float("-inf")

        values, ranked = scores.topk(k, dim=1)  # (B, k)
        # With fewer than k items left, topk fills the list with excluded items: those slots become empty (-1).
        return ranked.masked_fill(values == float("-inf"), -1)

    return scorer


def full_histories(dataset: ProcessedDataset, split: str) -> dict[int, list[int]]:
    """Map each ``split`` user_idx to every item before its target, untruncated."""
    examples = evaluation_examples(dataset, split, EVERY_ITEM)
    return dict(zip(examples["user_idx"].to_list(), examples["history"].to_list(), strict=True))


def _evaluation_device(model: SASRec, accelerator: str) -> torch.device:
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return model.item_embedding.weight.device


def fit(dataset: ProcessedDataset, seed: int, cfg: SASRecBaselineConfig) -> SASRec:
    """Train SASRec on the training events with seed ``seed``, keeping the weights of the best valid NDCG@10."""
    model_cfg = cfg.model_config(seed)
    sequences = sequences_by_user(training_sequences(dataset), dataset.n_users)
    # Validation reads the valid targets, never the test ones.
    valid_targets = targets_by_user(evaluation_examples(dataset, "valid", cfg.history_length()), dataset.n_users)
    trainer_kwargs = {"accelerator": cfg.accelerator, "precision": cfg.precision}
    return train_sasrec(sequences, dataset.n_items, model_cfg, trainer_kwargs, valid_targets=valid_targets)


def evaluate(model: SASRec, dataset: ProcessedDataset, cfg: SASRecBaselineConfig) -> tuple[dict[str, dict[str, float]], dict[str, pl.DataFrame]]:
    """Rank the full catalogue for the valid and test users; return the metrics and the per-user results per split."""
    device = _evaluation_device(model, cfg.accelerator)
    model = model.to(device).eval()
    max_history = cfg.history_length()
    rows, per_user = {}, {}
    for split in SPLITS:
        excluded = full_histories(dataset, split) if cfg.exclude_history else None
        scorer = full_ranking_scorer(model, device, max(*cfg.cutoffs, 10), excluded)
        rows[split], per_user[split] = evaluate_scorer(dataset, split, max_history, scorer, cfg.cutoffs, cfg.eval_batch_size)
    return rows, per_user


def run(dataset: ProcessedDataset, run_dir: str | Path, seed: int, options: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Train SASRec with seed ``seed``, score it on the valid and test users and write the evaluate-stage outputs."""
    cfg = build_strict(SASRecBaselineConfig, dict(options or {}), "sasrec")
    max_history = cfg.history_length()

    started = time.perf_counter()
    model = fit(dataset, seed, cfg)
    train_seconds = time.perf_counter() - started

    rows, per_user = evaluate(model, dataset, cfg)
    for split in SPLITS:
        log.info("sasrec seed %d %s: %s", seed, split, {key: round(value, 4) for key, value in rows[split].items()})
    write_evaluation(Path(run_dir), rows, per_user)

    details = {
        "config": asdict(cfg.model_config(seed)),
        "max_history": max_history,
        "train_seconds": round(train_seconds, 2),
        "valid_during_training": model.valid_metrics,
        "device": str(model.item_embedding.weight.device),
    }
    write_json_atomic(Path(run_dir) / "evaluate" / "sasrec_training.json", details)
    return rows
