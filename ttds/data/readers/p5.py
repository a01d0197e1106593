"""P5-style sequences: ``user_sequence.txt`` lines ``user item_1 item_2 ...`` (oldest first, space-separated).

The optional ``items`` file is JSON lines, one object per item. Options name its fields: ``item_id_field``
(default ``item_id``), ``title_field``, ``brand_field``, ``description_field`` (a list is joined with a space)
and ``categories_field`` (a list of strings). Unset fields stay null. Without an items file the items table lists
every item of the sequences with null text. The files have no times, so ``timestamp`` is the event's 0-based
position in its user's sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from ttds.data.config import DatasetConfig
from ttds.data.readers._io import (
    LINE_COLUMN,
    dataset_file,
    json_string_lists,
    json_strings,
    merged_options,
    read_json_lines,
    read_text,
    reject_duplicate_ids,
    sequence_interactions,
)
from ttds.data.schema import DataFormatError, RawDataset, conform_items, empty_users

DEFAULT_OPTIONS: dict[str, Any] = {
    "item_id_field": "item_id",
    "title_field": None,
    "brand_field": None,
    "description_field": None,
    "categories_field": None,
}


def options_of(cfg: DatasetConfig) -> dict[str, Any]:
    return merged_options(cfg, DEFAULT_OPTIONS)


def input_files(cfg: DatasetConfig) -> dict[str, Path]:
    files = {"sequences": dataset_file(cfg, "sequences")}
    if "items" in cfg.files:
        files["items"] = dataset_file(cfg, "items")
    return files


def read(cfg: DatasetConfig) -> RawDataset:
    options = options_of(cfg)
    files = input_files(cfg)
    users, sequences = read_sequences(files["sequences"])
    interactions = sequence_interactions(users, sequences)
    if "items" in files:
        items = _read_items(files["items"], options)
    else:
        items = conform_items(interactions.select("item_id").unique(maintain_order=True))
    return RawDataset(cfg.name, interactions, items, empty_users(), source_files=list(files.values()))


def read_sequences(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read ``user item ...`` lines into user ids and their item lists, rejecting a user without items or listed twice."""
    users, sequences, lines = [], [], []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) == 1:
            raise DataFormatError(path, f"user {tokens[0]!r} has no items", "write 'user item_1 item_2 ...' separated by spaces, or remove the line", line=number)
        users.append(tokens[0])
        sequences.append(tokens[1:])
        lines.append(number)

    frame = pl.DataFrame({"user_id": users, LINE_COLUMN: lines}, schema={"user_id": pl.Utf8, LINE_COLUMN: pl.Int64})
    reject_duplicate_ids(path, frame, "user_id")
    return users, sequences


def _read_items(path: Path, options: dict[str, Any]) -> pl.DataFrame:
    id_field = options["item_id_field"]
    text_fields = {target: options[f"{target}_field"] for target in ("title", "brand", "description", "categories")}
    requested = [id_field, *[field for field in text_fields.values() if field is not None]]
    records = read_json_lines(path, requested)

    ids = json_strings(path, records, id_field)
    missing = [line for line, value in zip(records[LINE_COLUMN], ids.to_list(), strict=True) if not value]
    if missing:
        raise DataFormatError(
            path, f"the item has no '{id_field}' field", "add the id, or set dataset.options.item_id_field to the file's id field", line=missing[0], column=id_field
        )

    columns = [ids.alias("item_id"), pl.Series(LINE_COLUMN, records[LINE_COLUMN], dtype=pl.Int64)]
    for target, field in text_fields.items():
        if field is None:
            continue
        if target == "categories":
            columns.append(json_string_lists(path, records, field).alias(target))
        else:
            columns.append(json_strings(path, records, field, join=" " if target == "description" else None).alias(target))

    frame = pl.DataFrame(columns)
    reject_duplicate_ids(path, frame, "item_id")
    return conform_items(frame.drop(LINE_COLUMN))
