"""RunContext: what the stages of one run share, and the done-markers that let a run resume."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """The resolved config, the run directory and the objects earlier stages produced in this process."""

    cfg: DictConfig
    run_dir: Path
    cache_dir: Path
    artefacts: dict[str, Any] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        path = self.run_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage: str) -> bool:
        return (self.run_dir / stage / "DONE.json").is_file()

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        write_json_atomic(self.stage_dir(stage) / "DONE.json", summary)
        log.info("stage %s finished; outputs in %s", stage, self.run_dir / stage)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
