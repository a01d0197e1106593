"""The main job and serve.py, run as a user runs them, on the 20-core of the bundled MovieTweetings."""

import json
import os
import shutil
import subprocess
import sys

import polars as pl
import pytest

from ttds.paths import REPO_ROOT
from ttds.tokenizer.id_table import SemanticIdTable

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ, TTDS_CACHE_DIR=str(root / "cache"), TTDS_SERVE_LOG_DIR=str(root / "serve_logs"))
    run_dir = root / "run"
    result = _run(["train.py", "experiment=tiny", f"paths.run_dir={run_dir}", f"hydra.run.dir={root / 'hydra'}"], env)
    return run_dir, env, result


def test_every_stage_marks_done(tiny_run):
    run_dir, _, _ = tiny_run
    for stage in ("data", "tokenize", "llm", "evaluate"):
        assert (run_dir / stage / "DONE.json").is_file(), stage


def test_llm_checkpoints_sit_in_their_own_folder(tiny_run):
    run_dir, _, _ = tiny_run
    stages = [folder for folder in (run_dir / "llm").iterdir() if folder.name.startswith("stage")]

    assert stages
    for folder in stages:
        assert (folder / "checkpoints" / "last.ckpt").is_file(), folder
        assert not list(folder.glob("*.ckpt")), folder


def test_fresh_run_has_no_checkpoint_folder_warning(tiny_run):
    _, _, result = tiny_run

    assert "exists and is not empty" not in result.stderr + result.stdout


def test_metrics_cover_every_requested_user(tiny_run):
    run_dir, _, result = tiny_run
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"valid", "test"}
    assert metrics["test"]["n_users"] == 32
    assert metrics["test"]["invalid_user_rate"] == 0.0
    assert 0.0 <= metrics["test"]["ndcg@10"] <= metrics["test"]["hr@10"] <= 1.0
    assert "| test |" in result.stdout


