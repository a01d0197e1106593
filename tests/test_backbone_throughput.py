"""The backbone throughput benchmark's config lookup, round schedule, report and one timed step on a tiny model."""

import json

import pytest
import torch

from benchmarks.backbone_throughput import (
    backbone_settings,
    build_backbone,
    find_run_config,
    format_table,
    parse_args,
    round_schedule,
    shipped_backbone_configs,
    summarise,
    train_step,
)
from ttds.llm.config import LLMConfig


def test_round_schedule_covers_every_step():
    rounds = round_schedule(12, 5)

    assert [list(steps) for steps in rounds] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert round_schedule(3, 5) == [range(0, 3)]


def test_parse_args_rejects_bad_values(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--run-dir", str(tmp_path), "--steps", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--run-dir", str(tmp_path), "--backbones", "scratch-llama,scratch-llama"])

    args = parse_args(["--run-dir", str(tmp_path), "--backbones", " scratch-llama , embedded-minilm "])
    assert args.backbones == ["scratch-llama", "embedded-minilm"]


def test_shipped_configs_cover_each_kind(tmp_path):
    shipped = shipped_backbone_configs()

    assert set(shipped) == {"embedded-minilm", "scratch-llama", "local-hf"}
    assert backbone_settings("local-hf", shipped, tmp_path)["path"] == str(tmp_path)
    with pytest.raises(ValueError, match="--local-hf"):
        backbone_settings("local-hf", shipped, None)
    with pytest.raises(ValueError, match="has no file"):
        backbone_settings("gpt-9", shipped, None)


def test_run_config_lookup_order(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config"):
        find_run_config(tmp_path, None)

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert find_run_config(tmp_path, None) == tmp_path / ".hydra" / "config.yaml"

    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text(json.dumps({"seed": 1}))
    assert find_run_config(tmp_path, None) == tmp_path / "llm" / "config.json"

    with pytest.raises(FileNotFoundError, match="not found"):
        find_run_config(tmp_path, tmp_path / "missing.yaml")


def test_timed_step_and_report():
    settings = dict(shipped_backbone_configs()["scratch-llama"])
    settings["scratch"] = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    settings["max_length"] = 64
    run = build_backbone("scratch-llama", settings, ["<a_0>", "<a_1>"], LLMConfig(), seed=0)
    pairs = [("the next item after <a_0> is", "<a_1>"), ("a longer prompt about the history <a_1> <a_0>", "<a_0>")]
    before = [p.detach().clone() for p in run.model.parameters() if p.requires_grad]

    train_step(run, pairs, gradient_clip=1.0, timed=False)
    train_step(run, pairs, gradient_clip=1.0, timed=True)
    after = [p for p in run.model.parameters() if p.requires_grad]

    assert len(run.step_seconds) == 1
    assert run.step_seconds[0] > 0
    assert run.tokens_per_example[0] <= run.padded_per_example[0]
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))

    rows = summarise([run, run], batch_size=len(pairs))
    assert rows[0]["examples_per_second"] == pytest.approx(len(pairs) / run.step_seconds[0])
    assert rows[1]["ratio_to_first"] == pytest.approx(1.0)
    table = format_table(rows).splitlines()
    assert len(table) == 4
    assert table[1].count("|") == table[0].count("|")
