"""Main job: preprocess a dataset, build semantic IDs, tune the LM, evaluate.

    python train.py                                  # all stages on the bundled MovieTweetings 100K
    python train.py stage=data dataset=yelp_p5       # one stage on another dataset
    python train.py experiment=demo                  # the CPU-sized demo that `make demo` runs
"""

import hydra
from omegaconf import DictConfig

from ttds.cli import exit_on_input_error
from ttds.paths import register_resolvers
from ttds.stages.runner import run_stages

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    run_stages(cfg)


if __name__ == "__main__":
    main()
