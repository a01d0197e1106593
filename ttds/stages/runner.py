"""Run the stages a config asks for, in order, skipping those whose outputs are already complete."""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from ttds.stages.context import RunContext

log = logging.getLogger(__name__)

# Stage name -> module that defines `run(ctx: RunContext) -> dict`. Order is execution order.
STAGES: dict[str, str] = {
    "data": "ttds.stages.data",
    "tokenize": "ttds.stages.tokenize",
    "llm": "ttds.stages.llm",
    "evaluate": "ttds.stages.evaluate",
}


def selected_stages(stage: str) -> list[str]:
    """Return the stages to run for ``stage``: one named stage plus the ones before it, or all of them."""
    names = list(STAGES)
    if stage == "all":
        return names
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is unknown; use one of {names + ['all']}.")
    return names[: names.index(stage) + 1]


def run_stages(cfg: DictConfig) -> RunContext:
    """Run ``cfg.stage`` and every stage it depends on; finished stages in the run directory are reused."""
    L.seed_everything(cfg.seed, workers=True)
    ctx = RunContext(cfg=cfg, run_dir=Path(cfg.paths.run_dir), cache_dir=Path(cfg.paths.cache_dir))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)

    missing = []
    for name in selected_stages(cfg.stage):
        try:
            module = importlib.import_module(STAGES[name])
        except ModuleNotFoundError as error:
            if error.name != STAGES[name]:
                raise
            missing.append(name)
            continue

        started = time.perf_counter()
        log.info("stage %s: starting", name)
        module.run(ctx)
        log.info("stage %s: %.1f s", name, time.perf_counter() - started)

    if missing:
        log.warning("stages not available in this version, skipped: %s", ", ".join(missing))
    log.info("run directory: %s", ctx.run_dir)
    return ctx
