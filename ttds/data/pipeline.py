"""From a RawDataset to a ProcessedDataset, and ``load_processed``: the cached entry point later stages call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import OmegaConf

from ttds.data import preprocess as steps
from ttds.data.cache import dataset_fingerprint, read_cache, write_cache
from ttds.data.config import DatasetConfig, PreprocessConfig, dataset_config_from_dict
from ttds.data.dataset import ProcessedDataset
from ttds.data.readers import read_dataset, resolve_files
from ttds.data.schema import RawDataset
from ttds.data.split import assign_split
from ttds.data.stats import build_stats, table_counts
from ttds.paths import CONF_DIR, register_resolvers

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("user_idx", "item_idx", "timestamp", "position", "split", "file_row")
ITEM_LEADING_COLUMNS = ("item_idx", "item_id", "title", "brand", "description", "categories", "has_metadata", "title_fallback")


class _StepLog:
    """Table sizes after each step, kept for the statistics report and logged as progress."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def record(self, step: str, events: pl.DataFrame) -> pl.DataFrame:
        # Steps only remove rows, so an unchanged row count means unchanged user and item counts.
        unchanged = bool(self.steps) and self.steps[-1]["interactions"] == events.height
        counts = table_counts(events) if not unchanged else {key: self.steps[-1][key] for key in ("users", "items", "interactions")}
        self.steps.append({"step": step, **counts})
        log.info(
            "%s: %s -> %d users, %d items, %d interactions (%.1f s)",
            self.name, step, counts["users"], counts["items"], counts["interactions"], time.perf_counter() - self.started,
        )
        return events


@dataclass
class IndexedEvents:
    """Filtered, indexed and split events with the id -> index tables and the filter counts of the report."""

    events: pl.DataFrame  # EVENT_COLUMNS, sorted by user_idx then position
    user_index: pl.DataFrame  # user_id, user_idx
    item_index: pl.DataFrame  # item_id, item_idx
    filters: dict[str, Any]
    steps: list[dict[str, Any]]


def process_events(interactions: pl.DataFrame, cfg: PreprocessConfig, name: str = "dataset") -> IndexedEvents:
    """Apply the event steps (rating filter, order, duplicates, k-core, index, split) to canonical interactions."""
    progress = _StepLog(name)
    events = progress.record("raw", interactions)

    rated = progress.record("rating_filter", steps.filter_ratings(events.lazy(), cfg.min_rating).collect())
    if rated.height == 0:
        raise ValueError(f"preprocess.min_rating={cfg.min_rating} removes every interaction of {name}; lower it or set it to null.")
    ordered = steps.sort_chronologically(rated.lazy()).collect()
    distinct = progress.record("exact_duplicates", steps.drop_exact_duplicates(ordered.lazy()).collect())
    deduplicated = progress.record("duplicate_policy", steps.apply_duplicate_policy(distinct.lazy(), cfg.duplicates).collect())

    kcore, report = steps.kcore_filter(deduplicated.lazy(), cfg.kcore)
    filtered = progress.record("kcore", kcore.collect())

    user_index = steps.id_index(filtered.lazy(), "user_id", "user_idx").collect()
    item_index = steps.id_index(filtered.lazy(), "item_id", "item_idx").collect()
    # `filtered` is in chronological order and user_idx follows sorted user_id, so keeping the left order
    # leaves the events sorted by (user_idx, timestamp, file_row).
    indexed = (
        filtered.lazy()
        .join(user_index.lazy(), on="user_id", maintain_order="left")
        .join(item_index.lazy(), on="item_id", maintain_order="left")
    )

    filters = {
        "rating_filter_removed": events.height - rated.height,
        "exact_duplicates_removed": rated.height - distinct.height,
        "duplicate_policy": cfg.duplicates,
        "duplicates_removed": distinct.height - deduplicated.height,
        "kcore": report.as_dict(),
    }
    return IndexedEvents(
        events=assign_split(indexed).select(EVENT_COLUMNS).collect(),
        user_index=user_index,
        item_index=item_index,
        filters=filters,
        steps=progress.steps,
    )


