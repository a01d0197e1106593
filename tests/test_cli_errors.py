"""Bad input to train.py gives one error line and exit status 1, and a config error fails before any stage runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ttds.cli import exit_on_input_error, one_line
from ttds.paths import CONF_DIR, REPO_ROOT, register_resolvers
from ttds.stages.checks import check_stage_configs

TIMEOUT_S = 120  # each command fails in the config checks or the data reader, measured at about 6 s on 2 busy cores


def run_train(tmp_path: Path, overrides: list[str], full_error: bool = False) -> subprocess.CompletedProcess:
    """Run train.py from ``tmp_path`` with its run, cache and Hydra folders inside ``tmp_path``."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"

    paths = [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    command = [sys.executable, str(REPO_ROOT / "train.py"), *paths, *overrides]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_misspelt_key_fails_before_data_stage(tmp_path):
    result = run_train(tmp_path, ["experiment=tiny", "stage=all", "+llm.histroy_labels=true"])
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "histroy_labels" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "data" / "DONE.json").exists()


def test_missing_dataset_path_prints_one_error(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = run_train(tmp_path, ["stage=data", f"dataset.path={missing}"])
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert str(missing) in output
    assert "[ERROR] - error: " in output
    assert "Traceback" not in output


def test_hydra_full_error_keeps_traceback(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = run_train(tmp_path, ["stage=data", f"dataset.path={missing}"], full_error=True)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "Traceback" in output


def compose_train(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=["paths.run_dir=unused", *overrides])


def test_stage_checks_cover_only_selected_stages():
    cfg = compose_train(["+llm.histroy_labels=true"])

    check_stage_configs(cfg, ["data", "tokenize"])
    with pytest.raises(ValueError, match="histroy_labels"):
        check_stage_configs(cfg, ["data", "tokenize", "llm"])


def test_stage_checks_name_the_tower():
    cfg = compose_train(["+tokenizer.user.latnet_dim=3"])

    with pytest.raises(ValueError, match=r"^tokenizer\.user has unknown keys \['latnet_dim'\]"):
        check_stage_configs(cfg, ["data", "tokenize"])


def test_stage_checks_accept_shipped_experiment():
    cfg = compose_train(["experiment=tiny"])

    check_stage_configs(cfg, ["data", "tokenize", "llm", "evaluate"])


def test_exit_on_input_error_keeps_other_errors(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @exit_on_input_error
    def fail_with(error: Exception) -> None:
        raise error

    with pytest.raises(SystemExit) as exit_info:
        fail_with(ValueError("bad value"))
    assert exit_info.value.code == 1
    with pytest.raises(RuntimeError, match="bug"):
        fail_with(RuntimeError("bug"))


def test_one_line_does_not_add_separator_after_sentence():
    message = "Could not append to config. An item is already at 'llm.static_steps'.\nEither remove + prefix: 'llm.static_steps=3'"

    assert one_line(message) == "Could not append to config. An item is already at 'llm.static_steps'. Either remove + prefix: 'llm.static_steps=3'"


def test_one_line_joins_omegaconf_lines():
    message = "Missing mandatory value: backbone.path\n    full_key: tokenizer.semantic_encoder.model_path\n"

    assert one_line(message) == "Missing mandatory value: backbone.path; full_key: tokenizer.semantic_encoder.model_path"
