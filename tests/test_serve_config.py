"""Checks of the serve.py settings before the model loads: ServeConfig built from the composed conf/serve.yaml."""

import os
import subprocess
import sys
from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ttds.paths import CONF_DIR, REPO_ROOT, register_resolvers
from ttds.serve_config import ServeConfig, serve_config_from_cfg

TIMEOUT_S = 120  # serve.py fails in the config checks before it reads run_dir


def compose_serve(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="serve", overrides=overrides)


def build(*overrides: str) -> ServeConfig:
    return serve_config_from_cfg(compose_serve(["run_dir=some/run", *overrides]))


# The shipped file.


def test_shipped_yaml_keys_match_fields():
    keys = set(OmegaConf.load(CONF_DIR / "serve.yaml")) - {"hydra"}

    assert keys == {item.name for item in fields(ServeConfig)}


def test_shipped_yaml_equals_defaults():
    assert build() == ServeConfig(run_dir="some/run")


def test_valid_overrides_are_typed():
    config = build("top_k=5", "beam_width=5", "exclude_history=true", "unknown_users=popular", "log_level=DEBUG")

    assert config.top_k == 5
    assert config.exclude_history is True
    assert config.unknown_users == "popular"
    assert config.log_level == "DEBUG"


# A missing run_dir.


def test_missing_run_dir_names_key():
    with pytest.raises(ValueError, match=r"^run_dir is missing; pass run_dir="):
        serve_config_from_cfg(compose_serve([]))


# Wrong types.


@pytest.mark.parametrize("value", ["no", "yes", "maybe"])
def test_exclude_history_rejects_string(value):
    with pytest.raises(ValueError, match=rf"^exclude_history='{value}' must be a boolean; set it to true or false\.$"):
        build(f"exclude_history={value}")


def test_top_k_rejects_word():
    with pytest.raises(ValueError, match=r"^top_k='ten' must be an integer; set it to a whole number like 10\.$"):
        build("top_k=ten")


def test_batch_size_rejects_float():
    with pytest.raises(ValueError, match=r"^batch_size=1\.5 must be an integer"):
        build("batch_size=1.5")


# Unknown keys.


def test_unknown_key_names_key():
    with pytest.raises(ValueError, match=r"^the config has unknown keys \['top_n'\]"):
        build("+top_n=5")


def test_unknown_key_suggests_closest():
    with pytest.raises(ValueError, match=r"Did you mean 'top_k'\?$"):
        build("+top_n=5")


# Values.


@pytest.mark.parametrize("key", ["top_k", "beam_width", "chunk_size", "batch_size"])
def test_size_rejects_zero(key):
    with pytest.raises(ValueError, match=rf"^{key}=0 is invalid; pass a positive integer"):
        build(f"{key}=0")


def test_beam_width_below_top_k():
    with pytest.raises(ValueError, match=r"^beam_width=5 is below top_k=10; set beam_width>=10\.$"):
        build("beam_width=5")


def test_unknown_users_names_key():
    with pytest.raises(ValueError, match=r"^unknown_users='popluar' is invalid; use one of \('error', 'popular'\)\."):
        build("unknown_users=popluar")


def test_unknown_users_suggests_closest():
    with pytest.raises(ValueError, match=r"Did you mean 'popular'\?$"):
        build("unknown_users=popluar")


def test_log_level_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"^log_level='verbose' is not a logging level name; use one of \('DEBUG', "):
        build("log_level=verbose")


def test_log_level_suggests_upper_case():
    with pytest.raises(ValueError, match=r"Did you mean 'INFO'\?$"):
        build("log_level=info")


def test_output_rejects_unknown_extension():
    with pytest.raises(ValueError, match=r"^output=recs\.txt has an unsupported extension"):
        build("output=recs.txt")


# The command line.


def test_bad_value_gives_one_error_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        str(REPO_ROOT / "serve.py"),
        f"run_dir={tmp_path / 'no_run'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "exclude_history=no",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "error: exclude_history='no' must be a boolean" in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "error:" in line]) == 1, output
