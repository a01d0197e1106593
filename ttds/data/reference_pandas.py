"""Plain pandas version of the event steps (rating filter, duplicates, k-core, order, index, split) and two views.

It exists to cross-check the polars pipeline (tests compare the two event tables row for row) and as the
baseline of benchmarks/preprocess_yelp.py. It is written the obvious way, not tuned, and is not used in training.
"""

from __future__ import annotations

import pandas as pd

from ttds.data.config import PreprocessConfig

EVENT_COLUMNS = ["user_idx", "item_idx", "timestamp", "position", "split", "file_row"]


def _kcore(events: pd.DataFrame, k: int) -> pd.DataFrame:
    while True:
        user_counts = events.groupby("user_id")["item_id"].transform("size")
        item_counts = events.groupby("item_id")["user_id"].transform("size")
        kept = events[(user_counts >= k) & (item_counts >= k)]
        if len(kept) == len(events):
            return kept
        events = kept


def reference_events(interactions: pd.DataFrame, cfg: PreprocessConfig) -> pd.DataFrame:
    """Return processed events with the columns and order of ProcessedDataset.events, computed with pandas."""
    events = interactions
    if cfg.min_rating is not None:
        events = events[events["rating"] >= cfg.min_rating]

    events = events.sort_values(["user_id", "timestamp", "file_row"], kind="stable")
    events = events.drop_duplicates(subset=["user_id", "item_id", "timestamp", "rating"], keep="first")
    if cfg.duplicates != "keep":
        events = events.drop_duplicates(subset=["user_id", "item_id"], keep=cfg.duplicates)
    if cfg.kcore > 1:
        events = _kcore(events, cfg.kcore)

    user_ids = sorted(events["user_id"].unique())
    item_ids = sorted(events["item_id"].unique())
    events = events.assign(
        user_idx=events["user_id"].map({user_id: index for index, user_id in enumerate(user_ids)}).astype("int32"),
        item_idx=events["item_id"].map({item_id: index for index, item_id in enumerate(item_ids)}).astype("int32"),
    )

    position = events.groupby("user_idx").cumcount()
    from_end = events.groupby("user_idx")["item_idx"].transform("size") - 1 - position
    split = pd.Series("train", index=events.index)
    split[from_end == 1] = "valid"
    split[from_end == 0] = "test"
    events = events.assign(position=position.astype("int32"), split=split)
    return events[EVENT_COLUMNS].reset_index(drop=True)


def reference_training_pairs(events: pd.DataFrame, max_history: int) -> pd.DataFrame:
    """Training pairs (user_idx, history, target) built with a loop over each user's training items."""
    rows = []
    train = events[events["split"] == "train"]
    for user_idx, items in train.groupby("user_idx", sort=True)["item_idx"]:
        sequence = items.tolist()
        for position in range(1, len(sequence)):
            rows.append((user_idx, sequence[max(0, position - max_history) : position], sequence[position]))
    return pd.DataFrame(rows, columns=["user_idx", "history", "target"])


def reference_item_co_interaction(events: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Item-item co-interaction top-k (src, dst, count) from a self-merge of the training events on user."""
    train = events.loc[events["split"] == "train", ["user_idx", "item_idx"]].drop_duplicates()
    pairs = train.merge(train, on="user_idx", suffixes=("_src", "_dst"))
    pairs = pairs[pairs["item_idx_src"] != pairs["item_idx_dst"]]
    counts = pairs.groupby(["item_idx_src", "item_idx_dst"]).size().rename("count").reset_index()
    counts.columns = ["src", "dst", "count"]
    counts = counts.sort_values(["src", "count", "dst"], ascending=[True, False, True], kind="stable")
    return counts.groupby("src").head(top_k).reset_index(drop=True)
