"""The dynamic-vs-static benchmark's arguments, overrides, steps outside a Trainer and report, on a tiny model."""

import pytest
import torch
from omegaconf import OmegaConf
from test_backbone import build_bpe_tokenizer, tiny_model

from benchmarks.dynamic_vs_static import (
    StandaloneDynamicModule,
    StandaloneStaticModule,
    apply_overrides,
    format_summary,
    format_table,
    measure,
    parse_args,
    ratios,
    stage_run,
    summarise,
)
from ttds.backbone.collate import PromptCollator
from ttds.llm.config import LLMConfig
from ttds.llm.dynamic import EntitySide
from ttds.llm.pooling import encode_texts
from ttds.tasks.base import Vocabulary
from ttds.tokenizer.quantizer import QuantizerConfig
from ttds.tokenizer.towers import DualModalityVAE, TowerConfig

ITEM_TEXTS = [f"item {i} is a film about {word}" for i, word in enumerate("cats dogs ships trains rain snow".split())]
USER_TEXTS = [f"user {i} watched {ITEM_TEXTS[i]}" for i in range(4)]
PAIRS = [
    ("the next item after cats is", "dogs"),
    ("a longer prompt about ships and trains", "rain"),
    ("user 1 watched", "snow"),
    ("the film about ice", "fire"),
]


def test_parse_args_takes_overrides_anywhere(tmp_path):
    args = parse_args(["llm.refresh_every=30", "--run-dir", str(tmp_path), "--steps", "6", "llm.refresh_mode=rolling"])

    assert args.overrides == ["llm.refresh_every=30", "llm.refresh_mode=rolling"]
    assert args.steps == 6
    assert args.warmup == 2


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--warmup", "-1"], ["tasks.all=1"], ["llm.refresh_every"]])
def test_parse_args_rejects_bad_values(tmp_path, bad):
    with pytest.raises(SystemExit):
        parse_args(["--run-dir", str(tmp_path), *bad])


def test_overrides_parse_as_yaml():
    cfg = OmegaConf.create({"llm": {"refresh_every": 50, "user_refresh_every": 200, "refresh_mode": "full"}, "seed": 1})

    merged = apply_overrides(cfg, ["llm.refresh_every=30", "llm.user_refresh_every=null", "llm.refresh_mode=rolling"])

    assert merged.llm.refresh_every == 30
    assert merged.llm.user_refresh_every is None
    assert merged.llm.refresh_mode == "rolling"
    assert merged.seed == 1


def _tiny_stages():
    """Build both stages on tiny Llama copies, with semantic-only towers over the LM's own text vectors."""
    tokenizer = build_bpe_tokenizer(with_bos=True)
    tokenizer.pad_token = tokenizer.eos_token
    cfg = LLMConfig(
        refresh_every=3, user_refresh_every=4, refresh_mode="rolling", tower_batch_size=4, align_batch_size=4, batch_size=2
    )
    dynamic_model = tiny_model("llama", len(tokenizer))
    static_model = tiny_model("llama", len(tokenizer))

    sides = []
    for name, texts in (("item", ITEM_TEXTS), ("user", USER_TEXTS)):
        quantizer = QuantizerConfig(levels=2, codebook_size=4, kmeans_init=False)
        config = TowerConfig(name=name, modalities="semantic", latent_dim=4, hidden_dims=[8], quantizer=quantizer)
        semantic = encode_texts(dynamic_model, tokenizer, texts, 4, 32, torch.device("cpu"))  # (N, 32)
        keys = [f"{name}{i}" for i in range(len(texts))]
        sides.append(EntitySide(name, DualModalityVAE(config, 32, 8), texts, keys, semantic, None, 8 if name == "item" else 0))

    def vocab() -> Vocabulary:
        return Vocabulary([""] * len(ITEM_TEXTS), [""] * len(USER_TEXTS), ITEM_TEXTS, ITEM_TEXTS, USER_TEXTS)

    dynamic = StandaloneDynamicModule(dynamic_model, tokenizer, cfg, 10, sides, vocab(), text_max_length=32)
    static = StandaloneStaticModule(static_model, cfg, 10)
    collator = PromptCollator(tokenizer, 64)
    runs = [stage_run("dynamic", dynamic, PAIRS, collator), stage_run("static", static, PAIRS, collator)]
    dynamic.update_vocabulary()
    return runs


def test_steps_run_without_a_trainer():
    runs = _tiny_stages()
    dynamic, static = (run.module for run in runs)
    before = [p.detach().clone() for p in static.parameters() if p.requires_grad]
    batches = [[0, 1], [2, 3], [1, 2], [3, 0]]

    measure(runs, batches, warmup=1, round_steps=2, gradient_clip=1.0)

    assert dynamic.global_step == 4
    assert static.global_step == 4
    assert [len(run.step_seconds) for run in runs] == [3, 3]
    assert all(seconds > 0 for run in runs for seconds in run.step_seconds)
    # Rolling slices of steps 0..3: items every 3 steps, users every 4, so each side is re-embedded in full once.
    assert dynamic.reembedded == {"item": len(ITEM_TEXTS) + 2, "user": len(USER_TEXTS)}
    assert sum(runs[0].reembedded) == dynamic.reembedded["item"] + dynamic.reembedded["user"] - 2 - 1
    assert all(len(ids) > 0 for ids in dynamic.vocab.item_ids)
    assert runs[1].reembedded == []
    after = [p for p in static.parameters() if p.requires_grad]
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))


def test_report_rows_and_ratios():
    runs = _tiny_stages()
    measure(runs, [[0, 1], [2, 3]], warmup=0, round_steps=1, gradient_clip=0.0)

    rows = [summarise(run) for run in runs]
    ratio = ratios(rows[0], rows[1])

    assert rows[0]["reembedded_per_step"] == [2 + 1, 2 + 1]
    assert rows[1]["refresh_seconds_mean"] is None
    assert ratio["mean"] == pytest.approx(rows[0]["step_seconds_mean"] / rows[1]["step_seconds_mean"])
    assert ratio["meets_target"] == (ratio["mean"] <= 1.5)
    table = format_table(rows).splitlines()
    assert len(table) == 4
    assert table[1].count("|") == table[0].count("|")
    assert table[3].count("| - ") == 3

    settings = {"refresh_mode": "rolling", "interval": {"item": 3, "user": 4}}
    load = {"before": [1.0, 1.0, 1.0], "after": [2.0, 2.0, 2.0]}
    summary = format_summary({"ratio": ratio, "refresh": settings, "load_average": load, "batch_size": 2, "threads": 1})
    assert "item every 3, user every 4" in summary
