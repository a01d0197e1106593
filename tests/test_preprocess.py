import logging

import numpy as np
import polars as pl
import pytest

from ttds.data.config import PreprocessConfig
from ttds.data.pipeline import build_processed
from ttds.data.preprocess import apply_duplicate_policy, kcore_filter, sort_chronologically
from ttds.data.reference_pandas import reference_events
from ttds.data.schema import RawDataset, conform_items, empty_users, validate_raw


def make_raw(rows, items=None, users=None, name="tiny"):
    """RawDataset from (user_id, item_id, timestamp[, rating]) tuples; file_row is the tuple's position."""
    ratings = [row[3] if len(row) > 3 else None for row in rows]
    interactions = pl.DataFrame(
        {
            "user_id": [row[0] for row in rows],
            "item_id": [row[1] for row in rows],
            "timestamp": [row[2] for row in rows],
            "file_row": list(range(len(rows))),
            "rating": ratings,
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "file_row": pl.Int64, "rating": pl.Float64},
    )
    items_frame = conform_items(pl.DataFrame(items) if items else pl.DataFrame(schema={"item_id": pl.Utf8}))
    users_frame = pl.DataFrame(users) if users else empty_users()
    raw = RawDataset(name=name, interactions=interactions, items=items_frame, users=users_frame)
    validate_raw(raw)
    return raw


def events_with_ids(ds):
    return (
        ds.events.join(ds.users.select("user_idx", "user_id"), on="user_idx")
        .join(ds.items.select("item_idx", "item_id"), on="item_idx")
        .sort("user_idx", "position")
    )


