import json
import logging
import shutil

import pytest
from test_preprocess import make_raw

from ttds.data.cache import MANIFEST, dataset_fingerprint, file_sha256
from ttds.data.config import DatasetConfig, PreprocessConfig
from ttds.data.pipeline import build_processed, load_processed
from ttds.data.stats import format_stats

BUILDING = "building processed dataset into"
LOADED = "loaded processed dataset from"


def write_table_dataset(folder, extra_rows=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id\titem_id\ttimestamp"]
    lines += [f"u{user}\ti{(user + step) % 7}\t{step}" for user in range(6) for step in range(5)]
    lines += list(extra_rows)
    (folder / "interactions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = ["item_id\ttitle"] + [f"i{item}\tItem &amp;amp; {item}" for item in range(6)]
    (folder / "items.tsv").write_text("\n".join(items) + "\n", encoding="utf-8")
    return folder


def table_config(folder, kcore=2):
    return DatasetConfig(
        name="tiny_table",
        format="table",
        path=str(folder),
        files={"interactions": "interactions.tsv", "items": "items.tsv"},
        preprocess=PreprocessConfig(kcore=kcore),
    )


def entry_folder(cache_dir, cfg):
    from ttds.data.readers import resolve_files

    return cache_dir / cfg.name / dataset_fingerprint(resolve_files(cfg), cfg)[:16]


def load_logged(cfg, cache_dir, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ttds.data"):
        return load_processed(cfg, cache_dir)


def assert_same_dataset(left, right):
    assert left.events.equals(right.events)
    assert left.items.equals(right.items)
    assert left.users.equals(right.users)
    assert left.stats == right.stats


def test_second_load_reads_cache(tmp_path, caplog):
    cfg = table_config(write_table_dataset(tmp_path / "data"))
    first = load_logged(cfg, tmp_path / "cache", caplog)
    assert BUILDING in caplog.text
    second = load_logged(cfg, tmp_path / "cache", caplog)
    assert LOADED in caplog.text
    assert BUILDING not in caplog.text
    assert_same_dataset(first, second)
    assert second.fingerprint == first.fingerprint


def test_changed_input_rebuilds(tmp_path, caplog):
    data = write_table_dataset(tmp_path / "data")
    cfg = table_config(data)
    first = load_logged(cfg, tmp_path / "cache", caplog)

    write_table_dataset(data, extra_rows=["u0\ti5\t99"])
    second = load_logged(cfg, tmp_path / "cache", caplog)
    assert BUILDING in caplog.text
    assert second.fingerprint != first.fingerprint
    assert second.events.height == first.events.height + 1


def test_changed_config_rebuilds(tmp_path, caplog):
    data = write_table_dataset(tmp_path / "data")
    first = load_logged(table_config(data, kcore=2), tmp_path / "cache", caplog)
    second = load_logged(table_config(data, kcore=0), tmp_path / "cache", caplog)
    assert BUILDING in caplog.text
    assert second.fingerprint != first.fingerprint
    assert second.stats["kcore"]["k"] == 0


def test_moved_data_folder_keeps_fingerprint(tmp_path):
    data = write_table_dataset(tmp_path / "data")
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    original_cfg, moved_cfg = table_config(data), table_config(moved)
    original = dataset_fingerprint([data / "interactions.tsv", data / "items.tsv"], original_cfg)
    copied = dataset_fingerprint([moved / "interactions.tsv", moved / "items.tsv"], moved_cfg)
    assert original == copied


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def replace_with_garbage_and_update_manifest(path):
    # The manifest agrees with the file, so only reading the parquet can catch it.
    path.write_bytes(b"this is not a parquet file")
    manifest_path = path.parent / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    manifest_path.write_text(json.dumps(manifest))


CORRUPTIONS = {
    "missing_file": ("items.parquet", lambda path: path.unlink()),
    "truncated_file": ("events.parquet", truncate),
    "hash_mismatch": ("users.parquet", flip_last_byte),
    "unreadable_parquet": ("events.parquet", replace_with_garbage_and_update_manifest),
    "missing_manifest": (MANIFEST, lambda path: path.unlink()),
    "broken_manifest": (MANIFEST, truncate),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, caplog, corruption):
    cfg = table_config(write_table_dataset(tmp_path / "data"))
    cache_dir = tmp_path / "cache"
    original = load_logged(cfg, cache_dir, caplog)

    name, corrupt = CORRUPTIONS[corruption]
    corrupt(entry_folder(cache_dir, cfg) / name)

    rebuilt = load_logged(cfg, cache_dir, caplog)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING and record.name == "ttds.data.cache"]
    assert len(warnings) == 1
    assert BUILDING in caplog.text
    assert_same_dataset(original, rebuilt)

    load_logged(cfg, cache_dir, caplog)
    assert LOADED in caplog.text


def test_stats_json_equals_returned_stats(tmp_path, caplog):
    cfg = table_config(write_table_dataset(tmp_path / "data"))
    ds = load_logged(cfg, tmp_path / "cache", caplog)
    saved = json.loads((entry_folder(tmp_path / "cache", cfg) / "stats.json").read_text())
    assert saved == ds.stats
    assert saved["fingerprint"] == ds.fingerprint


def test_stats_track_every_step():
    rows = [("u1", "a", 1), ("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u2", "a", 1), ("u2", "b", 1), ("u3", "c", 1)]
    ds = build_processed(make_raw(rows), PreprocessConfig(kcore=2, duplicates="first"))
    stats = ds.stats
    assert [step["step"] for step in stats["steps"]] == ["raw", "rating_filter", "exact_duplicates", "duplicate_policy", "kcore"]
    assert [step["interactions"] for step in stats["steps"]] == [7, 7, 6, 5, 4]
    assert stats["exact_duplicates_removed"] == 1
    assert stats["duplicates_removed"] == 1
    assert stats["kcore"]["rounds"] == 1
    assert stats["users"] == 2
    assert stats["items"] == 2
    assert stats["interactions"] == 4
    assert stats["density"] == 1.0
    assert stats["sequence_length"] == {"min": 2, "mean": 2.0, "median": 2.0, "max": 2}
    assert stats["timestamp_ties"]["events_tied_with_previous"] == 1
    assert stats["timestamp_ties"]["users_with_tied_test_item"] == 1


def test_format_stats_shows_counts_and_buckets():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1)]
    text = format_stats(build_processed(make_raw(rows), PreprocessConfig(kcore=0)).stats)
    assert "dataset tiny: 2 users, 3 items, 4 interactions" in text
    assert "exact duplicates removed: 0" in text
    assert "validation and test examples, no training pair" in text
