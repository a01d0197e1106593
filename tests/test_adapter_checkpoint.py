"""Adapter checkpoints: reload in a fresh process with identical logits, and every rejection path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_backbone import save_tiny_folder, train_one_step

from ttds.backbone import (
    BackboneConfig,
    GenerationCollator,
    add_id_tokens,
    apply_lora,
    backbone_config_from_dict,
    load_adapter_checkpoint,
    load_backbone,
    save_adapter_checkpoint,
)
from ttds.backbone.checkpoint import ADAPTER_FILE, FULL_FILE, META_FILE, ROWS_FILE
from ttds.embeddings.cache import file_sha256

SIX_TOKENS = ["<a_3>", "<a_12>", "<b_1>", "<b_4>", "<c_7>", "<ua_3>"]
TABLE_HASH = "table-0123abcd"
PROMPTS = ["the user bought <a_12><b_1> then", "which item comes next? <ua_3>"]

# Runs in a fresh interpreter: load each checkpoint and write its logits and trained rows for the parent to compare.
CHILD = """
import sys
import torch
from safetensors.torch import save_file
from ttds.backbone import GenerationCollator, load_adapter_checkpoint

out, table_hash, prompts = sys.argv[1], sys.argv[2], sys.argv[3].split("|")
tensors = {}
for index, path in enumerate(sys.argv[4:]):
    loaded = load_adapter_checkpoint(path, table_hash, device="cpu")
    batch = GenerationCollator(loaded.tokenizer, 64)(prompts)
    with torch.no_grad():
        tensors[f"logits_{index}"] = loaded.model(**batch).logits.contiguous()
        tensors[f"rows_{index}"] = loaded.model.get_input_embeddings()(torch.tensor(loaded.meta["trainable_row_ids"])).contiguous()
save_file(tensors, out)
"""


def _trained_checkpoint(folder: Path, cfg: BackboneConfig):
    model, tokenizer = load_backbone(cfg, "cpu")
    ids = add_id_tokens(model, tokenizer, SIX_TOKENS, seed=cfg.seed)
    peft_model = apply_lora(model, tokenizer, cfg.lora, ids)
    train_one_step(peft_model, tokenizer)
    peft_model.eval()
    save_adapter_checkpoint(folder, peft_model, tokenizer, SIX_TOKENS, cfg, TABLE_HASH)
    return peft_model, tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Trained checkpoints: the embedded MiniLM (tied head), a tiny local Llama (untied head), a fully trained scratch Llama."""
    root = tmp_path_factory.mktemp("adapters")
    llama_folder = save_tiny_folder(root / "tiny_llama", "llama")
    configs = {
        "minilm": backbone_config_from_dict({"kind": "embedded-minilm", "lora": {"rank": 4}}),
        "llama": backbone_config_from_dict(
            {"kind": "local-hf", "path": str(llama_folder), "max_length": 128, "lora": {"rank": 4}}
        ),
        "scratch": backbone_config_from_dict(
            {
                "kind": "scratch-llama",
                "max_length": 128,
                "lora": {"rank": 4, "train_base": True},
                "scratch": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128},
            }
        ),
    }
    return {name: (root / name, *_trained_checkpoint(root / name, cfg)) for name, cfg in configs.items()}


def _copy(checkpoints, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoints[name][0], tmp_path / name))


