"""The benchmark's target check: verdicts from mean and standard deviation, and the checks of its config."""


import pytest

from ttds.bench.report import mean_std
from ttds.bench.target import MET, NOT_CHECKED, NOT_MET, UNDETERMINED, TargetConfig, check_target, target_markdown
from ttds.data.config import build_strict

TARGET = TargetConfig(model="ttds", baselines=["mostpop", "sasrec"], metrics=["hr@10", "ndcg@10"])
MOSTPOP = {"hr@10": [0.13, 0.13, 0.13], "ndcg@10": [0.06, 0.06, 0.06]}


def summary_of(**per_model: dict[str, list[float]]) -> dict:
    """Build the report's per-model summary from {model: {metric: [value per seed]}} on the test split."""
    summary = {}
    for model, metrics in per_model.items():
        seeds = list(range(len(next(iter(metrics.values())))))
        summary[model] = {"seeds": seeds, "test": {metric: mean_std(values) for metric, values in metrics.items()}}
    return summary


def test_clear_margin_is_met():
    models = summary_of(
        ttds={"hr@10": [0.30, 0.31, 0.32], "ndcg@10": [0.15, 0.16, 0.17]},
        mostpop={"hr@10": [0.13, 0.13, 0.13], "ndcg@10": [0.06, 0.06, 0.06]},
        sasrec={"hr@10": [0.20, 0.21, 0.19], "ndcg@10": [0.10, 0.10, 0.10]},
    )

    result = check_target(TARGET, models)

    assert result["verdict"] == MET
    assert [row["baseline"] for row in result["rows"]] == ["sasrec", "sasrec"]
    assert result["rows"][0]["difference"] == pytest.approx(0.31 - 0.20)
    assert result["rows"][0]["std"] == pytest.approx(0.01)


def test_margin_inside_one_std_is_not_met():
    # ttds is ahead by 0.005 on HR@10, but its own standard deviation is 0.01.
    models = summary_of(
        ttds={"hr@10": [0.195, 0.205, 0.215], "ndcg@10": [0.20, 0.21, 0.22]},
        mostpop=MOSTPOP,
        sasrec={"hr@10": [0.200, 0.200, 0.200], "ndcg@10": [0.10, 0.10, 0.10]},
    )

    result = check_target(TARGET, models)

    assert result["rows"][0]["verdict"] == NOT_MET
    assert result["rows"][1]["verdict"] == MET
    assert result["verdict"] == NOT_MET


def test_below_baseline_one_seed_not_met():
    models = summary_of(ttds={"hr@10": [0.10], "ndcg@10": [0.05]}, mostpop=MOSTPOP, sasrec={"hr@10": [0.20, 0.21], "ndcg@10": [0.10, 0.11]})

    result = check_target(TARGET, models)

    assert result["verdict"] == NOT_MET
    assert result["rows"][0]["difference"] < 0


def test_above_baseline_one_seed_undetermined():
    models = summary_of(ttds={"hr@10": [0.30], "ndcg@10": [0.15]}, mostpop=MOSTPOP, sasrec={"hr@10": [0.20, 0.21], "ndcg@10": [0.10, 0.11]})

    result = check_target(TARGET, models)

    assert result["verdict"] == UNDETERMINED
    assert result["rows"][0]["std"] is None
    assert result["reason"] == "['ttds'] have one finished seed, so no standard deviation"


def test_best_baseline_chosen_per_metric():
    models = summary_of(
        ttds={"hr@10": [0.30, 0.30], "ndcg@10": [0.30, 0.30]},
        mostpop={"hr@10": [0.25, 0.25], "ndcg@10": [0.05, 0.05]},
        sasrec={"hr@10": [0.20, 0.20], "ndcg@10": [0.10, 0.10]},
    )

    result = check_target(TARGET, models)

    assert [row["baseline"] for row in result["rows"]] == ["mostpop", "sasrec"]


def test_missing_model_is_not_checked():
    models = summary_of(mostpop=MOSTPOP, sasrec={"hr@10": [0.20, 0.21], "ndcg@10": [0.10, 0.11]})

    result = check_target(TARGET, models)

    assert result["verdict"] == NOT_CHECKED
    assert result["reason"].startswith("['ttds'] are not among this invocation's models")


