import dataclasses
import itertools

import polars as pl
import pytest
from test_preprocess import make_raw

from ttds.data import views
from ttds.data.config import PreprocessConfig
from ttds.data.pipeline import build_processed, load_dataset_config, load_processed


def five_event_dataset(test_item="e"):
    rows = [("u1", item, time) for time, item in enumerate(["a", "b", "c", "d", test_item])]
    return build_processed(make_raw(rows), PreprocessConfig(kcore=0))


def as_ids(ds, indices):
    item_ids = ds.items["item_id"].to_list()
    return [item_ids[index] for index in indices]


def examples_as_ids(ds, frame):
    return [(as_ids(ds, row["history"]), as_ids(ds, [row["target"]])[0]) for row in frame.iter_rows(named=True)]


def test_five_event_user_split():
    ds = five_event_dataset()
    assert ds.events["split"].to_list() == ["train", "train", "train", "valid", "test"]
    assert examples_as_ids(ds, views.training_pairs(ds, max_history=20)) == [(["a"], "b"), (["a", "b"], "c")]
    assert examples_as_ids(ds, views.evaluation_examples(ds, "valid", max_history=20)) == [(["a", "b", "c"], "d")]
    assert examples_as_ids(ds, views.evaluation_examples(ds, "test", max_history=20)) == [(["a", "b", "c", "d"], "e")]


def test_changing_test_item_leaves_training_and_histories():
    original = five_event_dataset(test_item="e")
    changed = five_event_dataset(test_item="0")  # sorts first, so it also shifts every other item index
    assert examples_as_ids(original, views.training_pairs(original, 20)) == examples_as_ids(changed, views.training_pairs(changed, 20))

    valid_before = examples_as_ids(original, views.evaluation_examples(original, "valid", 20))
    valid_after = examples_as_ids(changed, views.evaluation_examples(changed, "valid", 20))
    assert valid_before == valid_after

    test_before = examples_as_ids(original, views.evaluation_examples(original, "test", 20))
    test_after = examples_as_ids(changed, views.evaluation_examples(changed, "test", 20))
    assert test_before[0][0] == test_after[0][0]
    assert test_after[0][1] == "0"


def test_max_history_truncates_to_most_recent():
    ds = build_processed(make_raw([("u1", f"i{k}", k) for k in range(8)]), PreprocessConfig(kcore=0))
    pairs = examples_as_ids(ds, views.training_pairs(ds, max_history=2))
    assert pairs[-1] == (["i3", "i4"], "i5")
    assert pairs[0] == (["i0"], "i1")
    test = examples_as_ids(ds, views.evaluation_examples(ds, "test", max_history=3))
    assert test == [(["i4", "i5", "i6"], "i7")]


def short_users_dataset():
    rows = [("one", "a", 1)]
    rows += [("two", "a", 1), ("two", "b", 2)]
    rows += [("three", "a", 1), ("three", "b", 2), ("three", "c", 3)]
    rows += [("four", "a", 1), ("four", "b", 2), ("four", "c", 3), ("four", "d", 4)]
    return build_processed(make_raw(rows), PreprocessConfig(kcore=0))


def user_rows(ds, frame, user_id):
    user_idx = ds.users.filter(pl.col("user_id") == user_id)["user_idx"][0]
    return examples_as_ids(ds, frame.filter(pl.col("user_idx") == user_idx))


def test_short_users_follow_documented_split():
    ds = short_users_dataset()
    pairs = views.training_pairs(ds, 20)
    valid = views.evaluation_examples(ds, "valid", 20)
    test = views.evaluation_examples(ds, "test", 20)

    assert user_rows(ds, pairs, "one") == []
    assert user_rows(ds, valid, "one") == []
    assert user_rows(ds, test, "one") == []

    assert user_rows(ds, pairs, "two") == []
    assert user_rows(ds, valid, "two") == []
    assert user_rows(ds, test, "two") == [(["a"], "b")]

    assert user_rows(ds, pairs, "three") == []
    assert user_rows(ds, valid, "three") == [(["a"], "b")]
    assert user_rows(ds, test, "three") == [(["a", "b"], "c")]

    assert user_rows(ds, pairs, "four") == [(["a"], "b")]


def test_short_users_are_counted_in_stats():
    ds = short_users_dataset()
    buckets = ds.stats["users_by_length"]
    assert {bucket: entry["users"] for bucket, entry in buckets.items()} == {"1": 1, "2": 1, "3": 1, ">=4": 1}
    assert sum(entry["users"] for entry in buckets.values()) == ds.n_users
    assert ds.stats["examples"] == {"train": 1, "valid": 2, "test": 3}


def test_two_event_user_adds_nothing_to_training_views():
    ds = short_users_dataset()
    two = ds.users.filter(pl.col("user_id") == "two")["user_idx"][0]
    assert two not in views.training_sequences(ds)["user_idx"].to_list()
    assert two not in views.item_users(ds)["users"].explode().to_list()
    assert two not in views.co_interaction(ds, "user", top_k=10)["src"].to_list()


