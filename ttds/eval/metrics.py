"""Full-ranking metrics for one relevant item per user, kept as sums that add up across processes.

A ranked list is a (B, K) tensor of item indices, best first, where -1 marks an empty slot (the
search found fewer than K valid IDs). The target's rank r is 1-based, and a user whose target is not
in the first k slots scores 0 at k.
- HR@k: 1 if r <= k.
- NDCG@k: 1 / log2(r + 1) if r <= k; with one relevant item the ideal DCG is 1.
- MRR@k: 1 / r if r <= k.
- invalid_user_rate: fraction of users whose top-1 slot is empty (-1).
- invalid_slot_rate: fraction of all B * K slots that are empty.
- coverage@K: distinct items recommended in any user's top K, divided by the catalogue size.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_CUTOFFS = (1, 5, 10)


def target_ranks(ranked: Tensor, targets: Tensor) -> Tensor:
    """Return the 1-based rank of each target in its row of ``ranked`` (B, K), or 0 when it is absent."""
    if ranked.dim() != 2 or targets.shape != (ranked.shape[0],):
        raise ValueError(f"ranked must be (B, K) and targets (B,); got {tuple(ranked.shape)} and {tuple(targets.shape)}.")
    if bool((targets < 0).any()):
        raise ValueError("targets contain a negative item index; every evaluated user needs a real target item.")

    hits = ranked == targets[:, None]  # (B, K); -1 slots never match a real target
    first = hits.int().argmax(dim=1) + 1
    return torch.where(hits.any(dim=1), first, 0)


class RankingMetrics:
    """Accumulates ranking metrics over batches of users, as sums and counts that ``all_reduce`` adds up.

    Each process must update with its own users only (see ``shard_range``); nothing is padded, so the
    reduced counts equal the true number of users.
    """

    def __init__(self, n_items: int, cutoffs: Sequence[int] = DEFAULT_CUTOFFS, mrr_cutoff: int = 10, device: torch.device | str = "cpu"):
        if n_items < 1:
            raise ValueError(f"n_items={n_items} must be at least 1.")
        if not cutoffs or min(cutoffs) < 1:
            raise ValueError(f"cutoffs={list(cutoffs)} must be a non-empty list of positive integers.")
        self.n_items = n_items
        self.cutoffs = tuple(sorted(set(cutoffs)))
        self.mrr_cutoff = mrr_cutoff
        self.list_length = max(*self.cutoffs, mrr_cutoff)
        self.names = (
            ["n_users", "n_slots", "invalid_users", "invalid_slots", f"mrr@{mrr_cutoff}"]
            + [f"hr@{k}" for k in self.cutoffs]
            + [f"ndcg@{k}" for k in self.cutoffs]
        )
        # float64 keeps every count exact up to 2**53 and survives all_reduce unchanged.
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.item_counts = torch.zeros(n_items, dtype=torch.float64, device=device)

    def update(self, ranked: Tensor, targets: Tensor) -> Tensor:
        """Add a batch: ranked (B, K) item indices with -1 for empty slots, targets (B,). Returns the ranks (B,)."""
        if ranked.shape[1] < self.list_length:
            raise ValueError(
                f"ranked lists have {ranked.shape[1]} slots but the metrics need {self.list_length}; "
                f"decode with top_k>={self.list_length}."
            )
        if ranked.numel() and int(ranked.max()) >= self.n_items:
            raise ValueError(f"ranked contains item index {int(ranked.max())}, outside the catalogue of {self.n_items} items.")
        ranked = ranked[:, : self.list_length].to(self.sums.device)
        targets = targets.to(self.sums.device)
        ranks = target_ranks(ranked, targets).double()  # (B,), 0 = miss

        found = ranks > 0
        gains = torch.where(found, 1.0 / torch.log2(ranks + 1), 0.0)
        reciprocal = torch.where(found & (ranks <= self.mrr_cutoff), 1.0 / ranks.clamp(min=1), 0.0)
        values = [
            float(len(targets)),
            float(ranked.numel()),
            float((ranked[:, 0] < 0).sum()),
            float((ranked < 0).sum()),
            float(reciprocal.sum()),
        ]
        values += [float((found & (ranks <= k)).sum()) for k in self.cutoffs]
        values += [float(torch.where(ranks <= k, gains, 0.0).sum()) for k in self.cutoffs]
        self.sums += torch.tensor(values, dtype=torch.float64, device=self.sums.device)

        valid = ranked[ranked >= 0]
        self.item_counts += torch.bincount(valid, minlength=self.n_items).double()
        return ranks.long()

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum the state over all processes of ``group`` in place, so every process ends with the totals."""
        state = torch.cat([self.sums, self.item_counts])
        dist.all_reduce(state, op=dist.ReduceOp.SUM, group=group)
        self.sums = state[: len(self.names)].clone()
        self.item_counts = state[len(self.names) :].clone()

    def compute(self) -> dict[str, float]:
        """Return the metrics; every rate is 0 before the first update."""
        totals = dict(zip(self.names, self.sums.tolist(), strict=True))
        n_users = totals["n_users"]
        per_user = max(n_users, 1.0)
        metrics = {f"hr@{k}": totals[f"hr@{k}"] / per_user for k in self.cutoffs}
        metrics |= {f"ndcg@{k}": totals[f"ndcg@{k}"] / per_user for k in self.cutoffs}
        metrics[f"mrr@{self.mrr_cutoff}"] = totals[f"mrr@{self.mrr_cutoff}"] / per_user
        metrics["invalid_user_rate"] = totals["invalid_users"] / per_user
        metrics["invalid_slot_rate"] = totals["invalid_slots"] / max(totals["n_slots"], 1.0)
        metrics[f"coverage@{self.list_length}"] = float((self.item_counts > 0).sum()) / self.n_items
        metrics["n_users"] = n_users
        return metrics


