"""Time stage-1 (dynamic) against stage-2 (static) LM training steps on the same batches, in one process.

Run: python -m benchmarks.dynamic_vs_static --run-dir DIR [--steps 40] [--warmup 2] [--round-steps 5] [--threads 1]
     [--config PATH] [--output PATH] [llm.KEY=VALUE ...]

DIR is a run directory whose tokenize stage has finished with the backbone as its text encoder
(tokenizer.semantic_encoder.kind=backbone, the default), e.g. made by
`python train.py experiment=tiny paths.run_dir=DIR stage=tokenize`. The llm.KEY=VALUE overrides change the run's llm
settings before anything is built, e.g. llm.refresh_every=30 llm.user_refresh_every=240 llm.refresh_mode=rolling.

Both stages are built as the llm stage builds them. Stage 1 is a DynamicRecommenderModule with the towers of every side
in use, and stage 2 is a RecommenderModule. Each trains its own copy of the run's backbone (same ID tokens, same LoRA
initialisation) with its own AdamW and learning-rate schedule. Dynamic step k re-embeds what llm.refresh_mode schedules
for step k, recomputes the IDs of the sides it touched, then runs one forward (LM, tower and alignment losses),
backward, gradient clip and optimizer step. A static step is the forward (LM loss only), backward, clip and optimizer
step. Batch k contains the same example indices in both stages. Each stage renders them with its own vocabulary, because
the ID strings move in stage 1 only. Rendering and collation happen outside the timed region, as they run in the
DataLoader during training.

After --warmup untimed steps of each stage, the stages take turns in rounds of --round-steps steps, so a change in
machine load affects both alike. The ratio of mean step times, dynamic over static, is the number to compare with the
target of 1.5. In full refresh mode the whole re-embedding cost falls on every llm.refresh_every-th step, so the timed
steps should span several intervals for that mean to be meaningful.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmarks.backbone_throughput import (
    add_output_arguments,
    batch_indices,
    build_task_records,
    build_vocabulary,
    load_inputs,
    load_run_config,
    measure_in_rounds,
    save_result,
    start,
    synchronize,
)
from ttds.backbone.collate import PromptCollator
from ttds.backbone.config import BackboneConfig, backbone_config_from_dict
from ttds.backbone.lm import load_backbone
from ttds.backbone.lora import apply_lora
from ttds.backbone.tokens import add_id_tokens
from ttds.llm.config import LLMConfig, llm_config_from_dict
from ttds.llm.dynamic import DynamicRecommenderModule, EntitySide
from ttds.llm.recommender import RecommenderModule, clip_each_group
from ttds.llm.texts import clip_texts
from ttds.stages.llm import id_token_list
from ttds.tasks.base import Vocabulary
from ttds.tasks.registry import PromptDataset
from ttds.tokenizer.artefacts import SIDES, TokenizeOutputs

log = logging.getLogger("benchmarks.dynamic_vs_static")

TARGET_RATIO = 1.5  # acceptance target for the dynamic stage's mean step time over the static stage's
OVERRIDE_PATTERN = re.compile(r"llm\.[A-Za-z_][A-Za-z0-9_]*=.*")


# Modules outside a Trainer.


class _WithoutTrainer:
    """Mixin for a recommender module that this script drives instead of a Lightning Trainer.

    ``global_step`` returns the script's own step counter, and ``log`` drops the metric because there is no logger.
    Everything else is the library module unchanged.
    """

    step_count = 0  # optimizer steps done so far

    @property
    def global_step(self) -> int:
        return self.step_count

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


class StandaloneDynamicModule(_WithoutTrainer, DynamicRecommenderModule):
    """The stage-1 module, stepped by this script."""


class StandaloneStaticModule(_WithoutTrainer, RecommenderModule):
    """The stage-2 module, stepped by this script."""


@dataclass
class StageRun:
    """One stage under test: its module, optimizer and prompts, and what its timed steps measured."""

    name: str  # "dynamic" or "static"
    module: RecommenderModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    prompts: PromptDataset
    collator: PromptCollator
    step_seconds: list[float] = field(default_factory=list)  # wall-clock time of each timed step
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time of each timed step
    refresh_seconds: list[float] = field(default_factory=list)  # dynamic only: re-embedding and ID update part
    reembedded: list[int] = field(default_factory=list)  # dynamic only: texts re-embedded per timed step
    ids_moved: list[int] = field(default_factory=list)  # dynamic only: ID strings changed per timed step

    @property
    def refreshes(self) -> bool:
        return isinstance(self.module, DynamicRecommenderModule)


# Arguments and config.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory whose tokenize stage has finished")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per stage before the timed rounds")
    parser.add_argument(
        "--round-steps", type=int, default=5, help="consecutive timed steps of one stage before the other takes its turn"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads)")
    add_output_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", metavar="llm.KEY=VALUE", help="override an llm setting of the run, e.g. llm.refresh_every=30"
    )
    args = parser.parse_intermixed_args(argv)

    for name in ("steps", "threads", "round_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1.")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} must not be negative.")
    for override in args.overrides:
        if not OVERRIDE_PATTERN.fullmatch(override):
            parser.error(f"override {override!r} is invalid. Write it as llm.KEY=VALUE, e.g. llm.refresh_every=30.")
    return args


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return ``cfg`` with the llm.KEY=VALUE overrides merged in. Values parse as YAML, so null, 30 and rolling work."""
    if not overrides:
        return cfg
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))


