"""MostPop and the SASRec baseline, scored through RankingMetrics into the evaluate stage's metrics.json layout."""

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from ttds.baselines import baseline_function
from ttds.baselines.mostpop import popularity_ranking
from ttds.baselines.mostpop import run as run_mostpop
from ttds.baselines.sasrec import SASRecBaselineConfig, evaluate, fit, full_histories, full_ranking_scorer
from ttds.baselines.sasrec import run as run_sasrec
from ttds.data.dataset import ProcessedDataset
from ttds.data.views import evaluation_examples
from ttds.models.sasrec_module import evaluate_ranking


def build_dataset(sequences: list[list[int]], n_items: int, name: str = "hand") -> ProcessedDataset:
    """Each user's events in order; the last is "test", the one before "valid", the rest "train"."""
    rows = []
    for user, items in enumerate(sequences):
        for position, item in enumerate(items):
            split = "train"
            if position == len(items) - 1:
                split = "test"
            elif position == len(items) - 2:
                split = "valid"
            rows.append({"user_idx": user, "item_idx": item, "timestamp": position, "file_row": len(rows), "position": position, "split": split})
    events = pl.DataFrame(rows).with_columns(pl.col("user_idx", "item_idx", "position").cast(pl.Int32))
    items = pl.DataFrame({"item_idx": pl.Series(range(n_items), dtype=pl.Int32), "item_id": [f"i{i}" for i in range(n_items)]})
    users = pl.DataFrame({"user_idx": pl.Series(range(len(sequences)), dtype=pl.Int32), "user_id": [f"u{u}" for u in range(len(sequences))]})
    return ProcessedDataset(name=name, events=events, items=items, users=users)


