"""Stage `evaluate`: leave-one-out full ranking on validation and test through constrained beam search."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ttds.data.views import evaluation_examples
from ttds.decoding.beam import DecodingConfig
from ttds.eval.metrics import RankingMetrics, metrics_markdown, shard_range, user_results_frame, write_metrics
from ttds.llm.dynamic import render_ids
from ttds.recommend import EVAL_TEMPLATE_INDEX, Recommender, build_trie
from ttds.stages.context import RunContext
from ttds.stages.loading import load_trained
from ttds.tasks.base import Vocabulary, load_templates

log = logging.getLogger(__name__)

FULL_HISTORY = 1 << 30  # a max_history that keeps every event


def check_templates_unchanged(run_dir: Path, path: str, sha256: str) -> None:
    """Raise ValueError when the templates file differs from the one the run's LM was trained with.

    Evaluation and serving render prompts from the file again, so an edit after training would change the prompts
    the model receives. Runs whose llm stage recorded no hash are not checked.
    """
    done = run_dir / "llm" / "DONE.json"
    if not done.is_file():
        return
    trained = json.loads(done.read_text(encoding="utf-8")).get("templates_sha256")
    if trained is not None and trained != sha256:
        raise ValueError(
            f"tasks.templates={path} changed since the LM of {run_dir} was trained (sha256 {trained[:12]} then, "
            f"{sha256[:12]} now); restore the file the run was trained with, or train a new run with the edited one."
        )


def build_recommender(ctx: RunContext, trained: dict) -> Recommender:
    """Build a Recommender from the run's frozen model and tables with the eval config's decoding settings."""
    eval_cfg = ctx.cfg.eval
    dataset = ctx.artefacts["dataset"]
    tables = trained["tables"]
    item_table = tables["item"]
    vocab = Vocabulary(
        item_ids=render_ids(item_table, max(item_table.n_suffix, 1)),
        user_ids=render_ids(tables["user"], 0) if ctx.cfg.llm.user_ids else [""] * dataset.n_users,
        item_titles=dataset.items.sort("item_idx")["title"].to_list(),
        item_texts=[],
        user_texts=[],
    )
    templates = load_templates(ctx.cfg.tasks.templates)
    check_templates_unchanged(ctx.run_dir, ctx.cfg.tasks.templates, templates.sha256)
    template = templates.for_task("sequential")[EVAL_TEMPLATE_INDEX]
    decoding = DecodingConfig(beam_width=eval_cfg.beam_width, top_k=list(eval_cfg.top_k), exclude_history=eval_cfg.exclude_history)
    # Leave room for the ID and EOS below the model's length limit.
    prompt_max_length = int(ctx.cfg.backbone.max_length) - item_table.id_length - 1
    return Recommender(
        model=trained["model"],
        tokenizer=trained["tokenizer"],
        trie=build_trie(trained["tokenizer"], item_table),
        vocab=vocab,
        template=template,
        decoding=decoding,
        prompt_max_length=prompt_max_length,
        batch_size=int(eval_cfg.batch_size),
    )


def evaluate_split(recommender: Recommender, dataset, split: str, max_history: int, max_users: int | None) -> tuple[dict, pl.DataFrame]:
    examples = evaluation_examples(dataset, split, max_history)
    # With exclude_history: every item before the target, not only the last max_history that the prompt shows.
    # Both frames come from the same query, so their rows are in the same order.
    full = evaluation_examples(dataset, split, FULL_HISTORY) if recommender.decoding.exclude_history else None
    if max_users is not None:
        examples = examples.head(max_users)
        full = full.head(max_users) if full is not None else None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        # Each process ranks its own contiguous shard; the sums are added up below, so no user counts twice.
        shard = shard_range(examples.height, torch.distributed.get_world_size(), torch.distributed.get_rank())
        examples = examples.slice(shard.start, len(shard))
        full = full.slice(shard.start, len(shard)) if full is not None else None
    users = examples["user_idx"].to_list()
    histories = examples["history"].to_list()
    seen = full["history"].to_list() if full is not None else None
    targets = torch.tensor(examples["target"].to_list(), dtype=torch.long)

    metrics = RankingMetrics(dataset.n_items, cutoffs=recommender.decoding.top_k)
    frames = []
    progress = tqdm(total=len(users), desc=f"evaluate {split}", unit="user", mininterval=5)
    for span, result in recommender.batches(users, histories, seen):
        batch_targets = targets[span.start : span.stop]
        ranks = metrics.update(result.items.cpu(), batch_targets)
        frames.append(user_results_frame(users[span.start : span.stop], batch_targets, ranks, recommender.decoding.top_k))
        progress.update(len(span))
    progress.close()
    if distributed:
        metrics.all_reduce()
    return metrics.compute(), pl.concat(frames) if frames else pl.DataFrame()


def run(ctx: RunContext) -> dict:
    out = ctx.stage_dir("evaluate")
    trained = load_trained(ctx)
    recommender = build_recommender(ctx, trained)
    dataset = ctx.artefacts["dataset"]
    max_history = int(ctx.cfg.dataset.preprocess.max_history)
    max_users = ctx.cfg.eval.max_users

    rows = {}
    for split in ctx.cfg.eval.splits:
        metrics, per_user = evaluate_split(recommender, dataset, split, max_history, max_users)
        rows[split] = metrics
        per_user.write_parquet(out / f"{split}_per_user.parquet")
    json_path, _ = write_metrics(out / "metrics.json", rows)

    log.info("metrics written to %s", json_path)
    print(metrics_markdown(rows))  # noqa: T201 - the metrics table is the job's main output on the console
    ctx.mark_done("evaluate", {"metrics": rows, "config": OmegaConf.to_container(ctx.cfg.eval, resolve=True)})
    return rows
