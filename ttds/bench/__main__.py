"""Run a benchmark: python -m ttds.bench dataset=<name> models=[mostpop,sasrec] seeds=[0,1,2] [out=<folder>]

The settings and the model registry are in conf/bench.yaml; see ttds/bench/runner.py for what each run writes.
"""

import logging
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ttds.bench.runner import BenchmarkRunsFailed, run_benchmark
from ttds.cli import INPUT_ERRORS, exit_on_errors
from ttds.paths import CONF_DIR, register_resolvers

log = logging.getLogger(__name__)

register_resolvers()


def dataset_overrides(overrides: list[str]) -> list[str]:
    """Keep the command-line overrides of the dataset group and its keys, which LM runs need as well."""
    keys = [override.split("=", 1)[0].lstrip("+~") for override in overrides]
    return [override for override, key in zip(overrides, keys, strict=True) if key == "dataset" or key.startswith("dataset.")]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
# Failed runs have logged their own errors; the summary of them ends the command in one line, as input errors do.
@exit_on_errors((*INPUT_ERRORS, BenchmarkRunsFailed))
def main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)
    invocation = shlex.join(["python", "-m", "ttds.bench", *sys.argv[1:]])
    run_benchmark(cfg, dataset_overrides(overrides), invocation)


if __name__ == "__main__":
    main()