# Training counts: item 2 x3, items 0 and 4 x2, items 3 and 7 x1, the rest 0. Counting valid and test events
# as well would put item 7 (x2) before item 3.
HAND_SEQUENCES = [
    [2, 0, 4, 5, 2],  # train 2 0 4, valid 5, test 2
    [2, 0, 4, 1],  # train 2 0, valid 4, test 1
    [2, 4, 7, 7, 11],  # train 2 4 7, valid 7, test 11
    [3, 2, 0],  # train 3, valid 2, test 0
]
HAND_RANKING = [2, 0, 4, 3, 7, 1, 5, 6, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def hand_dataset():
    return build_dataset(HAND_SEQUENCES, n_items=12)


def test_mostpop_ranks_by_training_count(hand_dataset):
    assert popularity_ranking(hand_dataset).tolist() == HAND_RANKING


def test_mostpop_metrics_match_hand_ranks(hand_dataset, tmp_path):
    rows = run_mostpop(hand_dataset, tmp_path, seed=0)

    # Target ranks in HAND_RANKING. Valid: 5 -> 7, 4 -> 3, 7 -> 5, 2 -> 1. Test: 2 -> 1, 1 -> 6, 11 -> 12, 0 -> 2.
    valid, test = rows["valid"], rows["test"]
    assert valid["hr@1"] == pytest.approx(1 / 4)
    assert valid["hr@5"] == pytest.approx(3 / 4)
    assert valid["hr@10"] == pytest.approx(1.0)
    assert valid["ndcg@10"] == pytest.approx((1 / math.log2(8) + 1 / math.log2(4) + 1 / math.log2(6) + 1) / 4)
    assert test["hr@5"] == pytest.approx(2 / 4)
    assert test["hr@10"] == pytest.approx(3 / 4)
    assert test["ndcg@10"] == pytest.approx((1 + 1 / math.log2(7) + 1 / math.log2(3)) / 4)
    assert test["mrr@10"] == pytest.approx((1 + 1 / 6 + 1 / 2) / 4)
    assert test["coverage@10"] == pytest.approx(10 / 12)
    assert test["n_users"] == 4


def test_mostpop_writes_evaluate_layout(hand_dataset, tmp_path):
    rows = run_mostpop(hand_dataset, tmp_path, seed=0)

    written = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(written) == {"valid", "test"}
    assert written["test"] == pytest.approx(rows["test"])
    per_user = pl.read_parquet(tmp_path / "evaluate" / "test_per_user.parquet")
    assert per_user.sort("user_idx")["rank"].to_list() == [1, 6, None, 2]


def test_mostpop_small_catalogue_leaves_slots_empty(tmp_path):
    dataset = build_dataset([[0, 1, 2], [1, 2, 3], [4, 1, 0]], n_items=5)
    rows = run_mostpop(dataset, tmp_path, seed=0)
    assert rows["test"]["invalid_slot_rate"] == pytest.approx(5 / 10)
    assert rows["test"]["invalid_user_rate"] == 0.0
    assert rows["test"]["hr@10"] == pytest.approx(1.0)


def test_mostpop_rejects_unknown_option(hand_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"mostpop has unknown keys \['top_n'\]"):
        run_mostpop(hand_dataset, tmp_path, seed=0, options={"top_n": 5})


def test_unknown_baseline_lists_known_ones():
    with pytest.raises(ValueError, match=r"baseline 'itemknn' is unknown; use one of \['mostpop', 'sasrec'\]"):
        baseline_function("itemknn")


N_ITEMS = 40
TINY_SASREC = {"hidden": 32, "layers": 1, "heads": 2, "max_len": 10, "dropout": 0.0, "lr": 5e-3, "epochs": 5, "batch_size": 64, "patience": 0}


@pytest.fixture(scope="module")
def successor_dataset():
    """Users walk the catalogue in order (item t + 1 follows item t), so the next item is learnable."""
    rng = np.random.default_rng(0)
    sequences = [((rng.integers(N_ITEMS) + np.arange(rng.integers(5, 12))) % N_ITEMS).tolist() for _ in range(200)]
    return build_dataset(sequences, n_items=N_ITEMS, name="successor")


@pytest.fixture(scope="module")
def sasrec_model(successor_dataset):
    cfg = SASRecBaselineConfig(sasrec=TINY_SASREC, accelerator="cpu")
    model = fit(successor_dataset, seed=0, cfg=cfg)
    rows, per_user = evaluate(model, successor_dataset, cfg)
    return model, rows, per_user


def test_sasrec_baseline_learns_successor(sasrec_model):
    _, rows, _ = sasrec_model
    assert rows["test"]["n_users"] == 200
    assert rows["test"]["hr@1"] > 10 / N_ITEMS  # random ranking gives 1 / N_ITEMS
    assert rows["test"]["invalid_user_rate"] == 0.0


def test_sasrec_baseline_agrees_with_rank_evaluation(sasrec_model, successor_dataset):
    # The top-K lists through RankingMetrics must give what the score ranks of the target give.
    model, rows, per_user = sasrec_model
    test = evaluation_examples(successor_dataset, "test", TINY_SASREC["max_len"])
    by_rank = evaluate_ranking(model, test["history"].to_list(), test["target"].to_numpy(), ks=(1, 5, 10))

    assert rows["test"]["hr@10"] == pytest.approx(by_rank["hr@10"])
    assert rows["test"]["ndcg@10"] == pytest.approx(by_rank["ndcg@10"])
    assert rows["test"]["hr@1"] == pytest.approx(by_rank["hr@1"])
    assert per_user["test"].height == 200


def test_sasrec_baseline_run_writes_metrics(successor_dataset, tmp_path):
    options = {"sasrec": {**TINY_SASREC, "epochs": 1}, "accelerator": "cpu"}
    rows = run_sasrec(successor_dataset, tmp_path, seed=1, options=options)

    written = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert written["valid"] == pytest.approx(rows["valid"])
    assert written["test"] == pytest.approx(rows["test"])
    details = json.loads((tmp_path / "evaluate" / "sasrec_training.json").read_text())
    assert details["config"]["seed"] == 1
    assert details["max_history"] == TINY_SASREC["max_len"]


def test_sasrec_baseline_rejects_seed_option(successor_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"each run's seed comes from `seeds=\[...\]`"):
        run_sasrec(successor_dataset, tmp_path, seed=0, options={"sasrec": {"seed": 3}})


def test_sasrec_baseline_rejects_history_past_max_len(successor_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"sasrec.max_history=30 must be in 1..sasrec.max_len=10"):
        run_sasrec(successor_dataset, tmp_path, seed=0, options={"sasrec": TINY_SASREC, "max_history": 30})


def test_sasrec_excluded_history_never_ranked(sasrec_model, successor_dataset):
    model, _, _ = sasrec_model
    excluded = full_histories(successor_dataset, "test")
    test = evaluation_examples(successor_dataset, "test", TINY_SASREC["max_len"])
    users, histories = test["user_idx"].to_list(), test["history"].to_list()
    ranked = full_ranking_scorer(model, torch.device("cpu"), 10, excluded)(users, histories)  # (200, 10)
    plain = full_ranking_scorer(model, torch.device("cpu"), 10)(users, histories)

    assert all(len(excluded[user]) >= 4 for user in users)
    for row, user in enumerate(users):
        assert not set(ranked[row].tolist()) & set(excluded[user]), user
    # A model that learned the walk puts recent history items near the top, so excluding them changes the lists.
    assert not torch.equal(ranked, plain)


def test_sasrec_baseline_exclude_history_option(successor_dataset, tmp_path):
    options = {"sasrec": {**TINY_SASREC, "epochs": 1}, "accelerator": "cpu", "exclude_history": True}
    rows = run_sasrec(successor_dataset, tmp_path, seed=1, options=options)

    assert rows["test"]["n_users"] == 200
    assert rows["test"]["invalid_user_rate"] == 0.0


def test_sasrec_excluded_items_leave_empty_slots(sasrec_model):
    model, _, _ = sasrec_model
    excluded = {0: list(range(35))}  # 5 of the 40 items remain for a top 10
    ranked = full_ranking_scorer(model, torch.device("cpu"), 10, excluded)([0], [[1, 2, 3]])  # (1, 10)

    assert sorted(ranked[0, :5].tolist()) == [35, 36, 37, 38, 39]
    assert ranked[0, 5:].tolist() == [-1] * 5