def check_text_vectors(tok: TokenizeOutputs, sides: tuple[str, ...], hidden: int) -> None:
    """Raise unless every side's text vectors have the LM's hidden size, because stage 1 re-embeds them with the LM."""
    for side in sides:
        width = tok.semantic[side].shape[1]
        if width != hidden:
            raise ValueError(
                f"stage 1 re-embeds texts with the LM (hidden size {hidden}), but the {side} tower was fitted on {width}-d "
                "text vectors. Make the run's tokenize stage with tokenizer.semantic_encoder.kind=backbone."
            )


# Building both stages.


def load_model(backbone_cfg: BackboneConfig, tokens: list[str], seed: int):
    """Load the backbone with the run's ID tokens and LoRA, as the llm stage does. Returns (model, tokenizer)."""
    torch.manual_seed(seed)  # LoRA initialisation draws from the global generator
    model, tokenizer = load_backbone(backbone_cfg)
    token_ids = add_id_tokens(model, tokenizer, tokens, seed=backbone_cfg.seed)
    return apply_lora(model, tokenizer, backbone_cfg.lora, token_ids), tokenizer


def clipped_vocabulary(vocab: Vocabulary, tokenizer, text_tokens: int) -> Vocabulary:
    """Clip titles and entity texts to ``text_tokens`` tokens, as the llm stage does before rendering prompts."""
    return replace(
        vocab,
        item_titles=clip_texts(vocab.item_titles, tokenizer, text_tokens),
        item_texts=clip_texts(vocab.item_texts, tokenizer, text_tokens),
        user_texts=clip_texts(vocab.user_texts, tokenizer, text_tokens),
    )


def own_ids(vocab: Vocabulary) -> Vocabulary:
    """Return a vocabulary with its own ID lists, because stage 1 rewrites them in place. Texts stay shared."""
    return replace(vocab, item_ids=list(vocab.item_ids), user_ids=list(vocab.user_ids))


def entity_sides(tok: TokenizeOutputs, sides: tuple[str, ...], suffix_tokens: int) -> list[EntitySide]:
    """Return what stage 1 needs of each side in use: tower in training mode, texts, keys and both kinds of vectors."""
    return [
        EntitySide(
            name=side,
            tower=tok.towers[side].train(),
            texts=tok.texts[side],
            keys=tok.tables[side].keys,
            semantic=tok.semantic[side],
            collaborative=tok.collaborative[side],
            n_suffix_tokens=suffix_tokens if side == "item" else 0,
        )
        for side in sides
    ]


def stage_run(name: str, module: RecommenderModule, prompts: PromptDataset, collator: PromptCollator) -> StageRun:
    """Move ``module`` to its model's device, put it in training mode and attach the optimizer and schedule it configures."""
    module.to(next(module.model.parameters()).device)
    module.train()
    configured = module.configure_optimizers()
    return StageRun(
        name=name,
        module=module,
        optimizer=configured["optimizer"],
        scheduler=configured["lr_scheduler"]["scheduler"],
        prompts=prompts,
        collator=collator,
    )


# Timing.


def _texts_reembedded(module: RecommenderModule) -> int:
    return sum(module.reembedded.values()) if isinstance(module, DynamicRecommenderModule) else 0


def _id_strings(module: RecommenderModule) -> list[str]:
    if not isinstance(module, DynamicRecommenderModule):
        return []
    return module.vocab.item_ids + module.vocab.user_ids


