"""ProcessedDataset: the preprocessed, split dataset every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

SPLITS = ("train", "valid", "test")


@dataclass
class ProcessedDataset:
    """A dataset after preprocessing and the leave-one-out split.

    events: user_idx (int32), item_idx (int32), timestamp (int64), file_row (int64, order in the source file,
        which breaks timestamp ties), position (int32, 0 = oldest event of the user), split (str: "train",
        "valid" or "test"). Sorted by user_idx then position.
    items: item_idx (int32, 0..n_items-1), item_id (str), title, brand, description (str),
        categories (list[str]), has_metadata (bool, false when the item had no metadata row),
        title_fallback (bool, true when the title was missing or empty and the fallback was used).
    users: user_idx (int32, 0..n_users-1), user_id (str), plus user attribute columns (str).
    stats: the statistics report (see ttds.data.stats).
    fingerprint: hash of the raw files and the preprocessing config that produced this dataset.
    """

    name: str
    events: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def n_users(self) -> int:
        return self.users.height

    @property
    def n_items(self) -> int:
        return self.items.height
