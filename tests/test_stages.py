"""Run-directory safety checks of the stage runner."""

import json
from types import SimpleNamespace

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from ttds.stages.checks import check_stage_configs
from ttds.stages.context import RunContext
from ttds.stages.data import check_run_dataset
from ttds.stages.llm import _trainer, resume_path
from ttds.stages.runner import run_stages, selected_stages


def test_run_dir_from_other_data_is_rejected(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "DONE.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    ctx = RunContext(cfg=OmegaConf.create({}), run_dir=tmp_path, cache_dir=tmp_path / "cache")

    with pytest.raises(ValueError, match=r"fingerprint aaaa, but the configured data now gives bbbb"):
        check_run_dataset(ctx, "bbbb")


def test_run_dir_from_same_data_is_accepted(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "DONE.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    ctx = RunContext(cfg=OmegaConf.create({}), run_dir=tmp_path, cache_dir=tmp_path / "cache")

    check_run_dataset(ctx, "aaaa")


def test_beam_width_below_top_k_fails_before_training():
    cfg = OmegaConf.create({"eval": {"beam_width": 5, "top_k": [1, 5, 10]}})
    with pytest.raises(ValueError, match=r"eval.beam_width=5 is below max\(eval.top_k\)=10"):
        check_stage_configs(cfg, ["data", "tokenize", "llm", "evaluate"])


def test_selected_stages_include_prerequisites():
    assert selected_stages("tokenize") == ["data", "tokenize"]
    assert selected_stages("all") == ["data", "tokenize", "llm", "evaluate"]
    with pytest.raises(ValueError, match="stage='evalute' is unknown"):
        selected_stages("evalute")


def test_resume_path_prefers_checkpoint_folder(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"new")
    (tmp_path / "last.ckpt").write_bytes(b"old")

    assert resume_path(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"


def test_resume_path_reads_old_layout(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"old")

    assert resume_path(tmp_path) == tmp_path / "last.ckpt"


def test_resume_path_none_when_fresh(tmp_path):
    assert resume_path(tmp_path) is None


def test_llm_trainer_flushes_logs_at_each_checkpoint(tmp_path):
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true", "log_every_n_steps": 1}})
    ctx = RunContext(cfg=cfg, run_dir=tmp_path, cache_dir=tmp_path / "cache")
    datamodule = SimpleNamespace(resume_callback=Callback())
    llm_cfg = SimpleNamespace(checkpoint_every_n_steps=7, gradient_clip=1.0, batch_size=2)

    trainer = _trainer(ctx, 10, tmp_path / "stage2", datamodule, llm_cfg)
    checkpoint = next(callback for callback in trainer.callbacks if isinstance(callback, ModelCheckpoint))

    assert trainer.logger._flush_logs_every_n_steps == 7
    assert checkpoint.dirpath == str(tmp_path / "stage2" / "checkpoints")


def test_run_dir_that_is_a_file_is_rejected(tmp_path):
    run_file = tmp_path / "run"
    run_file.write_text("")
    cfg = OmegaConf.create({"stage": "data", "seed": 0, "paths": {"run_dir": str(run_file), "cache_dir": str(tmp_path / "cache")}})

    with pytest.raises(ValueError, match=r"paths.run_dir=.* is a file, not a directory"):
        run_stages(cfg)
