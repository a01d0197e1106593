"""Benchmark the polars preprocessing pipeline against the plain pandas reference on Yelp (316k interactions).

Run: python -m benchmarks.preprocess_yelp [--repeats 3] [--dataset-dir PATH]

Each side runs in its own subprocess, so its peak resident memory (ru_maxrss) covers only its own library and
data. tracemalloc is not used because it misses polars' Rust allocations. Both sides start from the same interactions: the polars side
reads them with the project reader (conf/dataset/yelp_p5.yaml), the pandas side parses the same file with pandas.
Timed work, best of ``--repeats``:
- polars: process_events (rating filter, order, duplicates, 5-core, index, split), then training pairs and item
  co-interaction top-20. The full build_processed (events plus item text cleaning, metadata and statistics, which
  the pandas side does not do) is timed too and reported on its own line;
- pandas: reference_events (the same event steps), then reference training pairs and item co-interaction top-20.
The parent checks that both event tables are identical before it reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_HISTORY = 20
TOP_K = 20


def _rss_mib() -> float:
    # Current resident set size from /proc (Linux); ru_maxrss only gives the peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _yelp_config(dataset_dir: Path | None):
    from ttds.data.pipeline import load_dataset_config

    cfg = load_dataset_config("yelp_p5")
    if dataset_dir is not None:
        cfg.path = str(dataset_dir)
    return cfg


def _best_time(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def run_polars(dataset_dir: Path | None, repeats: int, events_path: Path) -> dict:
    from ttds.data import views
    from ttds.data.pipeline import build_processed, process_events
    from ttds.data.readers import read_dataset

    cfg = _yelp_config(dataset_dir)
    started = time.perf_counter()
    raw = read_dataset(cfg)
    read_seconds = time.perf_counter() - started
    rss_before = _rss_mib()

    steps_seconds, _ = _best_time(lambda: process_events(raw.interactions, cfg.preprocess, cfg.name), repeats)
    build_seconds, processed = _best_time(lambda: build_processed(raw, cfg.preprocess), repeats)
    pairs_seconds, pairs = _best_time(lambda: views.training_pairs(processed, MAX_HISTORY), repeats)
    co_seconds, co = _best_time(lambda: views.co_interaction(processed, "item", TOP_K), repeats)

    processed.events.select("user_idx", "item_idx", "timestamp", "position", "split", "file_row").write_parquet(events_path)
    return {
        "read_s": read_seconds,
        "steps_s": steps_seconds,
        "build_s": build_seconds,
        "training_pairs_s": pairs_seconds,
        "co_interaction_s": co_seconds,
        "events": processed.events.height,
        "training_pairs": pairs.height,
        "co_interaction_rows": co.height,
        "rss_before_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _read_sequences_pandas(path: Path):
    import pandas as pd

    lines = pd.read_csv(path, header=None, names=["line"], sep="\x1f", engine="c", dtype=str)
    tokens = lines["line"].str.split(" ")
    frame = pd.DataFrame({"user_id": tokens.str[0], "item_id": tokens.str[1:]}).explode("item_id", ignore_index=True)
    frame["timestamp"] = frame.groupby("user_id", sort=False).cumcount().astype("int64")
    frame["file_row"] = range(len(frame))
    frame["rating"] = float("nan")
    return frame


def run_pandas(dataset_dir: Path | None, repeats: int, events_path: Path) -> dict:
    from ttds.data.reference_pandas import reference_events, reference_item_co_interaction, reference_training_pairs

    cfg = _yelp_config(dataset_dir)
    started = time.perf_counter()
    interactions = _read_sequences_pandas(Path(cfg.path) / cfg.files["sequences"])
    read_seconds = time.perf_counter() - started
    rss_before = _rss_mib()

    steps_seconds, events = _best_time(lambda: reference_events(interactions, cfg.preprocess), repeats)
    pairs_seconds, pairs = _best_time(lambda: reference_training_pairs(events, MAX_HISTORY), repeats)
    co_seconds, co = _best_time(lambda: reference_item_co_interaction(events, TOP_K), repeats)

    events.to_parquet(events_path)
    return {
        "read_s": read_seconds,
        "steps_s": steps_seconds,
        "training_pairs_s": pairs_seconds,
        "co_interaction_s": co_seconds,
        "events": len(events),
        "training_pairs": len(pairs),
        "co_interaction_rows": len(co),
        "rss_before_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _run_side(side: str, args: argparse.Namespace, folder: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.preprocess_yelp", "--side", side, "--repeats", str(args.repeats), "--out", str(folder)]
    if args.dataset_dir is not None:
        command += ["--dataset-dir", str(args.dataset_dir)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"the {side} side failed with exit code {finished.returncode}:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _format_report(results: dict[str, dict]) -> str:
    polars_side, pandas_side = results["polars"], results["pandas"]
    rows = [
        ("event steps (s)", "steps_s"),
        ("training pairs (s)", "training_pairs_s"),
        ("item co-interaction (s)", "co_interaction_s"),
    ]
    lines = [f"{'':<26}{'polars':>10}{'pandas':>10}{'ratio':>8}"]
    for label, key in rows:
        lines.append(f"{label:<26}{polars_side[key]:>10.3f}{pandas_side[key]:>10.3f}{pandas_side[key] / polars_side[key]:>7.1f}x")

    polars_total = sum(polars_side[key] for _, key in rows)
    pandas_total = sum(pandas_side[key] for _, key in rows)
    lines.append(f"{'total (s)':<26}{polars_total:>10.3f}{pandas_total:>10.3f}{pandas_total / polars_total:>7.1f}x")
    lines.append(f"{'full build, polars (s)':<26}{polars_side['build_s']:>10.3f}")
    lines.append(f"{'read input (s, untimed)':<26}{polars_side['read_s']:>10.3f}{pandas_side['read_s']:>10.3f}")
    lines.append(f"{'RSS after read (MiB)':<26}{polars_side['rss_before_mib']:>10.0f}{pandas_side['rss_before_mib']:>10.0f}")
    lines.append(f"{'peak RSS (MiB)':<26}{polars_side['peak_rss_mib']:>10.0f}{pandas_side['peak_rss_mib']:>10.0f}")
    lines.append(
        f"events {polars_side['events']:,}, training pairs {polars_side['training_pairs']:,} / {pandas_side['training_pairs']:,}, "
        f"co-interaction rows {polars_side['co_interaction_rows']:,} / {pandas_side['co_interaction_rows']:,}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per step; the best is reported")
    parser.add_argument("--dataset-dir", type=Path, default=None, help="folder with yelp.user_sequence.txt (default: from the config)")
    parser.add_argument("--side", choices=["polars", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side is not None:
        runner = run_polars if args.side == "polars" else run_pandas
        print(json.dumps(runner(args.dataset_dir, args.repeats, args.out / f"{args.side}.parquet")))
        return

    import polars as pl

    with tempfile.TemporaryDirectory() as folder:
        results = {side: _run_side(side, args, Path(folder)) for side in ("polars", "pandas")}
        ours = pl.read_parquet(Path(folder) / "polars.parquet")
        reference = pl.read_parquet(Path(folder) / "pandas.parquet").cast(ours.schema)
        if not ours.equals(reference):
            raise SystemExit("the polars and pandas event tables differ; the timings are not comparable")

    print(f"yelp_p5 preprocessing, best of {args.repeats}, {os.cpu_count()} CPU cores (polars multithreaded, pandas single-threaded)")
    print(_format_report(results))


if __name__ == "__main__":
    main()
