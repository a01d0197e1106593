"""Lightning checkpoints as safetensors files: tensors in the body, everything else as JSON in the header.

Lightning's default checkpoint is a pickle, and loading a pickle can run code. Here the checkpoint
dict (model, optimizer, scheduler, loops, callbacks) is split into its tensors and a JSON tree that
records where each tensor goes, including dict keys of other types than str (optimizer state is
keyed by int) and tuples. Loading rebuilds the dict from the two parts and never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from safetensors.torch import load_file, safe_open, save_file

STRUCTURE_KEY = "ttds_structure"


def flatten(obj: Any, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> Any:
    """Return a JSON-able tree for ``obj``; tensors move into ``tensors`` under generated keys."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[flatten(k, tensors, where), flatten(v, tensors, f"{where}[{k!r}]")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(
        f"{where} contains a {type(obj).__name__}, which a safetensors checkpoint cannot store; "
        "keep only tensors, numbers, strings, lists and dicts in checkpoint state."
    )


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the object that ``flatten`` turned into ``tree``."""
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
        if "__dict__" in tree:
            return {_hashable(unflatten(k, tensors)): unflatten(v, tensors) for k, v in tree["__dict__"]}
        raise ValueError(f"unknown node {sorted(tree)} in a ttds checkpoint structure; the file is corrupt or not a ttds checkpoint.")
    return tree


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def save_tree(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to ``path`` as one safetensors file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(obj, tensors)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={STRUCTURE_KEY: json.dumps(structure)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tree(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Read a file written by ``save_tree``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass the path of an existing .ckpt file.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if STRUCTURE_KEY not in metadata:
        raise ValueError(f"{path} is not a ttds checkpoint (no '{STRUCTURE_KEY}' header); it may be a pickle, which ttds does not load.")
    tensors = load_file(str(path), device=str(device))
    return unflatten(json.loads(metadata[STRUCTURE_KEY]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO plugin that writes and reads ``save_tree`` files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_tree(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        return load_tree(path, device)

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)
