"""Typed offline-evaluation settings that conf/eval/default.yaml mirrors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ttds.data.config import build_strict

EVAL_SPLITS = ("valid", "test")


@dataclass
class EvalConfig:
    """Leave-one-out evaluation through constrained beam search: cutoffs, batch size and which users and splits."""

    beam_width: int = 20  # hypotheses kept per user, at least max(top_k)
    top_k: list[int] = field(default_factory=lambda: [1, 5, 10])  # cutoffs reported
    batch_size: int = 32  # users per beam-search batch
    exclude_history: bool = False  # drop items the user already has; off for the benchmark protocol
    max_users: int | None = None  # evaluate only the first N users of each split; None evaluates every user
    splits: list[str] = field(default_factory=lambda: list(EVAL_SPLITS))  # splits to evaluate, in this order

    def __post_init__(self) -> None:
        self._check_search()
        self._check_users()

    def _check_search(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"eval.beam_width={self.beam_width} must be at least 1.")
        if not self.top_k or min(self.top_k) < 1:
            raise ValueError(f"eval.top_k={self.top_k} must be a non-empty list of positive cutoffs, e.g. [1, 5, 10].")
        largest = max(self.top_k)
        if self.beam_width < largest:
            raise ValueError(
                f"eval.beam_width={self.beam_width} is below max(eval.top_k)={largest}; set eval.beam_width>={largest}."
            )
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size={self.batch_size} must be at least 1.")

    def _check_users(self) -> None:
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"eval.max_users={self.max_users} must be at least 1, or null to evaluate every user.")
        if not self.splits:
            raise ValueError(f"eval.splits=[] is empty; name at least one of {list(EVAL_SPLITS)}.")
        unknown = [split for split in self.splits if split not in EVAL_SPLITS]
        if unknown:
            raise ValueError(f"eval.splits={self.splits} has unknown splits {unknown}; use some of {list(EVAL_SPLITS)}.")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(
                f"eval.splits={self.splits} repeats a split, whose outputs would be overwritten; list each split once."
            )


def eval_config_from_dict(values: dict[str, Any]) -> EvalConfig:
    """Build an EvalConfig from a plain mapping (a resolved Hydra node), rejecting unknown keys and wrong types."""
    return build_strict(EvalConfig, dict(values), "eval")
