"""Shared error handling of the Hydra entry points (train.py, serve.py, python -m ttds.bench)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

log = logging.getLogger(__name__)

# Errors that ttds raises for bad input (config values, paths, run directories), and omegaconf's errors for missing
# or unknown keys. omegaconf's ValidationError and interpolation errors subclass ValueError, so they are covered too.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
)

Main = TypeVar("Main", bound=Callable[..., Any])


def full_error_requested() -> bool:
    """Return True when HYDRA_FULL_ERROR=1 requests the full traceback of every error."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(message: str) -> str:
    """Join the lines of ``message`` with "; ", because omegaconf adds lines such as ``full_key: ...``."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def exit_on_input_error(main: Main) -> Main:
    """Wrap a Hydra task function so that an input error is logged as one ERROR line and the process exits with status 1.

    Put it below ``@hydra.main``. Other exceptions, and every exception when HYDRA_FULL_ERROR=1, propagate to Hydra,
    which prints the traceback. SystemExit is not an Exception, so it passes through Hydra's handlers.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except INPUT_ERRORS as error:
            if full_error_requested():
                raise
            log.error("error: %s", one_line(str(error)))
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]
