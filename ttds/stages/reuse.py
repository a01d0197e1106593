"""Warn when a finished stage is reused although the settings that shaped it have changed since.

A stage writes the resolved run config to ``<stage>/config.json`` when it finishes. A later invocation on the same
run directory reuses the stage as it is. A setting of its config groups that differs now has no effect, so the
warning lists each such key with its old and new value.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"  # the resolved run config, written when a stage finishes


def changed_settings(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """List the dotted keys whose values differ between two nested config dicts, e.g. ``llm.static_steps: 300 -> 50``."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_settings(old, new, f"{name}.")
        elif old != new:
            changes.append(f"{name}: {old!r} -> {new!r}")
    return changes


def warn_if_reused_with_other_settings(stage: str, out: Path, cfg: DictConfig, groups: tuple[str, ...]) -> list[str]:
    """Log one warning naming every key of ``groups`` that differs between ``cfg`` and ``out/config.json``; return them.

    Stages finished before they saved their config (no config.json) are reused without a check.
    """
    saved_file = out / CONFIG_FILE
    if not saved_file.is_file():
        return []

    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = [change for group in groups for change in changed_settings({group: saved.get(group)}, {group: current.get(group)})]
    if changes:
        log.warning(
            "the %s stage of %s is finished and is reused as it is; these settings differ from the ones it ran "
            "with and have no effect: %s. Use a new paths.run_dir to run it with them.",
            stage,
            out.parent,
            "; ".join(changes),
        )
    return changes
