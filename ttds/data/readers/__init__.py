"""Readers that turn each supported input format into the canonical RawDataset (see ttds.data.schema).

``read_dataset`` picks the reader named by ``cfg.format`` and validates its output. ``resolve_files`` lists the
raw files a config reads, so a cache can hash them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

from ttds.data.config import READER_FORMATS, DatasetConfig
from ttds.data.readers import amazon2018, movietweetings, p5, recbole, table, unisrec
from ttds.data.schema import RawDataset, validate_raw

log = logging.getLogger(__name__)

READERS: dict[str, ModuleType] = {
    "movietweetings": movietweetings,
    "recbole": recbole,
    "amazon2018": amazon2018,
    "unisrec": unisrec,
    "p5": p5,
    "table": table,
}


def _reader(cfg: DatasetConfig) -> ModuleType:
    reader = READERS.get(cfg.format)
    if reader is None:
        raise ValueError(f"dataset.format={cfg.format!r} has no reader; use one of {READER_FORMATS}.")
    return reader


def resolve_files(cfg: DatasetConfig) -> list[Path]:
    """List the raw files ``cfg`` reads, in a fixed order. A missing file raises FileNotFoundError naming its config key."""
    return list(_reader(cfg).input_files(cfg).values())


def check_options(cfg: DatasetConfig) -> dict:
    """Return the reader options of ``cfg`` merged with its format's defaults, rejecting keys the format does not take."""
    return _reader(cfg).options_of(cfg)


def read_dataset(cfg: DatasetConfig) -> RawDataset:
    """Read the dataset ``cfg`` describes into canonical tables and validate them."""
    dataset = _reader(cfg).read(cfg)
    validate_raw(dataset)
    log.info(
        "read %s (%s): %d interactions, %d users, %d items in the items table",
        cfg.name,
        cfg.format,
        dataset.interactions.height,
        dataset.interactions["user_id"].n_unique(),
        dataset.items.height,
    )
    return dataset


__all__ = ["READERS", "check_options", "read_dataset", "resolve_files"]
