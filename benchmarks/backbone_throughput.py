"""Measure LM training throughput (examples/s) of each backbone option on the same prompts, in one process.

Run: python -m benchmarks.backbone_throughput --run-dir DIR [--backbones embedded-minilm,scratch-llama]
     [--local-hf PATH] [--steps 20] [--warmup 3] [--batch-size 16] [--threads 1] [--round-steps 5] [--output PATH]

DIR is a run directory whose tokenize stage has finished (e.g. made by `python train.py experiment=tiny`). Its dataset,
ID tables and texts are rendered into (prompt, response) pairs once, as the llm stage renders them. Long texts are not
clipped as ttds/llm/texts.py clips them, which matters only for datasets with long texts (MovieTweetings texts fit). Each
backbone is built from its shipped conf/backbone/*.yaml with the run's ID tokens and LoRA, and trained with AdamW over
its trainable weights. Batch k contains the same example indices for every backbone. Each backbone's tokenizer collates
them separately, outside the timed region.

After ``--warmup`` untimed steps per backbone, the backbones take turns in rounds: ``--round-steps`` steps of the
first, then of the second, and so on. A change in machine load during the run then affects every backbone alike.
Each timed step is one forward, backward, gradient clip and optimizer step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ttds.backbone.collate import PromptCollator
from ttds.backbone.config import backbone_config_from_dict
from ttds.backbone.lm import load_backbone
from ttds.backbone.lora import apply_lora
from ttds.backbone.loss import causal_lm_loss
from ttds.backbone.tokens import add_id_tokens
from ttds.data.config import dataset_config_from_dict
from ttds.data.pipeline import load_processed
from ttds.llm.config import LLMConfig, llm_config_from_dict
from ttds.llm.dynamic import render_ids
from ttds.llm.recommender import clip_each_group
from ttds.paths import CONF_DIR, REPO_ROOT, register_resolvers
from ttds.stages.context import RunContext, write_json_atomic
from ttds.stages.data import check_run_dataset
from ttds.stages.llm import id_token_list
from ttds.tasks.base import Vocabulary, load_templates
from ttds.tasks.registry import PromptDataset, TaskRecords, tasks_config_from_dict, without_user_id_tasks
from ttds.tasks.task_data import TaskData
from ttds.tokenizer.artefacts import TokenizeOutputs

log = logging.getLogger("benchmarks.backbone_throughput")


@dataclass
class BackboneRun:
    """One backbone under test: its model, collator and optimizer, and what its timed steps measured."""

    kind: str
    model: torch.nn.Module
    collator: PromptCollator
    optimizer: torch.optim.Optimizer
    params_total: int
    params_trainable: int
    step_seconds: list[float] = field(default_factory=list)
    tokens_per_example: list[float] = field(default_factory=list)  # non-padding tokens, one mean per timed batch
    padded_per_example: list[float] = field(default_factory=list)  # batch width T, one per timed batch


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config (where the run's config is) and --output (a JSON copy of the results)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the run's config (JSON or YAML). Default: looked up in and for the run directory",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results to this JSON file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory whose tokenize stage has finished")
    parser.add_argument(
        "--backbones",
        default="embedded-minilm,scratch-llama",
        help="comma-separated backbone kinds. Ratios are relative to the first",
    )
    parser.add_argument(
        "--local-hf", type=Path, default=None, help="local Hugging Face model folder, needed for the local-hf kind"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per backbone")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps per backbone before the timed rounds")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads)")
    parser.add_argument(
        "--round-steps", type=int, default=5, help="consecutive timed steps of one backbone before the next takes its turn"
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)

    for name in ("steps", "batch_size", "threads", "round_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1.")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must not be negative.")
    args.backbones = [kind.strip() for kind in args.backbones.split(",") if kind.strip()]
    if not args.backbones:
        parser.error("--backbones is empty. Name at least one backbone kind.")
    if len(set(args.backbones)) < len(args.backbones):
        parser.error(f"--backbones={','.join(args.backbones)} names a kind more than once.")
    return args


# Run config and inputs.


def _hydra_config_for(run_dir: Path) -> Path | None:
    """Return the newest Hydra config under outputs/ whose paths.run_dir is ``run_dir``, or None.

    A run started with paths.run_dir=DIR keeps its .hydra folder in Hydra's own output folder, not in DIR.
    """
    candidates = sorted(
        (REPO_ROOT / "outputs").glob("*/*/.hydra/config.yaml"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    for path in candidates:
        # Unresolved, because a default run's paths.run_dir is ${hydra:runtime.output_dir}, which needs Hydra.
        recorded = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("paths", {}).get("run_dir")
        if isinstance(recorded, str) and Path(recorded).resolve() == run_dir.resolve():
            return path
    return None


def find_run_config(run_dir: Path, explicit: Path | None) -> Path:
    """Return the file containing the run's config: ``explicit``, llm/config.json, .hydra/config.yaml, or a Hydra output."""
    if explicit is not None:
        if not explicit.is_file():
            raise FileNotFoundError(f"--config={explicit} not found.")
        return explicit
    for path in (run_dir / "llm" / "config.json", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return path
    found = _hydra_config_for(run_dir)
    if found is None:
        raise FileNotFoundError(
            f"no config found for {run_dir}. Looked for llm/config.json, .hydra/config.yaml and a Hydra config under "
            f"{REPO_ROOT / 'outputs'} with paths.run_dir={run_dir}. Pass the run's config with --config."
        )
    return found


def load_run_config(path: Path, run_dir: Path) -> Any:
    """Load and resolve the run's config, setting paths.run_dir to ``run_dir`` because Hydra's resolver is absent here.

    llm/config.json is already resolved. A .hydra/config.yaml is not, so its ``${oc.env:...}`` defaults (such as
    paths.cache_dir) resolve in this process's environment. load_inputs checks the dataset fingerprint for that reason.
    """
    register_resolvers()
    cfg = OmegaConf.create(json.loads(path.read_text())) if path.suffix == ".json" else OmegaConf.load(path)
    OmegaConf.update(cfg, "paths.run_dir", str(run_dir))
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def load_inputs(cfg: Any, run_dir: Path):
    """Return the run's processed dataset and its tokenize outputs, checking that the dataset is the one it was built on."""
    ctx = RunContext(cfg=cfg, run_dir=run_dir, cache_dir=Path(cfg.paths.cache_dir))
    dataset_cfg = dataset_config_from_dict(OmegaConf.to_container(cfg.dataset, resolve=True))
    dataset = load_processed(dataset_cfg, ctx.cache_dir / "processed")
    check_run_dataset(ctx, dataset.fingerprint)
    return dataset, TokenizeOutputs.load(run_dir / "tokenize")


def build_vocabulary(dataset, tok: TokenizeOutputs, llm_cfg: LLMConfig, suffix_tokens: int) -> Vocabulary:
    """Build the strings prompts render from: the tokenize stage's ID strings, the item titles and the entity texts."""
    return Vocabulary(
        item_ids=render_ids(tok.tables["item"], suffix_tokens),
        user_ids=render_ids(tok.tables["user"], 0) if llm_cfg.user_ids else [""] * dataset.n_users,
        item_titles=dataset.items.sort("item_idx")["title"].to_list(),
        item_texts=tok.texts["item"],
        user_texts=tok.texts["user"],
    )


def build_task_records(cfg: Any, dataset, llm_cfg: LLMConfig) -> TaskRecords:
    """Build the records of the run's task mixture, without the user-ID tasks when llm.user_ids is off."""
    tasks_cfg = tasks_config_from_dict(OmegaConf.to_container(cfg.tasks, resolve=True))
    if not llm_cfg.user_ids:
        tasks_cfg = without_user_id_tasks(tasks_cfg)
    templates = load_templates(tasks_cfg.templates)
    task_data = TaskData(dataset, int(cfg.dataset.preprocess.max_history), tasks_cfg.neighbours)
    return TaskRecords(task_data, tasks_cfg, templates, history_labels=llm_cfg.history_labels)


def build_prompts(cfg: Any, dataset, tok: TokenizeOutputs, llm_cfg: LLMConfig, suffix_tokens: int) -> PromptDataset:
    """Build the stage-1 prompt dataset of the run: its task mixture, templates and initial ID strings."""
    records = build_task_records(cfg, dataset, llm_cfg)
    vocab = build_vocabulary(dataset, tok, llm_cfg, suffix_tokens)
    return PromptDataset(records, vocab, seed=int(cfg.seed))


def batch_indices(n_examples: int, n_batches: int, batch_size: int) -> list[list[int]]:
    """Return the example indices of ``n_batches`` consecutive batches of the shuffled epoch, wrapping around at its end."""
    if n_examples == 0:
        raise ValueError("the run's task mixture has no examples. Check the tasks config and the dataset.")
    return [[(step * batch_size + row) % n_examples for row in range(batch_size)] for step in range(n_batches)]


def batch_pairs(prompts: PromptDataset, n_batches: int, batch_size: int) -> list[list[tuple[str, str]]]:
    """Render ``n_batches`` batches of consecutive examples of the shuffled epoch, wrapping around at its end."""
    return [[prompts[index] for index in batch] for batch in batch_indices(len(prompts), n_batches, batch_size)]


# Backbones.


def shipped_backbone_configs() -> dict[str, dict]:
    """Map each backbone kind to the settings of its conf/backbone/*.yaml file."""
    configs = {}
    for path in sorted((CONF_DIR / "backbone").glob("*.yaml")):
        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        configs[values["kind"]] = values
    return configs


def backbone_settings(kind: str, shipped: dict[str, dict], local_hf: Path | None) -> dict:
    """Return the shipped settings of ``kind``. For local-hf, the model folder comes from ``local_hf``."""
    if kind not in shipped:
        raise ValueError(f"backbone kind {kind!r} has no file in {CONF_DIR / 'backbone'}. Use one of {sorted(shipped)}.")
    values = dict(shipped[kind])
    if kind == "local-hf":
        if local_hf is None:
            raise ValueError("--backbones includes local-hf, so pass its model folder with --local-hf PATH.")
        values["path"] = str(local_hf)
    return values


def build_backbone(kind: str, settings: dict, tokens: list[str], llm_cfg: LLMConfig, seed: int, item_tokens: list[str] | None = None) -> BackboneRun:
    """Build the model with the run's ID tokens and LoRA, as the llm stage does, and its AdamW optimizer.

    ``item_tokens`` (default: every token) are the item-ID tokens that history prompts label (llm.history_labels).
    """
    backbone_cfg = backbone_config_from_dict({**settings, "kind": kind})
    torch.manual_seed(seed)  # LoRA initialisation draws from the global generator
    model, tokenizer = load_backbone(backbone_cfg)
    token_ids = add_id_tokens(model, tokenizer, tokens, seed=backbone_cfg.seed)
    model = apply_lora(model, tokenizer, backbone_cfg.lora, token_ids)
    model.train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=llm_cfg.learning_rate, weight_decay=llm_cfg.weight_decay)
    return BackboneRun(
        kind=kind,
        model=model,
        collator=PromptCollator(tokenizer, backbone_cfg.max_length, tokenizer.convert_tokens_to_ids(item_tokens or tokens)),
        optimizer=optimizer,
        params_total=sum(p.numel() for p in model.parameters()),
        params_trainable=sum(p.numel() for p in trainable),
    )


