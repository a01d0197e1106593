"""Evaluation split over 2 CPU processes (gloo) gives exactly the single-process metrics."""

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from ttds.decoding import PrefixTrie, constrained_beam_search
from ttds.eval import RankingMetrics, shard_range

PAD, EOS = 0, 2
N_USERS = 5
WORLD_SIZE = 2
CATALOGUE = [[10 + a, 30 + b, 50 + c] for a in range(4) for b in range(3) for c in range(2)]  # 24 items
TARGETS = [0, 7, 13, 21, 4]
PROMPTS = [[4, 5, 6], [7, 8], [9, 4, 5, 6, 7], [5], [6, 6, 8, 9]]


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return LlamaForCausalLM(config).eval()


def evaluate(users: range) -> RankingMetrics:
    """Decode and score the given users, one user per batch so that every process does the same arithmetic."""
    model = tiny_llama()
    trie = PrefixTrie.from_sequences(CATALOGUE, eos_id=EOS)
    metrics = RankingMetrics(n_items=len(CATALOGUE))
    for user in users:
        input_ids = torch.tensor([PROMPTS[user]])
        result = constrained_beam_search(model, input_ids, torch.ones_like(input_ids), trie, beam_width=12, top_k=10)
        metrics.update(result.items, torch.tensor([TARGETS[user]]))
    return metrics


def run_rank(rank: int, store: str, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        users = shard_range(N_USERS, WORLD_SIZE, rank)
        metrics = evaluate(users)
        metrics.all_reduce()
        record = {"users": list(users), "metrics": metrics.compute()}
        Path(output, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_single_process(tmp_path):
    mp.spawn(run_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]

    single = evaluate(range(N_USERS)).compute()

    assert sorted(user for record in records for user in record["users"]) == list(range(N_USERS))
    for record in records:
        assert record["metrics"]["n_users"] == N_USERS
        assert record["metrics"] == single
    assert 0.0 < single["hr@10"] < 1.0
