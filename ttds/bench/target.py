"""The benchmark's target check: does one model beat the best baseline by more than one standard deviation?

For each metric the reference is the baseline with the highest mean. The model meets the target on that metric
when its mean exceeds the reference mean by more than the larger of the two sample standard deviations over
seeds. A model below the reference misses the target whatever the spread. A model above it with fewer than two
finished seeds on either side is "undetermined", because one seed has no standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ttds.data.config import closest_hint

MET, NOT_MET, UNDETERMINED, NOT_CHECKED = "met", "not met", "undetermined", "not checked"
SPLITS = ("test", "valid")


@dataclass
class TargetConfig:
    """The ``target`` group of conf/bench.yaml: which model must beat which baselines, on which metrics and split."""

    model: str  # the model under test, e.g. ttds
    baselines: list[str]  # the models it must beat. Per metric, the one with the best mean is the reference
    metrics: list[str] = field(default_factory=lambda: ["hr@10", "ndcg@10"])
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"target.split={self.split!r} is invalid; use one of {list(SPLITS)}.")
        if not self.baselines:
            raise ValueError("target.baselines=[] is empty; name the models the target model must beat, e.g. [mostpop,sasrec].")
        if not self.metrics:
            raise ValueError("target.metrics=[] is empty; name at least one metric, e.g. [hr@10,ndcg@10].")
        if self.model in self.baselines:
            raise ValueError(f"target.model={self.model!r} is also in target.baselines; a model cannot be its own baseline.")


def _metric_row(metric: str, own: dict[str, Any], references: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compare ``own`` (mean_std of the model) with the best of ``references`` ({baseline: mean_std}) on one metric."""
    name, best = max(references.items(), key=lambda item: item[1]["mean"])
    difference = own["mean"] - best["mean"]
    row = {"metric": metric, "model": own, "baseline": name, "reference": best, "difference": difference, "std": None, "ratio": None}

    if difference <= 0:
        row["verdict"] = NOT_MET
    elif own["std"] is None or best["std"] is None:
        row["verdict"] = UNDETERMINED
    else:
        row["std"] = max(own["std"], best["std"])
        row["ratio"] = difference / row["std"] if row["std"] > 0 else math.inf
        row["verdict"] = MET if difference > row["std"] else NOT_MET
    return row


def _not_checked_reason(target: TargetConfig, models: dict[str, Any]) -> str | None:
    """Name what keeps ``target`` from being checked on ``models`` (the report's per-model summary), or return None."""
    names = [target.model, *target.baselines]
    absent = [name for name in names if name not in models]
    if absent:
        return f"{absent} are not among this invocation's models; add them to models=[...] (report_only=true reads finished runs)"

    unfinished = [name for name in names if not models[name]["seeds"]]
    if unfinished:
        return f"{unfinished} have no finished run"

    # A split's metrics are those every finished seed reports, so one seed without the split empties it.
    no_split = [name for name in names if not models[name].get(target.split)]
    if no_split:
        return (
            f"not every finished run of {no_split} evaluated the {target.split} split; "
            f"eval.splits decides which splits a run evaluates"
        )

    for metric in target.metrics:
        lacking = [name for name in names if metric not in models[name][target.split]]
        if lacking:
            # A metric that no model reports is most likely misspelt, so only then suggest the closest name.
            known = set().union(*(models[name][target.split] for name in names))
            hint = "" if metric in known else closest_hint([metric], known)
            return f"metric {metric!r} is missing from the {target.split} results of {lacking}.{hint}"
    return None


def check_target(target: TargetConfig, models: dict[str, Any]) -> dict[str, Any]:
    """Check ``target`` against the report's per-model summary ({model: {seeds, split: {metric: mean_std}}}).

    Returns {"verdict", "reason", "rows"}. The overall verdict is "met" when every metric is met, "not met" when
    any metric is not met, else "undetermined". "not checked" means a model or metric is missing, and the reason
    names it; then there are no rows.
    """
    result: dict[str, Any] = {"model": target.model, "split": target.split, "baselines": target.baselines, "rows": [], "reason": None}
    reason = _not_checked_reason(target, models)
    if reason is not None:
        return result | {"verdict": NOT_CHECKED, "reason": reason}

    own = models[target.model][target.split]
    for metric in target.metrics:
        references = {name: models[name][target.split][metric] for name in target.baselines}
        result["rows"].append(_metric_row(metric, own[metric], references))

    verdicts = {row["verdict"] for row in result["rows"]}
    if verdicts == {MET}:
        result["verdict"] = MET
    elif NOT_MET in verdicts:
        result["verdict"] = NOT_MET
    else:
        result["verdict"] = UNDETERMINED
        single = [name for name in (target.model, *target.baselines) if len(models[name]["seeds"]) < 2]
        result["reason"] = f"{single} have one finished seed, so no standard deviation"
    return result


def _difference(value: float) -> str:
    # Four decimals match the tables, but a margin below their resolution must not print as +0.0000.
    return f"{value:+.4f}" if value == 0 or abs(value) >= 5e-5 else f"{value:+.1e}"


def _stats(stats: dict[str, Any]) -> str:
    std = "n/a" if stats["std"] is None else f"{stats['std']:.4f}"
    seeds = "1 seed" if stats["n"] == 1 else f"{stats['n']} seeds"
    return f"{stats['mean']:.4f} ± {std} ({seeds})"


def target_markdown(result: dict[str, Any]) -> str:
    """Render the target check as one sentence and, when it was checked, one table row per metric."""
    lead = (
        f"Target: {result['model']} above the best of {', '.join(result['baselines'])} on the {result['split']} split, "
        "by more than the larger sample standard deviation of the two"
    )
    if result["verdict"] == NOT_CHECKED:
        return f"{lead}: **not checked** ({result['reason'].rstrip('.')}).\n"

    note = f" ({result['reason']})" if result["reason"] else ""
    lines = [
        f"{lead}: **{result['verdict']}**{note}.",
        "",
        f"| metric | {result['model']} | best baseline | its mean ± std | difference | difference / std | verdict |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        # The ratio is inf when both standard deviations are 0, and empty when it is not defined.
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.1f}"
        lines.append(
            f"| {row['metric']} | {_stats(row['model'])} | {row['baseline']} | {_stats(row['reference'])} | "
            f"{_difference(row['difference'])} | {ratio} | {row['verdict']} |"
        )
    return "\n".join(lines) + "\n"