# Timing.


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(run: BackboneRun, pairs: list[tuple[str, str]], gradient_clip: float, timed: bool) -> None:
    """Run one optimizer step on ``pairs``. When ``timed`` is set, record its seconds and token counts.

    Collation and the copy to the device are outside the timed region.
    """
    device = next(run.model.parameters()).device
    batch = {name: tensor.to(device) for name, tensor in run.collator(pairs).items()}  # each (B, T)
    synchronize(device)

    start = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    loss = causal_lm_loss(run.model, batch)
    loss.backward()
    if gradient_clip > 0:
        clip_each_group(run.optimizer, gradient_clip)
    run.optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - start

    if not torch.isfinite(loss):
        log.warning("%s: loss is %s", run.kind, loss.item())
    if timed:
        run.step_seconds.append(seconds)
        run.tokens_per_example.append(batch["attention_mask"].sum().item() / len(pairs))
        run.padded_per_example.append(float(batch["input_ids"].shape[1]))


def round_schedule(steps: int, round_steps: int) -> list[range]:
    """Split timed steps 0..steps-1 into consecutive rounds of at most ``round_steps`` steps."""
    return [range(start, min(start + round_steps, steps)) for start in range(0, steps, round_steps)]


def measure_in_rounds(runs: list, batches: list, warmup: int, round_steps: int, step: Callable, label: Callable) -> None:
    """Warm every run up on batches 0..warmup-1, then time the remaining batches in alternating rounds.

    ``step(run, batch, timed)`` trains one step of a run, and ``label(run)`` names the run in the log.
    """
    for run in runs:
        for batch in batches[:warmup]:
            step(run, batch, False)
        log.info("%s: %d warm-up steps done", label(run), warmup)

    rounds = round_schedule(len(batches) - warmup, round_steps)
    for number, steps in enumerate(rounds):
        for run in runs:
            for index in steps:
                step(run, batches[warmup + index], True)
        log.info("round %d of %d done", number + 1, len(rounds))


