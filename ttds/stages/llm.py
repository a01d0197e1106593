"""Stage `llm`: LoRA-tune the backbone on the task mixture, stage 1 dynamic then stage 2 static on frozen IDs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from ttds.backbone.checkpoint import save_adapter_checkpoint
from ttds.backbone.collate import PromptCollator
from ttds.backbone.config import backbone_config_from_dict
from ttds.backbone.lm import load_backbone
from ttds.backbone.lora import apply_lora
from ttds.backbone.token_init import init_rows_from_texts
from ttds.backbone.tokens import add_id_tokens
from ttds.checkpoint_io import SafetensorsCheckpointIO
from ttds.llm.config import llm_config_from_dict
from ttds.llm.data import PromptDataModule
from ttds.llm.dynamic import DynamicRecommenderModule, EntitySide, render_ids
from ttds.llm.recommender import RecommenderModule
from ttds.llm.texts import clip_texts
from ttds.stages.context import RunContext, write_json_atomic
from ttds.stages.loading import load_trained
from ttds.stages.reuse import CONFIG_FILE, warn_if_reused_with_other_settings
from ttds.tasks.base import Vocabulary, load_templates
from ttds.tasks.registry import PromptDataset, TaskRecords, tasks_config_from_dict, without_user_id_tasks
from ttds.tasks.task_data import TaskData
from ttds.tokenizer.artefacts import SIDES, tables_hash
from ttds.tokenizer.id_table import SemanticIdTable
from ttds.training.timing import StepTimer

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # resumable Lightning checkpoints, inside each stage folder


def id_token_list(tables: dict[str, SemanticIdTable], suffix_tokens: int, with_users: bool = True) -> list[str]:
    """List every ID token of the item table (suffix vocabulary widened to ``suffix_tokens``) and of the user table."""
    item, user = tables["item"], tables["user"]
    tokens = [t for t in item.vocabulary() if not t.startswith(f"<{chr(ord('a') + item.levels)}_")]
    if item.has_suffix:
        tokens += [f"<{item.prefix}{chr(ord('a') + item.levels)}_{value}>" for value in range(suffix_tokens)]
    return tokens + (user.vocabulary() if with_users else [])


# Lightning warnings that are wrong for a resumed stage. SamplerResume saves the sampler position in every
# checkpoint, so a mid-epoch resume continues at the next batch. A resumed stage's checkpoint folder is not empty.
RESUME_WARNINGS = (
    "You're resuming from a checkpoint that ended before the epoch ended",
    "Checkpoint directory .* exists and is not empty",
)


def _trainer(ctx: RunContext, max_steps: int, folder: Path, datamodule: PromptDataModule, llm_cfg) -> L.Trainer:
    for message in RESUME_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    trainer_cfg = ctx.cfg.trainer
    # Checkpoints get their own folder: the CSV logs sit in `folder` before the first checkpoint, and Lightning warns
    # about a non-empty checkpoint folder on every fresh run otherwise.
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=folder / CHECKPOINT_DIR, filename="step-{step}", every_n_train_steps=llm_cfg.checkpoint_every_n_steps, save_top_k=1, monitor="step", mode="max", save_last=True
    )
    return L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
        max_steps=max_steps,
        max_epochs=-1,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        gradient_clip_val=llm_cfg.gradient_clip or None,
        default_root_dir=folder,
        # Flushed at each checkpoint, so a resumed stage keeps the losses logged up to the checkpoint it resumes from.
        logger=L.pytorch.loggers.CSVLogger(folder, name="logs", flush_logs_every_n_steps=llm_cfg.checkpoint_every_n_steps),
        callbacks=[checkpoint, datamodule.resume_callback, StepTimer(llm_cfg.batch_size, folder / "timing.json")],
        plugins=[SafetensorsCheckpointIO()],
        use_distributed_sampler=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def resume_path(folder: Path) -> Path | None:
    """Return the checkpoint a stage in ``folder`` resumes from, or None when it starts fresh.

    Runs started before checkpoints moved into their own folder keep last.ckpt in ``folder`` itself.
    """
    for last in (folder / CHECKPOINT_DIR / "last.ckpt", folder / "last.ckpt"):
        if last.is_file():
            return last
    return None


TRAINING_GROUPS = ("llm", "backbone", "tasks")  # config groups that shape the trained model


def run(ctx: RunContext) -> dict:
    out = ctx.stage_dir("llm")
    if ctx.is_done("llm"):
        warn_if_reused_with_other_settings("llm", out, ctx.cfg, TRAINING_GROUPS)
        load_trained(ctx)
        return {}
    tok = ctx.artefacts["tokenize"]
    dataset = ctx.artefacts["dataset"]
    llm_cfg = llm_config_from_dict(OmegaConf.to_container(ctx.cfg.llm, resolve=True))
    backbone_cfg = backbone_config_from_dict(OmegaConf.to_container(ctx.cfg.backbone, resolve=True))
    tasks_cfg = tasks_config_from_dict(OmegaConf.to_container(ctx.cfg.tasks, resolve=True))
    if not llm_cfg.user_ids:
        tasks_cfg = without_user_id_tasks(tasks_cfg)
    sides_used = SIDES if llm_cfg.user_ids else ("item",)

    # Backbone, ID tokens, LoRA.
    suffix_tokens = tok.tables["item"].n_suffix + llm_cfg.suffix_reserve
    tokens = id_token_list(tok.tables, suffix_tokens, with_users=llm_cfg.user_ids)
    model, tokenizer = load_backbone(backbone_cfg)
    word_rows = len(tokenizer)
    token_ids = add_id_tokens(model, tokenizer, tokens, seed=backbone_cfg.seed)
    # Entity texts are clipped to the token budget they were embedded with (tokenizer.semantic_encoder.max_length)
    # and to half of backbone.max_length, so that a text response fits in one sequence with its prompt.
    text_tokens = min(int(ctx.cfg.tokenizer.semantic_encoder.max_length), backbone_cfg.max_length // 2)
    if llm_cfg.id_init == "text":
        for side in sides_used:
            id_strings = render_ids(tok.tables[side], suffix_tokens if side == "item" else 0)
            init_rows_from_texts(model, tokenizer, id_strings, tok.texts[side], text_tokens, word_rows)
    model = apply_lora(model, tokenizer, backbone_cfg.lora, token_ids)

    # Prompts render from the current ID strings, so stage 1 can move them in place.
    titles = dataset.items.sort("item_idx")["title"].to_list()
    vocab = Vocabulary(
        item_ids=render_ids(tok.tables["item"], suffix_tokens),
        user_ids=render_ids(tok.tables["user"], 0) if llm_cfg.user_ids else [""] * dataset.n_users,
        item_titles=clip_texts(titles, tokenizer, text_tokens),
        item_texts=clip_texts(tok.texts["item"], tokenizer, text_tokens),
        user_texts=clip_texts(tok.texts["user"], tokenizer, text_tokens),
    )
    templates = load_templates(tasks_cfg.templates)
    task_data = TaskData(dataset, int(ctx.cfg.dataset.preprocess.max_history), tasks_cfg.neighbours)
    records = TaskRecords(task_data, tasks_cfg, templates, history_labels=llm_cfg.history_labels)
    item_tokens = id_token_list(tok.tables, suffix_tokens, with_users=False)
    collator = PromptCollator(tokenizer, backbone_cfg.max_length, prompt_label_ids=tokenizer.convert_tokens_to_ids(item_tokens))
    summary: dict = {"templates_version": templates.version, "templates_sha256": templates.sha256}

    # Stage 1: dynamic index.
    tables = dict(tok.tables)
    if llm_cfg.dynamic_steps > 0:
        hidden = model.get_input_embeddings().weight.shape[1]
        for side in sides_used:
            if tok.semantic[side].shape[1] != hidden:
                raise ValueError(
                    f"stage 1 re-embeds texts with the LM (hidden size {hidden}), but the {side} tower was fitted on "
                    f"{tok.semantic[side].shape[1]}-d text vectors; set tokenizer.semantic_encoder to the backbone "
                    "(kind=causal_lm with its model_path) or llm.dynamic_steps=0."
                )
        sides = [
            EntitySide(
                name=side,
                tower=tok.towers[side].train(),
                texts=tok.texts[side],
                keys=tables[side].keys,
                semantic=tok.semantic[side],
                collaborative=tok.collaborative[side],
                n_suffix_tokens=suffix_tokens if side == "item" else 0,
                codes=tables[side].codes,
            )
            for side in sides_used
        ]
        text_cfg = ctx.cfg.tokenizer.semantic_encoder
        module = DynamicRecommenderModule(
            model,
            tokenizer,
            llm_cfg,
            llm_cfg.dynamic_steps,
            sides,
            vocab,
            text_max_length=int(text_cfg.max_length),
            add_special_tokens=bool(text_cfg.add_special_tokens),
            seed=int(ctx.cfg.seed),
        )
        data = PromptDataModule(PromptDataset(records, vocab, seed=int(ctx.cfg.seed)), collator, llm_cfg.batch_size, int(ctx.cfg.seed), llm_cfg.num_workers)
        folder = out / "stage1"
        _trainer(ctx, llm_cfg.dynamic_steps, folder, data, llm_cfg).fit(module, datamodule=data, ckpt_path=resume_path(folder))

        # Freeze: recompute every ID once, deterministically, from the final LM embeddings.
        module.refresh()
        tables["item"] = module.table("item", max_suffix=suffix_tokens)
        if llm_cfg.user_ids:
            tables["user"] = module.table("user")
        summary["stage1_id_updates"] = dict(module.id_updates)
        summary["stage1_reembedded_texts"] = dict(module.reembedded)
        summary["freeze_ids_moved"] = dict(module.last_moved)  # entities whose ID the freeze changed, per side

    for side in SIDES:
        tables[side].save(out / f"{side}_table")
    frozen_hash = tables_hash(tables["item"], tables["user"])
    vocab.item_ids[:] = render_ids(tables["item"], suffix_tokens)
    if llm_cfg.user_ids:
        vocab.user_ids[:] = render_ids(tables["user"], 0)

    # Stage 2: static fine-tuning on the frozen IDs.
    module = RecommenderModule(model, llm_cfg, llm_cfg.static_steps)
    data = PromptDataModule(PromptDataset(records, vocab, seed=int(ctx.cfg.seed) + 1), collator, llm_cfg.batch_size, int(ctx.cfg.seed) + 1, llm_cfg.num_workers)
    folder = out / "stage2"
    _trainer(ctx, llm_cfg.static_steps, folder, data, llm_cfg).fit(module, datamodule=data, ckpt_path=resume_path(folder))

    save_adapter_checkpoint(out / "adapter", model, tokenizer, tokens, backbone_cfg, frozen_hash)
    summary |= {"table_hash": frozen_hash, "id_tokens": len(tokens)} | {f"{side}_collisions": tables[side].collision_report() for side in SIDES}
    write_json_atomic(out / CONFIG_FILE, OmegaConf.to_container(ctx.cfg, resolve=True))
    ctx.artefacts["llm"] = {"model": model.eval(), "tokenizer": tokenizer, "tables": tables, "table_hash": frozen_hash}
    ctx.mark_done("llm", summary)
    return summary
