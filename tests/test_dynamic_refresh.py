"""Stage 1 refresh schedule: rolling slices, per-side intervals, and text vectors that match the tokenize stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_backbone import build_bpe_tokenizer, tiny_model

from ttds.llm.config import LLMConfig
from ttds.llm.dynamic import DynamicRecommenderModule, EntitySide, render_ids, rolling_slice
from ttds.llm.pooling import encode_texts
from ttds.tasks.base import Vocabulary
from ttds.tokenizer.quantizer import QuantizerConfig
from ttds.tokenizer.towers import DualModalityVAE, TowerConfig

ITEM_TEXTS = [f"item {i} is a film about {word}" for i, word in enumerate("cats dogs ships trains rain snow fire ice wind".split())]
USER_TEXTS = [f"user {i} watched {' and '.join(ITEM_TEXTS[: i + 1])}" for i in range(5)]


@pytest.mark.parametrize(("n", "interval"), [(7, 3), (9, 9), (5, 8), (100, 7)])
def test_rolling_slices_cover_each_cycle(n, interval):
    for cycle in range(3):
        positions = np.concatenate([rolling_slice(n, interval, step) for step in range(cycle * interval, (cycle + 1) * interval)])
        assert sorted(positions.tolist()) == list(range(n))


def test_rolling_slice_sizes_are_balanced():
    sizes = [len(rolling_slice(100, 7, step)) for step in range(7)]
    assert max(sizes) - min(sizes) <= 1


def _module(mode: str, refresh_every: int, user_refresh_every: int | None, id_stickiness: float = 0.0) -> DynamicRecommenderModule:
    torch.manual_seed(0)
    tokenizer = build_bpe_tokenizer(with_bos=True)
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_model("llama", len(tokenizer))
    sides = []
    for name, texts in (("item", ITEM_TEXTS), ("user", USER_TEXTS)):
        config = TowerConfig(name=name, modalities="semantic", latent_dim=4, hidden_dims=[8], quantizer=QuantizerConfig(levels=2, codebook_size=4, kmeans_init=False))
        semantic = encode_texts(model, tokenizer, texts, 4, 32, torch.device("cpu"))
        sides.append(EntitySide(name, DualModalityVAE(config, 32, 8), texts, [f"{name}{i}" for i in range(len(texts))], semantic, None, 8 if name == "item" else 0))
    vocab = Vocabulary(item_ids=[""] * len(ITEM_TEXTS), user_ids=[""] * len(USER_TEXTS), item_titles=ITEM_TEXTS, item_texts=ITEM_TEXTS, user_texts=USER_TEXTS)
    cfg = LLMConfig(refresh_every=refresh_every, user_refresh_every=user_refresh_every, refresh_mode=mode, id_stickiness=id_stickiness)
    module = DynamicRecommenderModule(model, tokenizer, cfg, 10, sides, vocab, text_max_length=32)
    # Zero the stored vectors so every re-embedded row shows up as non-zero.
    module.semantic_item.zero_()
    module.semantic_user.zero_()
    return module


def test_rolling_mode_reembeds_each_text_once():
    module = _module("rolling", refresh_every=3, user_refresh_every=5)
    for step in range(3):
        module.scheduled_refresh(step)

    assert module.reembedded["item"] == len(ITEM_TEXTS)
    assert bool((module.semantic_item.norm(dim=-1) > 0).all())
    assert module.reembedded["user"] == len(USER_TEXTS) * 3 // 5


def test_rolling_mode_updates_ids_per_cycle():
    module = _module("rolling", refresh_every=3, user_refresh_every=2)
    changed = [module.scheduled_refresh(step) for step in range(6)]

    assert changed == [[], ["user"], ["item"], ["user"], [], ["item", "user"]]


def test_rolling_refresh_matches_full_encoding():
    module = _module("rolling", refresh_every=4, user_refresh_every=None)
    for step in range(4):
        module.scheduled_refresh(step)
    expected = encode_texts(module.model, module.tokenizer, ITEM_TEXTS, 64, 32, torch.device("cpu"))

    torch.testing.assert_close(module.semantic_item, expected)


def test_full_mode_reembeds_at_interval():
    module = _module("full", refresh_every=2, user_refresh_every=3)

    assert module.scheduled_refresh(0) == []
    assert module.scheduled_refresh(1) == []
    assert module.scheduled_refresh(2) == ["item"]
    assert module.scheduled_refresh(3) == ["user"]
    assert module.reembedded == {"item": len(ITEM_TEXTS), "user": len(USER_TEXTS)}


def test_ids_follow_refreshed_vectors():
    module = _module("full", refresh_every=1, user_refresh_every=None)
    module.update_vocabulary()
    before = list(module.vocab.item_ids)
    module.semantic_item.copy_(100 * torch.randn_like(module.semantic_item))  # spread the latents over the codes
    module.update_vocabulary(["item"])

    assert module.vocab.item_ids == render_ids(module.table("item"), 8)
    assert module.vocab.item_ids != before


def test_sticky_ids_stay_when_vectors_move():
    module = _module("full", refresh_every=1, user_refresh_every=None, id_stickiness=1e9)
    module.semantic_item.copy_(100 * torch.randn_like(module.semantic_item))
    module.update_vocabulary(["item"])
    before = list(module.vocab.item_ids)
    codes_before = module.codes["item"].clone()
    module.semantic_item.copy_(100 * torch.randn_like(module.semantic_item))  # new latents, other nearest codes
    module.update_vocabulary(["item"])

    assert module.vocab.item_ids == before
    assert torch.equal(module.codes["item"], codes_before)
    assert module.last_moved["item"] == 0


def test_plain_ids_move_with_vectors():
    torch.manual_seed(1)
    plain = _module("full", refresh_every=1, user_refresh_every=None)
    plain.semantic_item.copy_(100 * torch.randn_like(plain.semantic_item))
    plain.update_vocabulary(["item"])
    plain.semantic_item.copy_(100 * torch.randn_like(plain.semantic_item))
    plain.update_vocabulary(["item"])

    assert plain.last_moved["item"] > 0


def test_resume_restores_sticky_codes():
    module = _module("full", refresh_every=1, user_refresh_every=None, id_stickiness=0.5)
    module.semantic_item.copy_(100 * torch.randn_like(module.semantic_item))
    module.update_vocabulary()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    marked = torch.full_like(checkpoint["ttds_codes"]["item"], 3)
    checkpoint["ttds_codes"]["item"] = marked

    resumed = _module("full", refresh_every=1, user_refresh_every=None, id_stickiness=0.5)
    resumed.on_load_checkpoint(checkpoint)

    assert set(checkpoint["ttds_codes"]) == {"item", "user"}
    assert torch.equal(resumed.codes["item"], marked)


def test_loading_checkpoint_restores_ids_at_once():
    """A stage resumed at its last step skips on_train_start, and the freeze still needs the checkpoint's IDs."""
    module = _module("rolling", refresh_every=3, user_refresh_every=None)
    module.update_vocabulary()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    checkpoint["ttds_ids"]["user"] = [f"{ids}<mark>" for ids in checkpoint["ttds_ids"]["user"]]

    resumed = _module("rolling", refresh_every=3, user_refresh_every=None)
    resumed.on_load_checkpoint(checkpoint)

    assert resumed.vocab.user_ids == checkpoint["ttds_ids"]["user"]
    assert resumed.vocab.item_ids == module.vocab.item_ids