def test_item_users_break_ties_by_file_order():
    rows = [("u3", "a", 5), ("u1", "a", 5), ("u2", "a", 1), ("u1", "z", 9), ("u2", "z", 9), ("u3", "z", 9)]
    rows += [(user, item, 20) for user in ("u1", "u2", "u3") for item in ("x", "y")]
    ds = build_processed(make_raw(rows), PreprocessConfig(kcore=0))
    a_idx = ds.items.filter(pl.col("item_id") == "a")["item_idx"][0]
    users = views.item_users(ds).filter(pl.col("item_idx") == a_idx)["users"][0].to_list()
    user_ids = ds.users["user_id"].to_list()
    assert [user_ids[index] for index in users] == ["u2", "u3", "u1"]


def brute_force_co_counts(ds, kind):
    train = ds.events.filter(pl.col("split") == "train").select("user_idx", "item_idx").unique()
    key, other = ("item_idx", "user_idx") if kind == "item" else ("user_idx", "item_idx")
    groups = train.group_by(other).agg(pl.col(key)).get_column(key).to_list()
    counts = {}
    for members in groups:
        for src, dst in itertools.permutations(members, 2):
            counts[(src, dst)] = counts.get((src, dst), 0) + 1
    return counts


@pytest.mark.parametrize("kind", ["item", "user"])
def test_co_interaction_matches_brute_force(kind):
    rows = [(f"u{u}", f"i{(u * 7 + k * 3) % 11}", k) for u in range(15) for k in range(6)]
    ds = build_processed(make_raw(rows), PreprocessConfig(kcore=0))
    top_k = 3
    result = views.co_interaction(ds, kind, top_k=top_k)
    counts = brute_force_co_counts(ds, kind)

    for src in sorted({src for src, _ in counts}):
        neighbours = sorted(((-count, dst) for (s, dst), count in counts.items() if s == src))[:top_k]
        expected = [(dst, -negative) for negative, dst in neighbours]
        got = result.filter(pl.col("src") == src).select("dst", "count").rows()
        assert got == expected, f"src {src}"
    assert result.filter(pl.col("src") == pl.col("dst")).height == 0


def test_view_arguments_are_checked():
    ds = five_event_dataset()
    with pytest.raises(ValueError, match="split='train' is not an evaluation split"):
        views.evaluation_examples(ds, "train", 20)
    with pytest.raises(ValueError, match="kind='movie' is not a co-interaction kind"):
        views.co_interaction(ds, "movie", 5)
    with pytest.raises(ValueError, match="max_history=0 must be at least 1"):
        views.training_pairs(ds, 0)


@pytest.fixture(scope="module")
def movietweetings(tmp_path_factory):
    # The bundled MovieTweetings 100K with its default config (5-core).
    return load_processed(load_dataset_config("movietweetings_100k"), tmp_path_factory.mktemp("cache"))


def training_views(ds):
    return {
        "training_sequences": views.training_sequences(ds),
        "user_items": views.user_items(ds),
        "training_pairs": views.training_pairs(ds, 20),
        "item_users": views.item_users(ds),
        "co_interaction_item": views.co_interaction(ds, "item", 10),
        "co_interaction_user": views.co_interaction(ds, "user", 10),
    }


def test_training_views_ignore_last_two_items(movietweetings):
    ds = movietweetings
    held_out = pl.col("split").is_in(["valid", "test"])
    shifted_item = ((pl.col("item_idx") + 1) % ds.n_items).cast(pl.Int32)
    altered = dataclasses.replace(ds, events=ds.events.with_columns(pl.when(held_out).then(shifted_item).otherwise(pl.col("item_idx")).alias("item_idx")))

    original_views = training_views(ds)
    altered_views = training_views(altered)
    for name, frame in original_views.items():
        assert frame.height > 0, name
        assert frame.equals(altered_views[name]), name


def test_training_views_hold_no_last_two_items(movietweetings):
    ds = movietweetings
    held_out = ds.events.filter(pl.col("split") != "train").select("user_idx", "item_idx")
    sequences = views.training_sequences(ds).explode("items").rename({"items": "item_idx"})
    pairs = views.training_pairs(ds, 20)
    history = pairs.explode("history").select("user_idx", pl.col("history").alias("item_idx"))
    targets = pairs.select("user_idx", pl.col("target").alias("item_idx"))
    by_item = views.item_users(ds).explode("users").select(pl.col("users").alias("user_idx"), "item_idx")

    for name, frame in {"sequences": sequences, "history": history, "targets": targets, "item_users": by_item}.items():
        leaked = frame.join(held_out, on=["user_idx", "item_idx"], how="semi")
        assert leaked.height == 0, name