def user_results_frame(user_idx: Sequence[int] | Tensor, targets: Tensor, ranks: Tensor, cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> pl.DataFrame:
    """Per-user results: user_idx, target, rank (null when the target was not found) and one hit@k flag per cutoff."""
    ranks = ranks.cpu()
    frame = pl.DataFrame(
        {
            "user_idx": torch.as_tensor(user_idx, dtype=torch.long).cpu().numpy(),
            "target": targets.cpu().long().numpy(),
            "rank": ranks.long().numpy(),
        }
    )
    frame = frame.with_columns(pl.when(pl.col("rank") > 0).then(pl.col("rank")).otherwise(None).alias("rank"))
    return frame.with_columns([(pl.col("rank").fill_null(0).is_between(1, k)).alias(f"hit@{k}") for k in sorted(set(cutoffs))])


def shard_range(n_users: int, world_size: int, rank: int) -> range:
    """Return the contiguous slice of users that process ``rank`` evaluates.

    Shard sizes differ by at most one. Unlike DistributedSampler, no user is duplicated to even out
    the shards, so sums over all shards count each user exactly once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in 0..{world_size - 1} for world_size={world_size}.")
    base, extra = divmod(n_users, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def metrics_markdown(rows: dict[str, dict[str, float]], digits: int = 4) -> str:
    """Render {run name: metrics} as a Markdown table, one row per run and one column per metric."""
    columns = list(dict.fromkeys(name for metrics in rows.values() for name in metrics))
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for run, metrics in rows.items():
        cells = [_format_cell(name, metrics.get(name), digits) for name in columns]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_metrics(path: str | Path, rows: dict[str, dict[str, float]]) -> tuple[Path, Path]:
    """Write ``rows`` as JSON at ``path`` (.json) and as a Markdown table next to it (.md), each atomically."""
    path = Path(path).with_suffix(".json")
    markdown_path = path.with_suffix(".md")
    _write_atomic(path, json.dumps(rows, indent=2, sort_keys=True) + "\n")
    _write_atomic(markdown_path, metrics_markdown(rows))
    return path, markdown_path


def _format_cell(name: str, value: float | None, digits: int) -> str:
    """Format counts (names starting with ``n_``) as integers and every other metric with ``digits`` decimals."""
    if value is None:
        return ""
    if name.startswith("n_") and not math.isnan(value):
        return str(int(value))
    return f"{value:.{digits}f}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
