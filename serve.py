"""Batch recommendations from a trained run.

    python serve.py run_dir=outputs/movietweetings_100k/<date_time> users=all top_k=10 output=recs.parquet
    python serve.py run_dir=... users=my_users.txt output=recs.jsonl unknown_users=popular
"""

import signal
import sys

import hydra
from omegaconf import DictConfig

from ttds.cli import exit_on_input_error
from ttds.paths import register_resolvers
from ttds.serving import serve

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    # SIGTERM becomes SystemExit, so the writer's cleanup removes its temporary file as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    path = serve(cfg)
    print(f"recommendations written to {path}")


if __name__ == "__main__":
    main()