def generated_raw(seed, n_rows=3000, n_users=120, n_items=80):
    """Random events with many timestamp ties, repeated (user, item) pairs and exact duplicate rows."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}", int(rng.integers(0, 40)), float(rng.integers(1, 6)))
        for _ in range(n_rows)
    ]
    rows += rows[:200]  # exact duplicates at later file rows
    return make_raw(rows)


def test_equal_timestamps_keep_file_order():
    raw = make_raw([("u1", "c", 5), ("u1", "a", 5), ("u1", "b", 5), ("u1", "z", 1)])
    ds = build_processed(raw, PreprocessConfig(kcore=0))
    assert events_with_ids(ds)["item_id"].to_list() == ["z", "c", "a", "b"]


@pytest.mark.parametrize("policy", ["first", "last", "keep"])
def test_polars_and_pandas_events_match(policy):
    raw = generated_raw(seed=7)
    cfg = PreprocessConfig(duplicates=policy, kcore=3, min_rating=2.0)
    ours = build_processed(raw, cfg).events
    reference = pl.from_pandas(reference_events(raw.interactions.to_pandas(), cfg)).cast(ours.schema)
    assert ours.height > 0
    assert ours.equals(reference)


def test_ties_identical_in_polars_and_pandas():
    rows = [("u1", f"i{k}", 100) for k in (9, 3, 7, 1, 5)] + [("u2", f"i{k}", 7) for k in (5, 1, 9)] + [("u2", "i3", 3)]
    raw = make_raw(rows)
    cfg = PreprocessConfig(kcore=0)
    ours = build_processed(raw, cfg).events
    reference = pl.from_pandas(reference_events(raw.interactions.to_pandas(), cfg)).cast(ours.schema)
    assert ours["file_row"].to_list() == [0, 1, 2, 3, 4, 8, 5, 6, 7]
    assert ours.equals(reference)


def test_exact_duplicate_rows_collapse_and_are_counted():
    raw = make_raw([("u1", "a", 1, 4.0), ("u1", "a", 1, 4.0), ("u1", "b", 2, 3.0), ("u1", "a", 1, 4.0)])
    ds = build_processed(raw, PreprocessConfig(kcore=0, duplicates="keep"))
    assert ds.events.height == 2
    assert ds.stats["exact_duplicates_removed"] == 2
    assert ds.events["file_row"].to_list() == [0, 2]


def test_exact_duplicates_without_rating_collapse():
    raw = make_raw([("u1", "a", 1), ("u1", "a", 1), ("u1", "a", 1, 2.0)])
    ds = build_processed(raw, PreprocessConfig(kcore=0, duplicates="keep"))
    assert ds.stats["exact_duplicates_removed"] == 1
    assert ds.events["file_row"].to_list() == [0, 2]


def test_duplicate_policy_first_last_keep():
    events = make_raw([("u1", "a", 3), ("u1", "b", 2), ("u1", "a", 1), ("u1", "a", 5)]).interactions.lazy()
    ordered = sort_chronologically(events)
    first = apply_duplicate_policy(ordered, "first").collect()
    last = apply_duplicate_policy(ordered, "last").collect()
    kept = apply_duplicate_policy(ordered, "keep").collect()
    assert first["timestamp"].to_list() == [1, 2]
    assert last["timestamp"].to_list() == [2, 5]
    assert kept["timestamp"].to_list() == [1, 2, 3, 5]


def test_duplicate_policy_rejects_unknown():
    events = make_raw([("u1", "a", 1)]).interactions.lazy()
    with pytest.raises(ValueError, match="duplicate policy 'newest' is not one of"):
        apply_duplicate_policy(events, "newest")


def test_duplicates_removed_is_reported():
    raw = make_raw([("u1", "a", 1), ("u1", "a", 2), ("u1", "b", 3), ("u2", "a", 1)])
    ds = build_processed(raw, PreprocessConfig(kcore=0, duplicates="first"))
    assert ds.stats["duplicates_removed"] == 1
    assert ds.stats["exact_duplicates_removed"] == 0


def test_kcore_removes_sparse_items_until_stable():
    # Round 1 drops item y (1 event), round 2 drops u3 (now 1 event), round 3 drops item x (now 1 event).
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2), ("u2", "x", 3), ("u3", "x", 1), ("u3", "y", 2)]
    events, report = kcore_filter(make_raw(rows).interactions.lazy(), 2)
    kept = events.collect()
    assert sorted(kept["item_id"].unique().to_list()) == ["a", "b"]
    assert sorted(kept["user_id"].unique().to_list()) == ["u1", "u2"]
    assert report.rounds == 3
    assert [step["interactions"] for step in report.removed_per_round] == [1, 1, 1]


def test_kcore_result_has_min_degree():
    raw = generated_raw(seed=3)
    events, _ = kcore_filter(raw.interactions.lazy(), 5)
    kept = events.collect()
    assert kept.group_by("user_id").len()["len"].min() >= 5
    assert kept.group_by("item_id").len()["len"].min() >= 5


def test_kcore_empty_raises():
    raw = make_raw([("u1", "a", 1), ("u2", "b", 1)])
    with pytest.raises(ValueError, match="the 5-core is empty"):
        kcore_filter(raw.interactions.lazy(), 5)


def test_rating_filter_drops_low_and_unrated():
    raw = make_raw([("u1", "a", 1, 5.0), ("u1", "b", 2, 1.0), ("u1", "c", 3), ("u1", "d", 4, 3.0)])
    ds = build_processed(raw, PreprocessConfig(kcore=0, min_rating=3.0))
    assert events_with_ids(ds)["item_id"].to_list() == ["a", "d"]
    assert ds.stats["rating_filter_removed"] == 2


def test_rating_filter_removing_everything_raises():
    raw = make_raw([("u1", "a", 1, 1.0), ("u1", "b", 2)])
    with pytest.raises(ValueError, match=r"preprocess.min_rating=4.0 removes every interaction of tiny"):
        build_processed(raw, PreprocessConfig(kcore=0, min_rating=4.0))


def test_indices_follow_sorted_ids():
    raw = make_raw([("u9", "i10", 1), ("u10", "i2", 1), ("u9", "i1", 2)])
    ds = build_processed(raw, PreprocessConfig(kcore=0))
    assert ds.items["item_id"].to_list() == ["i1", "i10", "i2"]
    assert ds.items["item_idx"].to_list() == [0, 1, 2]
    assert ds.users["user_id"].to_list() == ["u10", "u9"]
    assert ds.events["item_idx"].dtype == pl.Int32


def test_missing_titles_get_fallback_and_are_logged(caplog):
    items = {"item_id": ["a", "b", "c"], "title": ["Real title", None, "  "]}
    raw = make_raw([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4)], items=items)
    with caplog.at_level(logging.WARNING, logger="ttds.data.pipeline"):
        ds = build_processed(raw, PreprocessConfig(kcore=0, fallback_title="item {item_id}"))

    by_id = {row["item_id"]: row for row in ds.items.iter_rows(named=True)}
    assert by_id["a"]["title"] == "Real title"
    assert by_id["a"]["title_fallback"] is False
    assert by_id["b"]["title"] == "item b"
    assert by_id["b"]["title_fallback"] is True
    assert by_id["c"]["title"] == "item c"
    assert by_id["c"]["has_metadata"] is True
    assert by_id["d"]["title"] == "item d"
    assert by_id["d"]["has_metadata"] is False
    assert "1 interacted items have no metadata row" in caplog.text
    assert "2 items have a null or empty title" in caplog.text
    assert ds.stats["text_coverage"]["items_without_metadata"] == 1
    assert ds.stats["text_coverage"]["items_with_fallback_title"] == 3


def test_item_text_is_cleaned():
    items = {
        "item_id": ["a"],
        "title": ["Tom &amp;amp; Jerry  "],
        "description": ["Cafe\u0301\n\ndeluxe"],
        "categories": [["Toys &amp; Games", " ", "Caf&eacute;"]],
    }
    ds = build_processed(make_raw([("u1", "a", 1)], items=items), PreprocessConfig(kcore=0))
    row = ds.items.row(0, named=True)
    assert row["title"] == "Tom & Jerry"
    assert row["description"] == "Café deluxe"
    assert row["categories"] == ["Toys & Games", "Café"]


def test_user_attributes_are_cleaned():
    users = {"user_id": ["u1", "u2"], "occupation": ["  data&amp;amp;science ", None]}
    ds = build_processed(make_raw([("u1", "a", 1), ("u2", "a", 1)], users=users), PreprocessConfig(kcore=0))
    assert ds.users["occupation"].to_list() == ["data&science", None]


def test_clean_text_off_keeps_raw_text():
    items = {"item_id": ["a"], "title": ["Tom &amp; Jerry"]}
    ds = build_processed(make_raw([("u1", "a", 1)], items=items), PreprocessConfig(kcore=0, clean_text=False))
    assert ds.items["title"].to_list() == ["Tom &amp; Jerry"]
