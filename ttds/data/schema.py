"""Canonical tables that every reader returns and every later stage reads.

interactions: user_id (str), item_id (str), timestamp (int64), file_row (int64), rating (float64, nullable).
    ``timestamp`` is unix seconds when the source has times; otherwise it is the event's position in
    the user's sequence (0 = oldest). ``file_row`` is the 0-based order of the event in the source,
    and it breaks timestamp ties.
items: item_id (str, unique), title, brand, description (str, nullable), categories (list[str], nullable),
    plus any extra string columns a template may use.
users: user_id (str, unique) plus string attribute columns. A dataset without users has an empty table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "timestamp": pl.Int64,
    "file_row": pl.Int64,
    "rating": pl.Float64,
}

ITEM_TEXT_FIELDS: tuple[str, ...] = ("title", "brand", "description")
ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "brand": pl.Utf8,
    "categories": pl.List(pl.Utf8),
    "description": pl.Utf8,
}

USER_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.Utf8}


class DataFormatError(ValueError):
    """Invalid input data; the message names the file, the line or column, and the fix."""

    def __init__(self, path: Path | str, problem: str, fix: str, line: int | None = None, column: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path = str(path)
        self.line = line
        self.column = column


@dataclass
class RawDataset:
    """One dataset in canonical form, before preprocessing."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    source_files: list[Path] = field(default_factory=list)


def empty_users() -> pl.DataFrame:
    return pl.DataFrame(schema=USER_SCHEMA)


def conform_items(items: pl.DataFrame) -> pl.DataFrame:
    """Add missing canonical item columns as nulls and cast known ones to their canonical type."""
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in ITEM_SCHEMA.items() if name not in items.columns]
    items = items.with_columns(missing) if missing else items
    return items.with_columns([pl.col(name).cast(dtype) for name, dtype in ITEM_SCHEMA.items()])


def validate_raw(dataset: RawDataset) -> None:
    """Check column names, types and id uniqueness of a reader's output; raise DataFormatError on the first problem."""
    source = dataset.source_files[0] if dataset.source_files else dataset.name
    tables = (
        ("interactions", dataset.interactions, INTERACTION_SCHEMA),
        ("items", dataset.items, ITEM_SCHEMA),
        ("users", dataset.users, USER_SCHEMA),
    )
    for table_name, frame, schema in tables:
        for column, dtype in schema.items():
            if column not in frame.columns:
                raise DataFormatError(source, f"{table_name} table has no column '{column}'", "the reader must emit every canonical column", column=column)
            if frame.schema[column] != dtype:
                raise DataFormatError(
                    source,
                    f"{table_name}.{column} has type {frame.schema[column]}, expected {dtype}",
                    "cast the column in the reader",
                    column=column,
                )

    if dataset.interactions.height == 0:
        raise DataFormatError(source, "no interactions were read", "check the path and the file format in the dataset config")

    for table_name, frame, key in (("items", dataset.items, "item_id"), ("users", dataset.users, "user_id")):
        duplicated = frame.filter(pl.col(key).is_duplicated())
        if duplicated.height:
            first = duplicated[key][0]
            raise DataFormatError(source, f"{table_name} has duplicate {key} '{first}' ({duplicated.height} rows)", f"keep one row per {key}", column=key)

    null_keys = dataset.interactions.filter(pl.col("user_id").is_null() | pl.col("item_id").is_null() | pl.col("timestamp").is_null())
    if null_keys.height:
        row = int(null_keys["file_row"][0])
        raise DataFormatError(source, "an interaction has an empty user_id, item_id or timestamp", "remove or complete the row", line=row + 1)
