"""RecBole atomic files: tab-separated ``X.inter`` (required), ``X.item`` and ``X.user``, with ``name:type`` headers.

The ``:type`` suffix is dropped from column names. Options name the fields that map to canonical columns:
``user_field``, ``item_field``, ``time_field``, ``rating_field`` (None: no rating), ``title_field``,
``year_field`` (appended to the title as `` (YEAR)`` when present), ``brand_field``, ``description_field`` and
``categories_field`` (a ``token_seq`` split on ``categories_separator``, default a space). Every ``.user`` column
except the id is kept as a string, zip codes included.
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
    read_delimited,
    reject_duplicate_ids,
    reject_empty_ids,
    require_columns,
)
from ttds.data.schema import RawDataset, conform_items, empty_users

DEFAULT_OPTIONS: dict[str, Any] = {
    "user_field": "user_id",
    "item_field": "item_id",
    "time_field": "timestamp",
    "rating_field": "rating",
    "title_field": "title",
    "year_field": None,
    "brand_field": None,
    "description_field": None,
    "categories_field": None,
    "categories_separator": " ",
}
FIELD_HINT = "rename the column in the file or set dataset.options.{option} to the file's column name"


def options_of(cfg: DatasetConfig) -> dict[str, Any]:
    return merged_options(cfg, DEFAULT_OPTIONS)


def input_files(cfg: DatasetConfig) -> dict[str, Path]:
    files = {"inter": dataset_file(cfg, "inter")}
    for role in ("item", "user"):
        if role in cfg.files:
            files[role] = dataset_file(cfg, role)
    return files


def read(cfg: DatasetConfig) -> RawDataset:
    options = options_of(cfg)
    files = input_files(cfg)
    interactions = _read_inter(files["inter"], options)
    items = _read_item(files["item"], options) if "item" in files else conform_items(interactions.select("item_id").unique(maintain_order=True))
    users = _read_user(files["user"], options) if "user" in files else empty_users()
    return RawDataset(cfg.name, interactions, items, users, source_files=list(files.values()))


def read_atomic(path: Path) -> pl.DataFrame:
    """Read one atomic file into string columns named without their ``:type`` suffix."""
    frame = read_delimited(path, "\t", quoting=False)
    return frame.rename({name: name.split(":", 1)[0] for name in frame.columns if name != LINE_COLUMN})


def _read_inter(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    frame = read_atomic(path)
    fields = {"user_id": "user_field", "item_id": "item_field", "timestamp": "time_field"}
    if options["rating_field"] is not None:
        fields["rating"] = "rating_field"

    for option in fields.values():
        require_columns(path, frame, [options[option]], FIELD_HINT.format(option=option))

    frame = frame.rename({options[option]: f"_{target}" for target, option in fields.items()}).rename({f"_{target}": target for target in fields})
    reject_empty_ids(path, frame, ["user_id", "item_id"])
    frame = parse_numbers(path, frame, "timestamp", pl.Int64)
    if "rating" in frame.columns:
        frame = parse_numbers(path, frame, "rating", pl.Float64, allow_null=True)
    return canonical_interactions(frame)


def _read_item(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    frame = read_atomic(path)
    require_columns(path, frame, [options["item_field"]], FIELD_HINT.format(option="item_field"))
    for option in ("title_field", "year_field", "brand_field", "description_field", "categories_field"):
        if options[option] is not None:
            require_columns(path, frame, [options[option]], FIELD_HINT.format(option=option))

    frame = frame.rename({options["item_field"]: "item_id"})
    reject_empty_ids(path, frame, ["item_id"])
    reject_duplicate_ids(path, frame, "item_id")

    columns = [pl.col("item_id")]
    title = _nonempty(options["title_field"])
    if title is not None and options["year_field"] is not None:
        year = _nonempty(options["year_field"])
        title = pl.when(year.is_not_null()).then(pl.concat_str(title, pl.lit(" ("), year, pl.lit(")"))).otherwise(title)
    if title is not None:
        columns.append(title.alias("title"))
    for target in ("brand", "description"):
        source = _nonempty(options[f"{target}_field"])
        if source is not None:
            columns.append(source.alias(target))
    categories = _nonempty(options["categories_field"])
    if categories is not None:
        columns.append(categories.str.split(options["categories_separator"]).list.eval(pl.element().filter(pl.element() != "")).alias("categories"))

    return conform_items(frame.select(columns))


def _read_user(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    frame = read_atomic(path)
    require_columns(path, frame, [options["user_field"]], FIELD_HINT.format(option="user_field"))
    frame = frame.rename({options["user_field"]: "user_id"})
    reject_empty_ids(path, frame, ["user_id"])
    reject_duplicate_ids(path, frame, "user_id")
    return frame.drop(LINE_COLUMN).select("user_id", pl.exclude("user_id"))


def _nonempty(column: str | None) -> pl.Expr | None:
    """Column ``column`` with empty strings as null, or None when the option is unset."""
    if column is None:
        return None
    value = pl.col(column).str.strip_chars()
    return pl.when(value != "").then(pl.col(column))
