"""Preprocessing steps on the canonical tables of ttds.data.schema, as polars LazyFrame -> LazyFrame functions.

``kcore_filter`` also returns a report of its rounds.

The pipeline (ttds.data.pipeline) applies them in this order: rating filter, chronological order, exact-duplicate
collapse, duplicate (user, item) policy, iterative k-core, index assignment. It also cleans item and user text and
applies the missing-metadata policy to items. Chronological order is (user_id, timestamp, file_row), so events with the
same timestamp keep their order in the source file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import polars as pl

from ttds.data.config import DUPLICATE_POLICIES
from ttds.data.text import clean_text_expr

log = logging.getLogger(__name__)

CHRONOLOGICAL_ORDER = ("user_id", "timestamp", "file_row")
EXACT_DUPLICATE_KEY = ("user_id", "item_id", "timestamp", "rating")


def filter_ratings(events: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    """Keep events rated at least ``min_rating``, dropping events without a rating too. None keeps every event."""
    if min_rating is None:
        return events
    return events.filter(pl.col("rating") >= min_rating)


def sort_chronologically(events: pl.LazyFrame) -> pl.LazyFrame:
    """Sort by user, then timestamp, then source row, so timestamp ties keep file order."""
    return events.sort(*CHRONOLOGICAL_ORDER)


def drop_exact_duplicates(events: pl.LazyFrame) -> pl.LazyFrame:
    """Keep the earliest source row of events equal in user, item, timestamp and rating (input sorted chronologically)."""
    # A null rating equals another null rating here, as pandas' drop_duplicates treats NaN.
    return events.filter(pl.struct(EXACT_DUPLICATE_KEY).is_first_distinct())


def apply_duplicate_policy(events: pl.LazyFrame, policy: str) -> pl.LazyFrame:
    """Resolve repeated (user, item) events: keep the chronologically "first" or "last" one, or "keep" all.

    The input must be sorted chronologically, and the output stays in that order.
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicate policy {policy!r} is not one of {DUPLICATE_POLICIES}; pick one of them.")
    if policy == "keep":
        return events

    pair = pl.struct("user_id", "item_id")
    if policy == "first":
        return events.filter(pair.is_first_distinct())
    return events.filter(pair.is_last_distinct())


@dataclass
class KCoreReport:
    """Outcome of the iterative k-core: rounds that removed something and what each removed."""

    k: int
    rounds: int = 0
    removed_per_round: list[dict[str, int]] = field(default_factory=list)  # {"users", "items", "interactions"}

    def as_dict(self) -> dict:
        return {"k": self.k, "rounds": self.rounds, "removed_per_round": self.removed_per_round}


def kcore_filter(events: pl.LazyFrame, k: int) -> tuple[pl.LazyFrame, KCoreReport]:
    """Drop users and items with fewer than ``k`` events, repeating until every remaining one has at least ``k``.

    Events are counted as rows, so with the duplicate policy "keep" a repeated (user, item) counts each time. Both
    sides are filtered in the same round. The result is the unique largest subset where all degrees are >= k, so
    it does not depend on the order of removal. k <= 1 returns the input unchanged.
    """
    report = KCoreReport(k=k)
    if k <= 1:
        return events, report

    # The rounds need materialised counts, so this step collects. Row order is preserved.
    frame = events.collect()
    while True:
        keep = (pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k)
        remaining = frame.filter(keep)
        if remaining.height == frame.height:
            break

        removed = {
            "users": frame["user_id"].n_unique() - remaining["user_id"].n_unique(),
            "items": frame["item_id"].n_unique() - remaining["item_id"].n_unique(),
            "interactions": frame.height - remaining.height,
        }
        report.rounds += 1
        report.removed_per_round.append(removed)
        log.info(
            "%d-core round %d removed %d users, %d items, %d interactions (%d left)",
            k, report.rounds, removed["users"], removed["items"], removed["interactions"], remaining.height,
        )
        frame = remaining

    if frame.height == 0:
        raise ValueError(f"the {k}-core is empty: no user and item both have {k} events; lower preprocess.kcore.")
    return frame.lazy(), report


def clean_item_text(items: pl.LazyFrame) -> pl.LazyFrame:
    """Clean every string column except item_id and every element of ``categories``, dropping elements that end up empty."""
    schema = items.collect_schema()
    text_columns = [name for name, dtype in schema.items() if dtype == pl.Utf8 and name != "item_id"]
    cleaned = [clean_text_expr(name).alias(name) for name in text_columns]
    if "categories" in schema:
        categories = (
            pl.col("categories")
            .list.eval(clean_text_expr(pl.element()))
            .list.eval(pl.element().filter(pl.element().str.len_chars() > 0))
        )
        cleaned.append(categories.alias("categories"))
    return items.with_columns(cleaned)


def clean_user_text(users: pl.LazyFrame) -> pl.LazyFrame:
    """Clean every string attribute column of the users table (user_id is left as is)."""
    schema = users.collect_schema()
    text_columns = [name for name, dtype in schema.items() if dtype == pl.Utf8 and name != "user_id"]
    return users.with_columns([clean_text_expr(name).alias(name) for name in text_columns])


def attach_item_metadata(item_ids: pl.LazyFrame, items: pl.LazyFrame, fallback_title: str) -> pl.LazyFrame:
    """Join metadata onto the interacted items and apply the missing-metadata policy.

    ``item_ids`` has one row per interacted item_id. Items without a metadata row get ``has_metadata=False``, and
    items whose title is null or blank (with or without a metadata row) get ``fallback_title`` with ``{item_id}``
    filled in and ``title_fallback=True``. Metadata rows of items without interactions are dropped.
    """
    prefix, _, suffix = fallback_title.partition("{item_id}")
    missing_title = pl.col("title").is_null() | (pl.col("title").str.strip_chars() == "")
    return (
        item_ids.join(items.with_columns(pl.lit(True).alias("has_metadata")), on="item_id", how="left")
        .with_columns(pl.col("has_metadata").fill_null(False), missing_title.alias("title_fallback"))
        .with_columns(
            pl.when(pl.col("title_fallback"))
            .then(pl.concat_str(pl.lit(prefix), pl.col("item_id"), pl.lit(suffix)))
            .otherwise(pl.col("title"))
            .alias("title")
        )
    )


def id_index(ids: pl.LazyFrame, id_column: str, index_column: str) -> pl.LazyFrame:
    """Map each distinct id to a contiguous int32 index in sorted order of the id string, so the mapping is deterministic."""
    return (
        ids.select(pl.col(id_column).unique())
        .sort(id_column)
        .with_row_index(index_column)
        .with_columns(pl.col(index_column).cast(pl.Int32))
    )
