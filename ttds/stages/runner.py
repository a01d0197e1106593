"""Run the stages a config selects, in order, skipping those whose outputs are already complete."""

from __future__ import annotations

import importlib
import json
import logging
import resource
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from ttds.data.config import closest_hint
from ttds.stages.checks import check_stage_configs
from ttds.stages.context import RunContext

log = logging.getLogger(__name__)

# Stage name -> module that defines `run(ctx: RunContext) -> dict`. Order is execution order.
STAGES: dict[str, str] = {
    "data": "ttds.stages.data",
    "tokenize": "ttds.stages.tokenize",
    "llm": "ttds.stages.llm",
    "evaluate": "ttds.stages.evaluate",
}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def selected_stages(stage: str) -> list[str]:
    """Return the stages to run for ``stage``: one named stage plus the ones before it, or all of them."""
    names = list(STAGES)
    if stage == "all":
        return names
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is unknown; use one of {names + ['all']}.{closest_hint([stage], names + ['all'])}")
    return names[: names.index(stage) + 1]


def run_stages(cfg: DictConfig) -> RunContext:
    """Run ``cfg.stage`` and every stage it depends on; finished stages in the run directory are reused."""
    stages = selected_stages(cfg.stage)
    check_stage_configs(cfg, stages)

    L.seed_everything(cfg.seed, workers=True)
    ctx = RunContext(cfg=cfg, run_dir=Path(cfg.paths.run_dir), cache_dir=Path(cfg.paths.cache_dir))
    if ctx.run_dir.exists() and not ctx.run_dir.is_dir():
        raise ValueError(f"paths.run_dir={ctx.run_dir} is a file, not a directory; pass a new or existing run directory.")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)

    missing = []
    for name in stages:
        try:
            module = importlib.import_module(STAGES[name])
        except ModuleNotFoundError as error:
            if error.name != STAGES[name]:
                raise
            missing.append(name)
            continue

        started, cpu_started = time.perf_counter(), _cpu_seconds()
        reused = ctx.is_done(name) and name != "evaluate"
        log.info("stage %s: starting", name)
        module.run(ctx)
        if reused:
            continue  # keep the resources measured when the stage really ran
        usage = {
            "wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(_cpu_seconds() - cpu_started, 2),
            # ru_maxrss is the peak of the whole process so far (KiB on Linux), not of this stage alone.
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        (ctx.stage_dir(name) / "resources.json").write_text(json.dumps(usage, indent=2))
        log.info("stage %s: %.1f s wall, %.1f s CPU, peak RSS %.0f MiB", name, usage["wall_s"], usage["cpu_s"], usage["peak_rss_mib"])

    if missing:
        log.warning("stages not available in this version, skipped: %s", ", ".join(missing))
    log.info("run directory: %s", ctx.run_dir)
    return ctx