def test_baseline_outside_models_is_not_checked():
    # A stronger baseline that was left out of the invocation must not turn the verdict into "met".
    models = summary_of(ttds={"hr@10": [0.30, 0.31], "ndcg@10": [0.15, 0.16]}, mostpop=MOSTPOP)

    result = check_target(TARGET, models)

    assert result["verdict"] == NOT_CHECKED
    assert result["reason"].startswith("['sasrec'] are not among")
    assert result["rows"] == []


def test_unfinished_baseline_is_not_checked():
    models = summary_of(ttds={"hr@10": [0.30, 0.31], "ndcg@10": [0.15, 0.16]}, mostpop=MOSTPOP)
    models["sasrec"] = {"seeds": [], "missing_seeds": [0, 1]}

    result = check_target(TARGET, models)

    assert result["verdict"] == NOT_CHECKED
    assert result["reason"] == "['sasrec'] have no finished run"


def test_split_not_evaluated_is_not_checked():
    models = summary_of(ttds={"hr@10": [0.30, 0.31], "ndcg@10": [0.15, 0.16]}, mostpop=MOSTPOP, sasrec=MOSTPOP)

    result = check_target(TargetConfig(model="ttds", baselines=["mostpop", "sasrec"], split="valid"), models)

    assert result["verdict"] == NOT_CHECKED
    assert "evaluated the valid split; eval.splits decides" in result["reason"]


def test_tiny_margin_with_zero_std_prints_digits():
    models = summary_of(ttds={"hr@10": [0.1300001] * 3, "ndcg@10": [0.07] * 3}, mostpop=MOSTPOP, sasrec=MOSTPOP)

    result = check_target(TARGET, models)
    text = target_markdown(result)

    assert result["rows"][0]["verdict"] == MET
    assert "| +1.0e-07 | inf | met |" in text


def test_missing_metric_is_not_checked():
    models = summary_of(ttds={"hr@10": [0.30, 0.31]}, mostpop=MOSTPOP, sasrec={"hr@10": [0.20, 0.21], "ndcg@10": [0.10, 0.11]})

    result = check_target(TARGET, models)

    assert result["verdict"] == NOT_CHECKED
    assert result["reason"] == "metric 'ndcg@10' is missing from the test results of ['ttds']."
    assert result["rows"] == []


def test_misspelt_metric_gets_suggestion():
    models = summary_of(ttds={"hr@10": [0.30, 0.31]}, mostpop=MOSTPOP, sasrec=MOSTPOP)

    result = check_target(TargetConfig(model="ttds", baselines=["mostpop", "sasrec"], metrics=["hr@11"]), models)

    assert result["verdict"] == NOT_CHECKED
    assert result["reason"].endswith("Did you mean 'hr@10'?")


def test_markdown_names_verdict_and_baseline():
    models = summary_of(
        ttds={"hr@10": [0.10, 0.11], "ndcg@10": [0.05, 0.06]}, mostpop=MOSTPOP, sasrec={"hr@10": [0.20, 0.21], "ndcg@10": [0.10, 0.11]}
    )

    text = target_markdown(check_target(TARGET, models))

    assert "**not met**" in text
    assert "| hr@10 | 0.1050 ± 0.0071 (2 seeds) | sasrec | 0.2050 ± 0.0071 (2 seeds) | -0.1000 |  | not met |" in text


def test_markdown_counts_one_seed():
    models = summary_of(ttds={"hr@10": [0.1], "ndcg@10": [0.1]}, mostpop=MOSTPOP, sasrec={"hr@10": [0.2], "ndcg@10": [0.2]})

    assert "(1 seed)" in target_markdown(check_target(TARGET, models))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": "ttds", "baselines": []}, r"target.baselines=\[\] is empty"),
        ({"model": "ttds", "baselines": ["ttds"]}, "cannot be its own baseline"),
        ({"model": "ttds", "baselines": ["sasrec"], "split": "train"}, "target.split='train' is invalid"),
        ({"model": "ttds", "baselines": ["sasrec"], "metrics": []}, r"target.metrics=\[\] is empty"),
    ],
)
def test_target_config_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        build_strict(TargetConfig, values, "target")
