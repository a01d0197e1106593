"""Statistics report of a processed dataset: sizes after each step, sequence lengths, text coverage, ties, filters.

The report is a JSON-serialisable dict. ``build_stats`` computes it from the final tables and the step records
that ttds.data.pipeline collects; ``format_stats`` renders it for a terminal; ``save_stats`` writes it atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from ttds.data.split import LENGTH_BUCKET_OUTCOMES, length_buckets

log = logging.getLogger(__name__)


def table_counts(events: pl.DataFrame, user_column: str = "user_id", item_column: str = "item_id") -> dict[str, int]:
    """Users, items and interactions of an events table."""
    return {
        "users": events[user_column].n_unique(),
        "items": events[item_column].n_unique(),
        "interactions": events.height,
    }


def _sequence_lengths(events: pl.DataFrame) -> dict[str, float]:
    lengths = events.group_by("user_idx").len()["len"]
    return {
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 3),
        "median": float(lengths.median()),
        "max": int(lengths.max()),
    }


def _timestamp_ties(events: pl.DataFrame) -> dict[str, int]:
    # Events are sorted by user_idx then position, so the previous row is the user's previous event when
    # it has the same user_idx.
    same_user = pl.col("user_idx") == pl.col("user_idx").shift(1)
    tied = (same_user & (pl.col("timestamp") == pl.col("timestamp").shift(1))).fill_null(False)
    flagged = events.with_columns(tied.alias("tied"))
    return {
        "events_tied_with_previous": int(flagged["tied"].sum()),
        "users_with_tied_test_item": int(flagged.filter(pl.col("split") == "test")["tied"].sum()),
    }


def _text_coverage(items: pl.DataFrame) -> dict[str, int]:
    def non_blank(column: str) -> int:
        if column not in items.columns:
            return 0
        return int(items.filter(pl.col(column).is_not_null() & (pl.col(column).str.strip_chars() != "")).height)

    with_categories = 0
    if "categories" in items.columns:
        with_categories = int(items.filter(pl.col("categories").list.len().fill_null(0) > 0).height)
    return {
        "items_with_title": int((~items["title_fallback"]).sum()),
        "items_with_categories": with_categories,
        "items_with_description": non_blank("description"),
        "items_with_brand": non_blank("brand"),
        "items_without_metadata": int((~items["has_metadata"]).sum()),
        "items_with_fallback_title": int(items["title_fallback"].sum()),
    }


def _example_counts(events: pl.DataFrame) -> dict[str, int]:
    # An event yields an example only when something precedes it (position >= 1).
    with_history = events.filter(pl.col("position") >= 1)
    return {split: int((with_history["split"] == split).sum()) for split in ("train", "valid", "test")}


def build_stats(
    name: str,
    events: pl.DataFrame,
    items: pl.DataFrame,
    steps: list[dict[str, Any]],
    filters: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the statistics report of processed ``events`` and ``items`` (ttds.data.dataset.ProcessedDataset columns)."""
    n_users = events["user_idx"].n_unique()
    n_items = items.height
    buckets = length_buckets(events)
    return {
        "name": name,
        "users": n_users,
        "items": n_items,
        "interactions": events.height,
        "density": events.height / (n_users * n_items),
        "sequence_length": _sequence_lengths(events),
        "steps": steps,
        **filters,
        "timestamp_ties": _timestamp_ties(events),
        "text_coverage": _text_coverage(items),
        "users_by_length": {bucket: {"users": buckets[bucket], "outcome": outcome} for bucket, outcome in LENGTH_BUCKET_OUTCOMES.items()},
        "examples": _example_counts(events),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Render a statistics report as aligned plain text."""
    lengths = stats["sequence_length"]
    lines = [
        f"dataset {stats['name']}: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions, density {stats['density']:.4%}",
        f"sequence length: min {lengths['min']}, mean {lengths['mean']:.2f}, median {lengths['median']:g}, max {lengths['max']}",
        "steps (users / items / interactions):",
    ]
    for step in stats["steps"]:
        lines.append(f"  {step['step']:<22} {step['users']:>9,} {step['items']:>9,} {step['interactions']:>11,}")

    kcore = stats["kcore"]
    lines.append(f"exact duplicates removed: {stats['exact_duplicates_removed']:,}")
    lines.append(f"duplicate policy {stats['duplicate_policy']!r} removed: {stats['duplicates_removed']:,}")
    lines.append(f"rating filter removed: {stats['rating_filter_removed']:,}")
    lines.append(f"{kcore['k']}-core: {kcore['rounds']} rounds, removed {sum(r['interactions'] for r in kcore['removed_per_round']):,} interactions")

    ties = stats["timestamp_ties"]
    lines.append(f"timestamp ties: {ties['events_tied_with_previous']:,} events, {ties['users_with_tied_test_item']:,} users with a tied test item")
    lines.append("text coverage: " + ", ".join(f"{key} {value:,}" for key, value in stats["text_coverage"].items()))
    lines.append("users by length:")
    for bucket, entry in stats["users_by_length"].items():
        lines.append(f"  {bucket:<4} {entry['users']:>9,}  {entry['outcome']}")
    lines.append("examples: " + ", ".join(f"{split} {count:,}" for split, count in stats["examples"].items()))
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to a temporary file in the same folder, then move it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, sort_keys=False)
            stream.write("\n")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def save_stats(stats: dict[str, Any], path: Path) -> None:
    """Save the report as JSON at ``path`` (atomically); the data stage logs it, so it is not logged here too."""
    write_json_atomic(path, stats)
    log.info("saved statistics of %s to %s", stats["name"], path)
