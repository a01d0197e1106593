"""On-disk cache of processed datasets, keyed by a fingerprint of the raw files, the config and the code version.

A cache entry is a folder ``<cache_dir>/<name>/<fingerprint[:16]>/`` holding ``events.parquet``, ``items.parquet``,
``users.parquet``, ``stats.json`` and ``manifest.json``. The manifest lists each file's size and sha256 and is
written last, so a folder without a manifest is an interrupted write. Every read checks the manifest against the
files. Any mismatch raises CacheError, and the loader logs it and rebuilds the entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import polars as pl

from ttds.data.config import DatasetConfig
from ttds.data.dataset import ProcessedDataset
from ttds.data.stats import save_stats, write_json_atomic

log = logging.getLogger(__name__)

# Bump when a change to preprocessing, the split or the cached columns makes old cache entries wrong.
CODE_VERSION = "data-1"
TABLES = ("events", "items", "users")
MANIFEST = "manifest.json"
_CHUNK_BYTES = 1 << 20


class CacheError(RuntimeError):
    """A cache entry is incomplete, altered or unreadable."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_fingerprint(files: list[Path], cfg: DatasetConfig) -> str:
    """Hex sha256 over the raw files' bytes, the dataset config as JSON (path excluded) and CODE_VERSION.

    The folder ``path`` is left out, so moving the data does not invalidate the cache. File bytes are hashed in the
    order given, each preceded by its name and size, so renames and reorderings change the hash.
    """
    digest = hashlib.sha256()
    digest.update(CODE_VERSION.encode())

    settings = {key: value for key, value in dataclasses.asdict(cfg).items() if key != "path"}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())

    for path in files:
        path = Path(path)
        digest.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def _write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        frame.write_parquet(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_cache(folder: Path, dataset: ProcessedDataset) -> None:
    """Write the dataset's tables, its statistics and, last, the manifest into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)

    for table in TABLES:
        _write_parquet_atomic(getattr(dataset, table), folder / f"{table}.parquet")
    save_stats(dataset.stats, folder / "stats.json")

    names = [f"{table}.parquet" for table in TABLES] + ["stats.json"]
    entries = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in names}
    write_json_atomic(folder / MANIFEST, {"fingerprint": dataset.fingerprint, "code_version": CODE_VERSION, "files": entries})
    log.info("cached %s in %s", dataset.name, folder)


def _check_manifest(folder: Path, fingerprint: str) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheError(f"{folder / MANIFEST} is unreadable ({error})") from error

    if manifest.get("fingerprint") != fingerprint:
        raise CacheError(f"{folder / MANIFEST} has fingerprint {manifest.get('fingerprint')!r}, expected {fingerprint!r}")
    expected = {f"{table}.parquet" for table in TABLES} | {"stats.json"}
    if set(files) != expected:
        raise CacheError(f"{folder / MANIFEST} lists {sorted(files)}, expected {sorted(expected)}")

    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CacheError(f"{path} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise CacheError(f"{path} has {path.stat().st_size} bytes, expected {entry['bytes']} from the manifest")
        if file_sha256(path) != entry["sha256"]:
            raise CacheError(f"{path} does not match its sha256 in the manifest")
    return manifest


def _read_entry(folder: Path, fingerprint: str) -> ProcessedDataset:
    _check_manifest(folder, fingerprint)
    try:
        tables = {table: pl.read_parquet(folder / f"{table}.parquet") for table in TABLES}
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, pl.exceptions.PolarsError) as error:
        raise CacheError(f"{folder} has an unreadable table ({error})") from error
    return ProcessedDataset(name=stats["name"], stats=stats, fingerprint=fingerprint, **tables)


def read_cache(folder: Path, fingerprint: str) -> ProcessedDataset | None:
    """Return the cached dataset in ``folder``, or None when there is no valid entry (a broken one is logged)."""
    if not folder.exists():
        return None
    if not (folder / MANIFEST).exists():
        if any(folder.iterdir()):
            log.warning("cache entry %s has no manifest (interrupted write); rebuilding it", folder)
        return None

    try:
        return _read_entry(folder, fingerprint)
    except CacheError as error:
        log.warning("cache entry is corrupted, rebuilding it: %s", error)
        return None
