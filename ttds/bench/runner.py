"""Run every (model, seed) pair of a benchmark into its own run directory, skipping runs that already finished.

A run directory ``<out>/<model>/seed<k>/`` contains ``evaluate/metrics.json`` in the layout of the evaluate stage and
``bench_run.json``: status ("running", "finished" or "failed"), command, wall time, machine and git commit.
Before the first run, check_runs builds the options of every baseline and the train.py config of every LM model
that will run, so a bad setting fails at once. Baselines run in this process; a failure is logged with its
traceback, recorded and the next run starts. LM models run ``python train.py`` as a subprocess with its output
in ``train.log``. A run that did not finish is re-run with the same command, and train.py then reuses the stages
whose DONE.json exists and resumes training from the last Lightning checkpoint. A finished run is reused as it is,
even when conf/bench.yaml changed since. Delete its run directory to run it again with the new settings.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ttds.baselines import BASELINES, baseline_function
from ttds.bench.target import TargetConfig
from ttds.data.config import build_strict, check_value_type, closest_hint, dataset_config_from_dict
from ttds.data.dataset import ProcessedDataset
from ttds.data.pipeline import load_processed
from ttds.paths import CONF_DIR, REPO_ROOT
from ttds.stages.context import write_json_atomic

log = logging.getLogger(__name__)

RUN_RECORD = "bench_run.json"
METRICS = Path("evaluate") / "metrics.json"
TRAIN_LOG = "train.log"
EXPERIMENT_DIR = CONF_DIR / "experiment"
MAX_SEED = 2**32 - 1  # seed_everything of Lightning 2.x raises ValueError for seeds outside 0..2**32 - 1

# Top-level keys of the composed conf/bench.yaml, with the `dataset` group -> (type, example value for type errors).
BENCH_KEYS: dict[str, tuple[Any, Any]] = {
    "models": (list[str], ["mostpop", "sasrec"]),
    "seeds": (list[int], [0, 1, 2]),
    "out": (str, None),
    "section": (str, None),
    "benchmarks_md": (str | None, None),
    "base_experiment": (str | None, None),
    "report_only": (bool, None),
    "train_overrides": (list[str], ["trainer=gpu"]),
    "target": (dict[str, Any] | None, None),  # checked by TargetConfig
    "paths": (dict[str, Any], None),  # its keys are checked by BenchPaths
    "registry": (dict[str, dict[str, Any] | None], None),  # each entry is checked by ModelSpec
    "dataset": (dict[str, Any], None),  # checked by DatasetConfig when the runner starts
}


class BenchmarkRunsFailed(RuntimeError):
    """Raised after the report is written when some (model, seed) runs failed. The message names each run."""


def experiment_names() -> list[str]:
    return sorted(path.stem for path in EXPERIMENT_DIR.glob("*.yaml"))


def check_experiment(name: str, key: str) -> None:
    """Raise ValueError naming ``key`` when conf/experiment has no overlay ``name``, with the closest existing name."""
    if (EXPERIMENT_DIR / f"{name}.yaml").is_file():
        return
    names = experiment_names()
    raise ValueError(f"{key}={name!r} is not in {EXPERIMENT_DIR}; use one of {names}.{closest_hint([name], names)}")


def check_bench_keys(values: dict[str, Any]) -> None:
    """Reject top-level keys that conf/bench.yaml does not have and values of the wrong type, e.g. ``seeds=0``."""
    unknown = sorted(set(values) - set(BENCH_KEYS))
    if unknown:
        raise ValueError(
            f"unknown top-level keys {unknown} in the bench config; valid keys are {sorted(BENCH_KEYS)}.{closest_hint(unknown, BENCH_KEYS)}"
        )
    missing = sorted(set(BENCH_KEYS) - set(values))
    if missing:
        raise ValueError(f"the bench config has no keys {missing}; set them as conf/bench.yaml does.")

    for key, (annotation, example) in BENCH_KEYS.items():
        if key in values:
            check_value_type(values[key], annotation, key, example)


@dataclass
class BenchPaths:
    """The ``paths`` group of conf/bench.yaml: the same roots as conf/train.yaml."""

    repo_root: str
    shared_data: str
    repo_data: str
    cache_dir: str


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
            check_experiment(name, "experiments")

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
    report_only: bool = False  # start no run and write the report from the runs that finished, without check_runs
    target: TargetConfig | None = None  # the comparison the report checks; None checks nothing

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models=[] is empty; name at least one model, e.g. models=[mostpop,sasrec].")
        unknown = [name for name in self.models if name not in self.registry]
        if unknown:
            hint = closest_hint(unknown, self.registry)
            raise ValueError(f"models {unknown} are not in conf/bench.yaml `registry`; use some of {sorted(self.registry)}.{hint}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models={self.models} names a model more than once; list each model once.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} must be a non-empty list without repeats.")
        if not all(0 <= seed <= MAX_SEED for seed in self.seeds):
            raise ValueError(f"seeds={self.seeds} has a seed outside 0..{MAX_SEED}; use seeds in that range.")
        if self.base_experiment:
            check_experiment(self.base_experiment, "base_experiment")
        if self.target is not None:
            check_target_models(self.target, self.registry)
        if not re.fullmatch(r"[\w.\-]+", self.section):
            raise ValueError(f"section={self.section!r} may contain only letters, digits, '_', '.' and '-'.")

    @classmethod
    def from_dictconfig(cls, cfg: DictConfig) -> BenchConfig:
        """Build the settings from the composed conf/bench.yaml, raising ValueError on an unknown key or a wrong type."""
        values = OmegaConf.to_container(cfg, resolve=True)
        check_bench_keys(values)
        paths = build_strict(BenchPaths, values["paths"], "paths")
        registry = {name: build_strict(ModelSpec, dict(entry or {}), f"registry.{name}") for name, entry in values["registry"].items()}

        markdown = values["benchmarks_md"]
        return cls(
            models=list(values["models"]),
            seeds=list(values["seeds"]),
            out=Path(values["out"]).absolute(),
            section=values["section"],
            benchmarks_md=Path(markdown).absolute() if markdown else None,
            base_experiment=values["base_experiment"],
            train_overrides=list(values["train_overrides"]),
            cache_dir=Path(paths.cache_dir).absolute(),
            registry=registry,
            report_only=values["report_only"],
            target=build_strict(TargetConfig, values["target"], "target") if values["target"] is not None else None,
        )


def check_target_models(target: TargetConfig, registry: dict[str, ModelSpec]) -> None:
    """Raise ValueError when ``target`` names a model that ``registry`` lacks, with the closest registry name."""
    unknown = [name for name in (target.model, *target.baselines) if name not in registry]
    if unknown:
        hint = closest_hint(unknown, registry)
        raise ValueError(f"target names models {unknown} that are not in conf/bench.yaml `registry`; use some of {sorted(registry)}.{hint}")


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


def check_mostpop_options(options: dict[str, Any], where: str) -> None:
    from ttds.baselines.mostpop import MostPopConfig

    build_strict(MostPopConfig, options, where)


def check_sasrec_options(options: dict[str, Any], where: str) -> None:
    from ttds.baselines.sasrec import SASRecBaselineConfig
    from ttds.models.sasrec_module import SASRecConfig

    config = build_strict(SASRecBaselineConfig, options, where)
    build_strict(SASRecConfig, {**config.sasrec, "seed": 0}, f"{where}.sasrec")  # each run sets its own seed


# Baseline name -> check that builds its `options` as the baseline's run() does. A test requires one for every name in BASELINES.
BASELINE_OPTION_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {"mostpop": check_mostpop_options, "sasrec": check_sasrec_options}


def compose_train_config(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with ``overrides`` as train.py does, without starting it."""
    # Inside `python -m ttds.bench` Hydra is initialized with CONF_DIR as its search path, which contains train.yaml too.
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def override_sources(bench: BenchConfig, model: str, dataset_overrides: list[str], key: str) -> str:
    """Name the bench settings whose train.py overrides set ``key`` or a key below it (e.g. "llm" or "trainer")."""
    sources = {
        "train_overrides": bench.train_overrides,
        f"registry.{model}.overrides": bench.registry[model].overrides,
        "the dataset overrides": dataset_overrides,
    }
    names = []
    for name, overrides in sources.items():
        keys = [override.split("=", 1)[0].lstrip("+~") for override in overrides]
        if any(other == key or other.startswith(f"{key}.") for other in keys):
            names.append(name)
    return " and ".join(names) or "the train.py overrides"


