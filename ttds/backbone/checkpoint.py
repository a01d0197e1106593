"""Save and load LoRA adapters with their ID-token rows as safetensors + JSON, checked against the ID table hash.

A checkpoint is a folder:
    adapter.safetensors      peft adapter weights: LoRA matrices, ID-token rows, fully trained head layers
    id_token_rows.safetensors  the effective input-embedding rows the adapter trains (ID tokens, EOS), checked on load
    model.safetensors        every weight, only when ``backbone.lora.train_base`` trains the base model too
    adapter_meta.json        format, ID tokens and their ids, backbone config and identity, table hash, file checksums
Nothing is pickled. The folder is written under a temporary name next to the target and renamed into place, so a
reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from ttds.backbone.config import BackboneConfig, backbone_config_from_dict
from ttds.backbone.lm import load_backbone
from ttds.backbone.lora import apply_lora, trainable_row_ids
from ttds.backbone.tokens import add_id_tokens
from ttds.embeddings.cache import file_sha256

log = logging.getLogger(__name__)

FORMAT = "ttds-lm-adapter"
FORMAT_VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
ROWS_FILE = "id_token_rows.safetensors"
META_FILE = "adapter_meta.json"
FULL_FILE = "model.safetensors"
FINGERPRINT_ROWS = 256  # embedding rows sampled for the backbone fingerprint


@dataclass
class LoadedAdapter:
    """A backbone rebuilt from a checkpoint, with its adapter loaded and in eval mode."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    id_token_ids: list[int]
    meta: dict[str, Any]


