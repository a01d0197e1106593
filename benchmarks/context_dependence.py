"""Measure how much a trained model's first ID token depends on the prompt: personalisation or popularity.

Run: python -m benchmarks.context_dependence --run-dir outputs/<dataset>/<date_time> [--users 256] [--threads 1]

It builds the evaluation prompts of the first ``--users`` users of the test split as the evaluate stage does. At the
end of each prompt it reads the model's next-token distribution over the tokens that can start a catalogue ID (the
first code level), and prints:

- the mean KL divergence between each user's distribution and the mean distribution over users (0 when every user
  gets the same distribution, that is, when the model ranks by popularity alone);
- the mean entropy of the users' distributions and the entropy of the mean distribution;
- the log-probability of the target item's first token under the user's own prompt, under the mean distribution,
  and under a prompt built with another user's history (users shuffled with a fixed seed);
- how many distinct first tokens are the most likely one for some user.

A model that personalises has a KL well above 0 and a target log-probability above the other two.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from benchmarks.decoding import SPLIT, catalogue_sequences, load_run
from ttds.backbone.collate import position_ids_from_mask
from ttds.data.views import evaluation_examples

log = logging.getLogger("benchmarks.context_dependence")


@torch.no_grad()
def first_token_log_probs(recommender, users: list[int], histories: list[list[int]], first_tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return log-probabilities (users, F) over ``first_tokens`` at the end of each user's evaluation prompt."""
    rows = []
    for start in range(0, len(users), batch_size):
        batch = recommender.collator(recommender.prompts(users[start : start + batch_size], histories[start : start + batch_size]))
        mask = batch["attention_mask"].to(recommender.device)
        logits = recommender.model(
            input_ids=batch["input_ids"].to(recommender.device), attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits  # (B, T, V)
        rows.append(logits[:, -1, first_tokens.to(logits.device)].float().log_softmax(-1).cpu())
    return torch.cat(rows)


def context_report(log_probs: torch.Tensor, shuffled: torch.Tensor, targets: torch.Tensor) -> dict:
    """Summarise per-user distributions (users, F), the same with shuffled histories, and target columns (users,)."""
    probs = log_probs.exp()
    mean = probs.mean(0)  # (F,)
    rows = torch.arange(len(targets))
    return {
        "users": len(targets),
        "first_tokens": log_probs.shape[1],
        "kl_user_vs_mean": (probs * (log_probs - mean.log())).sum(-1).mean().item(),
        "entropy_user": -(probs * log_probs).sum(-1).mean().item(),
        "entropy_mean": -(mean * mean.log()).sum().item(),
        "target_logp_own_prompt": log_probs[rows, targets].mean().item(),
        "target_logp_mean_distribution": mean.log()[targets].mean().item(),
        "target_logp_other_history": shuffled[rows, targets].mean().item(),
        "distinct_argmax": len(set(log_probs.argmax(-1).tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a run directory whose llm stage finished")
    parser.add_argument("--users", type=int, default=256, help="first N users of the test split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps the default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the history shuffle")
    parser.add_argument("--output", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.users < 2:
        parser.error(f"--users={args.users} must be at least 2, so that histories can be shuffled between users.")
    if args.threads:
        torch.set_num_threads(args.threads)

    # load_run sets the Recommender's decoding settings; this measurement does not decode, so any valid ones do.
    settings = argparse.Namespace(beam_width=1, top_k=1, batch_size=args.batch_size)
    cfg, dataset, trained, recommender = load_run(Path(args.run_dir), settings)
    sequences = catalogue_sequences(trained, recommender.trie)
    first_tokens = torch.tensor(sorted({ids[0] for ids in sequences}))
    column = {int(token): index for index, token in enumerate(first_tokens.tolist())}

    examples = evaluation_examples(dataset, SPLIT, int(cfg.dataset.preprocess.max_history)).head(args.users)
    users, histories = examples["user_idx"].to_list(), examples["history"].to_list()
    targets = torch.tensor([column[sequences[item][0]] for item in examples["target"].to_list()])
    order = torch.randperm(len(users), generator=torch.Generator().manual_seed(args.seed)).tolist()

    own = first_token_log_probs(recommender, users, histories, first_tokens, args.batch_size)
    other = first_token_log_probs(recommender, users, [histories[i] for i in order], first_tokens, args.batch_size)
    report = {"run_dir": str(args.run_dir), **context_report(own, other, targets), "load_average_1min": os.getloadavg()[0]}

    for key, value in report.items():
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
