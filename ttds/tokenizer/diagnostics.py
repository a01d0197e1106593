"""Tower diagnostics: code usage and perplexity per level, collision rates, reconstruction error per modality."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ttds.tokenizer.id_table import SemanticIdTable  # noqa: E402

log = logging.getLogger(__name__)


def code_usage(codes: np.ndarray, codebook_size: int) -> list[dict[str, float]]:
    """Per level of codes (N, L): fraction of the K codes used, perplexity and entropy (nats) of the code distribution.

    Perplexity is exp(entropy): K for perfectly even use, 1 when every entity gets the same code.
    """
    stats = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        probabilities = counts[counts > 0] / counts.sum()
        entropy = float(-(probabilities * np.log(probabilities)).sum())
        stats.append(
            {
                "usage": float((counts > 0).sum() / codebook_size),
                "perplexity": float(np.exp(entropy)),
                "entropy": entropy,
            }
        )
    return stats


def tower_diagnostics(
    name: str,
    table: SemanticIdTable,
    reconstruction_errors: dict[str, float],
    output_dir: str | Path | None = None,
) -> dict[str, float]:
    """Collect one tower's diagnostics as a flat dict with keys ``tokenizer/<name>/...``.

    ``reconstruction_errors`` maps a modality to its squared error per entity (summed over features).
    With ``output_dir``, also writes ``<name>_diagnostics.json`` and ``<name>_code_usage.png`` there.
    """
    prefix = f"tokenizer/{name}"
    flat: dict[str, float] = {}
    per_level = code_usage(table.codes, table.codebook_size)
    for level, stats in enumerate(per_level):
        for key, value in stats.items():
            flat[f"{prefix}/level{level}_{key}"] = value
    for key, value in table.collision_report().items():
        flat[f"{prefix}/{key}"] = value
    for modality, value in reconstruction_errors.items():
        flat[f"{prefix}/reconstruction_{modality}"] = float(value)
    flat[f"{prefix}/n_suffix"] = float(table.n_suffix)

    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(output_dir / f"{name}_diagnostics.json", flat)
        _plot_usage(output_dir / f"{name}_code_usage.png", name, table, per_level)
        log.info("wrote %s tower diagnostics to %s", name, output_dir)
    return flat


def _write_json(path: Path, values: dict[str, float]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)


def _plot_usage(path: Path, name: str, table: SemanticIdTable, per_level: list[dict[str, float]]) -> None:
    """Plot per-level usage and perplexity, then a sorted code-frequency curve per level."""
    codes = table.codes
    levels = np.arange(len(per_level))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))

    left.bar(levels - 0.2, [stats["usage"] for stats in per_level], width=0.4, label="usage (fraction of K)")
    left.bar(levels + 0.2, [stats["perplexity"] / table.codebook_size for stats in per_level], width=0.4, label="perplexity / K")
    left.set_xticks(levels, [f"level {level}" for level in levels])
    left.set_ylim(0, 1.05)
    left.set_title(f"{name}: code usage, collision rate {table.collision_report()['collision_rate_before_suffix']:.3f} before suffix")
    left.legend()

    for level in levels:
        counts = np.sort(np.bincount(codes[:, level], minlength=table.codebook_size))[::-1]
        right.plot(np.arange(1, counts.size + 1), counts, label=f"level {level}")
    right.set_xlabel("code rank")
    right.set_ylabel("entities")
    right.set_title("entities per code, most used first")
    right.legend()

    figure.tight_layout()
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    os.replace(temp, path)
