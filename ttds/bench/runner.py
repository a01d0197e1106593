"""Run every (model, seed) pair of a benchmark into its own run directory, skipping runs that already finished.

A run directory ``<out>/<model>/seed<k>/`` contains ``evaluate/metrics.json`` in the layout of the evaluate stage and
``bench_run.json``: status ("running", "finished" or "failed"), command, wall time, machine and git commit.
Baselines run in this process; a failure is logged with its traceback, recorded and the next run starts. LM
models run ``python train.py`` as a subprocess with its output in ``train.log``. A run that did not finish is
re-run with the same command, and train.py then reuses the stages whose DONE.json exists and resumes training
from the last Lightning checkpoint. A finished run is reused as it is, even when conf/bench.yaml changed since.
Delete its run directory to run it again with the new settings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttds.baselines import BASELINES, baseline_function
from ttds.data.config import build_strict, dataset_config_from_dict
from ttds.data.dataset import ProcessedDataset
from ttds.data.pipeline import load_processed
from ttds.paths import CONF_DIR, REPO_ROOT
from ttds.stages.context import write_json_atomic

log = logging.getLogger(__name__)

RUN_RECORD = "bench_run.json"
METRICS = Path("evaluate") / "metrics.json"
TRAIN_LOG = "train.log"


@dataclass
class ModelSpec:
    """One ``registry`` entry: a baseline with options, or train.py with experiment overlays and overrides."""

    baseline: str | None = None  # name in ttds.baselines.BASELINES
    options: dict[str, Any] = field(default_factory=dict)  # baseline options, checked by the baseline's config class
    experiments: list[str] = field(default_factory=list)  # conf/experiment overlays applied after the bench's `base_experiment`
    overrides: list[str] = field(default_factory=list)  # further train.py overrides, e.g. llm.static_steps=50

    def __post_init__(self) -> None:
        if self.baseline is not None:
            if self.baseline not in BASELINES:
                raise ValueError(f"registry entry baseline={self.baseline!r} is unknown; use one of {sorted(BASELINES)}.")
            if self.experiments or self.overrides:
                raise ValueError(f"baseline {self.baseline!r} has experiments or overrides, which only LM models use; remove them.")
        elif self.options:
            raise ValueError("an LM model entry has `options`, which only baselines use; pass train.py settings as `overrides`.")
        for name in self.experiments:
            if not (CONF_DIR / "experiment" / f"{name}.yaml").is_file():
                raise ValueError(f"experiment overlay {name!r} not found in {CONF_DIR / 'experiment'}.")

    @property
    def is_baseline(self) -> bool:
        return self.baseline is not None


@dataclass
class BenchConfig:
    """The resolved conf/bench.yaml."""

    models: list[str]
    seeds: list[int]
    out: Path
    section: str
    benchmarks_md: Path | None
    base_experiment: str | None
    train_overrides: list[str]
    cache_dir: Path
    registry: dict[str, ModelSpec]
    report_only: bool = False  # start no run and write the report from the runs that finished

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models=[] is empty; name at least one model, e.g. models=[mostpop,sasrec].")
        unknown = [name for name in self.models if name not in self.registry]
        if unknown:
            raise ValueError(f"models {unknown} are not in conf/bench.yaml `registry`; use some of {sorted(self.registry)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} must be a non-empty list without repeats.")
        if self.base_experiment and not (CONF_DIR / "experiment" / f"{self.base_experiment}.yaml").is_file():
            raise ValueError(f"base_experiment={self.base_experiment!r} not found in {CONF_DIR / 'experiment'}.")
        if not re.fullmatch(r"[\w.\-]+", self.section):
            raise ValueError(f"section={self.section!r} may contain only letters, digits, '_', '.' and '-'.")

    @classmethod
    def from_dictconfig(cls, cfg: DictConfig) -> BenchConfig:
        values = OmegaConf.to_container(cfg, resolve=True)
        registry = {name: build_strict(ModelSpec, dict(entry or {}), f"registry.{name}") for name, entry in values["registry"].items()}
        markdown = values["benchmarks_md"]
        return cls(
            models=list(values["models"]),
            seeds=[int(seed) for seed in values["seeds"]],
            out=Path(values["out"]).absolute(),
            section=str(values["section"]),
            benchmarks_md=Path(markdown).absolute() if markdown else None,
            base_experiment=values["base_experiment"],
            train_overrides=list(values["train_overrides"]),
            cache_dir=Path(values["paths"]["cache_dir"]).absolute(),
            registry=registry,
            report_only=bool(values.get("report_only", False)),
        )


def machine_info() -> dict[str, Any]:
    """Describe this machine: CPU model, cores, RAM, GPUs, load average and library versions."""
    import torch

    cpu_model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    gpus = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(ram_bytes / 2**30, 1),
        "gpus": gpus,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Return the checked-out commit and whether tracked or untracked files differ from it; None values outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        log.warning("git commit not found (%s), so bench_run.json records null", error)
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def hydra_value(value: str | Path) -> str:
    """Quote ``value`` for a Hydra command-line override unless it is a plain path or word."""
    text = str(value)
    if re.fullmatch(r"[\w/.\-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def train_command(bench: BenchConfig, spec: ModelSpec, seed: int, run_dir: Path, dataset_overrides: list[str]) -> list[str]:
    """Build the ``python train.py ...`` command of one LM run; later overrides win over earlier ones."""
    overlays = ([bench.base_experiment] if bench.base_experiment else []) + spec.experiments
    command = [sys.executable, str(REPO_ROOT / "train.py")]
    if overlays:
        command.append(f"experiment={overlays[0]}" if len(overlays) == 1 else f"experiment=[{','.join(overlays)}]")
    command += dataset_overrides + spec.overrides + bench.train_overrides
    command += [
        f"seed={seed}",
        f"paths.run_dir={hydra_value(run_dir)}",
        f"paths.cache_dir={hydra_value(bench.cache_dir)}",
        f"hydra.run.dir={hydra_value(run_dir / 'hydra')}",
    ]
    return command


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    """Return the run's bench_run.json, or None when it is missing or unreadable (the run is then repeated)."""
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        log.warning("%s is unreadable (%s); the run is repeated", path, error)
        return None