def train_step(run: StageRun, indices: list[int], gradient_clip: float, timed: bool) -> None:
    """Run one optimizer step of ``run`` on the examples at ``indices``. When ``timed`` is set, record what it measured.

    The timed region starts after rendering, collation and the copy to the device, and ends after the scheduler step.
    """
    module = run.module
    device = module.device
    pairs = [run.prompts[index] for index in indices]
    batch = {name: tensor.to(device) for name, tensor in run.collator(pairs).items()}  # each (B, T)
    ids_before = _id_strings(module)
    reembedded_before = _texts_reembedded(module)
    synchronize(device)

    wall_start, cpu_start = time.perf_counter(), time.process_time()
    if run.refreshes:
        changed = module.scheduled_refresh(module.step_count)
        if changed:
            module.update_vocabulary(changed)
        synchronize(device)
    refresh_seconds = time.perf_counter() - wall_start

    run.optimizer.zero_grad(set_to_none=True)
    loss = module.training_step(batch, module.step_count)
    loss.backward()
    if gradient_clip > 0:
        clip_each_group(run.optimizer, gradient_clip)
    run.optimizer.step()
    run.scheduler.step()
    synchronize(device)
    wall_seconds, cpu_seconds = time.perf_counter() - wall_start, time.process_time() - cpu_start
    module.step_count += 1

    if not torch.isfinite(loss):
        log.warning("%s step %d: loss is %s", run.name, module.step_count, loss.item())
    if timed:
        run.step_seconds.append(wall_seconds)
        run.cpu_seconds.append(cpu_seconds)
        if run.refreshes:
            run.refresh_seconds.append(refresh_seconds)
            run.reembedded.append(_texts_reembedded(module) - reembedded_before)
            run.ids_moved.append(sum(old != new for old, new in zip(ids_before, _id_strings(module), strict=True)))


def measure(runs: list[StageRun], batches: list[list[int]], warmup: int, round_steps: int, gradient_clip: float) -> None:
    """Warm every stage up, then time the remaining batches in alternating rounds."""

    def step(run: StageRun, indices: list[int], timed: bool) -> None:
        train_step(run, indices, gradient_clip, timed=timed)

    measure_in_rounds(runs, batches, warmup, round_steps, step, lambda run: run.name)


# Report.


def summarise(run: StageRun) -> dict:
    """Return the result row of one stage. Refresh columns are None for the static stage."""
    refreshes = run.refreshes
    return {
        "stage": run.name,
        "timed_steps": len(run.step_seconds),
        "step_seconds_mean": statistics.fmean(run.step_seconds),
        "step_seconds_median": statistics.median(run.step_seconds),
        "step_seconds_min": min(run.step_seconds),
        "step_seconds_max": max(run.step_seconds),
        "cpu_seconds_mean": statistics.fmean(run.cpu_seconds),
        "cpu_seconds_median": statistics.median(run.cpu_seconds),
        "refresh_seconds_mean": statistics.fmean(run.refresh_seconds) if refreshes else None,
        "reembedded_per_step_mean": statistics.fmean(run.reembedded) if refreshes else None,
        "ids_moved_per_step_mean": statistics.fmean(run.ids_moved) if refreshes else None,
        "step_seconds": run.step_seconds,
        "cpu_seconds": run.cpu_seconds,
        "refresh_seconds": run.refresh_seconds if refreshes else None,
        "reembedded_per_step": run.reembedded if refreshes else None,
        "ids_moved_per_step": run.ids_moved if refreshes else None,
    }


def ratios(dynamic: dict, static: dict) -> dict:
    """Return the dynamic-over-static step time ratios. ``mean`` is the one compared with the target."""
    mean = dynamic["step_seconds_mean"] / static["step_seconds_mean"]
    return {
        "mean": mean,
        "median": dynamic["step_seconds_median"] / static["step_seconds_median"],
        "cpu_mean": dynamic["cpu_seconds_mean"] / static["cpu_seconds_mean"],
        "target": TARGET_RATIO,
        "meets_target": mean <= TARGET_RATIO,
    }


def refresh_settings(llm_cfg: LLMConfig, module: DynamicRecommenderModule) -> dict:
    """Return the stage-1 refresh settings in effect and the number of texts on each side."""
    return {
        "refresh_mode": llm_cfg.refresh_mode,
        "refresh_every": llm_cfg.refresh_every,
        "user_refresh_every": llm_cfg.user_refresh_every,
        "interval": {name: llm_cfg.refresh_interval(name) for name in module.sides},
        "texts": {name: len(side.texts) for name, side in module.sides.items()},
        "text_max_length": module.text_max_length,
        "tower_weight": llm_cfg.tower_weight,
        "align_weight": llm_cfg.align_weight,
    }


