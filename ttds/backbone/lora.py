"""Wrap a causal LM with LoRA adapters (peft) whose trainable weights include the rows of the ID tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ttds.backbone.config import LoraSettings

log = logging.getLogger(__name__)

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Attention and MLP projections per architecture. BERT is a regex (peft matches a string target in full) because its
# plain name "dense" also names the LM-head transform, which is trained fully instead (see HEAD_MODULES_TO_SAVE).
DEFAULT_TARGET_MODULES: dict[str, list[str] | str] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
}

# Head layers that the checkpoint does not provide (newly initialised by lm.py), so LoRA on a random base would not
# do: they are trained and saved in full. The MiniLM transform is 384 x 384 + LayerNorm, about 150k weights. The head's
# vocabulary bias (all zeros at load) stays frozen.
HEAD_MODULES_TO_SAVE: dict[str, list[str]] = {"bert": ["transform"]}

# GPT-2 stores its projections as Conv1D with transposed weights.
FAN_IN_FAN_OUT = {"gpt2"}


def apply_lora(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: LoraSettings, id_token_ids: Sequence[int]
) -> PeftModel:
    """Return ``model`` wrapped with LoRA on its attention and MLP projections and trainable ID-token rows.

    The EOS row trains too when ``settings.train_eos_row`` is set: the model must learn to stop right after an ID, and
    a frozen EOS row of a randomly initialised model (scratch-llama) is too small to ever win the softmax.

    The ID-token rows use peft's trainable tokens (``trainable_token_indices``) rather than ``modules_to_save`` on the
    embedding and head. Trainable tokens store only the trained rows (n_tokens x hidden) in the adapter. modules_to_save
    would store whole vocabulary x hidden matrices (30k x 384 for MiniLM, 152k x 896 for Qwen2-0.5B) and train every
    row. With tied embeddings (BERT, GPT-2, tied Llama) peft ties the head's rows to the embedding's, so only the
    embedding is listed. An untied head gets its own trainable rows.
    """
    model_type = model.config.model_type
    if settings.target_modules is not None:
        targets: list[str] | str = list(settings.target_modules)
    elif model_type in DEFAULT_TARGET_MODULES:
        targets = DEFAULT_TARGET_MODULES[model_type]
    else:
        raise ValueError(
            f"no default LoRA target modules for model_type={model_type!r} (known: {sorted(DEFAULT_TARGET_MODULES)}); "
            "set backbone.lora.target_modules to the names of its attention and MLP projections."
        )
    if not id_token_ids:
        raise ValueError("id_token_ids is empty; add the ID tokens with add_id_tokens before applying LoRA.")
    row_ids = trainable_row_ids(tokenizer, settings, id_token_ids)

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=model_type in FAN_IN_FAN_OUT,
        modules_to_save=HEAD_MODULES_TO_SAVE.get(model_type),
        trainable_token_indices=_token_rows_by_module(model, row_ids),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    if settings.train_base:
        # A randomly initialised model learns little through low-rank updates alone, so every weight trains. The LoRA
        # matrices stay in place, so optimisation and checkpoints keep one code path.
        for parameter in peft_model.parameters():
            parameter.requires_grad_(True)

    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA r=%d alpha=%g on %s: %d trainable of %d weights (%.2f%%)",
        settings.rank,
        settings.alpha,
        model_type,
        trainable,
        total,
        100 * trainable / total,
    )
    return peft_model


def trainable_row_ids(tokenizer: PreTrainedTokenizerBase, settings: LoraSettings, id_token_ids: Sequence[int]) -> list[int]:
    """Return the vocabulary rows trained with the adapter: the ID tokens, then EOS when configured."""
    rows = list(id_token_ids)
    if settings.train_eos_row and tokenizer.eos_token_id not in rows:
        rows.append(tokenizer.eos_token_id)
    return rows


def _token_rows_by_module(model: PreTrainedModel, ids: list[int]) -> dict[str, list[int]]:
    """Map the input embedding (and an untied output head) to the rows that must train."""
    names = {module: name for name, module in model.named_modules()}
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    rows = {names[embedding]: ids}

    tied = output is not None and output.weight is embedding.weight
    if output is not None and not tied:
        rows[names[output]] = ids
    if tied and not getattr(model.config, "tie_word_embeddings", False):
        raise ValueError(
            f"{model.config.model_type}: the output head shares the embedding matrix but config.tie_word_embeddings is false, "
            "so peft would not tie the trainable token rows; set tie_word_embeddings=true in the model config."
        )
    return rows
