"""Typed Lightning Trainer settings that conf/trainer/*.yaml mirrors, checked before the first stage runs."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry

from ttds.data.config import build_strict, closest_hint

GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass
class TrainerConfig:
    """The Trainer arguments that ttds passes on; the llm stage sets max_steps itself."""

    accelerator: str = "cpu"  # cpu, gpu (CUDA) or auto
    devices: int = 1  # processes, one per device
    strategy: str = "auto"  # auto or a Lightning strategy name such as ddp or fsdp
    precision: str = "32-true"  # a Lightning precision name such as 32-true or bf16-mixed
    max_epochs: int = 1  # default epochs where a stage does not set its own
    log_every_n_steps: int = 10  # how often losses are logged
    enable_checkpointing: bool = True  # write Lightning checkpoints

    def __post_init__(self) -> None:
        accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        _check_choice("trainer.accelerator", self.accelerator, accelerators)
        _check_choice("trainer.strategy", self.strategy, ["auto", *StrategyRegistry.available_strategies()])
        _check_choice("trainer.precision", self.precision, list(typing.get_args(_PRECISION_INPUT_STR)))
        for key in ("devices", "max_epochs", "log_every_n_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"trainer.{key}={getattr(self, key)} must be at least 1.")
        if self.accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
            raise ValueError(f"trainer.accelerator={self.accelerator} needs a CUDA device, and torch sees none; use trainer=cpu on this machine.")
        if self.accelerator in GPU_ACCELERATORS and self.devices > torch.cuda.device_count():
            raise ValueError(f"trainer.devices={self.devices} asks for more GPUs than the {torch.cuda.device_count()} torch sees; lower it.")


def _check_choice(key: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is unknown; use one of {choices}.{closest_hint([value], choices)}")


def trainer_config_from_dict(values: dict[str, Any]) -> TrainerConfig:
    """Build a TrainerConfig from a plain mapping (a resolved Hydra node), rejecting unknown keys and wrong types."""
    return build_strict(TrainerConfig, values, "trainer")
