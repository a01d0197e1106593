"""The plain documented layout: an interactions table plus optional items and users tables.

Files (roles under ``dataset.files``): ``interactions`` (required) has columns user_id, item_id, timestamp
(integer, e.g. unix seconds) and optionally rating. ``items`` has item_id and any of title, brand, description and
categories (one string split on ``categories_separator``, default ``|``); extra columns are kept as strings.
``users`` has user_id and attribute columns, kept as strings. Each file is CSV, TSV or parquet (a file starting
with ``PAR1``), gzipped or not. Options: ``delimiter`` (default: tab for .tsv/.txt names, comma otherwise),
``user_column``, ``item_column``, ``time_column``, ``rating_column`` (the file's names for the canonical
columns; a rating column that is absent is allowed unless named explicitly), ``categories_separator`` and
``quoting`` (default true: a field may be wrapped in double quotes; false reads quote characters literally).
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
    merged_options,
    parse_numbers,
    read_bytes,
    read_delimited,
    reject_duplicate_ids,
    reject_empty_ids,
    require_columns,
)
from ttds.data.schema import DataFormatError, RawDataset, conform_items, empty_users

DEFAULT_OPTIONS: dict[str, Any] = {
    "delimiter": None,
    "user_column": "user_id",
    "item_column": "item_id",
    "time_column": "timestamp",
    "rating_column": None,
    "categories_separator": "|",
    "quoting": True,
}
PARQUET_MAGIC = b"PAR1"
TAB_SUFFIXES = (".tsv", ".tab", ".txt")
COLUMN_HINT = "rename the column in the file or set dataset.options.{option} to the file's column name"


def options_of(cfg: DatasetConfig) -> dict[str, Any]:
    return merged_options(cfg, DEFAULT_OPTIONS)


def input_files(cfg: DatasetConfig) -> dict[str, Path]:
    files = {"interactions": dataset_file(cfg, "interactions")}
    for role in ("items", "users"):
        if role in cfg.files:
            files[role] = dataset_file(cfg, role)
    return files


def read(cfg: DatasetConfig) -> RawDataset:
    options = options_of(cfg)
    files = input_files(cfg)
    interactions = _read_interactions(files["interactions"], options)
    if "items" in files:
        items = _read_items(files["items"], options)
    else:
        items = conform_items(interactions.select("item_id").unique(maintain_order=True))
    users = _read_users(files["users"], options) if "users" in files else empty_users()
    return RawDataset(cfg.name, interactions, items, users, source_files=list(files.values()))


def read_table(path: Path, delimiter: str | None, quoting: bool = True) -> pl.DataFrame:
    """Read a CSV/TSV (header required) or parquet file into string columns plus ``_line``."""
    data = read_bytes(path)
    if data.startswith(PARQUET_MAGIC):
        try:
            frame = pl.read_parquet(data)
        except pl.exceptions.PolarsError as error:
            raise DataFormatError(path, f"the parquet file cannot be read ({error})", "write the file again") from error
        if frame.height == 0:
            raise DataFormatError(path, "the file has no rows", "point the config at the file with the data")
        # Parquet has no text lines, so ``_line`` counts a header line to stay comparable with CSV numbering.
        return frame.select(pl.all().cast(pl.Utf8), pl.int_range(2, frame.height + 2, dtype=pl.Int64).alias(LINE_COLUMN))

    if delimiter is None:
        name = path.name.removesuffix(".gz")
        delimiter = "\t" if name.endswith(TAB_SUFFIXES) else ","
    return read_delimited(path, delimiter, quoting=quoting)


def _read_interactions(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    frame = read_table(path, options["delimiter"], options["quoting"])
    fields = {"user_id": "user_column", "item_id": "item_column", "timestamp": "time_column"}
    rating_column = options["rating_column"] or "rating"
    if options["rating_column"] is not None or "rating" in frame.columns:
        fields["rating"] = "rating_column"
    names = {**options, "rating_column": rating_column}

    for option in fields.values():
        require_columns(path, frame, [names[option]], COLUMN_HINT.format(option=option))

    frame = frame.select(LINE_COLUMN, *[pl.col(names[option]).alias(target) for target, option in fields.items()])
    reject_empty_ids(path, frame, ["user_id", "item_id"])
    frame = parse_numbers(path, frame, "timestamp", pl.Int64)
    if "rating" in frame.columns:
        frame = parse_numbers(path, frame, "rating", pl.Float64, allow_null=True)
    return canonical_interactions(frame)


def _read_items(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    frame = read_table(path, options["delimiter"], options["quoting"])
    require_columns(path, frame, [options["item_column"]], COLUMN_HINT.format(option="item_column"))
    frame = frame.rename({options["item_column"]: "item_id"})
    reject_empty_ids(path, frame, ["item_id"])
    reject_duplicate_ids(path, frame, "item_id")

    text = [pl.when(pl.col(name).str.strip_chars() != "").then(pl.col(name)).alias(name) for name in ("title", "brand", "description") if name in frame.columns]
    if "categories" in frame.columns:
        separator = options["categories_separator"]
        split = pl.col("categories").str.split(separator).list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
        text.append(pl.when(pl.col("categories").str.strip_chars() != "").then(split).alias("categories"))
    return conform_items(frame.drop(LINE_COLUMN).with_columns(text))


def _read_users(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    frame = read_table(path, options["delimiter"], options["quoting"])
    require_columns(path, frame, [options["user_column"]], COLUMN_HINT.format(option="user_column"))
    frame = frame.rename({options["user_column"]: "user_id"})
    reject_empty_ids(path, frame, ["user_id"])
    reject_duplicate_ids(path, frame, "user_id")
    return frame.drop(LINE_COLUMN).select("user_id", pl.exclude("user_id"))
