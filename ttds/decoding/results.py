"""Turn beam search output into catalogue rows, and build per-user exclusions of history items."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import torch
from torch import Tensor

from ttds.decoding.beam import BeamResult


def history_exclusion_mask(histories: Sequence[Sequence[int]], n_items: int, device: torch.device | str = "cpu") -> Tensor:
    """Return a (n_users, n_items) bool mask, True at each item in that user's history.

    Pass it as ``exclude_items`` to the beam search, which masks those leaves and still fills K slots
    from the rest of the catalogue when enough IDs remain.
    """
    mask = torch.zeros(len(histories), n_items, dtype=torch.bool)
    for user, history in enumerate(histories):
        items = torch.as_tensor(list(history), dtype=torch.long)
        if len(items) and (int(items.min()) < 0 or int(items.max()) >= n_items):
            raise ValueError(f"history of user row {user} has item indices outside 0..{n_items - 1}: {list(history)}.")
        mask[user, items] = True
    return mask.to(device)


def recommendations_frame(result: BeamResult, items: pl.DataFrame, user_idx: Sequence[int] | Tensor | None = None) -> pl.DataFrame:
    """Join each user's ranked items with the catalogue: user_idx, rank (1 = best), item_idx, item_id, title, score.

    ``items`` has item_idx, item_id and title columns (``ProcessedDataset.items``). Empty slots (-1) give
    no row, so a user can have fewer than K rows but never filler.
    """
    missing = {"item_idx", "item_id", "title"} - set(items.columns)
    if missing:
        raise ValueError(f"the items table has no column(s) {sorted(missing)}; pass ProcessedDataset.items.")

    ranked = result.items.cpu()  # (B, K)
    batch_size, top_k = ranked.shape
    users = torch.arange(batch_size) if user_idx is None else torch.as_tensor(user_idx, dtype=torch.long).cpu()
    if len(users) != batch_size:
        raise ValueError(f"user_idx has {len(users)} entries but the result has {batch_size} users.")
    largest = int(ranked.max()) if ranked.numel() else -1
    if largest >= items.height:
        raise ValueError(f"item index {largest} is outside the items table ({items.height} rows); decode with the trie built from this catalogue.")

    frame = pl.DataFrame(
        {
            "user_idx": users[:, None].expand(batch_size, top_k).reshape(-1).numpy(),
            "rank": torch.arange(1, top_k + 1).repeat(batch_size).numpy(),
            "item_idx": ranked.reshape(-1).numpy(),
            "score": result.scores.float().cpu().reshape(-1).numpy(),
        }
    )
    catalogue = items.select(pl.col("item_idx").cast(pl.Int64), "item_id", "title")
    return (
        frame.filter(pl.col("item_idx") >= 0)
        .with_columns(pl.col("user_idx").cast(pl.Int64), pl.col("rank").cast(pl.Int32), pl.col("item_idx").cast(pl.Int64))
        .join(catalogue, on="item_idx", how="left")
        .select("user_idx", "rank", "item_idx", "item_id", "title", "score")
        .sort("user_idx", "rank")
    )
