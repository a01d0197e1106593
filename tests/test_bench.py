"""The benchmark runner on the 20-core of the bundled MovieTweetings, its report, and every experiment overlay."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from ttds.baselines import BASELINES
from ttds.bench.report import code_usage, mean_std, replace_section, training_curve
from ttds.bench.runner import BASELINE_OPTION_CHECKS, BENCH_KEYS, BenchConfig, ModelSpec, run_benchmark, train_command
from ttds.paths import CONF_DIR, REPO_ROOT, register_resolvers

DATASET_OVERRIDES = ["dataset=movietweetings_100k", "dataset.preprocess.kcore=20"]
TINY_SASREC = {"hidden": 8, "layers": 1, "heads": 1, "max_len": 20, "epochs": 1, "batch_size": 256}
SEEDS = [0, 1]
# A bench command that fails in its checks, or whose one train.py run fails in the data stage. Measured at about 15 s on
# 2 busy cores.
TIMEOUT_S = 300


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
    "sticky_ids": {"llm.id_stickiness": 1.0, "llm.dynamic_steps": 100},
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


# Bad settings fail with one message that names the key, before any run starts.


def bench_error(tmp_path, extra: list[str]) -> str:
    """Return the message of the ValueError that BenchConfig raises for the bench config with ``extra`` overrides."""
    with pytest.raises(ValueError) as caught:
        BenchConfig.from_dictconfig(bench_config(tmp_path, extra))
    return str(caught.value)


def run_error(tmp_path, cfg) -> str:
    """Return the message of the ValueError that run_benchmark raises for ``cfg``, after checking that no run started."""
    with pytest.raises(ValueError) as caught:
        run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench (bad settings test)")
    assert not list((tmp_path / "out").glob("*/seed*/bench_run.json"))
    return str(caught.value)


def run_bench_command(tmp_path, overrides: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m ttds.bench`` with its results, report and caches inside ``tmp_path``."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    paths = [f"out={tmp_path / 'out'}", "benchmarks_md=null", f"paths.cache_dir={tmp_path / 'cache'}"]
    command = [sys.executable, "-m", "ttds.bench", *DATASET_OVERRIDES, *paths, *overrides]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("value", ["no", "maybe"])
def test_report_only_rejects_string(tmp_path, value):
    message = bench_error(tmp_path, [f"report_only={value}"])

    assert message == f"report_only='{value}' must be a boolean; set it to true or false."


def test_seeds_rejects_scalar(tmp_path):
    message = bench_error(tmp_path, ["seeds=0"])

    assert message.startswith("seeds=0 must be a list")
    assert "[0, 1, 2]" in message


def test_seeds_rejects_word(tmp_path):
    message = bench_error(tmp_path, ["seeds=[a]"])

    assert message.startswith("seeds[0]='a' must be an integer")


def test_seeds_rejects_negative(tmp_path):
    message = bench_error(tmp_path, ["seeds=[-1]"])

    assert message.startswith("seeds=[-1] has a seed outside 0..4294967295")


def test_models_rejects_bare_name(tmp_path):
    message = bench_error(tmp_path, ["models=mostpop"])

    assert message.startswith("models='mostpop' must be a list")
    assert "['mostpop', 'sasrec']" in message


def test_models_rejects_repeat(tmp_path):
    message = bench_error(tmp_path, ["models=[mostpop,mostpop]"])

    assert message.startswith("models=['mostpop', 'mostpop'] names a model more than once")


def test_unknown_top_level_key_gets_suggestion(tmp_path):
    message = bench_error(tmp_path, ["+modles=x"])

    assert "unknown top-level keys ['modles']" in message
    assert message.endswith("Did you mean 'models'?")


def test_unknown_paths_key_gets_suggestion(tmp_path):
    message = bench_error(tmp_path, ["+paths.cach_dir=/tmp/unused"])

    assert "paths has unknown keys ['cach_dir']" in message
    assert message.endswith("Did you mean 'cache_dir'?")


def test_misspelt_model_gets_suggestion(tmp_path):
    message = bench_error(tmp_path, ["models=[mostpop,sasrek]"])

    assert "models ['sasrek'] are not in conf/bench.yaml `registry`" in message
    assert message.endswith("Did you mean 'sasrec'?")


def test_misspelt_base_experiment_gets_suggestion(tmp_path):
    message = bench_error(tmp_path, ["base_experiment=tinny"])

    assert message.startswith("base_experiment='tinny' is not in")
    assert message.endswith("Did you mean 'tiny'?")


def test_misspelt_registry_experiment_gets_suggestion(tmp_path):
    message = bench_error(tmp_path, ["registry.tiger.experiments=[tigr]"])

    assert message.startswith("experiments='tigr' is not in")
    assert message.endswith("Did you mean 'tiger'?")


def test_bench_keys_match_bench_yaml():
    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "bench.yaml"))
    yaml_keys = set(values) - {"defaults", "hydra"}

    assert set(BENCH_KEYS) == yaml_keys | {"dataset"}


def test_every_baseline_has_option_check():
    assert set(BASELINE_OPTION_CHECKS) == set(BASELINES)


def test_misspelt_sasrec_option_fails_before_runs(tmp_path):
    cfg = bench_config(tmp_path)
    with open_dict(cfg):
        cfg.registry.sasrec.options.sasrec.epoch = 1

    message = run_error(tmp_path, cfg)

    assert message.startswith("registry.sasrec.options.sasrec has unknown keys ['epoch']")
    assert message.endswith("Did you mean 'epochs'?")


def test_bad_sasrec_option_type_fails_before_runs(tmp_path):
    cfg = bench_config(tmp_path)
    with open_dict(cfg):
        cfg.registry.sasrec.options.sasrec.epochs = "x"

    message = run_error(tmp_path, cfg)

    assert message.startswith("registry.sasrec.options.sasrec.epochs='x' must be an integer")


def test_misspelt_mostpop_option_fails_before_runs(tmp_path):
    cfg = bench_config(tmp_path, ["+registry.mostpop.options.cutofs=[1]"])

    message = run_error(tmp_path, cfg)

    assert message.startswith("registry.mostpop.options has unknown keys ['cutofs']")
    assert message.endswith("Did you mean 'cutoffs'?")


def test_misspelt_train_override_fails_before_runs(tmp_path):
    cfg = bench_config(tmp_path, ["models=[mostpop,ttds]", "base_experiment=tiny", 'train_overrides=["llm.statc_steps=1"]'])

    message = run_error(tmp_path, cfg)

    assert message.startswith("train_overrides: the train.py config of model 'ttds' has no key 'llm.statc_steps'.")
    assert "Did you mean 'static_steps'?" in message


def test_misspelt_registry_override_names_entry(tmp_path):
    cfg = bench_config(tmp_path, ["models=[ttds]", "base_experiment=tiny", '+registry.ttds.overrides=["llm.statc_steps=1"]'])

    message = run_error(tmp_path, cfg)

    assert message.startswith("registry.ttds.overrides: the train.py config of model 'ttds' has no key 'llm.statc_steps'.")


def test_misspelt_train_group_option_gets_suggestion(tmp_path):
    cfg = bench_config(tmp_path, ["models=[ttds]", "base_experiment=tiny", 'train_overrides=["trainer=gpuu"]'])

    message = run_error(tmp_path, cfg)

    assert message.startswith("train_overrides sets trainer=gpuu, which is not in conf/trainer")
    assert message.endswith("Did you mean 'gpu'?")


def test_bad_train_override_type_fails_before_runs(tmp_path):
    cfg = bench_config(tmp_path, ["models=[ttds]", "base_experiment=tiny", 'train_overrides=["llm.static_steps=x"]'])

    message = run_error(tmp_path, cfg)

    assert message.startswith("the train.py config of model 'ttds' is invalid: llm.static_steps='x' must be an integer")


def test_bad_setting_gives_one_error_line(tmp_path):
    result = run_bench_command(tmp_path, ["report_only=no"])
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "error: report_only='no' must be a boolean" in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "error:" in line]) == 1, output


def test_failed_lm_run_ends_in_one_error_line(tmp_path):
    """A train.py run that fails after the checks, here on a missing dataset folder, ends the bench without a traceback."""
    missing = tmp_path / "no_such_dataset"
    result = run_bench_command(tmp_path, ["models=[ttds]", "seeds=[0]", "base_experiment=tiny", f"dataset.path={missing}"])
    output = result.stdout + result.stderr
    train_log = tmp_path / "out" / "ttds" / "seed0" / "train.log"
    errors = [line for line in output.splitlines() if "error:" in line]

    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert len(errors) == 1, output
    assert "1 of the benchmark runs failed. ttds seed 0: train.py exited with code 1" in errors[0]
    assert f"Its output is in {train_log}" in errors[0]
    assert str(missing) in errors[0]
    assert json.loads((train_log.parent / "bench_run.json").read_text())["status"] == "failed"


# The target check in the report (the verdict rules are in test_bench_target.py).


def test_unknown_target_model_gets_suggestion(tmp_path):
    cfg = bench_config(tmp_path, ["target.model=tdds"])

    with pytest.raises(ValueError, match=r"target names models \['tdds'\].*Did you mean 'ttds'"):
        BenchConfig.from_dictconfig(cfg)


def test_report_only_writes_target_section(tmp_path):
    # Two finished runs written by hand: mostpop with seed 0 and ttds with seed 0, as the runner lays them out.
    for model, hr in (("mostpop", 0.13), ("ttds", 0.09)):
        write_finished_run(tmp_path / "out", model, 0, {"test": {"hr@10": hr, "ndcg@10": hr / 2, "n_users": 10}})
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    cfg = bench_config(tmp_path, ["report_only=true", "models=[mostpop,ttds]", "seeds=[0]", "target.baselines=[mostpop]"])

    summary = run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench report_only=true (test)")

    assert summary["target"]["verdict"] == "not met"
    assert summary["target"]["rows"][0]["baseline"] == "mostpop"
    assert "Target: ttds above the best of mostpop on the test split" in (tmp_path / "BENCHMARKS.md").read_text()


def write_finished_run(out, model: str, seed: int, metrics: dict, record: dict | None = None) -> None:
    run_dir = out / model / f"seed{seed}"
    (run_dir / "evaluate").mkdir(parents=True)
    (run_dir / "bench_run.json").write_text(json.dumps(record or {"status": "finished", "wall_seconds": 1.0}))
    (run_dir / "evaluate" / "metrics.json").write_text(json.dumps(metrics))


def test_report_names_file_of_nan_metric(tmp_path):
    write_finished_run(tmp_path / "out", "mostpop", 0, {"test": {"hr@10": 0.1, "n_users": 10}})
    write_finished_run(tmp_path / "out", "mostpop", 1, {"test": {"hr@10": float("nan"), "n_users": 10}})
    cfg = bench_config(tmp_path, ["report_only=true", "models=[mostpop]", "benchmarks_md=null"])

    with pytest.raises(ValueError, match=r"mostpop/seed1/evaluate/metrics.json: test.hr@10 is nan, not a finite number"):
        run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench report_only=true (test)")


def test_report_without_wall_seconds(tmp_path):
    write_finished_run(tmp_path / "out", "mostpop", 0, {"test": {"hr@10": 0.1, "n_users": 10}}, {"status": "finished"})
    cfg = bench_config(tmp_path, ["report_only=true", "models=[mostpop]", "seeds=[0]", "benchmarks_md=null"])

    summary = run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench report_only=true (test)")

    assert "wall_seconds" not in summary["models"]["mostpop"]
    assert summary["models"]["mostpop"]["test"]["hr@10"]["mean"] == pytest.approx(0.1)


def test_target_outside_models_is_logged(tmp_path, caplog):
    write_finished_run(tmp_path / "out", "mostpop", 0, {"test": {"hr@10": 0.1, "n_users": 10}})
    cfg = bench_config(tmp_path, ["report_only=true", "models=[mostpop]", "seeds=[0]", "benchmarks_md=null"])

    with caplog.at_level(logging.INFO, logger="ttds.bench.report"):
        summary = run_benchmark(cfg, DATASET_OVERRIDES, "python -m ttds.bench report_only=true (test)")

    assert "target" not in summary
    assert "target not checked: target.model=ttds is not among models=['mostpop']" in caplog.text
