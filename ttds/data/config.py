"""Typed dataset and preprocessing settings that conf/dataset/*.yaml mirrors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

READER_FORMATS = ("movietweetings", "recbole", "amazon2018", "unisrec", "p5", "table")
DUPLICATE_POLICIES = ("first", "last", "keep")


@dataclass
class PreprocessConfig:
    """Steps applied to a RawDataset before the split; the defaults follow the usual leave-one-out protocol."""

    duplicates: str = "first"  # repeated (user, item): keep the "first" or "last" event, or "keep" all of them
    kcore: int = 5  # iterative k-core on users and items; 0 or 1 turns it off
    min_rating: float | None = None  # drop events rated below this before the k-core; None keeps all
    max_history: int = 20  # history items kept before each target (most recent last)
    fallback_title: str = "item {item_id}"  # title for items with no usable title or no metadata row
    clean_text: bool = True  # unescape HTML entities until none is left, Unicode NFC, collapse whitespace

    def __post_init__(self) -> None:
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"preprocess.duplicates={self.duplicates!r} is not one of {DUPLICATE_POLICIES}; pick one of them.")
        if self.kcore < 0:
            raise ValueError(f"preprocess.kcore={self.kcore} is negative; use 0 to turn the k-core off.")
        if self.max_history < 1:
            raise ValueError(f"preprocess.max_history={self.max_history} must be at least 1.")
        if "{item_id}" not in self.fallback_title:
            raise ValueError(f"preprocess.fallback_title={self.fallback_title!r} must contain '{{item_id}}' so fallback titles stay distinct.")


@dataclass
class DatasetConfig:
    """Dataset location and the reader that parses it."""

    name: str
    format: str
    path: str  # folder holding the files; relative paths resolve against the working directory
    files: dict[str, str] = field(default_factory=dict)  # reader-specific role -> file name inside `path`
    options: dict[str, Any] = field(default_factory=dict)  # reader-specific options (delimiter, subset, ...)
    research_only: bool = False  # true for data whose terms forbid redistribution: never copy it into the repo
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.format not in READER_FORMATS:
            raise ValueError(f"dataset.format={self.format!r} is unknown; use one of {READER_FORMATS}.")
        if isinstance(self.preprocess, dict):
            self.preprocess = build_strict(PreprocessConfig, self.preprocess, "dataset.preprocess")


def build_strict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting keys it does not declare."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys are {sorted(known)}.")
    return cls(**values)


def dataset_config_from_dict(values: dict[str, Any]) -> DatasetConfig:
    """Build a DatasetConfig from a plain mapping (a resolved Hydra node), rejecting unknown keys."""
    values = {key: value for key, value in values.items() if key != "_target_"}
    return build_strict(DatasetConfig, values, "dataset")