def compose_error_message(bench: BenchConfig, model: str, dataset_overrides: list[str], error: HydraException) -> str:
    """Turn Hydra's error for train.py overrides that do not compose into a message naming the bench setting and a close key."""
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key and isinstance(cause.parent_node, DictConfig):
        known = [name for name in cause.parent_node if name != "hydra"]
        source = override_sources(bench, model, dataset_overrides, cause.full_key)
        hint = closest_hint([str(cause.key)], known)
        return f"{source}: the train.py config of model {model!r} has no key {cause.full_key!r}.{hint} Prefix an override with + only to add a new key."

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        source = override_sources(bench, model, dataset_overrides, group)
        return f"{source} sets {group}={option}, which is not in conf/{group}; use one of {list(error.options)}.{closest_hint([option], error.options)}"
    return f"the train.py config of model {model!r} does not compose: {error}"


def check_train_config(bench: BenchConfig, model: str, dataset_overrides: list[str]) -> None:
    """Compose the train.py config of LM model ``model`` and build its typed stage configs as train.py does first.

    This finds a misspelt key or a bad value in ``train_overrides`` or the registry entry before any run starts.
    Only the first seed is composed, because the seeds change nothing but ``seed`` and the run folder.
    """
    from ttds.stages.checks import check_stage_configs
    from ttds.stages.runner import selected_stages

    seed = bench.seeds[0]
    command = train_command(bench, bench.registry[model], seed, bench.out / model / f"seed{seed}", dataset_overrides)
    overrides = [arg for arg in command[2:] if not arg.startswith("hydra.")]  # compose() takes no hydra.* settings
    try:
        cfg = compose_train_config(overrides)
    except HydraException as error:
        raise ValueError(compose_error_message(bench, model, dataset_overrides, error)) from error

    try:
        check_stage_configs(cfg, selected_stages(cfg.stage))
    except ValueError as error:
        raise ValueError(f"the train.py config of model {model!r} is invalid: {error}") from error


