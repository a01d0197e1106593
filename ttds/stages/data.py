"""Stage `data`: read, preprocess and split the dataset (cached), then report its statistics."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from ttds.data.config import dataset_config_from_dict
from ttds.data.pipeline import load_processed
from ttds.data.stats import format_stats
from ttds.stages.context import RunContext, write_json_atomic

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> dict:
    dataset_cfg = dataset_config_from_dict(OmegaConf.to_container(ctx.cfg.dataset, resolve=True))
    dataset = load_processed(dataset_cfg, ctx.cache_dir / "processed")
    ctx.artefacts["dataset"] = dataset

    out = ctx.stage_dir("data")
    write_json_atomic(out / "stats.json", dataset.stats)
    log.info("dataset %s (fingerprint %s)\n%s", dataset.name, dataset.fingerprint[:16], format_stats(dataset.stats))
    summary = {"dataset": dataset.name, "fingerprint": dataset.fingerprint, "users": dataset.n_users, "items": dataset.n_items}
    ctx.mark_done("data", summary)
    return summary