def is_finished(run_dir: Path) -> bool:
    record = read_run_record(run_dir)
    return record is not None and record.get("status") == "finished" and (run_dir / METRICS).is_file()


class BenchmarkRunner:
    """Runs the benchmark's pending (model, seed) pairs in order and records each one."""

    def __init__(self, bench: BenchConfig, dataset_cfg: DictConfig, dataset_overrides: list[str], invocation: str):
        self.bench = bench
        self.dataset_cfg = dataset_config_from_dict(OmegaConf.to_container(dataset_cfg, resolve=True))
        self.dataset_overrides = dataset_overrides
        self.invocation = invocation
        self.machine = machine_info()
        self.git = git_state()
        self._dataset: ProcessedDataset | None = None

    def dataset(self) -> ProcessedDataset:
        """Load the processed dataset once, through the same cache as train.py's data stage."""
        if self._dataset is None:
            self._dataset = load_processed(self.dataset_cfg, self.bench.cache_dir / "processed")
        return self._dataset

    def run_all(self) -> list[tuple[str, int]]:
        """Run every pending pair and return the (model, seed) pairs that failed."""
        failed = []
        for model in self.bench.models:
            for seed in self.bench.seeds:
                run_dir = self.bench.out / model / f"seed{seed}"
                if is_finished(run_dir):
                    log.info("skipping %s seed %d: already finished in %s", model, seed, run_dir)
                    continue
                if not self.run_one(model, seed, run_dir):
                    failed.append((model, seed))
        return failed

    def run_one(self, model: str, seed: int, run_dir: Path) -> bool:
        """Run one pair, write its bench_run.json, and return whether it finished."""
        spec = self.bench.registry[model]
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_run_record(run_dir) or {}
        command = [f"ttds.baselines.{spec.baseline}.run", f"seed={seed}"] if spec.is_baseline else self._train(spec, seed, run_dir)
        record: dict[str, Any] = {
            "model": model,
            "seed": seed,
            "dataset": self.dataset_cfg.name,
            "kind": "baseline" if spec.is_baseline else "train.py",
            "status": "running",
            "command": command,
            "options": spec.options,
            "bench_command": self.invocation,
            "attempt": int(previous.get("attempt", 0)) + 1,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": self.machine,
            "git": self.git,
        }
        write_json_atomic(run_dir / RUN_RECORD, record)
        log.info("running %s seed %d (attempt %d) into %s", model, seed, record["attempt"], run_dir)

        started = time.perf_counter()
        error = self._run_baseline(spec, seed, run_dir) if spec.is_baseline else self._run_train(command, run_dir)
        if error is None and not (run_dir / METRICS).is_file():
            error = f"the run ended without writing {run_dir / METRICS}"

        record |= {
            "status": "finished" if error is None else "failed",
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - started, 2),
        }
        if error is not None:
            record["error"] = error
            log.error("%s seed %d failed after %.0f s: %s", model, seed, record["wall_seconds"], error)
        write_json_atomic(run_dir / RUN_RECORD, record)
        return error is None

    def _train(self, spec: ModelSpec, seed: int, run_dir: Path) -> list[str]:
        return train_command(self.bench, spec, seed, run_dir, self.dataset_overrides)

    def _run_baseline(self, spec: ModelSpec, seed: int, run_dir: Path) -> str | None:
        try:
            baseline_function(spec.baseline)(self.dataset(), run_dir, seed, spec.options)
        except Exception as error:  # noqa: BLE001 - one failed run is recorded and must not stop the others
            log.exception("baseline %s seed %d failed", spec.baseline, seed)
            return f"{type(error).__name__}: {error}"
        return None

    def _run_train(self, command: list[str], run_dir: Path) -> str | None:
        with open(run_dir / TRAIN_LOG, "a", encoding="utf-8") as output:
            output.write(f"\n# {datetime.now(UTC).isoformat(timespec='seconds')}: {' '.join(command)}\n")
            output.flush()
            result = subprocess.run(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            return f"train.py exited with code {result.returncode}; see {run_dir / TRAIN_LOG}"
        return None


def with_dataset_choice(dataset_overrides: list[str], dataset_name: str) -> list[str]:
    """Return the overrides with an explicit ``dataset=<name>`` first, so an experiment overlay cannot change the dataset."""
    if any(override.split("=", 1)[0].lstrip("+~") == "dataset" for override in dataset_overrides):
        return list(dataset_overrides)
    return [f"dataset={dataset_name}", *dataset_overrides]


def run_benchmark(cfg: DictConfig, dataset_overrides: list[str] | None = None, invocation: str = "") -> dict[str, Any]:
    """Run the benchmark that ``cfg`` (conf/bench.yaml) describes, then write its report; return the summary.

    ``dataset_overrides`` are the ``dataset=...`` and ``dataset.*=...`` overrides the bench was composed with; LM
    runs get the same ones. Raises RuntimeError after the report is written if any run failed.
    """
    from ttds.bench.report import write_report

    bench = BenchConfig.from_dictconfig(cfg)
    overrides = with_dataset_choice(list(dataset_overrides or []), str(cfg.dataset.name))
    runner = BenchmarkRunner(bench, cfg.dataset, overrides, invocation)
    if bench.report_only:
        log.info("report_only=true: no runs start; the report covers the runs under %s that finished", bench.out)
        failed = []
    else:
        failed = runner.run_all()
    summary = write_report(bench, invocation)
    if failed:
        names = ", ".join(f"{model} seed {seed}" for model, seed in failed)
        raise RuntimeError(f"{len(failed)} benchmark runs failed ({names}); see bench_run.json in {bench.out}. Re-run to retry them.")
    return summary
