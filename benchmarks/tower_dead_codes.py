"""Fit the item tower on saved item embeddings with quantizer variants, and print code usage and collisions.

    python -m benchmarks.tower_dead_codes <embeddings.safetensors> <variant>

The file contains ``semantic.item`` and ``collaborative.item`` (a tokenize stage writes it as
``<run_dir>/tokenize/embeddings.safetensors``). Variants combine: ``dead`` (dead-code reset after 10 unused
steps), ``dead100`` (after 100), ``allsink`` (Sinkhorn on every level), ``nosink`` (no Sinkhorn), ``ep60`` (60 epochs).
"""

import json
import sys
import time

import torch
import yaml
from safetensors.torch import load_file

from ttds.paths import CONF_DIR
from ttds.tokenizer.module import fit_tower
from ttds.tokenizer.towers import tower_config_from_dict


def main() -> None:
    torch.set_num_threads(1)
    embeddings = load_file(sys.argv[1])
    variant = sys.argv[2]
    values = yaml.safe_load((CONF_DIR / "tokenizer" / "default.yaml").read_text())["item"]

    # The config interpolates the run's seed (`${seed}`). This script reads the raw YAML, so it fixes the seeds at 0.
    values["seed"] = 0
    quantizer = dict(values["quantizer"], seed=0)
    if "dead100" in variant:
        quantizer["dead_code_steps"] = 100
    elif "dead" in variant:
        quantizer["dead_code_steps"] = 10
    if "allsink" in variant:
        quantizer["sinkhorn_levels"] = [0, 1, 2]
    if "nosink" in variant:
        quantizer["sinkhorn_levels"] = []
    values["quantizer"] = quantizer
    if "ep60" in variant:
        values["max_epochs"] = 60

    semantic, collaborative = embeddings["semantic.item"], embeddings["collaborative.item"]
    keys = [str(i) for i in range(semantic.shape[0])]
    started = time.time()
    _, _, diagnostics = fit_tower(semantic, collaborative, keys, tower_config_from_dict(values), {"enable_progress_bar": False})
    summary = {k.split("/")[-1]: round(v, 3) for k, v in diagnostics.items() if any(w in k for w in ("usage", "collision", "perplexity"))}
    print(variant, f"{time.time() - started:.0f}s", json.dumps(summary))


if __name__ == "__main__":
    main()
