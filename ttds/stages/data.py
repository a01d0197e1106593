"""Stage `data`: read, preprocess and split the dataset (cached), then report its statistics."""

from __future__ import annotations

import json
import logging

from omegaconf import OmegaConf

from ttds.data.config import dataset_config_from_dict
from ttds.data.pipeline import load_processed
from ttds.data.stats import format_stats
from ttds.stages.context import RunContext, write_json_atomic

log = logging.getLogger(__name__)


def check_run_dataset(ctx: RunContext, fingerprint: str) -> None:
    """Raise when the run directory already contains stages built from other data or another preprocessing config."""
    done = ctx.run_dir / "data" / "DONE.json"
    if not done.is_file():
        return
    recorded = json.loads(done.read_text()).get("fingerprint")
    if recorded != fingerprint:
        raise ValueError(
            f"{ctx.run_dir} was built from dataset fingerprint {recorded}, but the configured data now gives {fingerprint} "
            "(other files, another dataset or changed preprocessing); use a new paths.run_dir, or restore the original data."
        )


def run(ctx: RunContext) -> dict:
    dataset_cfg = dataset_config_from_dict(OmegaConf.to_container(ctx.cfg.dataset, resolve=True))
    dataset = load_processed(dataset_cfg, ctx.cache_dir / "processed")
    check_run_dataset(ctx, dataset.fingerprint)
    ctx.artefacts["dataset"] = dataset

    out = ctx.stage_dir("data")
    write_json_atomic(out / "stats.json", dataset.stats)
    log.info("dataset %s (fingerprint %s)\n%s", dataset.name, dataset.fingerprint[:16], format_stats(dataset.stats))
    summary = {"dataset": dataset.name, "fingerprint": dataset.fingerprint, "users": dataset.n_users, "items": dataset.n_items}
    ctx.mark_done("data", summary)
    return summary