def check_runs(bench: BenchConfig, dataset_overrides: list[str]) -> None:
    """Check the settings of every model in ``bench.models`` before the first run starts, raising ValueError on the first error.

    Baseline options are built into the baseline's config class. LM models get check_train_config.
    """
    for model in bench.models:
        spec = bench.registry[model]
        if spec.is_baseline:
            BASELINE_OPTION_CHECKS[spec.baseline](dict(spec.options), f"registry.{model}.options")
        else:
            check_train_config(bench, model, dataset_overrides)


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

    def run_all(self) -> list[tuple[str, int, str]]:
        """Run every pending pair and return (model, seed, error) for each pair that failed."""
        failed = []
        for model in self.bench.models:
            for seed in self.bench.seeds:
                run_dir = self.bench.out / model / f"seed{seed}"
                if is_finished(run_dir):
                    log.info("skipping %s seed %d: already finished in %s", model, seed, run_dir)
                    continue
                error = self.run_one(model, seed, run_dir)
                if error is not None:
                    failed.append((model, seed, error))
        return failed

    def run_one(self, model: str, seed: int, run_dir: Path) -> str | None:
        """Run one pair, write its bench_run.json, and return its error, or None when it finished."""
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
        return error

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
        if result.returncode == 0:
            return None

        error = f"train.py exited with code {result.returncode}. Its output is in {run_dir / TRAIN_LOG}"
        message = last_logged_error(run_dir / TRAIN_LOG)
        return f"{error}, and its last error reads: {message}" if message else error


def last_logged_error(log_path: Path) -> str | None:
    """Return the message of the last ``error: ...`` line of the latest attempt in ``log_path``, or None when it has none.

    train.py logs input errors in that form (ttds.cli). A crash with a traceback has no such line.
    """
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    attempt_starts = [index for index, line in enumerate(lines) if line.startswith("# ")]
    attempt = lines[attempt_starts[-1] :] if attempt_starts else lines
    for line in reversed(attempt):
        if " - error: " in line:
            return line.split(" - error: ", 1)[1].strip()
    return None


def with_dataset_choice(dataset_overrides: list[str], dataset_name: str) -> list[str]:
    """Return the overrides with an explicit ``dataset=<name>`` first, so an experiment overlay cannot change the dataset."""
    if any(override.split("=", 1)[0].lstrip("+~") == "dataset" for override in dataset_overrides):
        return list(dataset_overrides)
    return [f"dataset={dataset_name}", *dataset_overrides]


def run_benchmark(cfg: DictConfig, dataset_overrides: list[str] | None = None, invocation: str = "") -> dict[str, Any]:
    """Run the benchmark that ``cfg`` (conf/bench.yaml) describes, then write its report; return the summary.

    ``dataset_overrides`` are the ``dataset=...`` and ``dataset.*=...`` overrides the bench was composed with; LM
    runs get the same ones. Raises ValueError before the first run for a bad setting (see check_runs) and
    BenchmarkRunsFailed after the report is written if any run failed.
    """
    from ttds.bench.report import write_report

    bench = BenchConfig.from_dictconfig(cfg)
    overrides = with_dataset_choice(list(dataset_overrides or []), str(cfg.dataset.name))
    runner = BenchmarkRunner(bench, cfg.dataset, overrides, invocation)
    if bench.report_only:
        log.info("report_only=true: no runs start; the report covers the runs under %s that finished", bench.out)
        failed = []
    else:
        check_runs(bench, overrides)
        failed = runner.run_all()

    summary = write_report(bench, invocation)
    if failed:
        raise BenchmarkRunsFailed(failed_runs_message(bench, failed))
    return summary


def failed_runs_message(bench: BenchConfig, failed: list[tuple[str, int, str]]) -> str:
    """Name each failed run with the first line of its error, e.g. ``tiger seed 0: train.py exited with code 1. ...``."""
    runs = [f"{model} seed {seed}: {(error.splitlines() or ['no error message'])[0].rstrip('.')}." for model, seed, error in failed]
    return (
        f"{len(failed)} of the benchmark runs failed. {' '.join(runs)} "
        f"Each run's bench_run.json under {bench.out} records its error; re-run the same command to retry them."
    )
