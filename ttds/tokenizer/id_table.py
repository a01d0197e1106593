"""SemanticIdTable: the frozen map between entities and their semantic ID tokens.

An entity's ID is its L quantizer codes plus, when the table adds suffixes, a collision suffix.
Entities that share all L codes are ordered by their stable string key, and the suffix is the
rank in that order (0, 1, 2, ...). Level l's code c is the token ``<{prefix}{letter_l}_{c}>`` with
letters a, b, c, ... and the suffix uses the next letter: item (12, 24, 52, 0) is
``<a_12><b_24><c_52><d_0>``, user (3, 1, 7) with prefix "u" is ``<ua_3><ub_1><uc_7>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import safetensors.numpy

log = logging.getLogger(__name__)

IDS_FILE = "ids.safetensors"
KEYS_FILE = "keys.parquet"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


def _collision_ranks(codes: np.ndarray, keys: np.ndarray, is_new: np.ndarray | None = None) -> np.ndarray:
    """Rank of each row (N,) inside its group of identical code rows, ordered by (is_new, key).

    Vectorised: one lexsort, then each row's distance from the start of its run of equal codes.
    """
    n = codes.shape[0]
    sort_keys: list[np.ndarray] = [keys]
    if is_new is not None:
        sort_keys.append(is_new)
    sort_keys.extend(codes[:, level] for level in reversed(range(codes.shape[1])))  # lexsort's last key is the primary one
    order = np.lexsort(sort_keys)

    sorted_codes = codes[order]
    starts_group = np.ones(n, dtype=bool)
    starts_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(axis=1)
    positions = np.arange(n)
    group_start = np.maximum.accumulate(np.where(starts_group, positions, 0))

    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = positions - group_start
    return ranks


def _content_hash(ids: np.ndarray, keys: Sequence[str]) -> str:
    """sha256 over the ID matrix (little-endian int64, row-major, with its shape) and the keys as JSON."""
    digest = hashlib.sha256()
    digest.update(f"{ids.shape[0]}x{ids.shape[1]}".encode())
    digest.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    digest.update(json.dumps(list(keys), ensure_ascii=False).encode())
    return digest.hexdigest()


def _write_atomically(path: Path, write: Any) -> None:
    """Call write(temp_path) on a temporary file in path's folder, then move it onto path."""
    # A plain name (not mkstemp) so the file gets the usual permissions instead of 0600.
    temp_name = str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    try:
        write(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class SemanticIdTable:
    """Semantic IDs of N entities: codes (N, L), optional collision suffixes, stable string keys."""

    def __init__(
        self,
        codes: np.ndarray | Sequence[Sequence[int]],
        keys: Sequence[str],
        codebook_size: int,
        prefix: str = "",
        add_suffix: bool = True,
        max_suffix: int | None = None,
    ):
        codes, keys_array = self._validate(codes, keys, codebook_size)
        suffix = None
        n_suffix = 0
        if add_suffix:
            suffix = _collision_ranks(codes, keys_array)
            n_suffix = int(suffix.max()) + 1
            if max_suffix is not None and n_suffix > max_suffix:
                raise ValueError(
                    f"{n_suffix} entities share one code tuple but max_suffix={max_suffix}; raise max_suffix, "
                    "or add levels or codes so fewer entities collide."
                )
        elif max_suffix is not None:
            raise ValueError(f"max_suffix={max_suffix} needs add_suffix=True; drop max_suffix for a table without suffixes.")

        self._init_state(codes, suffix, keys_array, codebook_size, prefix, max_suffix if max_suffix is not None else n_suffix, max_suffix)
        report = self.collision_report()
        log.debug(  # stage 1 rebuilds the tables at every ID update, and the stages report collisions in their summaries
            "built ID table: %d entities, %d levels of %d codes, collision rate %.4f before suffix, %.4f after",
            len(self),
            self.levels,
            codebook_size,
            report["collision_rate_before_suffix"],
            report["collision_rate_after_suffix"],
        )

    def _init_state(
        self,
        codes: np.ndarray,
        suffix: np.ndarray | None,
        keys: np.ndarray,
        codebook_size: int,
        prefix: str,
        n_suffix: int,
        max_suffix: int | None,
    ) -> None:
        if codes.shape[1] + (suffix is not None) > len(string.ascii_lowercase):
            raise ValueError(f"{codes.shape[1]} levels plus the suffix need more than {len(string.ascii_lowercase)} token letters; use fewer levels.")
        self._codes = codes  # (N, L) int64
        self._suffix = suffix  # (N,) int64, or None without suffixes
        self._keys = keys  # (N,) str
        self.codebook_size = codebook_size
        self.prefix = prefix
        self.n_suffix = n_suffix
        self.max_suffix = max_suffix
        self._lookup: dict[tuple[int, ...], int] | None = None

    @staticmethod
    def _validate(codes: Any, keys: Sequence[str], codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes must be a non-empty (N, L) matrix, got shape {codes.shape}.")
        if not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(f"codes must be integers, got dtype {codes.dtype}.")
        codes = codes.astype(np.int64)
        if codebook_size < 1:
            raise ValueError(f"codebook_size={codebook_size} must be at least 1.")
        if codes.min() < 0 or codes.max() >= codebook_size:
            raise ValueError(f"codes must lie in 0..{codebook_size - 1} for codebook_size={codebook_size}, got {codes.min()}..{codes.max()}.")

        keys_array = np.asarray([str(key) for key in keys], dtype=str)
        if keys_array.shape != (codes.shape[0],):
            raise ValueError(f"got {keys_array.shape[0]} keys for {codes.shape[0]} code rows; pass one key per entity.")
        unique_keys, counts = np.unique(keys_array, return_counts=True)
        if unique_keys.shape[0] != keys_array.shape[0]:
            raise ValueError(f"keys must be unique; {str(unique_keys[counts > 1][0])!r} appears {counts.max()} times.")
        return codes, keys_array

    # --- sizes and arrays ---

    def __len__(self) -> int:
        return self._codes.shape[0]

    @property
    def levels(self) -> int:
        return self._codes.shape[1]

    @property
    def has_suffix(self) -> bool:
        return self._suffix is not None

    @property
    def id_length(self) -> int:
        """Tokens per full ID: the levels plus one for the suffix."""
        return self.levels + int(self.has_suffix)

    @property
    def ids(self) -> np.ndarray:
        """Full IDs (N, id_length): codes followed by the suffix column when there is one."""
        if self._suffix is None:
            return self._codes.copy()
        return np.column_stack([self._codes, self._suffix])

    @property
    def codes(self) -> np.ndarray:
        """Quantizer codes (N, L) without the suffix."""
        return self._codes.copy()

    @property
    def keys(self) -> list[str]:
        return self._keys.tolist()

    @property
    def content_hash(self) -> str:
        return _content_hash(self.ids, self.keys)

    # --- lookups ---

    def codes_of(self, index: int) -> tuple[int, ...]:
        """Full ID of entity ``index``: its L codes, then its suffix when the table has suffixes."""
        if not 0 <= index < len(self):
            raise IndexError(f"entity index {index} is out of range for a table of {len(self)} entities.")
        return tuple(int(value) for value in self.ids[index])

    def entity_of(self, full_id: Sequence[int]) -> int | None:
        """Entity index of a full ID, or None when no entity has it.

        Raises ValueError for an ID with the wrong number of parts. In a table without suffixes, an ID
        shared by several entities returns the one whose key sorts first.
        """
        full_id = tuple(int(part) for part in full_id)
        if len(full_id) != self.id_length:
            raise ValueError(
                f"ID {full_id} has {len(full_id)} parts, but IDs in this table have {self.id_length} "
                f"({self.levels} levels{' and a suffix' if self.has_suffix else ''})."
            )
        if self._lookup is None:
            # Reverse key order, so the first key of a shared ID is written last and wins.
            order = np.argsort(self._keys, kind="stable")[::-1]
            ids = self.ids
            self._lookup = {tuple(ids[index].tolist()): int(index) for index in order}
        return self._lookup.get(full_id)

    def _token(self, position: int, value: int) -> str:
        return f"<{self.prefix}{string.ascii_lowercase[position]}_{value}>"

    def tokens_of(self, index: int) -> list[str]:
        """List the tokens of entity ``index``, one per ID part."""
        return [self._token(position, value) for position, value in enumerate(self.codes_of(index))]

    def vocabulary(self) -> list[str]:
        """List every token this table can emit: K per level, then the n_suffix suffix tokens."""
        tokens = [self._token(level, code) for level in range(self.levels) for code in range(self.codebook_size)]
        if self.has_suffix:
            tokens += [self._token(self.levels, value) for value in range(self.n_suffix)]
        return tokens

    def token_sequences(self) -> list[list[str]]:
        """List the token sequence of every entity, in entity order."""
        ids = self.ids
        columns = []
        for position in range(self.id_length):
            size = self.n_suffix if position == self.levels else self.codebook_size
            names = np.array([self._token(position, value) for value in range(size)], dtype=object)
            columns.append(names[ids[:, position]])
        return np.column_stack(columns).tolist()

    def collision_report(self) -> dict[str, float]:
        """Entity count, distinct code tuples, largest collision group and collision rates before and after the suffix.

        A collision rate is the fraction of entities whose ID repeats one of an earlier entity.
        """
        n = len(self)
        groups, sizes = np.unique(self._codes, axis=0, return_counts=True)
        distinct_full = np.unique(self.ids, axis=0).shape[0]
        return {
            "n_entities": float(n),
            "n_distinct_codes": float(groups.shape[0]),
            "max_group_size": float(sizes.max()),
            "collision_rate_before_suffix": 1.0 - groups.shape[0] / n,
            "collision_rate_after_suffix": 1.0 - distinct_full / n,
        }

    # --- growth ---

    def extend(self, new_codes: np.ndarray | Sequence[Sequence[int]], new_keys: Sequence[str]) -> SemanticIdTable:
        """Return a table with new entities appended after the existing ones, whose IDs stay unchanged.

        A new entity that joins an existing collision group gets the group's next free suffix (new
        entities of one group are ordered by key). Raises ValueError when that exceeds max_suffix;
        without a fixed max_suffix the suffix vocabulary grows and a warning is logged.
        """
        new_codes, new_keys_array = self._validate(new_codes, new_keys, self.codebook_size)
        if new_codes.shape[1] != self.levels:
            raise ValueError(f"new codes have {new_codes.shape[1]} levels, but this table has {self.levels}.")
        clashes = np.intersect1d(self._keys, new_keys_array)
        if clashes.size:
            raise ValueError(f"key {str(clashes[0])!r} is already in the table; extend only with new keys.")

        codes = np.concatenate([self._codes, new_codes])
        keys = np.concatenate([self._keys, new_keys_array])
        suffix = None
        n_suffix = self.n_suffix
        if self._suffix is not None:
            is_new = np.concatenate([np.zeros(len(self), dtype=np.int8), np.ones(new_codes.shape[0], dtype=np.int8)])
            # Existing entities sort first in each group, so a new one's rank counts them all.
            new_suffix = _collision_ranks(codes, keys, is_new)[len(self) :]
            needed = int(new_suffix.max()) + 1
            if needed > self.n_suffix:
                if self.max_suffix is not None:
                    raise ValueError(
                        f"suffix space exhausted: a collision group needs suffix {needed - 1}, but max_suffix={self.max_suffix} "
                        f"allows 0..{self.max_suffix - 1}; rebuild the table with a larger max_suffix."
                    )
                log.warning("extending the ID table grows the suffix vocabulary from %d to %d tokens", self.n_suffix, needed)
                n_suffix = needed
            suffix = np.concatenate([self._suffix, new_suffix])

        table = SemanticIdTable.__new__(SemanticIdTable)
        table._init_state(codes, suffix, keys, self.codebook_size, self.prefix, n_suffix, self.max_suffix)
        return table

    # --- persistence ---

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "prefix": self.prefix,
            "add_suffix": self.has_suffix,
            "n_suffix": self.n_suffix,
            "max_suffix": self.max_suffix,
            "n_entities": len(self),
            "content_hash": self.content_hash,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ids.safetensors, keys.parquet and metadata.json (written last) into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        _write_atomically(directory / IDS_FILE, lambda path: safetensors.numpy.save_file({"ids": ids}, path))
        keys_frame = pl.DataFrame({"key": self.keys}, schema={"key": pl.Utf8})
        _write_atomically(directory / KEYS_FILE, lambda path: keys_frame.write_parquet(path))
        text = json.dumps(self.metadata(), indent=2, sort_keys=True) + "\n"
        _write_atomically(directory / METADATA_FILE, lambda path: Path(path).write_text(text, encoding="utf-8"))
        log.info("saved ID table of %d entities to %s (hash %s)", len(self), directory, self.content_hash[:12])
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SemanticIdTable:
        """Read a table written by ``save`` and check its content hash; raises ValueError on a mismatch."""
        directory = Path(directory)
        # metadata.json is written last, so its absence also flags an interrupted save.
        for name in (METADATA_FILE, IDS_FILE, KEYS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"ID table file {directory / name} is missing; write the table with SemanticIdTable.save.")
        metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / METADATA_FILE}: format_version {metadata.get('format_version')!r} is not {FORMAT_VERSION}; rebuild the table.")
        ids = safetensors.numpy.load_file(str(directory / IDS_FILE))["ids"].astype(np.int64)
        keys = pl.read_parquet(directory / KEYS_FILE)["key"].to_list()

        found = _content_hash(ids, keys)
        if found != metadata["content_hash"]:
            raise ValueError(
                f"ID table in {directory} has content hash {found[:12]}..., but metadata.json records "
                f"{metadata['content_hash'][:12]}...; the files were changed or mixed, so rebuild or restore the table."
            )

        levels = metadata["levels"]
        codes, keys_array = cls._validate(ids[:, :levels], keys, metadata["codebook_size"])
        suffix = ids[:, levels].copy() if metadata["add_suffix"] else None
        table = cls.__new__(cls)
        table._init_state(codes, suffix, keys_array, metadata["codebook_size"], metadata["prefix"], metadata["n_suffix"], metadata["max_suffix"])
        return table
