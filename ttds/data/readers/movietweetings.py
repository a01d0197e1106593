"""MovieTweetings snapshot files: ``ratings.dat`` (user::movie::rating::unix time) and ``movies.dat`` (movie::Title (Year)::genres).

Every rating is an interaction. Movie ids keep their leading zeros. The title is the ``Title (Year)`` string as
given, and the categories are the genres split on ``|`` (null when the genre field is empty).
"""

from __future__ import annotations

import re
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
    read_text,
    reject_duplicate_ids,
    reject_empty_ids,
)
from ttds.data.schema import DataFormatError, RawDataset, conform_items, empty_users

DEFAULT_FILES = {"ratings": "ratings.dat", "movies": "movies.dat"}
RATING_FIELDS = ["user_id", "item_id", "rating", "timestamp"]
# The title may itself contain "::", so the id is the first field and the genres the last.
MOVIE_LINE = re.compile(r"^(?P<item_id>[^:]*)::(?P<title>.*)::(?P<genres>[^:]*)$")


def options_of(cfg: DatasetConfig) -> dict[str, Any]:
    return merged_options(cfg, {})  # the format has no options, so any key is rejected


def input_files(cfg: DatasetConfig) -> dict[str, Path]:
    return {role: dataset_file(cfg, role, default) for role, default in DEFAULT_FILES.items()}


def read(cfg: DatasetConfig) -> RawDataset:
    options_of(cfg)
    files = input_files(cfg)
    interactions = _read_ratings(files["ratings"])
    items = _read_movies(files["movies"])
    return RawDataset(cfg.name, interactions, items, empty_users(), source_files=list(files.values()))


def _read_ratings(path: Path) -> pl.DataFrame:
    frame = read_delimited(path, "::", header=RATING_FIELDS)
    reject_empty_ids(path, frame, ["user_id", "item_id"])
    frame = parse_numbers(path, frame, "timestamp", pl.Int64)
    frame = parse_numbers(path, frame, "rating", pl.Float64)
    return canonical_interactions(frame)


def _read_movies(path: Path) -> pl.DataFrame:
    rows = {"item_id": [], "title": [], "genres": [], LINE_COLUMN: []}
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        match = MOVIE_LINE.match(line)
        if match is None:
            raise DataFormatError(path, "the line is not 'movie_id::Title (Year)::Genre|Genre'", "repair the line or remove it", line=number)
        for name in ("item_id", "title", "genres"):
            rows[name].append(match[name])
        rows[LINE_COLUMN].append(number)

    frame = pl.DataFrame(rows, schema={"item_id": pl.Utf8, "title": pl.Utf8, "genres": pl.Utf8, LINE_COLUMN: pl.Int64})
    reject_empty_ids(path, frame, ["item_id"])
    reject_duplicate_ids(path, frame, "item_id")
    items = frame.select(
        "item_id",
        "title",
        pl.when(pl.col("genres").str.strip_chars() != "").then(pl.col("genres").str.split("|")).alias("categories"),
    )
    return conform_items(items)