def measure(
    runs: list[BackboneRun], batches: list[list[tuple[str, str]]], warmup: int, round_steps: int, gradient_clip: float
) -> None:
    """Warm every backbone up, then time the remaining batches in alternating rounds."""

    def step(run: BackboneRun, pairs: list[tuple[str, str]], timed: bool) -> None:
        train_step(run, pairs, gradient_clip, timed=timed)

    measure_in_rounds(runs, batches, warmup, round_steps, step, lambda run: run.kind)


# Report.


def summarise(runs: list[BackboneRun], batch_size: int) -> list[dict]:
    """Return one result row per backbone, with examples/s relative to the first backbone."""
    rows = []
    for run in runs:
        mean_seconds = statistics.fmean(run.step_seconds)
        rows.append(
            {
                "backbone": run.kind,
                "params_total": run.params_total,
                "params_trainable": run.params_trainable,
                "timed_steps": len(run.step_seconds),
                "step_seconds_mean": mean_seconds,
                "step_seconds_median": statistics.median(run.step_seconds),
                "examples_per_second": batch_size / mean_seconds,
                "tokens_per_example": statistics.fmean(run.tokens_per_example),
                "padded_tokens_per_example": statistics.fmean(run.padded_per_example),
                "step_seconds": run.step_seconds,
            }
        )
    for row in rows:
        row["ratio_to_first"] = row["examples_per_second"] / rows[0]["examples_per_second"]
    return rows


