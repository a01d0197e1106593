"""Batch recommendations for `serve.py`: chunked, bounded in memory, written atomically."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ttds.data.config import dataset_config_from_dict
from ttds.data.dataset import ProcessedDataset
from ttds.data.pipeline import load_processed
from ttds.decoding.results import recommendations_frame
from ttds.serve_config import OUTPUT_FORMATS, serve_config_from_cfg
from ttds.stages.context import RunContext
from ttds.stages.data import check_run_dataset
from ttds.stages.evaluate import build_recommender
from ttds.stages.loading import load_trained

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = {
    "user_id": pl.Utf8,
    "rank": pl.Int32,
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "score": pl.Float64,
    "cold_start": pl.Boolean,
}


class ChunkWriter:
    """Append frames to a temporary file next to ``path``; ``close`` renames it into place."""

    def __init__(self, path: Path):
        if path.suffix not in OUTPUT_FORMATS:
            raise ValueError(f"output={path} has an unsupported extension; use one of {OUTPUT_FORMATS}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._text = None if path.suffix == ".parquet" else open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, frame: pl.DataFrame) -> None:
        frame = frame.select([pl.col(name).cast(dtype) for name, dtype in OUTPUT_SCHEMA.items()])
        if self.path.suffix == ".parquet":
            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.tmp, table.schema)
            self._parquet.write_table(table)
        elif self.path.suffix == ".jsonl":
            for row in frame.iter_rows(named=True):
                self._text.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self._text.write(frame.write_csv(include_header=self.rows == 0))
        self.rows += frame.height

    def close(self) -> Path:
        if self.path.suffix == ".parquet":
            if self._parquet is None:  # no rows at all: still write a valid, empty file
                pq.write_table(pl.DataFrame(schema=OUTPUT_SCHEMA).to_arrow(), self.tmp)
            else:
                self._parquet.close()
        else:
            self._text.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()
        self.tmp.unlink(missing_ok=True)


def read_user_ids(spec: str) -> list[str] | None:
    """``None`` for "all", else the user ids of a file with one id per line (optional header ``user_id``)."""
    if spec == "all":
        return None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"users={spec}: file not found; pass users=all or a file with one user_id per line.")
    # utf-8-sig drops the byte-order mark that spreadsheet programs write, which would otherwise join the first id.
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    ids = [line for line in lines if line]
    if ids and ids[0] == "user_id":
        ids = ids[1:]
    if not ids:
        raise ValueError(f"{path} lists no user ids; write one user_id per line.")
    return ids


def user_histories(dataset: ProcessedDataset, max_history: int) -> pl.DataFrame:
    """Collect each known user's items over all events, oldest first: user_idx, user_id, history, seen.

    ``history`` keeps the last ``max_history`` items (what the prompt shows), ``seen`` every item the user has, which
    is what ``exclude_history`` removes from the recommendations.
    """
    return (
        dataset.events.lazy()
        .sort("user_idx", "position")
        .group_by("user_idx", maintain_order=True)
        .agg(pl.col("item_idx").tail(max_history).alias("history"), pl.col("item_idx").unique().alias("seen"))
        .join(dataset.users.lazy().select("user_idx", "user_id"), on="user_idx")
        .collect()
    )


def popular_items(dataset: ProcessedDataset, k: int) -> pl.DataFrame:
    """Return the ``k`` items with the most events (ties: lower item_idx first), with item_id and title."""
    counts = dataset.events.group_by("item_idx").len().sort(["len", "item_idx"], descending=[True, False]).head(k)
    return counts.join(dataset.items.select("item_idx", "item_id", "title"), on="item_idx").sort(["len", "item_idx"], descending=[True, False])


def _chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def count_short_lists(frames: list[pl.DataFrame], n_users: int, top_k: int) -> int:
    """Count the users of one chunk (``n_users`` of them) whose recommendation rows in ``frames`` number below ``top_k``."""
    if not frames:
        return n_users
    counts = pl.concat([frame.select("user_idx") for frame in frames])["user_idx"].value_counts()
    full = counts.filter(pl.col("count") >= top_k).height
    return n_users - full


def serve(cfg: DictConfig) -> Path:
    """Write top-K recommendations for the requested users of a trained run; returns the output path."""
    config = serve_config_from_cfg(cfg)
    # Set on the root logger so that log_level also applies to the libraries that serve() calls.
    logging.getLogger().setLevel(config.log_level)

    run_dir = Path(config.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={run_dir} does not exist; pass the run directory that `python train.py` logged.")
    config_path = run_dir / "llm" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; run_dir must be a run whose llm stage finished.")
    train_cfg = OmegaConf.create(json.loads(config_path.read_text()))
    OmegaConf.update(train_cfg, "eval.beam_width", config.beam_width)
    OmegaConf.update(train_cfg, "eval.top_k", [config.top_k])
    OmegaConf.update(train_cfg, "eval.batch_size", config.batch_size)
    OmegaConf.update(train_cfg, "eval.exclude_history", config.exclude_history)

    ctx = RunContext(cfg=train_cfg, run_dir=run_dir, cache_dir=Path(train_cfg.paths.cache_dir))
    dataset_cfg = dataset_config_from_dict(OmegaConf.to_container(train_cfg.dataset, resolve=True))
    dataset = load_processed(dataset_cfg, ctx.cache_dir / "processed")
    check_run_dataset(ctx, dataset.fingerprint)
    ctx.artefacts["dataset"] = dataset
    histories = user_histories(dataset, int(train_cfg.dataset.preprocess.max_history))
    known = dict(zip(histories["user_id"].to_list(), range(histories.height), strict=True))
    requested = read_user_ids(config.users)
    if requested is None:
        requested = histories["user_id"].to_list()
    unique = list(dict.fromkeys(requested))
    if len(unique) < len(requested):
        log.warning("users=%s lists %d user ids more than once; each gets one set of recommendations", config.users, len(requested) - len(unique))
        requested = unique
    unknown = [user for user in requested if user not in known]
    if unknown and config.unknown_users == "error":
        raise ValueError(
            f"{len(unknown)} requested users are not in the training data of {run_dir}, e.g. {unknown[:5]}; "
            "remove them or pass unknown_users=popular to give them the most popular items (flagged cold_start)."
        )
    popular = popular_items(dataset, config.top_k)

    # The model loads only after the requested users passed their checks, so a bad users file fails in seconds.
    recommender = build_recommender(ctx, load_trained(ctx))

    writer = ChunkWriter(Path(config.output))
    short_users = 0  # users ranked by the model who got fewer than top_k items
    progress = tqdm(total=len(requested), desc="recommend", unit="user", mininterval=5)
    try:
        for chunk in _chunks(requested, config.chunk_size):
            rows = [known[user] for user in chunk if user in known]
            frames = []
            if rows:
                part = histories[rows]
                user_idx = part["user_idx"].to_list()
                for span, result in recommender.batches(user_idx, part["history"].to_list(), part["seen"].to_list()):
                    recs = recommendations_frame(result, dataset.items, [user_idx[i] for i in span])
                    frames.append(recs.join(dataset.users.select("user_idx", "user_id"), on="user_idx").with_columns(pl.lit(False).alias("cold_start")))
                short_users += count_short_lists(frames, len(rows), config.top_k)
            cold = [user for user in chunk if user not in known]
            if cold:
                frames.append(
                    pl.DataFrame({"user_id": cold})
                    .join(popular.with_row_index("rank", offset=1), how="cross")
                    .with_columns(pl.col("len").cast(pl.Float64).alias("score"), pl.lit(True).alias("cold_start"))
                )
            order = {user: i for i, user in enumerate(chunk)}
            frame = pl.concat([f.select(list(OUTPUT_SCHEMA)).cast(OUTPUT_SCHEMA) for f in frames]) if frames else pl.DataFrame(schema=OUTPUT_SCHEMA)
            frame = frame.with_columns(pl.col("user_id").replace_strict(order, return_dtype=pl.Int64).alias("_order")).sort("_order", "rank").drop("_order")
            writer.write(frame)
            progress.update(len(chunk))
    except BaseException:
        writer.abort()
        raise
    progress.close()
    path = writer.close()
    log.info("wrote %d recommendations for %d users (%d cold start) to %s", writer.rows, len(requested), len(unknown), path)
    if short_users:
        log.warning(
            "%d users got fewer than top_k=%d items, because the beam of beam_width=%d held fewer valid items "
            "(exclude_history=%s removes seen items from it); raise beam_width for full lists",
            short_users,
            config.top_k,
            config.beam_width,
            config.exclude_history,
        )
    return path