def _rewrite_adapter(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the adapter file and update its checksum, so only the key check can catch the change."""
    save_file(tensors, folder / ADAPTER_FILE)
    meta = json.loads((folder / META_FILE).read_text())
    meta["sha256"][ADAPTER_FILE] = file_sha256(folder / ADAPTER_FILE)
    (folder / META_FILE).write_text(json.dumps(meta))


def test_fresh_process_reload_is_identical(checkpoints, tmp_path):
    out = tmp_path / "child.safetensors"
    names = ("minilm", "llama", "scratch")
    paths = [str(checkpoints[name][0]) for name in names]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), TABLE_HASH, "|".join(PROMPTS), *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    child = load_file(out)

    for index, name in enumerate(names):
        _, model, tokenizer = checkpoints[name]
        meta = json.loads((checkpoints[name][0] / META_FILE).read_text())
        batch = GenerationCollator(tokenizer, 64)(PROMPTS)
        with torch.no_grad():
            logits = model(**batch).logits
            rows = model.get_input_embeddings()(torch.tensor(meta["trainable_row_ids"]))
        assert len(meta["trainable_row_ids"]) == len(SIX_TOKENS) + 1
        assert torch.equal(child[f"rows_{index}"], rows), name
        assert torch.equal(child[f"logits_{index}"], logits), name


def test_checkpoint_stores_rows_not_matrices(checkpoints):
    for name, (folder, _, tokenizer) in checkpoints.items():
        tensors = load_file(folder / ADAPTER_FILE)
        vocab_sized = [key for key, value in tensors.items() if value.shape[0] >= len(tokenizer)]
        assert vocab_sized == [], name
        assert any("trainable_tokens_delta" in key for key in tensors), name
        assert load_file(folder / ROWS_FILE)["input_embedding"].shape[0] == len(SIX_TOKENS) + 1


def test_train_base_checkpoint_stores_all_weights(checkpoints):
    folder, model, _ = checkpoints["scratch"]
    full = load_file(folder / FULL_FILE)
    rebuilt, _ = load_backbone(backbone_config_from_dict(json.loads((folder / META_FILE).read_text())["backbone"]), "cpu")
    stored = full["base_model.model.model.layers.0.mlp.down_proj.base_layer.weight"]

    assert set(full) == set(model.state_dict())
    assert not torch.equal(stored, rebuilt.state_dict()["model.layers.0.mlp.down_proj.weight"])  # the training step changed a base weight


def test_lora_only_checkpoint_has_no_full_weights(checkpoints):
    assert not (checkpoints["llama"][0] / FULL_FILE).exists()


def test_minilm_checkpoint_keeps_head_transform(checkpoints):
    keys = load_file(checkpoints["minilm"][0] / ADAPTER_FILE)
    assert any("predictions.transform" in key and "dense.weight" in key for key in keys)


def test_table_hash_mismatch_raises(checkpoints):
    with pytest.raises(ValueError, match=f"trained on ID table hash {TABLE_HASH}, but the expected table hash is other-hash"):
        load_adapter_checkpoint(checkpoints["llama"][0], "other-hash", device="cpu")


def test_missing_key_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    tensors = load_file(folder / ADAPTER_FILE)
    dropped = sorted(key for key in tensors if "lora_A" in key)[0]
    del tensors[dropped]
    _rewrite_adapter(folder, tensors)
    with pytest.raises(ValueError, match=r"missing keys \['" + dropped.replace(".", r"\.")):
        load_adapter_checkpoint(folder, TABLE_HASH, device="cpu")


def test_unexpected_key_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    tensors = load_file(folder / ADAPTER_FILE)
    tensors["base_model.model.extra.weight"] = torch.zeros(2)
    _rewrite_adapter(folder, tensors)
    with pytest.raises(ValueError, match=r"unexpected keys \['base_model\.model\.extra\.weight'\]"):
        load_adapter_checkpoint(folder, TABLE_HASH, device="cpu")


def test_wrong_shape_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    tensors = load_file(folder / ADAPTER_FILE)
    key = sorted(key for key in tensors if "lora_A" in key)[0]
    tensors[key] = torch.zeros(2, 2)
    _rewrite_adapter(folder, tensors)
    with pytest.raises(ValueError, match="has shape"):
        load_adapter_checkpoint(folder, TABLE_HASH, device="cpu")


def test_changed_lora_rank_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    meta = json.loads((folder / META_FILE).read_text())
    meta["backbone"]["lora"]["rank"] = 8
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="has shape"):
        load_adapter_checkpoint(folder, TABLE_HASH, device="cpu")


def test_changed_backbone_weights_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    other_weights = save_tiny_folder(tmp_path / "other_llama", "llama", seed=1)
    with pytest.raises(ValueError, match="trained on a different backbone: fingerprint"):
        load_adapter_checkpoint(folder, TABLE_HASH, device="cpu", backbone_path=str(other_weights))


def test_corrupt_file_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    data = bytearray((folder / ADAPTER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / ADAPTER_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the checksum"):
        load_adapter_checkpoint(folder, TABLE_HASH, device="cpu")


def test_folder_without_meta_raises(tmp_path):
    with pytest.raises(ValueError, match="adapter_meta.json not found"):
        load_adapter_checkpoint(tmp_path, TABLE_HASH, device="cpu")


def test_save_replaces_existing_checkpoint(checkpoints, tmp_path):
    folder = _copy(checkpoints, "llama", tmp_path)
    _, model, tokenizer = checkpoints["llama"]
    cfg = backbone_config_from_dict(json.loads((folder / META_FILE).read_text())["backbone"])
    (folder / "stale.txt").write_text("left from an older save")

    save_adapter_checkpoint(folder, model, tokenizer, SIX_TOKENS, cfg, "new-table-hash")

    assert json.loads((folder / META_FILE).read_text())["table_hash"] == "new-table-hash"
    assert not (folder / "stale.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["llama"]


def test_empty_table_hash_raises(checkpoints, tmp_path):
    _, model, tokenizer = checkpoints["llama"]
    with pytest.raises(ValueError, match="table_hash is empty"):
        save_adapter_checkpoint(tmp_path / "x", model, tokenizer, SIX_TOKENS, BackboneConfig(), "")
