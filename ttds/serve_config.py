"""Typed settings of `python serve.py` that conf/serve.yaml mirrors."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ttds.data.config import build_strict, closest_hint

OUTPUT_FORMATS = (".parquet", ".jsonl", ".csv")
UNKNOWN_USER_POLICIES = ("error", "popular")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # the level names of the logging module
POSITIVE_FIELDS = ("top_k", "beam_width", "chunk_size", "batch_size")


@dataclass
class ServeConfig:
    """Batch recommendation settings: the trained run, the users, the beam search and the output file."""

    run_dir: str  # run directory whose llm stage finished
    users: str = "all"  # "all" known users, or a file with one user_id per line
    top_k: int = 10  # recommendations per user
    beam_width: int = 20  # hypotheses kept per user, at least top_k
    output: str = "recs.parquet"  # .parquet, .jsonl or .csv file
    chunk_size: int = 1024  # users per written chunk
    batch_size: int = 32  # users per beam-search batch
    unknown_users: str = "error"  # policy for users absent from the training data, one of UNKNOWN_USER_POLICIES
    exclude_history: bool = False  # drop items the user already interacted with
    log_level: str = "INFO"  # root logger level, one of LOG_LEVELS

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_choices()
        if Path(self.output).suffix not in OUTPUT_FORMATS:
            raise ValueError(f"output={self.output} has an unsupported extension; use one of {OUTPUT_FORMATS}.")

    def _check_sizes(self) -> None:
        defaults = {item.name: item.default for item in fields(self)}
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}={value} is invalid; pass a positive integer, e.g. {name}={defaults[name]}.")

        if self.beam_width < self.top_k:
            raise ValueError(f"beam_width={self.beam_width} is below top_k={self.top_k}; set beam_width>={self.top_k}.")

    def _check_choices(self) -> None:
        if self.unknown_users not in UNKNOWN_USER_POLICIES:
            hint = closest_hint([self.unknown_users], UNKNOWN_USER_POLICIES)
            raise ValueError(f"unknown_users={self.unknown_users!r} is invalid; use one of {UNKNOWN_USER_POLICIES}.{hint}")

        if self.log_level not in LOG_LEVELS:
            # Upper-casing first lets "info" get the hint 'INFO'.
            hint = closest_hint([self.log_level.upper()], LOG_LEVELS)
            raise ValueError(f"log_level={self.log_level!r} is not a logging level name; use one of {LOG_LEVELS}.{hint}")


def serve_config_from_cfg(cfg: DictConfig) -> ServeConfig:
    """Build a ServeConfig from the composed conf/serve.yaml, rejecting a missing run_dir, unknown keys and wrong types.

    ``cfg`` contains no ``hydra`` node at run time, because Hydra keeps it apart from the task config.
    """
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ValueError("run_dir is missing; pass run_dir=<the run directory of a finished `python train.py` run>.")

    # A value still missing (???) raises omegaconf's MissingMandatoryValue, which names its key.
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return build_strict(ServeConfig, values, "")
