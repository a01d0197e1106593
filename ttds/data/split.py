"""Leave-one-out split: each user's last event is the test target, the one before it the validation target.

For a user with events ``i_1..i_n`` in chronological order (position 0 = oldest):
- positions ``0..n-3`` are "train": every prefix of ``i_1..i_{n-2}`` predicts its next item, so the training
  targets are ``i_2..i_{n-2}``;
- position ``n-2`` is "valid": ``i_{n-1}`` is predicted from ``i_1..i_{n-2}``;
- position ``n-1`` is "test": ``i_n`` is predicted from ``i_1..i_{n-1}``.

Short users (only possible with a k-core below 4) keep their events in the table but yield fewer examples:
- n = 1: the single event is "test" and has no history, so the user has no training pair and no validation or
  test example.
- n = 2: ``i_1`` is "valid" with an empty history, so there is no validation example; the test example predicts
  ``i_2`` from ``[i_1]``. Nothing of this user reaches the training views.
- n = 3: ``i_1`` is "train" but has no predecessor, so there is no training pair; validation predicts ``i_2``
  from ``[i_1]`` and test predicts ``i_3`` from ``[i_1, i_2]``.
The statistics report counts users in each of these buckets (see ``length_buckets``).
"""

from __future__ import annotations

import polars as pl

# Length buckets of the statistics report: bucket name -> what the split produces for such a user.
LENGTH_BUCKET_OUTCOMES: dict[str, str] = {
    "1": "no training pair, no validation or test example",
    "2": "test example only (history [i1]); nothing reaches the training views",
    "3": "validation and test examples, no training pair",
    ">=4": "training pairs, validation and test examples",
}


def assign_split(events: pl.LazyFrame, user_column: str = "user_idx") -> pl.LazyFrame:
    """Add ``position`` (int32, 0 = oldest) and ``split`` ("train"/"valid"/"test"); events must be in chronological order per user."""
    position = pl.int_range(pl.len(), dtype=pl.Int32).over(user_column)
    from_end = pl.len().over(user_column).cast(pl.Int32) - 1 - position
    return events.with_columns(position.alias("position")).with_columns(
        pl.when(from_end == 0)
        .then(pl.lit("test"))
        .when(from_end == 1)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )


def length_buckets(events: pl.DataFrame, user_column: str = "user_idx") -> dict[str, int]:
    """Count users per sequence-length bucket ("1", "2", "3", ">=4"); the counts sum to the number of users."""
    lengths = events.group_by(user_column).len()["len"]
    return {
        "1": int((lengths == 1).sum()),
        "2": int((lengths == 2).sum()),
        "3": int((lengths == 3).sum()),
        ">=4": int((lengths >= 4).sum()),
    }
