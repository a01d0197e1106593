"""On-disk cache of tensors: one safetensors file per key plus a JSON sidecar describing it.

The key is a sha256 over everything that determines the tensors (for text embeddings: the model identity,
pooling, max_length and the texts). Both files are written atomically, the sidecar last, so a reader sees
either a complete entry or none. A file that fails to load, or whose sidecar does not match its key, is
reported with a warning and treated as a miss, so the caller recomputes and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from ttds.embeddings.text_encoder import TextEncoder

log = logging.getLogger(__name__)

EMBEDDINGS = "embeddings"  # tensor name of a text-embedding entry


def sha256_texts(texts: Iterable[str]) -> str:
    """Hash a list of texts; each text is length-prefixed, so ["ab", "c"] and ["a", "bc"] differ."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hash a JSON-serialisable value with sorted keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def sha256_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash named tensors by name, dtype, shape and raw bytes (e.g. a module's state_dict items)."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        # A uint8 view gives the raw bytes of any dtype, bfloat16 included, which numpy cannot hold.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_atomic(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then move it over ``path``."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TensorCache:
    """Folder of cached tensor dicts, each stored as ``<key>.safetensors`` with a ``<key>.json`` sidecar."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.safetensors", self.folder / f"{key}.json"

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Return the tensors and sidecar metadata stored under ``key``, or None on a miss or a corrupt entry."""
        tensor_path, sidecar_path = self.paths(key)
        if not tensor_path.exists() or not sidecar_path.exists():
            return None

        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
            tensors = load_file(tensor_path)
        except (OSError, ValueError, SafetensorError) as error:
            warnings.warn(f"embedding cache entry {tensor_path} is unreadable ({error}); recomputing it.", stacklevel=2)
            return None

        # A corruption that keeps the file readable (same size, changed bytes) shows only in the hash.
        if not isinstance(meta, dict) or meta.get("file_sha256") != file_sha256(tensor_path):
            warnings.warn(f"embedding cache entry {tensor_path} does not match the sha256 in its sidecar; recomputing it.", stacklevel=2)
            return None

        problem = self._check(key, tensors, meta)
        if problem:
            warnings.warn(f"embedding cache entry {tensor_path} is invalid ({problem}); recomputing it.", stacklevel=2)
            return None
        log.info("embedding cache hit: %s", tensor_path)
        return tensors, meta

    def save(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
        """Store ``tensors`` (moved to CPU, made contiguous) and ``meta`` under ``key``; returns the tensor file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tensor_path, sidecar_path = self.paths(key)
        # clone(): safetensors rejects tensors that share memory, e.g. a view of a state_dict entry.
        cpu_tensors = {name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in tensors.items()}
        sidecar = {
            **meta,
            "key": key,
            "tensors": {name: {"shape": list(tensor.shape), "dtype": str(tensor.dtype)} for name, tensor in cpu_tensors.items()},
        }

        _write_atomic(tensor_path, lambda temp: save_file(cpu_tensors, temp))
        sidecar["file_sha256"] = file_sha256(tensor_path)
        text = json.dumps(sidecar, indent=2, sort_keys=True, default=str)
        _write_atomic(sidecar_path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))
        log.info("embedding cache stored %s", tensor_path)
        return tensor_path

    @staticmethod
    def _check(key: str, tensors: Mapping[str, torch.Tensor], meta: Any) -> str:
        """Describe how an entry disagrees with its sidecar; an empty string means it is consistent."""
        if not isinstance(meta, dict) or meta.get("key") != key:
            return "the sidecar belongs to another key"
        described = meta.get("tensors", {})
        if set(described) != set(tensors):
            return f"the file holds tensors {sorted(tensors)}, the sidecar lists {sorted(described)}"
        for name, tensor in tensors.items():
            if list(tensor.shape) != described[name].get("shape"):
                return f"tensor '{name}' has shape {list(tensor.shape)}, the sidecar says {described[name].get('shape')}"
        return ""


def text_embedding_key(fingerprint: Mapping[str, Any], texts_sha256: str) -> str:
    """Cache key of the embeddings of texts with hash ``texts_sha256`` under an encoder fingerprint."""
    return sha256_json({"encoder": dict(fingerprint), "texts_sha256": texts_sha256})


def cached_encode(encoder: TextEncoder, texts: Sequence[str], cache: TensorCache | str | Path | None) -> torch.Tensor:
    """Return ``encoder.encode(texts)``, read from ``cache`` when an entry for this encoder and these texts exists.

    The key covers ``encoder.fingerprint()`` (model config, weights and tokenizer hashes, pooling,
    max_length) and the sha256 of the texts, so a changed text or model is a miss. ``cache=None`` always
    encodes.
    """
    texts = list(texts)
    if cache is None:
        return encoder.encode(texts)
    cache = cache if isinstance(cache, TensorCache) else TensorCache(cache)

    fingerprint = encoder.fingerprint()
    texts_sha256 = sha256_texts(texts)
    key = text_embedding_key(fingerprint, texts_sha256)
    entry = cache.load(key)
    if entry is not None:
        tensors, _ = entry
        embeddings = tensors.get(EMBEDDINGS)
        if embeddings is not None and embeddings.shape[0] == len(texts):
            return embeddings
        warnings.warn(f"embedding cache entry {key} has no '{EMBEDDINGS}' tensor of {len(texts)} rows; recomputing it.", stacklevel=2)

    embeddings = encoder.encode(texts)
    meta = {"encoder": fingerprint, "texts_sha256": texts_sha256, "n_texts": len(texts)}
    cache.save(key, {EMBEDDINGS: embeddings}, meta)
    return embeddings
