"""Benchmark runner behind `python -m ttds.bench`: baselines and LM models over seeds, with a report."""

from ttds.bench.runner import BenchConfig, ModelSpec, run_benchmark, train_command

__all__ = ["BenchConfig", "ModelSpec", "run_benchmark", "train_command"]