def _optional(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """Format the result rows as a Markdown table."""
    header = (
        "| stage | timed steps | mean step s | median step s | min step s | max step s | mean CPU s "
        "| mean refresh s | texts re-embedded/step | IDs moved/step |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {row['timed_steps']} | {row['step_seconds_mean']:.3f} | {row['step_seconds_median']:.3f} "
            f"| {row['step_seconds_min']:.3f} | {row['step_seconds_max']:.3f} | {row['cpu_seconds_mean']:.3f} "
            f"| {_optional(row['refresh_seconds_mean'], 3)} | {_optional(row['reembedded_per_step_mean'], 1)} "
            f"| {_optional(row['ids_moved_per_step_mean'], 1)} |"
        )
    return "\n".join(lines)


def format_summary(result: dict) -> str:
    """Format the ratios, refresh settings and load averages as three lines under the table."""
    ratio, settings, load = result["ratio"], result["refresh"], result["load_average"]
    verdict = "meets" if ratio["meets_target"] else "misses"
    intervals = ", ".join(f"{name} every {steps}" for name, steps in settings["interval"].items())
    return "\n".join(
        [
            f"dynamic/static step time: {ratio['mean']:.2f} (means, {verdict} the target of at most {ratio['target']}), "
            f"{ratio['median']:.2f} (medians), {ratio['cpu_mean']:.2f} (mean CPU time)",
            f"refresh: mode {settings['refresh_mode']}, {intervals} steps; batch size {result['batch_size']}",
            f"load average (1, 5, 15 min): {load['before'][0]:.2f} {load['before'][1]:.2f} {load['before'][2]:.2f} before, "
            f"{load['after'][0]:.2f} {load['after'][1]:.2f} {load['after'][2]:.2f} after the timed steps, "
            f"{result['threads']} torch thread(s)",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run_dir, config_path = start(args)

    # The run's config with the overrides, its data and the settings the llm stage derives from them.
    cfg = apply_overrides(load_run_config(config_path, run_dir), args.overrides)
    llm_cfg = llm_config_from_dict(OmegaConf.to_container(cfg.llm, resolve=True))
    backbone_cfg = backbone_config_from_dict(OmegaConf.to_container(cfg.backbone, resolve=True))
    text_cfg = cfg.tokenizer.semantic_encoder
    dataset, tok = load_inputs(cfg, run_dir)
    sides_used = SIDES if llm_cfg.user_ids else ("item",)
    suffix_tokens = tok.tables["item"].n_suffix + llm_cfg.suffix_reserve
    tokens = id_token_list(tok.tables, suffix_tokens, with_users=llm_cfg.user_ids)

    # Two copies of the backbone, so that the stages train independent weights.
    dynamic_model, tokenizer = load_model(backbone_cfg, tokens, int(cfg.seed))
    static_model, _ = load_model(backbone_cfg, tokens, int(cfg.seed))
    check_text_vectors(tok, sides_used, dynamic_model.get_input_embeddings().weight.shape[1])

    # Prompts, clipped as the llm stage clips them. Each stage renders from its own ID strings.
    text_tokens = min(int(text_cfg.max_length), backbone_cfg.max_length // 2)
    vocab = clipped_vocabulary(build_vocabulary(dataset, tok, llm_cfg, suffix_tokens), tokenizer, text_tokens)
    dynamic_vocab, static_vocab = own_ids(vocab), own_ids(vocab)
    records = build_task_records(cfg, dataset, llm_cfg)
    item_tokens = id_token_list(tok.tables, suffix_tokens, with_users=False)
    collator = PromptCollator(tokenizer, backbone_cfg.max_length, tokenizer.convert_tokens_to_ids(item_tokens))

    dynamic_module = StandaloneDynamicModule(
        dynamic_model,
        tokenizer,
        llm_cfg,
        llm_cfg.dynamic_steps,
        entity_sides(tok, sides_used, suffix_tokens),
        dynamic_vocab,
        int(text_cfg.max_length),
        bool(text_cfg.add_special_tokens),
        int(cfg.seed),
    )
    static_module = StandaloneStaticModule(static_model, llm_cfg, llm_cfg.static_steps)
    runs = [
        stage_run("dynamic", dynamic_module, PromptDataset(records, dynamic_vocab, seed=int(cfg.seed)), collator),
        stage_run("static", static_module, PromptDataset(records, static_vocab, seed=int(cfg.seed)), collator),
    ]
    dynamic_module.update_vocabulary()  # as on_train_start does: IDs from the tokenize stage's embeddings and towers
    batches = batch_indices(len(runs[0].prompts), args.warmup + args.steps, llm_cfg.batch_size)

    load_before = os.getloadavg()
    measure(runs, batches, args.warmup, args.round_steps, llm_cfg.gradient_clip)
    load_after = os.getloadavg()

    rows = [summarise(run) for run in runs]
    result = {
        "run_dir": str(run_dir),
        "run_config": str(config_path),
        "overrides": args.overrides,
        "backbone": backbone_cfg.kind,
        "device": str(dynamic_module.device),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "round_steps": args.round_steps,
        "batch_size": llm_cfg.batch_size,
        "gradient_clip": llm_cfg.gradient_clip,
        "id_tokens": len(tokens),
        "refresh": refresh_settings(llm_cfg, dynamic_module),
        "texts_reembedded_total": dict(dynamic_module.reembedded),
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "ratio": ratios(rows[0], rows[1]),
        "stages": rows,
    }
    print(format_table(rows))
    print(format_summary(result))
    return save_result(result, args.output)


if __name__ == "__main__":
    main()
