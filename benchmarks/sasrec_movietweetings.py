"""Train SASRec on the bundled MovieTweetings 100K and report full-ranking HR and NDCG on the valid and test splits.

Run: python -m benchmarks.sasrec_movietweetings [--epochs 200] [--patience 10] [--seed 0] [--out FILE]

Protocol: the default 5-core leave-one-out split of conf/dataset/movietweetings_100k.yaml. SASRec trains on
training events only and stops early on valid NDCG@10. Valid examples predict each user's valid item from
their training sequence, and test examples predict the test item from every earlier event, valid item
included. Every user ranks all items, and history items are not excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("benchmarks.sasrec_movietweetings")


def load_dataset():
    """Load the processed MovieTweetings dataset from conf/dataset alone, so unrelated config groups cannot break it."""
    from omegaconf import OmegaConf

    from ttds.data.config import dataset_config_from_dict
    from ttds.data.pipeline import load_processed
    from ttds.paths import CONF_DIR, REPO_ROOT

    paths = {"repo_data": str(REPO_ROOT / "data")}
    node = OmegaConf.create({"paths": paths, "dataset": OmegaConf.load(CONF_DIR / "dataset" / "movietweetings_100k.yaml")})
    cfg = dataset_config_from_dict(OmegaConf.to_container(node.dataset, resolve=True))
    cache_dir = Path(os.environ.get("TTDS_CACHE_DIR", REPO_ROOT / ".cache")) / "processed"
    return load_processed(cfg, cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="maximum training epochs")
    parser.add_argument("--patience", type=int, default=10, help="epochs without a better valid NDCG@10 before stopping")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, dropout and shuffling")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from ttds.data.views import evaluation_examples, training_sequences
    from ttds.models.sasrec_module import SASRecConfig, evaluate_ranking, sequences_by_user, targets_by_user, train_sasrec

    ds = load_dataset()
    cfg = SASRecConfig(epochs=args.epochs, patience=args.patience, seed=args.seed)
    sequences = sequences_by_user(training_sequences(ds), ds.n_users)
    valid = evaluation_examples(ds, "valid", max_history=cfg.max_len)
    test = evaluation_examples(ds, "test", max_history=cfg.max_len)

    started = time.perf_counter()
    model = train_sasrec(sequences, ds.n_items, cfg, {"accelerator": "auto"}, valid_targets=targets_by_user(valid, ds.n_users))
    seconds = time.perf_counter() - started

    results = {
        "dataset": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "config": vars(args) | {"sasrec": cfg.__dict__},
        "train_seconds": round(seconds, 1),
        "valid": evaluate_ranking(model, valid["history"].to_list(), valid["target"].to_numpy(), ks=(1, 5, 10)),
        "test": evaluate_ranking(model, test["history"].to_list(), test["target"].to_numpy(), ks=(1, 5, 10)),
    }
    # A model that learned nothing ranks the target at about n_items / 2; this number puts HR@10 in scale.
    results["random_hr@10"] = 10 / ds.n_items
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
