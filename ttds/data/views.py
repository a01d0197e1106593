"""Views of a ProcessedDataset for training and evaluation. Every item and user reference is an int32 index.

Training views (sequences, pairs, adjacency lists, co-interaction counts) read only events whose split is "train",
so a user's validation and test items (their last two events) never reach them. Users with no training event are
absent from the per-user training views. Evaluation examples read the whole sequence up to their target.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from ttds.data.dataset import ProcessedDataset

# Rows of the user x user or item x item product computed at once, which bounds the memory of co_interaction.
CO_INTERACTION_BLOCK_ROWS = 4096


def _chronological(ds: ProcessedDataset) -> pl.LazyFrame:
    return ds.events.lazy().sort("user_idx", "position")


def _training_events(ds: ProcessedDataset) -> pl.LazyFrame:
    return _chronological(ds).filter(pl.col("split") == "train")


def _history_before(sequence: str, max_history: int) -> pl.Expr:
    # The item at `position` is sequence[position], and its history is the max_history items before it.
    start = (pl.col("position") - max_history).clip(lower_bound=0)
    length = pl.min_horizontal(pl.col("position"), pl.lit(max_history, dtype=pl.Int32))
    return pl.col(sequence).list.slice(start, length).alias("history")


def _check_max_history(max_history: int) -> None:
    if max_history < 1:
        raise ValueError(f"max_history={max_history} must be at least 1.")


def training_sequences(ds: ProcessedDataset) -> pl.DataFrame:
    """Collect each user's training items in time order, untruncated: columns user_idx, items (list[int32])."""
    return (
        _training_events(ds)
        .group_by("user_idx", maintain_order=True)
        .agg(pl.col("item_idx").alias("items"))
        .collect()
    )


def user_items(ds: ProcessedDataset) -> pl.DataFrame:
    """Build the user -> training items adjacency in time order (the same table as ``training_sequences``)."""
    return training_sequences(ds)


def training_pairs(ds: ProcessedDataset, max_history: int) -> pl.DataFrame:
    """Build one row per training target: user_idx, history (last ``max_history`` training items before it), target.

    Every prefix of a user's training events predicts the next training event, so a user with training items
    ``[i1, i2, i3]`` gives ``[i1] -> i2`` and ``[i1, i2] -> i3``.
    """
    _check_max_history(max_history)
    train = _training_events(ds)
    sequences = train.group_by("user_idx").agg(pl.col("item_idx").alias("sequence"))
    return (
        train.filter(pl.col("position") >= 1)
        .join(sequences, on="user_idx", how="left", maintain_order="left")
        .select("user_idx", _history_before("sequence", max_history), pl.col("item_idx").alias("target"))
        .collect()
    )


def evaluation_examples(ds: ProcessedDataset, split: str, max_history: int) -> pl.DataFrame:
    """Build one row per user with a ``split`` ("valid" or "test") target and a non-empty history: user_idx, history, target.

    The history is every event before the target (for "test" this includes the validation item), truncated to the
    last ``max_history`` items.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split={split!r} is not an evaluation split; use 'valid' or 'test'.")
    _check_max_history(max_history)
    events = _chronological(ds)
    sequences = events.group_by("user_idx").agg(pl.col("item_idx").alias("sequence"))
    return (
        events.filter((pl.col("split") == split) & (pl.col("position") >= 1))
        .join(sequences, on="user_idx", how="left", maintain_order="left")
        .select("user_idx", _history_before("sequence", max_history), pl.col("item_idx").alias("target"))
        .collect()
    )


def item_users(ds: ProcessedDataset) -> pl.DataFrame:
    """Collect the users of each item's training events, by timestamp then source row: columns item_idx, users (list[int32]).

    A user appears once per training event with the item, so repeats remain when the duplicate policy is "keep".
    """
    return (
        _training_events(ds)
        .sort("item_idx", "timestamp", "file_row")
        .group_by("item_idx", maintain_order=True)
        .agg(pl.col("user_idx").alias("users"))
        .collect()
    )


def _binary_user_item_matrix(ds: ProcessedDataset) -> sp.csr_matrix:
    train = ds.events.filter(pl.col("split") == "train").select("user_idx", "item_idx").unique()
    values = np.ones(train.height, dtype=np.int32)
    shape = (ds.n_users, ds.n_items)
    return sp.csr_matrix((values, (train["user_idx"].to_numpy(), train["item_idx"].to_numpy())), shape=shape)


def _top_k_rows(block: sp.csr_matrix, row_offset: int, top_k: int) -> pl.DataFrame:
    coo = block.tocoo()
    pairs = pl.DataFrame(
        {
            "src": (coo.row + row_offset).astype(np.int32),
            "dst": coo.col.astype(np.int32),
            "count": coo.data.astype(np.int32),
        }
    )
    # Largest count first. Among equal counts the smaller dst wins (reverse=True on dst).
    rank_by, reverse = ["count", "dst"], [False, True]
    return (
        pairs.filter(pl.col("src") != pl.col("dst"))
        .group_by("src")
        .agg(
            pl.col("dst").top_k_by(rank_by, k=top_k, reverse=reverse),
            pl.col("count").top_k_by(rank_by, k=top_k, reverse=reverse),
        )
        .explode("dst", "count")
        .sort(["src", "count", "dst"], descending=[False, True, False])
    )


def co_interaction(ds: ProcessedDataset, kind: str, top_k: int) -> pl.DataFrame:
    """Find the top-``top_k`` co-interacted neighbours per item or user from training events: columns src, dst, count (int32).

    For kind="item", count is the number of users with both items in their training events. For kind="user", it is
    the number of training items both users have. Self pairs are excluded, and ties in count go to the smaller dst index. The
    product of the binary user x item matrix is computed in row blocks to bound memory.
    """
    if kind not in ("item", "user"):
        raise ValueError(f"kind={kind!r} is not a co-interaction kind; use 'item' or 'user'.")
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1.")

    matrix = _binary_user_item_matrix(ds)  # (n_users, n_items)
    if kind == "item":
        matrix = matrix.T.tocsr()  # (n_items, n_users)
    transposed = matrix.T.tocsc()

    blocks = []
    for start in range(0, matrix.shape[0], CO_INTERACTION_BLOCK_ROWS):
        product = matrix[start : start + CO_INTERACTION_BLOCK_ROWS] @ transposed  # (block, n)
        blocks.append(_top_k_rows(product.tocsr(), start, top_k))
    schema = {"src": pl.Int32, "dst": pl.Int32, "count": pl.Int32}
    return pl.concat(blocks) if blocks else pl.DataFrame(schema=schema)