def test_reused_llm_stage_warns_about_changed_settings(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    result = _run(
        ["train.py", "experiment=tiny", f"paths.run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}", "stage=llm", "llm.static_steps=7"],
        env,
    )
    output = result.stdout + result.stderr
    assert "have no effect" in output
    assert "llm.static_steps" in output


def test_reused_tokenize_stage_warns_about_changed_settings(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    result = _run(
        ["train.py", "experiment=tiny", f"paths.run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}", "stage=tokenize", "tokenizer.item.latent_dim=8"],
        env,
    )
    output = result.stdout + result.stderr

    assert "the tokenize stage" in output
    assert "tokenizer.item.latent_dim: 16 -> 8" in output


def test_reused_stages_with_same_settings_do_not_warn(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    result = _run(["train.py", "experiment=tiny", f"paths.run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}", "stage=llm"], env)

    assert "have no effect" not in result.stdout + result.stderr


def test_llm_stage_resumes_from_its_checkpoints_without_warnings(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "llm" / "DONE.json").unlink()

    result = _run(["train.py", "experiment=tiny", f"paths.run_dir={copy}", f"hydra.run.dir={tmp_path / 'hydra'}", "stage=llm"], env)
    output = result.stdout + result.stderr

    assert "Restoring states from" in output
    assert "exists and is not empty" not in output
    assert "before the epoch ended" not in output
    assert (copy / "llm" / "DONE.json").is_file()


def test_adapter_checkpoint_has_no_pickles(tiny_run):
    run_dir, _, _ = tiny_run
    files = [p for p in (run_dir / "llm").rglob("*") if p.is_file()]
    assert any(p.name == "adapter.safetensors" for p in files)
    assert not any(p.suffix in (".pt", ".pth", ".bin", ".pkl") for p in files)


def test_rerun_reuses_finished_stages(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    before = (run_dir / "llm" / "adapter" / "adapter.safetensors").stat().st_mtime_ns
    _run(["train.py", "experiment=tiny", f"paths.run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}", "eval.splits=[test]"], env)
    assert (run_dir / "llm" / "adapter" / "adapter.safetensors").stat().st_mtime_ns == before


def test_serve_writes_ranked_recommendations(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    output = tmp_path / "recs.parquet"
    _run(["serve.py", f"run_dir={run_dir}", "users=all", "top_k=5", "beam_width=10", f"output={output}", "chunk_size=50"], env)

    recs = pl.read_parquet(output)
    assert recs["user_id"].n_unique() == 196
    assert recs.group_by("user_id").len()["len"].max() == 5
    assert recs["cold_start"].sum() == 0
    assert recs["item_id"].null_count() == 0


def test_serve_excludes_every_seen_item(tiny_run, tmp_path):
    """exclude_history drops every item of the user, also those older than the prompt's max_history items."""
    from pathlib import Path

    from ttds.data.config import dataset_config_from_dict
    from ttds.data.pipeline import load_processed

    run_dir, env, _ = tiny_run
    output = tmp_path / "recs.parquet"
    _run(["serve.py", f"run_dir={run_dir}", "users=all", "top_k=5", "beam_width=10", f"output={output}", "exclude_history=true"], env)
    cfg = json.loads((run_dir / "llm" / "config.json").read_text())
    dataset = load_processed(dataset_config_from_dict(cfg["dataset"]), Path(cfg["paths"]["cache_dir"]) / "processed")
    seen = (
        dataset.events.join(dataset.users.select("user_idx", "user_id"), on="user_idx")
        .join(dataset.items.select("item_idx", "item_id"), on="item_idx")
        .select("user_id", "item_id")
        .unique()
    )
    recs = pl.read_parquet(output)

    assert dataset.events.group_by("user_idx").len()["len"].max() > cfg["dataset"]["preprocess"]["max_history"]
    assert recs.height > 0  # users who saw most of the 99 items can get fewer than 5, never a seen one
    assert recs.join(seen, on=["user_id", "item_id"]).height == 0


def test_serve_flags_unknown_users_as_cold_start(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    users = tmp_path / "users.txt"
    users.write_text("\ufeffuser_id\nnobody-123\n", encoding="utf-8")  # with the byte-order mark spreadsheets write
    output = tmp_path / "recs.jsonl"
    _run(["serve.py", f"run_dir={run_dir}", f"users={users}", "top_k=3", "beam_width=10", f"output={output}", "unknown_users=popular"], env)

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3
    assert all(row["cold_start"] for row in rows)


def test_serve_lists_each_user_once(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    users = tmp_path / "users.txt"
    known = SemanticIdTable.load(run_dir / "llm" / "user_table").keys[0]
    users.write_text(f"{known}\n{known}\n")
    output = tmp_path / "recs.csv"
    _run(["serve.py", f"run_dir={run_dir}", f"users={users}", "top_k=3", "beam_width=10", f"output={output}"], env)

    recs = pl.read_csv(output, schema_overrides={"user_id": pl.Utf8})
    assert recs.height == 3
    assert recs["rank"].to_list() == [1, 2, 3]


def test_serve_rejects_unknown_users_by_default(tiny_run, tmp_path):
    run_dir, env, _ = tiny_run
    users = tmp_path / "users.txt"
    users.write_text("nobody-123\n")
    result = subprocess.run(
        [sys.executable, "serve.py", f"run_dir={run_dir}", f"users={users}", f"output={tmp_path / 'r.csv'}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "unknown_users=popular" in result.stdout + result.stderr
    assert not (tmp_path / "r.csv").exists()


def test_sticky_ids_keep_tokenize_codes(tiny_run, tmp_path):
    """With a huge llm.id_stickiness, stage 1's ID updates and the freeze keep every code of the tokenize stage."""
    run_dir, env, _ = tiny_run
    sticky_dir = tmp_path / "sticky"
    shutil.copytree(run_dir, sticky_dir, ignore=shutil.ignore_patterns("llm", "evaluate"))
    _run(["train.py", "experiment=tiny", "stage=llm", "llm.id_stickiness=1e6", f"paths.run_dir={sticky_dir}", f"hydra.run.dir={tmp_path / 'hydra'}"], env)
    summary = json.loads((sticky_dir / "llm" / "DONE.json").read_text())
    plain = json.loads((run_dir / "llm" / "DONE.json").read_text())

    assert summary["freeze_ids_moved"] == {"item": 0, "user": 0}
    assert set(plain["freeze_ids_moved"]) == {"item", "user"}
    for side in ("item", "user"):
        frozen = SemanticIdTable.load(sticky_dir / "llm" / f"{side}_table")
        tokenized = SemanticIdTable.load(run_dir / "tokenize" / f"{side}_table")
        assert (frozen.codes == tokenized.codes).all(), side