def save_adapter_checkpoint(
    path: str | Path,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    id_tokens: list[str],
    backbone: BackboneConfig,
    table_hash: str,
) -> Path:
    """Write the adapter of ``model`` and the metadata needed to rebuild it into folder ``path``, replacing it atomically."""
    path = Path(path)
    if not table_hash:
        raise ValueError("table_hash is empty; pass the content hash of the ID table the adapter was trained with.")
    id_token_ids = tokenizer.convert_tokens_to_ids(list(id_tokens))
    row_ids = trainable_row_ids(tokenizer, backbone.lora, id_token_ids)

    # save_embedding_layers=False keeps the full vocabulary x hidden matrices out: the ID-token rows are in the
    # trainable-token tensors already. Clones drop shared storage (tied rows), which safetensors rejects.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in _adapter_state(model).items()}
    rows = {"input_embedding": _input_rows(model, row_ids).to("cpu").contiguous()}

    stage = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    save_file(tensors, stage / ADAPTER_FILE, metadata={"format": FORMAT})
    save_file(rows, stage / ROWS_FILE, metadata={"format": FORMAT})
    files = [ADAPTER_FILE, ROWS_FILE]
    if backbone.lora.train_base:
        # Clone every tensor: a tied embedding and head share storage, and safetensors rejects shared tensors.
        full = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
        save_file(full, stage / FULL_FILE, metadata={"format": FORMAT})
        files.append(FULL_FILE)

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "table_hash": table_hash,
        "id_tokens": list(id_tokens),
        "id_token_ids": id_token_ids,
        "backbone": backbone.to_dict(),
        "trainable_row_ids": row_ids,
        "identity": backbone_identity(model, tokenizer, row_ids),
        "sha256": {name: file_sha256(stage / name) for name in files},
    }
    (stage / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    _replace_folder(stage, path)
    log.info(
        "saved adapter checkpoint %s: %d tensors, %d ID tokens, table hash %s", path, len(tensors), len(id_tokens), table_hash
    )
    return path


def load_adapter_checkpoint(
    path: str | Path,
    expected_table_hash: str,
    device: str | torch.device | None = None,
    backbone_path: str | None = None,
) -> LoadedAdapter:
    """Rebuild the backbone a checkpoint was trained on, add its ID tokens, and load its adapter.

    ``backbone_path`` replaces the stored model folder for kind=local-hf (a moved folder); the weights must still match
    the stored fingerprint. Raises ValueError on a table hash mismatch, a changed backbone, or missing/unexpected keys.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    if meta["table_hash"] != expected_table_hash:
        raise ValueError(
            f"checkpoint {path} was trained on ID table hash {meta['table_hash']}, but the expected table hash is "
            f"{expected_table_hash}; load the ID table this checkpoint was trained with, or train a new adapter on the current table."
        )
    for name, digest in meta["sha256"].items():
        if file_sha256(path / name) != digest:
            raise ValueError(
                f"{path / name} does not match the checksum in {META_FILE}; the checkpoint is corrupt or was edited. Save it again."
            )

    values = dict(meta["backbone"])
    if backbone_path is not None:
        values["path"] = backbone_path
    cfg = backbone_config_from_dict(values)
    model, tokenizer = load_backbone(cfg, device)
    id_token_ids = add_id_tokens(model, tokenizer, meta["id_tokens"], seed=cfg.seed)
    if id_token_ids != meta["id_token_ids"]:
        raise ValueError(
            f"the ID tokens got ids {id_token_ids[:5]}... in the rebuilt tokenizer but {meta['id_token_ids'][:5]}... when saved; "
            f"the tokenizer of {cfg.path or cfg.kind} changed since {path} was written."
        )
    peft_model = apply_lora(model, tokenizer, cfg.lora, id_token_ids)
    row_ids = trainable_row_ids(tokenizer, cfg.lora, id_token_ids)

    identity = backbone_identity(peft_model, tokenizer, row_ids)
    # With train_base every weight comes from the checkpoint, so the rebuilt weights need not match, only their shapes.
    _check_identity(path, meta["identity"], identity, compare_weights=not cfg.lora.train_base)

    tensors = load_file(path / ADAPTER_FILE)
    _check_keys(path / ADAPTER_FILE, tensors, _adapter_state(peft_model))
    result = set_peft_model_state_dict(peft_model, tensors)
    unexpected = [key for key in result.unexpected_keys if key]
    if unexpected:
        raise ValueError(
            f"{path / ADAPTER_FILE}: peft did not place keys {unexpected[:10]}; the adapter layout differs from the rebuilt model."
        )
    if cfg.lora.train_base:
        _load_full_weights(path, peft_model)
    peft_model.eval()

    stored_rows = load_file(path / ROWS_FILE)["input_embedding"]
    rows = _input_rows(peft_model, row_ids)
    if rows.shape != stored_rows.shape or not torch.equal(rows.cpu(), stored_rows.to(rows.dtype)):
        raise ValueError(
            f"{path}: the trained embedding rows after loading differ from the saved rows; the adapter did not restore them."
        )

    log.info(
        "loaded adapter checkpoint %s onto %s (%d ID tokens, table hash %s)",
        path,
        cfg.path or cfg.kind,
        len(id_token_ids),
        expected_table_hash,
    )
    return LoadedAdapter(model=peft_model, tokenizer=tokenizer, id_token_ids=id_token_ids, meta=meta)


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Read and validate ``adapter_meta.json`` of a checkpoint folder."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} not found; {path} is not an adapter checkpoint written by save_adapter_checkpoint.")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format {meta.get('format')!r} version {meta.get('format_version')!r}; "
            f"this code reads {FORMAT!r} version {FORMAT_VERSION}."
        )
    required = ("table_hash", "id_tokens", "id_token_ids", "backbone", "identity", "sha256")
    missing = [key for key in required if key not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks fields {missing}; save the checkpoint again.")
    return meta


def backbone_identity(model: PeftModel, tokenizer: PreTrainedTokenizerBase, trained_rows: list[int]) -> dict[str, Any]:
    """Describe the base model: architecture, vocabulary size and a fingerprint of its embedding rows.

    The fingerprint hashes a sample of the rows that the adapter does not train, so it detects a different checkpoint
    or scratch seed. Rows are rounded to bfloat16 first, so a float32 and a bfloat16 load of the same weights agree.
    """
    config = model.get_base_model().config
    embedding = model.get_input_embeddings()
    id_set = set(trained_rows)
    candidates = torch.linspace(0, len(tokenizer) - 1, FINGERPRINT_ROWS * 2).long().unique().tolist()
    sample = [i for i in candidates if i not in id_set][:FINGERPRINT_ROWS]
    device = next(model.parameters()).device
    with torch.no_grad():
        rows = embedding(torch.tensor(sample, device=device)).to(torch.bfloat16).float().cpu()  # (FINGERPRINT_ROWS, D)
    return {
        "model_type": config.model_type,
        "name_or_path": str(getattr(config, "_name_or_path", "")),
        "hidden_size": int(config.hidden_size),
        "vocab_size": len(tokenizer),
        "fingerprint": hashlib.sha256(rows.numpy().tobytes()).hexdigest(),
    }


def _load_full_weights(path: Path, model: PeftModel) -> None:
    """Load every weight of a train_base checkpoint, raising ValueError on a missing, unexpected or misshaped key."""
    tensors = load_file(path / FULL_FILE)
    _check_keys(path / FULL_FILE, tensors, model.state_dict())
    model.load_state_dict(tensors, strict=True)


def _check_identity(path: Path, stored: dict[str, Any], current: dict[str, Any], compare_weights: bool = True) -> None:
    keys = ["model_type", "hidden_size", "vocab_size"]
    if compare_weights:
        keys.append("fingerprint")
    for key in keys:
        if stored.get(key) != current[key]:
            raise ValueError(
                f"{path} was trained on a different backbone: {key} is {stored.get(key)!r} in the checkpoint but "
                f"{current[key]!r} for the loaded model; load the backbone it was trained on (backbone config in {META_FILE})."
            )


def _check_keys(file: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit the rebuilt model: missing keys {missing[:10]} ({len(missing)} in all), "
            f"unexpected keys {unexpected[:10]} ({len(unexpected)} in all); the LoRA settings or the backbone changed since it was saved."
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{file}: {key} has shape {tuple(value.shape)} but the rebuilt model expects {tuple(expected[key].shape)}."
            )


def _adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model, save_embedding_layers=False)


def _input_rows(model: PeftModel, ids: list[int]) -> torch.Tensor:
    """Return the ID-token rows the model actually embeds with (n_tokens, D), after any trainable-token override."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.get_input_embeddings()(torch.tensor(ids, device=device)).detach()


def _replace_folder(stage: Path, target: Path) -> None:
    """Move the finished ``stage`` folder to ``target``. An existing target is renamed aside first, then removed.

    A crash between the two renames leaves the previous checkpoint under ``.<name>.old-<pid>`` next to ``target``.
    """
    if not target.exists():
        os.replace(stage, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.replace(target, old)
    os.replace(stage, target)
    shutil.rmtree(old)
