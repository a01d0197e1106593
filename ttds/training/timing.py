"""Lightning callback that times every training step, refreshes included, and writes a summary."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L


class StepTimer(L.Callback):
    """Time each step from batch start to batch end; log it and write ``timing.json`` when training ends.

    Steps of a resumed run are timed from the resume on, so the summary covers this process only.
    """

    def __init__(self, batch_size: int, output: Path):
        self.batch_size = batch_size
        self.output = Path(output)
        self.durations: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._started
        self.durations.append(seconds)
        pl_module.log("perf/step_seconds", seconds, on_step=True, on_epoch=False, batch_size=self.batch_size)

    def summary(self) -> dict[str, float]:
        total = sum(self.durations)
        return {
            "steps": len(self.durations),
            "total_seconds": round(total, 3),
            "mean_step_seconds": round(total / len(self.durations), 4) if self.durations else 0.0,
            "median_step_seconds": round(statistics.median(self.durations), 4) if self.durations else 0.0,
            "examples_per_second": round(self.batch_size * len(self.durations) / total, 3) if total else 0.0,
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.write_text(json.dumps(self.summary(), indent=2))
