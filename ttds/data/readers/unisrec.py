"""UniSRec processed folder: ``X.text``, ``X.item2index``, ``X.user2index``, ``X.{train,valid,test}.inter`` and an optional ``X.seq.tsv``.

Roles under ``dataset.files``: text, item2index, user2index, train, valid, test, and seq (optional). The ``.inter``
rows hold a user index, a history of item indices (oldest first, truncated to the last 50 items) and a target.
With ``seq`` the full sequences come from that file. Without it they are rebuilt by chaining the rows: each row's
history plus its target is the next row's history. Ids are mapped back to the ASIN and reviewerID strings. The
single ``text`` column (already "title. categories. brand.") becomes the title. The files have no times, so
``timestamp`` is the event's 0-based position in its user's sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from ttds.data.config import DatasetConfig
from ttds.data.readers._io import (
    dataset_file,
    merged_options,
    read_delimited,
    reject_duplicate_ids,
    reject_empty_ids,
    require_columns,
    sequence_interactions,
)
from ttds.data.readers.recbole import read_atomic
from ttds.data.schema import DataFormatError, RawDataset, conform_items, empty_users

REQUIRED_ROLES = ("text", "item2index", "user2index", "train", "valid", "test")
SPLIT_ROLES = ("train", "valid", "test")


def options_of(cfg: DatasetConfig) -> dict[str, Any]:
    return merged_options(cfg, {})  # the format has no options, so any key is rejected


def input_files(cfg: DatasetConfig) -> dict[str, Path]:
    files = {role: dataset_file(cfg, role) for role in REQUIRED_ROLES}
    if "seq" in cfg.files:
        files["seq"] = dataset_file(cfg, "seq")
    return files


def read(cfg: DatasetConfig) -> RawDataset:
    options_of(cfg)
    files = input_files(cfg)
    item_ids = _read_index(files["item2index"])
    user_ids = _read_index(files["user2index"])

    if "seq" in files:
        sequences = _read_seq(files["seq"])
    else:
        sequences = rebuild_sequences({role: files[role] for role in SPLIT_ROLES})

    users = [_lookup(user_ids, user, files["user2index"], "user") for user in sequences]
    item_lists = [[_lookup(item_ids, item, files["item2index"], "item") for item in items] for items in sequences.values()]
    interactions = sequence_interactions(users, item_lists)
    items = _read_text(files["text"])
    return RawDataset(cfg.name, interactions, items, empty_users(), source_files=list(files.values()))


def rebuild_sequences(paths: dict[str, Path]) -> dict[str, list[str]]:
    """Rebuild each user's full item sequence (oldest first) from the leave-one-out ``.inter`` rows.

    Row k of a user has history ``s[max(0, k - W):k]`` and target ``s[k]`` for k = 1..n-1, where W is the
    history limit (the longest history in the files). Rows shorter than W give the prefix directly; the rest is
    found by repeatedly looking up the row whose history equals the last W items.
    """
    rows: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for path in paths.values():
        frame = read_atomic(path)
        require_columns(path, frame, ["user_id", "item_id_list", "item_id"], "use UniSRec's header 'user_id:token item_id_list:token_seq item_id:token'")
        reject_empty_ids(path, frame, ["user_id", "item_id"])
        for user, history, target in frame.select("user_id", "item_id_list", "item_id").iter_rows():
            rows.setdefault(user, []).append((tuple(history.split()), target))

    window = max(len(history) for user_rows in rows.values() for history, _ in user_rows)
    return {user: _chain(user, user_rows, window, paths["train"]) for user, user_rows in rows.items()}


def _chain(user: str, rows: list[tuple[tuple[str, ...], str]], window: int, source: Path) -> list[str]:
    longest = max(rows, key=lambda row: len(row[0]))
    if len(longest[0]) < window:
        return [*longest[0], longest[1]]

    # Truncation may have happened: start from the row whose history is the first W-1 items, then chain.
    start = next((row for row in rows if len(row[0]) == window - 1), None)
    if start is None:
        raise DataFormatError(source, f"user {user} has a history of {window} items but no row with {window - 1}", "use the unmodified UniSRec .inter files")
    sequence = [*start[0], start[1]]
    next_rows = {}
    for history, target in rows:
        if len(history) == window:
            next_rows.setdefault(history, []).append(target)
    while (targets := next_rows.get(tuple(sequence[-window:]))):
        sequence.append(targets.pop(0))

    if len(sequence) != len(rows) + 1:
        raise DataFormatError(
            source, f"the rows of user {user} do not chain into one sequence ({len(sequence)} items rebuilt from {len(rows)} rows)", "use the unmodified UniSRec .inter files, or provide dataset.files.seq"
        )
    return sequence


def _read_index(path: Path) -> dict[str, str]:
    """Map each index (second column) to its original id (first column)."""
    frame = read_delimited(path, "\t", header=["original_id", "index"], quoting=False)
    reject_empty_ids(path, frame, ["original_id", "index"])
    reject_duplicate_ids(path, frame, "index")
    reject_duplicate_ids(path, frame, "original_id")
    return dict(zip(frame["index"].str.strip_chars().to_list(), frame["original_id"].to_list(), strict=True))


def _lookup(ids: dict[str, str], index: str, path: Path, kind: str) -> str:
    original = ids.get(index)
    if original is None:
        raise DataFormatError(path, f"{kind} index {index} used in the interactions is not listed", f"use the {kind}2index file that belongs to these .inter files")
    return original


def _read_seq(path: Path) -> dict[str, list[str]]:
    frame = read_delimited(path, "\t", quoting=False)
    require_columns(path, frame, ["user_idx", "item_idx_seq"], "use the header 'user_idx<TAB>item_idx_seq'")
    reject_empty_ids(path, frame, ["user_idx", "item_idx_seq"])
    reject_duplicate_ids(path, frame, "user_idx")
    return {user: items.split() for user, items in frame.select("user_idx", "item_idx_seq").iter_rows()}


def _read_text(path: Path) -> pl.DataFrame:
    frame = read_atomic(path)
    require_columns(path, frame, ["item_id", "text"], "use UniSRec's header 'item_id:token text:token_seq'")
    reject_empty_ids(path, frame, ["item_id"])
    reject_duplicate_ids(path, frame, "item_id")
    return conform_items(frame.select("item_id", pl.when(pl.col("text").str.strip_chars() != "").then(pl.col("text")).alias("title")))