def format_table(rows: list[dict]) -> str:
    """Format the result rows as a Markdown table."""
    header = "| backbone | params total | params trainable | mean step s | median step s | examples/s | tokens/example | padded/example | ratio |"
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {row['params_total'] / 1e6:.2f}M | {row['params_trainable'] / 1e6:.3f}M "
            f"| {row['step_seconds_mean']:.3f} | {row['step_seconds_median']:.3f} | {row['examples_per_second']:.1f} "
            f"| {row['tokens_per_example']:.1f} | {row['padded_tokens_per_example']:.1f} | {row['ratio_to_first']:.2f} |"
        )
    return "\n".join(lines)


def start(args: argparse.Namespace) -> tuple[Path, Path]:
    """Set up logging and torch threads, then return the run directory and the path of its config."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    run_dir = args.run_dir.resolve()
    config_path = find_run_config(run_dir, args.config)
    log.info("run config: %s", config_path)
    return run_dir, config_path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run_dir, config_path = start(args)

    # The run's config, data and prompts. The backbone settings come from conf/backbone, not from the run.
    cfg = load_run_config(config_path, run_dir)
    llm_cfg = llm_config_from_dict(OmegaConf.to_container(cfg.llm, resolve=True))
    dataset, tok = load_inputs(cfg, run_dir)
    suffix_tokens = tok.tables["item"].n_suffix + llm_cfg.suffix_reserve
    tokens = id_token_list(tok.tables, suffix_tokens, with_users=llm_cfg.user_ids)
    prompts = build_prompts(cfg, dataset, tok, llm_cfg, suffix_tokens)
    batches = batch_pairs(prompts, args.warmup + args.steps, args.batch_size)
    shipped = shipped_backbone_configs()
    settings = {kind: backbone_settings(kind, shipped, args.local_hf) for kind in args.backbones}

    item_tokens = id_token_list(tok.tables, suffix_tokens, with_users=False)
    runs = [build_backbone(kind, settings[kind], tokens, llm_cfg, int(cfg.seed), item_tokens) for kind in args.backbones]
    load_before = os.getloadavg()[0]
    measure(runs, batches, args.warmup, args.round_steps, llm_cfg.gradient_clip)
    load_after = os.getloadavg()[0]

    rows = summarise(runs, args.batch_size)
    result = {
        "run_dir": str(run_dir),
        "run_config": str(config_path),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "round_steps": args.round_steps,
        "threads": args.threads,
        "device": str(next(runs[0].model.parameters()).device),
        "torch_version": torch.__version__,
        "gradient_clip": llm_cfg.gradient_clip,
        "id_tokens": len(tokens),
        "load_average_1m": {"before": load_before, "after": load_after},
        "backbones": rows,
    }
    print(format_table(rows))
    print(
        f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after the timed steps, {args.threads} torch thread(s)"
    )
    return save_result(result, args.output)


def save_result(result: dict, output: Path | None) -> dict:
    """Write ``result`` as JSON to ``output`` atomically when a path is given, and return it."""
    if output is not None:
        write_json_atomic(output, result)
        log.info("results written to %s", output)
    return result


if __name__ == "__main__":
    main()
