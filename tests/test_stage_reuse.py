"""Warnings for finished stages that are reused with changed settings."""

import json
import logging

from omegaconf import OmegaConf

from ttds.stages.reuse import CONFIG_FILE, warn_if_reused_with_other_settings


def _saved_stage(tmp_path, values: dict):
    out = tmp_path / "run" / "tokenize"
    out.mkdir(parents=True)
    (out / CONFIG_FILE).write_text(json.dumps(values))
    return out


def test_changed_key_of_watched_group_is_reported(tmp_path, caplog):
    out = _saved_stage(tmp_path, {"tokenizer": {"item": {"latent_dim": 16}}, "llm": {"static_steps": 5}})
    cfg = OmegaConf.create({"tokenizer": {"item": {"latent_dim": 8}}, "llm": {"static_steps": 5}})

    with caplog.at_level(logging.WARNING):
        changes = warn_if_reused_with_other_settings("tokenize", out, cfg, ("tokenizer",))

    assert changes == ["tokenizer.item.latent_dim: 16 -> 8"]
    assert "tokenize stage" in caplog.text


def test_other_groups_are_not_watched(tmp_path):
    out = _saved_stage(tmp_path, {"tokenizer": {"a": 1}, "llm": {"static_steps": 5}})
    cfg = OmegaConf.create({"tokenizer": {"a": 1}, "llm": {"static_steps": 50}})

    assert warn_if_reused_with_other_settings("tokenize", out, cfg, ("tokenizer",)) == []


def test_top_level_scalar_can_be_watched(tmp_path):
    out = _saved_stage(tmp_path, {"seed": 42})
    cfg = OmegaConf.create({"seed": 1})

    assert warn_if_reused_with_other_settings("tokenize", out, cfg, ("seed",)) == ["seed: 42 -> 1"]


def test_stage_without_saved_config_is_not_checked(tmp_path):
    out = tmp_path / "tokenize"
    out.mkdir()
    cfg = OmegaConf.create({"tokenizer": {"a": 2}})

    assert warn_if_reused_with_other_settings("tokenize", out, cfg, ("tokenizer",)) == []