def test_old_checkpoint_without_codes_drops_sticky_codes():
    module = _module("full", refresh_every=1, user_refresh_every=None, id_stickiness=0.5)
    module.update_vocabulary()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    del checkpoint["ttds_codes"]

    resumed = _module("full", refresh_every=1, user_refresh_every=None, id_stickiness=0.5)
    resumed.codes["item"] = torch.zeros(len(ITEM_TEXTS), 2, dtype=torch.long)
    resumed.on_load_checkpoint(checkpoint)

    assert resumed.codes == {"item": None, "user": None}


def test_resume_restores_prompt_ids():
    module = _module("rolling", refresh_every=3, user_refresh_every=None)
    module.update_vocabulary()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    saved_ids = list(checkpoint["ttds_ids"]["item"])
    # Mark the stored strings, so only restoring them (not recomputing from the vectors) can produce these.
    checkpoint["ttds_ids"]["item"] = [f"{ids}<mark>" for ids in saved_ids]

    resumed = _module("rolling", refresh_every=3, user_refresh_every=None)
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_train_start()

    assert saved_ids == module.vocab.item_ids
    assert resumed.vocab.item_ids == [f"{ids}<mark>" for ids in saved_ids]


def test_invalid_refresh_settings_raise():
    with pytest.raises(ValueError, match="refresh_mode"):
        LLMConfig(refresh_mode="sometimes")
    with pytest.raises(ValueError, match="id_stickiness"):
        LLMConfig(id_stickiness=-0.5)
    with pytest.raises(ValueError, match="user_refresh_every"):
        LLMConfig(user_refresh_every=0)


def test_tokenize_vectors_match_refresh():
    """For the embedded MiniLM, kind=backbone must embed texts as stage 1 re-embeds them, or IDs jump at the first refresh."""
    from ttds.backbone.config import backbone_config_from_dict
    from ttds.backbone.lm import load_backbone
    from ttds.embeddings.text_encoder import build_text_encoder
    from ttds.stages.tokenize import semantic_encoder_config

    ctx = type("Ctx", (), {"cfg": OmegaConf.create({"backbone": {"kind": "embedded-minilm"}})})()
    encoder = build_text_encoder(semantic_encoder_config({"kind": "backbone", "max_length": 16, "device": "cpu"}, ctx))
    model, tokenizer = load_backbone(backbone_config_from_dict({"kind": "embedded-minilm"}), device="cpu")
    texts = ITEM_TEXTS[:3] + USER_TEXTS[-1:]  # the last one is longer than 16 tokens

    tokenize_vectors = torch.nn.functional.normalize(encoder.encode(texts), dim=-1)
    refresh_vectors = encode_texts(model, tokenizer, texts, 2, 16, torch.device("cpu"))
    torch.testing.assert_close(tokenize_vectors, refresh_vectors, atol=1e-5, rtol=1e-4)