def _build_items(raw: RawDataset, cfg: PreprocessConfig, item_index: pl.DataFrame) -> pl.DataFrame:
    metadata = raw.items.lazy()
    if cfg.clean_text:
        metadata = steps.clean_item_text(metadata)
    items = (
        steps.attach_item_metadata(item_index.lazy().select("item_id"), metadata, cfg.fallback_title)
        .join(item_index.lazy(), on="item_id")
        .sort("item_idx")
        .collect()
    )

    without_metadata = int((~items["has_metadata"]).sum())
    missing_title = int((items["has_metadata"] & items["title_fallback"]).sum())
    if without_metadata:
        log.warning("%s: %d interacted items have no metadata row; they get the fallback title", raw.name, without_metadata)
    if missing_title:
        log.warning("%s: %d items have a null or empty title; they get the fallback title", raw.name, missing_title)

    leading = [name for name in ITEM_LEADING_COLUMNS if name in items.columns]
    return items.select(leading + [name for name in items.columns if name not in leading])


def _build_users(raw: RawDataset, cfg: PreprocessConfig, user_index: pl.DataFrame) -> pl.DataFrame:
    attributes = raw.users.lazy()
    if cfg.clean_text:
        attributes = steps.clean_user_text(attributes)
    return user_index.lazy().join(attributes, on="user_id", how="left").sort("user_idx").collect()


def build_processed(raw: RawDataset, cfg: PreprocessConfig, fingerprint: str = "") -> ProcessedDataset:
    """Run every preprocessing step and the leave-one-out split on ``raw``, without caching."""
    started = time.perf_counter()
    indexed = process_events(raw.interactions, cfg, raw.name)
    items = _build_items(raw, cfg, indexed.item_index)
    users = _build_users(raw, cfg, indexed.user_index)
    stats = build_stats(raw.name, indexed.events, items, indexed.steps, indexed.filters)
    stats["fingerprint"] = fingerprint
    log.info("%s: preprocessing done in %.1f s", raw.name, time.perf_counter() - started)
    return ProcessedDataset(name=raw.name, events=indexed.events, items=items, users=users, stats=stats, fingerprint=fingerprint)


def load_or_build(
    cfg: DatasetConfig,
    files: list[Path],
    read: Callable[[], RawDataset],
    cache_dir: Path,
) -> ProcessedDataset:
    """Return the cached ProcessedDataset for these input files and config, or build and cache it with ``read``.

    A cache entry that is incomplete or fails its integrity check is logged as a warning and rebuilt.
    """
    fingerprint = dataset_fingerprint(files, cfg)
    folder = Path(cache_dir) / cfg.name / fingerprint[:16]
    cached = read_cache(folder, fingerprint)
    if cached is not None:
        log.info("%s: loaded processed dataset from %s", cfg.name, folder)
        return cached

    log.info("%s: building processed dataset into %s", cfg.name, folder)
    processed = build_processed(read(), cfg.preprocess, fingerprint)
    write_cache(folder, processed)
    return processed


def load_processed(cfg: DatasetConfig, cache_dir: Path) -> ProcessedDataset:
    """Load a dataset through its reader, preprocess and split it, caching the result under ``cache_dir``."""
    return load_or_build(cfg, resolve_files(cfg), lambda: read_dataset(cfg), cache_dir)


def load_dataset_config(name: str, conf_dir: Path = CONF_DIR) -> DatasetConfig:
    """Build the DatasetConfig of ``conf/dataset/<name>.yaml`` outside a Hydra app.

    The file's ``${paths.*}`` references resolve against the ``paths`` node of ``conf/train.yaml``, so the result
    matches what ``train.py dataset=<name>`` composes, without composing the other config groups.
    """
    path = Path(conf_dir) / "dataset" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(candidate.stem for candidate in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: dataset config not found; use one of {known}.")

    register_resolvers()
    root = OmegaConf.create({"paths": OmegaConf.load(Path(conf_dir) / "train.yaml").paths, "dataset": OmegaConf.load(path)})
    return dataset_config_from_dict(OmegaConf.to_container(root.dataset, resolve=True))
