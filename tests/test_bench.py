"""The benchmark runner on the 20-core of the bundled MovieTweetings, its report, and every experiment overlay."""

import json
import logging
import math
import re
import shutil

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from ttds.bench.report import code_usage, mean_std, replace_section, training_curve
from ttds.bench.runner import BenchConfig, ModelSpec, run_benchmark, train_command
from ttds.paths import CONF_DIR, REPO_ROOT, register_resolvers

DATASET_OVERRIDES = ["dataset=movietweetings_100k", "dataset.preprocess.kcore=20"]
TINY_SASREC = {"hidden": 8, "layers": 1, "heads": 1, "max_len": 20, "epochs": 1, "batch_size": 256}
SEEDS = [0, 1]


def compose_config(name: str, overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def bench_config(tmp_path, extra: list[str] = ()):
    overrides = [
        *DATASET_OVERRIDES,
        "models=[mostpop,sasrec]",
        f"seeds=[{','.join(map(str, SEEDS))}]",
        f"out={tmp_path / 'out'}",
        f"benchmarks_md={tmp_path / 'BENCHMARKS.md'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]
    cfg = compose_config("bench", overrides)
    with open_dict(cfg):
        cfg.registry.sasrec.options = {"sasrec": TINY_SASREC, "accelerator": "cpu"}
    return cfg


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    shutil.copy(REPO_ROOT / "BENCHMARKS.md", root / "BENCHMARKS.md")
    original = (root / "BENCHMARKS.md").read_text()
    cfg = bench_config(root)
    summary = run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench (test)")
    return root, cfg, summary, original


def run_metrics(root, model: str, seed: int) -> dict:
    return json.loads((root / "out" / model / f"seed{seed}" / "evaluate" / "metrics.json").read_text())


def test_runner_writes_every_run(bench_run):
    root, _, _, _ = bench_run
    for model in ("mostpop", "sasrec"):
        for seed in SEEDS:
            record = json.loads((root / "out" / model / f"seed{seed}" / "bench_run.json").read_text())
            assert record["status"] == "finished", (model, seed)
            assert record["machine"]["cpu_cores"] >= 1
            assert "commit" in record["git"]
            assert record["wall_seconds"] >= 0
            assert run_metrics(root, model, seed)["test"]["n_users"] == 196


def test_summary_std_matches_hand_calculation(bench_run):
    root, _, _, _ = bench_run
    summary = json.loads((root / "out" / "summary.json").read_text())
    first, second = (run_metrics(root, "sasrec", seed)["test"]["ndcg@10"] for seed in SEEDS)

    stats = summary["models"]["sasrec"]["test"]["ndcg@10"]
    assert stats["mean"] == pytest.approx((first + second) / 2)
    # Sample std of two values: sqrt(((a - m)^2 + (b - m)^2) / (2 - 1)) = |a - b| / sqrt(2).
    assert stats["std"] == pytest.approx(abs(first - second) / math.sqrt(2))
    assert summary["models"]["mostpop"]["test"]["hr@10"]["std"] == pytest.approx(0.0)
    assert summary["models"]["sasrec"]["seeds"] == SEEDS


def test_report_replaces_only_its_section(bench_run):
    root, _, _, original = bench_run
    document = (root / "BENCHMARKS.md").read_text()
    section = re.compile(r"<!-- bench:movietweetings_100k start -->.*?<!-- bench:movietweetings_100k end -->", re.DOTALL)
    assert section.sub("", document).rstrip() == section.sub("", original).rstrip()
    assert document.count("<!-- bench:movietweetings_100k start -->") == 1
    assert document.count("<!-- bench:movietweetings_100k end -->") == 1
    assert "| sasrec | 2 | 196 |" in document
    assert "| mostpop | 2 | 196 |" in document


def test_report_draws_metric_bars(bench_run):
    root, _, summary, _ = bench_run
    assert (root / "out" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["plots"] == ["metrics.png"]


def test_second_invocation_skips_finished_runs(bench_run, caplog):
    root, cfg, _, _ = bench_run
    records = sorted((root / "out").glob("*/seed*/bench_run.json"))
    before = {path: path.stat().st_mtime_ns for path in records}

    with caplog.at_level(logging.INFO, logger="ttds.bench.runner"):
        run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench (test, again)")

    assert {path: path.stat().st_mtime_ns for path in records} == before
    assert caplog.text.count("skipping") == 4
    assert (root / "BENCHMARKS.md").read_text().count("<!-- bench:movietweetings_100k start -->") == 1


def test_report_only_runs_nothing(tmp_path):
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    cfg = bench_config(tmp_path, ["report_only=true"])

    summary = run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench report_only=true (test)")

    assert not list((tmp_path / "out").glob("*/seed*/bench_run.json"))
    assert set(summary["models"]) == {"mostpop", "sasrec"}
    assert "<!-- bench:movietweetings_100k start -->" in (tmp_path / "BENCHMARKS.md").read_text()


def test_mean_std_of_one_value_has_no_std():
    stats = mean_std([0.25])
    assert stats["mean"] == 0.25
    assert stats["std"] is None


def test_replace_section_rejects_lone_marker():
    with pytest.raises(ValueError, match="has only one of '<!-- bench:x start -->'"):
        replace_section("intro\n<!-- bench:x start -->\nold\n", "x", "new")


def test_replace_section_keeps_other_sections():
    document = "# B\n<!-- bench:a start -->\nA\n<!-- bench:a end -->\ntail\n"
    updated = replace_section(document, "b", "B table")
    assert replace_section(updated, "a", "A2") == updated.replace("\nA\n", "\nA2\n")
    assert updated.endswith("<!-- bench:b start -->\nB table\n<!-- bench:b end -->\n")


def test_training_curve_chains_stages(tmp_path):
    for stage, rows in (("stage1", "epoch,step,train/lm_loss\n0,0,5.0\n0,1,4.0\n"), ("stage2", "epoch,step,train/lm_loss\n0,0,3.0\n0,1,2.5\n")):
        folder = tmp_path / "llm" / stage / "logs" / "version_0"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(rows)

    curve = training_curve(tmp_path)
    assert curve["step"].to_list() == [0, 1, 2, 3]
    assert curve["train/lm_loss"].to_list() == [5.0, 4.0, 3.0, 2.5]


def test_code_usage_reads_levels_in_order(tmp_path):
    diagnostics = {
        "sasrec_valid": {},
        "item": {"tokenizer/item/level1_usage": 0.5, "tokenizer/item/level0_usage": 0.75, "tokenizer/item/level0_perplexity": 9.0},
        "user": {"tokenizer/user/level0_usage": 0.25},
    }
    (tmp_path / "tokenize").mkdir()
    (tmp_path / "tokenize" / "diagnostics.json").write_text(json.dumps(diagnostics))

    assert code_usage(tmp_path) == {"item": [0.75, 0.5], "user": [0.25]}


def test_unknown_model_lists_registry(tmp_path):
    with pytest.raises(ValueError, match=r"models \['sasrek'\] are not in conf/bench.yaml `registry`"):
        BenchConfig.from_dictconfig(bench_config(tmp_path, ["models=[sasrek]"]))


def test_baseline_entry_rejects_experiments():
    with pytest.raises(ValueError, match="only LM models use"):
        ModelSpec(baseline="mostpop", experiments=["tiger"])


def test_train_command_composes_for_train_py(tmp_path):
    bench = BenchConfig.from_dictconfig(bench_config(tmp_path, ["base_experiment=tiny"]))
    command = train_command(bench, bench.registry["tiger"], 3, tmp_path / "run", DATASET_OVERRIDES)

    # compose() takes everything after train.py except the hydra.* settings of the launched app.
    cfg = compose_config("train", [arg for arg in command[2:] if not arg.startswith("hydra.")])
    assert command[2] == "experiment=[tiny,tiger]"
    assert cfg.seed == 3
    assert cfg.paths.run_dir == str(tmp_path / "run")
    assert cfg.dataset.preprocess.kcore == 20
    assert cfg.llm.user_ids is False
    assert cfg.llm.static_steps == 6  # from tiny


OVERLAY_DELTAS = {
    "tiger": {"tokenizer.item.modalities": "semantic", "llm.user_ids": False, "llm.dynamic_steps": 0, "tasks.mixture.item_to_user.weight": 0.0},
    "ablation_no_user_ids": {"llm.user_ids": False},
    "ablation_no_collaborative": {"tokenizer.item.modalities": "semantic", "tokenizer.user.modalities": "semantic"},
    "ablation_no_alignment": {"tokenizer.user.infonce_weight": 0.0, "tokenizer.item.code_alignment_weight": 0.0, "llm.align_weight": 0.0},
    "ablation_no_high_order": {"tasks.mixture.user_to_users.weight": 0.0},
    "ablation_no_dynamic": {"llm.dynamic_steps": 0},
    "movietweetings_cpu": {"dataset.name": "movietweetings_100k", "trainer.accelerator": "cpu"},
    "scientific": {"dataset.name": "amazon18_scientific", "trainer.accelerator": "cpu"},
    "gpu_beauty": {"dataset.name": "amazon14_beauty", "trainer.accelerator": "gpu", "tokenizer.semantic_encoder.model_path": "/models/lm"},
}


@pytest.mark.parametrize("name", sorted(OVERLAY_DELTAS))
def test_experiment_overlay_composes(name):
    cfg = compose_config("train", [f"experiment={name}", "paths.run_dir=/tmp/unused", "backbone.path=/models/lm"])
    for key, expected in OVERLAY_DELTAS[name].items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        assert value == expected, key


def test_lm_model_runs_through_train_py(tmp_path):
    """The LM path end to end: train.py as a subprocess writes metrics, a run record and report rows."""
    cfg = bench_config(tmp_path, ["base_experiment=tiny", "models=[tiger]", "seeds=[0]", "section=lm_test"])
    (tmp_path / "BENCHMARKS.md").write_text("<!-- bench:lm_test start -->\n<!-- bench:lm_test end -->\n")
    run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench (LM test)")
    run_dir = tmp_path / "out" / "tiger" / "seed0"
    record = json.loads((run_dir / "bench_run.json").read_text())
    metrics = run_metrics(tmp_path, "tiger", 0)
    report = (tmp_path / "BENCHMARKS.md").read_text()

    assert record["status"] == "finished"
    assert record["kind"] == "train.py"
    assert (run_dir / "llm" / "adapter").is_dir()
    assert metrics["test"]["n_users"] == 32  # tiny evaluates the first 32 users
    assert "| tiger |" in report
