"""Time SemanticIdTable construction (collision-suffix assignment) on 100k and 200k random rows.

Run: python -m benchmarks.id_table_scaling [--repeats 5] [--levels 3] [--codebook-size 256]

Codes are uniform random in 0..K-1 and keys are unique strings in shuffled order, so the lexsort
does real work. The script prints the best of ``--repeats`` per size and the 200k/100k time ratio.
A ratio near 2 means the assignment scales linearly, because lexsort's O(N log N) is close to linear
at these sizes. A second, dense case with K=4 makes large collision groups, to time the suffix ranks.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from ttds.tokenizer.id_table import SemanticIdTable


def random_table_inputs(n_rows: int, levels: int, codebook_size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook_size, size=(n_rows, levels))
    keys = [f"item{index:07d}" for index in rng.permutation(n_rows)]
    return codes, keys


def best_build_seconds(codes: np.ndarray, keys: list[str], codebook_size: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        SemanticIdTable(codes, keys, codebook_size=codebook_size)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed builds per size; the best is reported")
    parser.add_argument("--levels", type=int, default=3, help="code levels per ID")
    parser.add_argument("--codebook-size", type=int, default=256, help="codes per level")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    for codebook_size in (args.codebook_size, 4):
        seconds = {}
        for n_rows in (100_000, 200_000):
            codes, keys = random_table_inputs(n_rows, args.levels, codebook_size, seed=0)
            seconds[n_rows] = best_build_seconds(codes, keys, codebook_size, args.repeats)
            print(f"K={codebook_size:4d} L={args.levels} rows={n_rows:7d}: {seconds[n_rows]:.3f} s (best of {args.repeats})")
        print(f"K={codebook_size:4d} time ratio 200k/100k: {seconds[200_000] / seconds[100_000]:.2f}")


if __name__ == "__main__":
    main()
