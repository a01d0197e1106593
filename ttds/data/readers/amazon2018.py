"""Amazon Review Data (2018) raw files, each gzipped or not (detected by the gzip magic bytes).

Roles under ``dataset.files``: either ``ratings`` (the ratings-only CSV ``item,user,rating,timestamp`` with no
header) or ``reviews`` (JSON lines with reviewerID, asin, overall, unixReviewTime), plus an optional ``meta``
(JSON lines with asin, title, brand, category and description). The meta ``category`` list becomes
``categories`` and the ``description`` list is joined with a space. Text is kept as written, HTML included.
Items without a meta row are absent from the items table. Option ``meta_duplicates``: ``error`` (default) rejects
an ASIN listed twice in the meta file, and ``first`` keeps its first row (the public 2018 meta files repeat some).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from ttds.data.config import DatasetConfig
from ttds.data.readers._io import (
    LINE_COLUMN,
    canonical_interactions,
    dataset_file,
    json_string_lists,
    json_strings,
    merged_options,
    parse_numbers,
    read_delimited,
    read_json_lines,
    reject_duplicate_ids,
    reject_empty_ids,
)
from ttds.data.schema import RawDataset, conform_items, empty_users

RATING_COLUMNS = ["item_id", "user_id", "rating", "timestamp"]
REVIEW_FIELDS = {"reviewerID": "user_id", "asin": "item_id", "overall": "rating", "unixReviewTime": "timestamp"}
DEFAULT_OPTIONS: dict[str, Any] = {"meta_duplicates": "error"}
META_DUPLICATE_POLICIES = ("error", "first")


def options_of(cfg: DatasetConfig) -> dict[str, Any]:
    options = merged_options(cfg, DEFAULT_OPTIONS)
    if options["meta_duplicates"] not in META_DUPLICATE_POLICIES:
        raise ValueError(f"dataset.options.meta_duplicates={options['meta_duplicates']!r} is not one of {META_DUPLICATE_POLICIES}; pick one of them.")
    return options


def input_files(cfg: DatasetConfig) -> dict[str, Path]:
    has_ratings, has_reviews = "ratings" in cfg.files, "reviews" in cfg.files
    if has_ratings == has_reviews:
        raise ValueError("format 'amazon2018' needs exactly one of dataset.files.ratings (CSV) and dataset.files.reviews (JSON lines); set one of them.")
    role = "ratings" if has_ratings else "reviews"
    files = {role: dataset_file(cfg, role)}
    if "meta" in cfg.files:
        files["meta"] = dataset_file(cfg, "meta")
    return files


def read(cfg: DatasetConfig) -> RawDataset:
    options = options_of(cfg)
    files = input_files(cfg)
    interactions = _read_ratings(files["ratings"]) if "ratings" in files else _read_reviews(files["reviews"])
    if "meta" in files:
        items = _read_meta(files["meta"], options["meta_duplicates"])
    else:
        items = conform_items(interactions.select("item_id").unique(maintain_order=True))
    return RawDataset(cfg.name, interactions, items, empty_users(), source_files=list(files.values()))


def _read_ratings(path: Path) -> pl.DataFrame:
    frame = read_delimited(path, ",", header=RATING_COLUMNS)
    return _checked_interactions(path, frame)


def _read_reviews(path: Path) -> pl.DataFrame:
    records = read_json_lines(path, list(REVIEW_FIELDS))
    columns = [json_strings(path, records, field).alias(target) for field, target in REVIEW_FIELDS.items()]
    frame = pl.DataFrame([*columns, pl.Series(LINE_COLUMN, records[LINE_COLUMN], dtype=pl.Int64)])
    return _checked_interactions(path, frame)


def _checked_interactions(path: Path, frame: pl.DataFrame) -> pl.DataFrame:
    reject_empty_ids(path, frame, ["user_id", "item_id"])
    frame = parse_numbers(path, frame, "timestamp", pl.Int64)
    frame = parse_numbers(path, frame, "rating", pl.Float64, allow_null=True)
    return canonical_interactions(frame)


def _read_meta(path: Path, duplicates: str) -> pl.DataFrame:
    records = read_json_lines(path, ["asin", "title", "brand", "category", "description"])
    frame = pl.DataFrame(
        [
            json_strings(path, records, "asin").alias("item_id"),
            json_strings(path, records, "title"),
            json_strings(path, records, "brand"),
            json_string_lists(path, records, "category").alias("categories"),
            json_strings(path, records, "description", join=" "),
            pl.Series(LINE_COLUMN, records[LINE_COLUMN], dtype=pl.Int64),
        ]
    )
    reject_empty_ids(path, frame, ["item_id"])
    if duplicates == "error":
        reject_duplicate_ids(path, frame, "item_id", fix="keep one row per asin, or set dataset.options.meta_duplicates=first")
    else:
        frame = frame.unique("item_id", keep="first", maintain_order=True)
    return conform_items(frame.drop(LINE_COLUMN))
