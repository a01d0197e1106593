"""Ranking metrics: hand-worked values, empty slots, coverage, per-user frame, writers and shards."""

import json
import math

import pytest
import torch

from ttds.eval import RankingMetrics, metrics_markdown, shard_range, target_ranks, user_results_frame, write_metrics


def ranked_with_target_at(rank: int, target: int = 99, width: int = 10) -> torch.Tensor:
    """A (1, width) list of distinct items with ``target`` at the 1-based ``rank`` (0 leaves it out)."""
    row = torch.arange(width)
    if rank:
        row[rank - 1] = target
    return row[None, :]


@pytest.mark.parametrize(("rank", "expected"), [(1, 1.0), (2, 0.6309), (3, 0.5)])
def test_ndcg10_for_ranks_one_to_three(rank, expected):
    metrics = RankingMetrics(n_items=100)

    metrics.update(ranked_with_target_at(rank), torch.tensor([99]))

    assert metrics.compute()["ndcg@10"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("rank", [0, 1, 2, 7])
def test_hr1_equals_ndcg1(rank):
    metrics = RankingMetrics(n_items=100)

    metrics.update(ranked_with_target_at(rank), torch.tensor([99]))
    values = metrics.compute()

    assert values["hr@1"] == values["ndcg@1"]


def test_rank_beyond_cutoff_scores_zero():
    metrics = RankingMetrics(n_items=100)

    metrics.update(ranked_with_target_at(7), torch.tensor([99]))
    values = metrics.compute()

    assert values["hr@5"] == 0.0
    assert values["ndcg@5"] == 0.0
    assert values["hr@10"] == 1.0
    assert values["mrr@10"] == pytest.approx(1 / 7)


def test_missing_target_scores_zero_everywhere():
    metrics = RankingMetrics(n_items=100)

    metrics.update(ranked_with_target_at(0), torch.tensor([99]))
    values = metrics.compute()

    for name in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr@10"):
        assert values[name] == 0.0, name


def test_mixed_batch_averages_over_users():
    metrics = RankingMetrics(n_items=100)
    ranked = torch.cat([ranked_with_target_at(1), ranked_with_target_at(2), ranked_with_target_at(3), ranked_with_target_at(0)])

    metrics.update(ranked, torch.full((4,), 99))
    values = metrics.compute()

    assert values["n_users"] == 4
    assert values["hr@1"] == pytest.approx(0.25)
    assert values["hr@5"] == pytest.approx(0.75)
    assert values["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4)
    assert values["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)


def test_empty_slots_count_as_misses_and_invalid():
    metrics = RankingMetrics(n_items=100)
    ranked = torch.full((2, 10), -1)
    ranked[1, :4] = torch.tensor([5, 6, 7, 8])

    metrics.update(ranked, torch.tensor([5, 3]))
    values = metrics.compute()

    assert values["hr@10"] == 0.0
    assert values["invalid_user_rate"] == 0.5
    assert values["invalid_slot_rate"] == pytest.approx(16 / 20)


def test_empty_slot_never_matches_a_target():
    ranks = target_ranks(torch.tensor([[-1, -1, 4]]), torch.tensor([4]))

    assert ranks.tolist() == [3]


def test_coverage_counts_distinct_items():
    metrics = RankingMetrics(n_items=40)
    ranked = torch.stack([torch.arange(10), torch.arange(5, 15)])

    metrics.update(ranked, torch.tensor([0, 0]))

    assert metrics.compute()["coverage@10"] == pytest.approx(15 / 40)


def test_short_lists_are_rejected():
    metrics = RankingMetrics(n_items=100)

    with pytest.raises(ValueError, match=r"ranked lists have 5 slots but the metrics need 10; decode with top_k>=10"):
        metrics.update(torch.zeros(1, 5, dtype=torch.long), torch.tensor([0]))


def test_items_outside_catalogue_are_rejected():
    metrics = RankingMetrics(n_items=5)

    with pytest.raises(ValueError, match=r"item index 9, outside the catalogue of 5 items"):
        metrics.update(torch.arange(10)[None, :], torch.tensor([0]))


def test_user_frame_has_rank_or_null():
    ranked = torch.cat([ranked_with_target_at(3), ranked_with_target_at(0)])
    targets = torch.tensor([99, 99])
    ranks = target_ranks(ranked, targets)

    frame = user_results_frame([7, 8], targets, ranks)

    assert frame["user_idx"].to_list() == [7, 8]
    assert frame["rank"].to_list() == [3, None]
    assert frame["hit@1"].to_list() == [False, False]
    assert frame["hit@5"].to_list() == [True, False]


def test_shards_cover_users_once():
    for n_users in (0, 1, 5, 17):
        for world_size in (1, 2, 3, 8):
            users = [user for rank in range(world_size) for user in shard_range(n_users, world_size, rank)]
            sizes = [len(shard_range(n_users, world_size, rank)) for rank in range(world_size)]
            assert users == list(range(n_users)), (n_users, world_size)
            assert max(sizes) - min(sizes) <= 1, (n_users, world_size)


def test_shard_rank_outside_world_is_rejected():
    with pytest.raises(ValueError, match=r"rank=2 is not in 0..1 for world_size=2"):
        shard_range(5, 2, 2)


def test_writers_produce_json_and_markdown(tmp_path):
    rows = {"test": {"hr@10": 0.25, "ndcg@10": 0.125, "n_users": 8.0}}

    json_path, markdown_path = write_metrics(tmp_path / "metrics", rows)

    assert json.loads(json_path.read_text()) == rows
    assert markdown_path.read_text() == metrics_markdown(rows)
    assert "| test | 0.2500 | 0.1250 | 8 |" in markdown_path.read_text()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
