"""Benchmark report: mean and sample standard deviation over seeds, summary.json, a BENCHMARKS.md section, plots.

The standard deviation is the sample one (divisor n - 1) over the seeds whose run finished. With one finished
seed it is undefined and reported as null ("n/a" in the table). Plots are drawn on ``matplotlib.figure.Figure``
objects and saved as PNG through the Agg canvas, so no display or pyplot state is needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from matplotlib.figure import Figure

from ttds.bench.target import SPLITS, check_target, target_markdown

if TYPE_CHECKING:
    from ttds.bench.runner import BenchConfig

log = logging.getLogger(__name__)

TABLE_METRICS = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr@10", "coverage@10", "invalid_user_rate")
PLOT_METRICS = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr@10")
LOSS_COLUMN = "train/lm_loss"


def mean_std(values: list[float]) -> dict[str, Any]:
    """Return the mean and the sample standard deviation (None for fewer than two values) of ``values``."""
    if not values:
        raise ValueError("mean_std needs at least one value; no run of this model finished.")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": list(values),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def collect_runs(out: Path, models: list[str], seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Read bench_run.json and evaluate/metrics.json of every (model, seed) run under ``out``; missing files give None."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        runs[model] = []
        for seed in seeds:
            run_dir = out / model / f"seed{seed}"
            record = _read_json(run_dir / "bench_run.json") or {}
            finished = record.get("status") == "finished"
            metrics = _read_json(run_dir / "evaluate" / "metrics.json") if finished else None
            runs[model].append({"seed": seed, "run_dir": run_dir, "record": record, "metrics": metrics})
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Aggregate each model's finished runs: {model: {seeds, missing_seeds, wall_seconds, <split>: {metric: mean_std}}}."""
    models: dict[str, Any] = {}
    for model, model_runs in runs.items():
        finished = [run for run in model_runs if run["metrics"] is not None]
        entry: dict[str, Any] = {
            "seeds": [run["seed"] for run in finished],
            "missing_seeds": [run["seed"] for run in model_runs if run["metrics"] is None],
        }
        walls = [float(run["record"]["wall_seconds"]) for run in finished if "wall_seconds" in run["record"]]
        if walls:
            entry["wall_seconds"] = mean_std(walls)
        if finished:
            for split in SPLITS:
                names = [name for name in finished[0]["metrics"].get(split, {}) if all(name in run["metrics"].get(split, {}) for run in finished)]
                entry[split] = {name: mean_std([_metric_value(run, split, name) for run in finished]) for name in names}
        models[model] = entry
    return models


