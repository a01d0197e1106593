"""Shared error handling of the Hydra entry points (train.py, serve.py, python -m ttds.bench)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

log = logging.getLogger(__name__)

# Errors that ttds raises for bad input (config values, paths, run directories), omegaconf's errors for missing
# or unknown keys, and Lightning's for Trainer settings. omegaconf's ValidationError and interpolation errors
# subclass ValueError, so they are covered too.
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
    MisconfigurationException,  # Lightning's error for Trainer settings it cannot honour
)

Main = TypeVar("Main", bound=Callable[..., Any])


def full_error_requested() -> bool:
    """Return True when HYDRA_FULL_ERROR=1 requests the full traceback of every error."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(message: str) -> str:
    """Join the lines of ``message`` into one, because omegaconf adds lines such as ``full_key: ...``.

    A line that ends a sentence is followed by a space, any other by "; ".
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    joined = ""
    for line in lines:
        if joined:
            joined += " " if joined.endswith((".", "?", "!", ":", ";")) else "; "
        joined += line
    return joined


def exit_on_errors(errors: tuple[type[BaseException], ...]) -> Callable[[Main], Main]:
    """Return a decorator that logs any of ``errors`` as one ERROR line and exits with status 1.

    Put the decorator below ``@hydra.main``. Other exceptions, and every exception when HYDRA_FULL_ERROR=1, propagate
    to Hydra, which prints the traceback. SystemExit is not an Exception, so it passes through Hydra's handlers.
    """

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except errors as error:
                if full_error_requested():
                    raise
                log.error("error: %s", one_line(str(error)))
                raise SystemExit(1) from None

        return wrapper  # type: ignore[return-value]

    return decorate


exit_on_input_error = exit_on_errors(INPUT_ERRORS)  # for train.py and serve.py
