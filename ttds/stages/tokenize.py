"""Stage `tokenize`: texts, semantic and SASRec embeddings, both towers and their ID tables."""

from __future__ import annotations

import logging

import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from ttds.data.config import build_strict
from ttds.data.views import evaluation_examples, training_sequences
from ttds.embeddings.cache import cached_encode
from ttds.embeddings.templates import TextTemplateConfig, render_item_texts, render_user_texts
from ttds.embeddings.text_encoder import TextEncoderConfig, build_text_encoder, bundled_minilm_path
from ttds.models.sasrec_module import SASRecConfig, sasrec_embeddings, sequences_by_user, targets_by_user
from ttds.stages.context import RunContext, write_json_atomic
from ttds.stages.reuse import CONFIG_FILE, warn_if_reused_with_other_settings
from ttds.tokenizer.artefacts import SIDES, TokenizeOutputs
from ttds.tokenizer.module import fit_tower
from ttds.tokenizer.towers import tower_config_from_dict

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> dict:
    out = ctx.stage_dir("tokenize")
    if ctx.is_done("tokenize"):
        warn_if_reused_with_other_settings("tokenize", out, ctx.cfg, tokenize_groups(ctx.cfg))
        ctx.artefacts["tokenize"] = TokenizeOutputs.load(out)
        log.info("stage tokenize: reusing %s", out)
        return {}

    cfg = OmegaConf.to_container(ctx.cfg.tokenizer, resolve=True)
    dataset = ctx.artefacts["dataset"]

    # Texts: users only see their training items.
    text_cfg = build_strict(TextTemplateConfig, cfg["text"], "tokenizer.text")
    sequences = sequences_by_user(training_sequences(dataset), dataset.n_users)
    item_texts = render_item_texts(dataset.items, text_cfg)
    titles = dataset.items.sort("item_idx")["title"].to_list()
    user_texts = render_user_texts(dataset.users, sequences, titles, text_cfg)

    # Semantic vectors, L2-normalised like the LM embeddings that stage 1 refreshes them with.
    encoder = build_text_encoder(semantic_encoder_config(cfg["semantic_encoder"], ctx))
    cache = ctx.cache_dir / "embeddings"
    semantic = {
        "item": F.normalize(cached_encode(encoder, item_texts, cache), dim=-1),
        "user": F.normalize(cached_encode(encoder, user_texts, cache), dim=-1),
    }

    # Collaborative vectors from SASRec, validated on the valid split only.
    valid = evaluation_examples(dataset, "valid", dataset_max_history(ctx))
    sasrec = sasrec_embeddings(
        sequences,
        dataset.n_items,
        SASRecConfig.from_dict(cfg["sasrec"]),
        valid_targets=targets_by_user(valid, dataset.n_users),
        cache_dir=ctx.cache_dir / "sasrec",
        trainer_kwargs=_trainer_kwargs(ctx),
    )
    collaborative = {"item": sasrec.items, "user": sasrec.users}

    # Towers and ID tables.
    keys = {"item": dataset.items.sort("item_idx")["item_id"].to_list(), "user": dataset.users.sort("user_idx")["user_id"].to_list()}
    towers, tables, diagnostics = {}, {}, {"sasrec_valid": getattr(sasrec.model, "valid_metrics", {})}
    for side in SIDES:
        tower_cfg = tower_config_from_dict(cfg[side], f"tokenizer.{side}")
        # Training losses and the final diagnostics go to one CSV log per tower, next to the JSON and PNG files.
        logger = CSVLogger(out / "logs", name=f"{side}_tower")
        towers[side], tables[side], diagnostics[side] = fit_tower(
            semantic[side], collaborative[side], keys[side], tower_cfg, _trainer_kwargs(ctx) | {"logger": logger}, diagnostics_dir=out / "diagnostics"
        )
        logger.log_metrics(diagnostics[side])
        logger.save()

    outputs = TokenizeOutputs(
        texts={"item": item_texts, "user": user_texts}, semantic=semantic, collaborative=collaborative, towers=towers, tables=tables
    )
    outputs.save(out)
    write_json_atomic(out / "diagnostics.json", diagnostics)
    ctx.artefacts["tokenize"] = outputs
    summary = {side: tables[side].collision_report() for side in SIDES}
    write_json_atomic(out / CONFIG_FILE, OmegaConf.to_container(ctx.cfg, resolve=True))
    ctx.mark_done("tokenize", summary)
    return summary


def tokenize_groups(cfg: DictConfig) -> tuple[str, ...]:
    """Name the config groups that shape the tokenize outputs: the tokenizer, the seed, and the LM when it embeds texts."""
    groups = ("tokenizer", "seed")
    if cfg.tokenizer.semantic_encoder.get("kind") == "backbone":
        groups += ("backbone",)
    return groups


def semantic_encoder_config(values: dict, ctx: RunContext) -> TextEncoderConfig:
    """Resolve ``kind: backbone`` to the text encoder that matches the configured LM, as TTDS embeds texts with its LM."""
    values = dict(values)
    if values.get("kind") == "backbone":
        backbone = ctx.cfg.backbone
        if backbone.kind == "embedded-minilm":
            # The embedded LM is the MiniLM checkpoint read left to right (is_decoder=True), and stage 1 re-embeds
            # texts that way. The bidirectional sentence encoder gives other vectors (cosine about 0.85 on movie texts).
            values.update(kind="causal_lm", model_path=str(bundled_minilm_path()))
        elif backbone.kind == "local-hf":
            values.update(kind="causal_lm", model_path=backbone.path)
        else:
            raise ValueError(
                f"tokenizer.semantic_encoder.kind=backbone needs a pretrained LM, but backbone.kind={backbone.kind!r} is "
                "randomly initialised; set tokenizer.semantic_encoder.kind=sentence and llm.dynamic_steps=0."
            )
    return build_strict(TextEncoderConfig, values, "tokenizer.semantic_encoder")


def dataset_max_history(ctx: RunContext) -> int:
    return int(ctx.cfg.dataset.preprocess.max_history)


def _trainer_kwargs(ctx: RunContext) -> dict:
    trainer = ctx.cfg.trainer
    return {"accelerator": trainer.accelerator, "precision": trainer.precision}