def _metric_value(run: dict[str, Any], split: str, name: str) -> float:
    """Return one finished run's metric, raising ValueError that names the file when it is not a finite number."""
    value = run["metrics"][split][name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        path = run["run_dir"] / "evaluate" / "metrics.json"
        raise ValueError(f"{path}: {split}.{name} is {value!r}, not a finite number; delete {run['run_dir']} and rerun it.")
    return float(value)


def _cell(stats: dict[str, Any] | None, digits: int = 4) -> str:
    if stats is None:
        return ""
    std = "n/a" if stats["std"] is None else f"{stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {std}"


def markdown_table(models: dict[str, Any], split: str, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """Render one split as a Markdown table: one row per model, cells "mean ± std", plus runs, users and wall time."""
    header = ["model", "runs", "users", *metrics, "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|" + "---:|" * (len(metrics) + 1)]
    for model, entry in models.items():
        values = entry.get(split, {})
        users = values.get("n_users")
        cells = [model, str(len(entry["seeds"])), f"{users['mean']:.0f}" if users else ""]
        cells += [_cell(values.get(name)) for name in metrics]
        wall = entry.get("wall_seconds")
        cells.append(f"{wall['mean']:.0f}" if wall else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the report is meant to be read by others
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def section_markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section} start -->", f"<!-- bench:{section} end -->"


def replace_section(document: str, section: str, body: str) -> str:
    """Replace the text between the section's markers in ``document``, or append the marked section at the end."""
    start, end = section_markers(section)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(document)) > 1:
        raise ValueError(f"the document has more than one '{start}' section; keep one and delete the others.")
    if pattern.search(document):
        return pattern.sub(lambda _: block, document)
    if start in document or end in document:
        raise ValueError(f"the document has only one of '{start}' and '{end}'; add the missing marker or delete the other.")
    return document.rstrip("\n") + ("\n\n" if document.strip() else "") + block + "\n"


def _machine_line(machines: list[dict[str, Any]]) -> str:
    parts = []
    for machine in machines:
        gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
        parts.append(f"{machine.get('cpu_model')} ({machine.get('cpu_cores')} cores), {machine.get('ram_gib')} GiB RAM, {gpus}")
    return "; ".join(dict.fromkeys(parts)) or "unknown"


def section_body(bench: BenchConfig, summary: dict[str, Any], plots: list[Path]) -> str:
    """Build the generated Markdown of one BENCHMARKS.md section."""
    commits = [
        f"{git['commit'][:12]}{' with uncommitted changes' if git.get('dirty') else ''}" for git in summary["git"] if git.get("commit")
    ]
    loads = [load for load in summary["load_average_1m"] if load is not None]
    lines = [
        f"### {bench.section}: {', '.join(bench.models)} (generated by `python -m ttds.bench`)",
        "",
        "Commands that produced these runs: " + ", ".join(f"`{command}`" for command in summary["run_commands"]),
        "",
        f"Seeds {bench.seeds}; each cell is the mean ± sample standard deviation over the finished seeds. "
        "Full ranking over the whole catalogue, leave-one-out, history items not excluded (except by a model with "
        "`exclude_history: true` in its options).",
        f"Machine: {_machine_line(summary['machines'])}. Git commit: {', '.join(dict.fromkeys(commits)) or 'unknown'}. "
        f"Generated {summary['generated_at']}."
        + (f" 1-minute load average at run start: {min(loads):.1f} to {max(loads):.1f}, so wall times are noisy." if loads else ""),
    ]
    for split in SPLITS:
        lines += ["", f"{split.capitalize()} split:", "", markdown_table(summary["models"], split).rstrip("\n")]
    missing = {model: entry["missing_seeds"] for model, entry in summary["models"].items() if entry["missing_seeds"]}
    if missing:
        lines += ["", f"Runs not finished (missing from the means): {missing}."]
    if summary.get("target"):
        lines += ["", target_markdown(summary["target"]).rstrip("\n")]
    if plots and bench.benchmarks_md is not None:
        links = [f"[{plot.stem}]({os.path.relpath(plot, bench.benchmarks_md.parent)})" for plot in plots]
        lines += ["", "Plots: " + ", ".join(links) + "."]
    return "\n".join(lines) + "\n"


def _save(figure: Figure, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.tight_layout()
    figure.savefig(temporary, dpi=100)
    os.replace(temporary, path)


def plot_metrics(models: dict[str, Any], path: Path, split: str = "test") -> bool:
    """Draw grouped bars of each model's mean metrics with sample-std error bars; return False when nothing finished."""
    finished_models = [model for model, entry in models.items() if split in entry]
    if not finished_models:
        return False
    figure = Figure(figsize=(max(6.0, 1.2 * len(PLOT_METRICS) * max(1, len(finished_models)) / 2), 4))
    axes = figure.add_subplot()
    width = 0.8 / len(finished_models)
    for index, model in enumerate(finished_models):
        stats = [models[model][split].get(name) for name in PLOT_METRICS]
        means = [entry["mean"] if entry else 0.0 for entry in stats]
        errors = [(entry["std"] or 0.0) if entry else 0.0 for entry in stats]
        positions = [metric + (index - (len(finished_models) - 1) / 2) * width for metric in range(len(PLOT_METRICS))]
        axes.bar(positions, means, width=width, yerr=errors, capsize=3, label=f"{model} ({len(models[model]['seeds'])} seeds)")
    axes.set_xticks(range(len(PLOT_METRICS)), PLOT_METRICS)
    axes.set_ylabel(f"{split} metric (mean ± sample std over seeds)")
    axes.legend()
    _save(figure, path)
    return True


def training_curve(run_dir: Path) -> pl.DataFrame | None:
    """Read ``train/lm_loss`` by global step from the Lightning CSV logs of stage1 then stage2; None when absent.

    Stage 2 restarts its step count, so its steps are shifted past the last logged stage 1 step. A resumed
    stage writes a new ``version_<n>`` folder; for a step logged twice the row of the later version is kept.
    """
    frames, offset = [], 0
    for stage in sorted((run_dir / "llm").glob("stage*")):
        files = sorted(stage.glob("logs/**/metrics.csv"), key=lambda file: (len(file.parts), str(file)))
        rows = [pl.read_csv(file, infer_schema_length=None) for file in files]
        rows = [frame.select("step", LOSS_COLUMN).drop_nulls() for frame in rows if LOSS_COLUMN in frame.columns and "step" in frame.columns]
        if not rows:
            continue
        curve = pl.concat(rows).unique("step", keep="last", maintain_order=True).sort("step")
        frames.append(curve.with_columns((pl.col("step") + offset).alias("step"), pl.lit(stage.name).alias("stage")))
        offset += int(curve["step"].max()) + 1
    return pl.concat(frames) if frames else None


def plot_training_curves(runs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Draw the LM loss curve of every run that has Lightning CSV logs; return False when none has."""
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    drawn = False
    for color, (model, model_runs) in enumerate(runs.items()):
        for run in model_runs:
            curve = training_curve(run["run_dir"])
            if curve is None:
                continue
            axes.plot(curve["step"].to_list(), curve[LOSS_COLUMN].to_list(), color=f"C{color}", alpha=0.8, label=f"{model} seed {run['seed']}")
            drawn = True
    if not drawn:
        return False
    axes.set_xlabel("optimizer step (stage 1, then stage 2)")
    axes.set_ylabel(LOSS_COLUMN)
    axes.legend(fontsize="small")
    _save(figure, path)
    return True


def code_usage(run_dir: Path) -> dict[str, list[float]] | None:
    """Read per-level code usage (fraction of K used) of both towers from tokenize/diagnostics.json; None when absent."""
    diagnostics = _read_json(run_dir / "tokenize" / "diagnostics.json")
    if diagnostics is None:
        return None
    usage = {}
    for side in ("item", "user"):
        flat = diagnostics.get(side, {})
        levels = sorted(int(match.group(1)) for key in flat if (match := re.fullmatch(rf"tokenizer/{side}/level(\d+)_usage", key)))
        if levels:
            usage[side] = [float(flat[f"tokenizer/{side}/level{level}_usage"]) for level in levels]
    return usage or None


def plot_code_usage(runs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Draw each model's per-level code usage of both towers, averaged over seeds; return False when no run has any."""
    per_model: dict[str, dict[str, list[list[float]]]] = {}
    for model, model_runs in runs.items():
        for run in model_runs:
            for side, levels in (code_usage(run["run_dir"]) or {}).items():
                per_model.setdefault(model, {}).setdefault(side, []).append(levels)
    if not per_model:
        return False

    figure = Figure(figsize=(10, 4))
    width = 0.8 / len(per_model)
    for column, side in enumerate(("item", "user")):
        axes = figure.add_subplot(1, 2, column + 1)
        max_levels = 0
        for index, (model, sides) in enumerate(per_model.items()):
            if side not in sides:
                continue
            n_levels = min(len(levels) for levels in sides[side])
            means = [statistics.fmean(levels[level] for levels in sides[side]) for level in range(n_levels)]
            positions = [level + (index - (len(per_model) - 1) / 2) * width for level in range(n_levels)]
            axes.bar(positions, means, width=width, label=model)
            max_levels = max(max_levels, n_levels)
        axes.set_xticks(range(max_levels))
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("level")
        axes.set_ylabel("codes used / K (mean over seeds)")
        axes.set_title(f"{side} tower")
        axes.legend(fontsize="small")
    _save(figure, path)
    return True


def write_report(bench: BenchConfig, invocation: str = "") -> dict[str, Any]:
    """Write ``<out>/summary.json``, the plots and the BENCHMARKS.md section from the runs under ``bench.out``."""
    runs = collect_runs(bench.out, bench.models, bench.seeds)
    records = [run["record"] for model_runs in runs.values() for run in model_runs if run["record"]]
    summary = {
        "section": bench.section,
        "command": invocation,
        "models": summarize(runs),
        "seeds": bench.seeds,
        "std": "sample standard deviation (divisor n - 1) over finished seeds; null with one seed",
        "machines": list({json.dumps(record["machine"], sort_keys=True): record["machine"] for record in records if "machine" in record}.values()),
        "run_commands": list(dict.fromkeys(record.get("bench_command") or "python -m ttds.bench (called from Python)" for record in records)),
        "load_average_1m": [record.get("machine", {}).get("load_average_1m") for record in records],
        "git": list({json.dumps(record["git"], sort_keys=True): record["git"] for record in records if "git" in record}.values()),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # The target is checked only when its model is in this invocation, so a baseline-only run reports no verdict.
    if bench.target is not None and bench.target.model in bench.models:
        summary["target"] = check_target(bench.target, summary["models"])
    elif bench.target is not None:
        log.info("target not checked: target.model=%s is not among models=%s", bench.target.model, bench.models)

    plots = []
    for name, draw in (
        ("metrics.png", lambda target: plot_metrics(summary["models"], target)),
        ("training_curves.png", lambda target: plot_training_curves(runs, target)),
        ("code_usage.png", lambda target: plot_code_usage(runs, target)),
    ):
        if draw(bench.out / name):
            plots.append(bench.out / name)
    summary["plots"] = [plot.name for plot in plots]

    _write_text_atomic(bench.out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    if bench.benchmarks_md is not None:
        document = bench.benchmarks_md.read_text(encoding="utf-8") if bench.benchmarks_md.is_file() else ""
        _write_text_atomic(bench.benchmarks_md, replace_section(document, bench.section, section_body(bench, summary, plots)))
        log.info("updated section %s of %s", bench.section, bench.benchmarks_md)
    log.info("benchmark summary: %s\n%s", bench.out / "summary.json", markdown_table(summary["models"], "test"))
    return summary
