"""Causal LM loss that runs the output head only at positions that carry a label."""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Architectures whose logits are exactly head(last_hidden_state): no logit scaling or soft-capping after the head.
# Tests compare this loss with the model's own full-logits loss for each of them.
SPLIT_HEAD_TYPES = {"llama", "qwen2", "qwen3", "mistral", "gpt2", "bert"}

_warned_types: set[str] = set()


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over labelled positions, equal to the model's own loss for ``labels``.

    ``batch`` contains input_ids, attention_mask and labels (B, T), with -100 where no label applies. The decoder runs
    on every position, but the output head (vocabulary x hidden) runs only where the next token has a label. With a
    30k vocabulary that head is about half of a CPU training step, and prompts carry no labels.
    Works on plain Hugging Face models and on peft-wrapped ones.
    """
    labels = batch["labels"]
    if not (labels != IGNORE_INDEX).any():
        raise ValueError("the batch has no labelled positions; every response should carry at least EOS.")

    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = hf_model.config.model_type
    if model_type not in SPLIT_HEAD_TYPES:
        if model_type not in _warned_types:
            log.warning(
                "causal_lm_loss: model_type=%s is not in %s; computing logits at every position",
                model_type,
                sorted(SPLIT_HEAD_TYPES),
            )
            _warned_types.add(model_type)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss

    decoder = getattr(hf_model, hf_model.base_model_prefix)
    head = hf_model.cls if model_type == "bert" else hf_model.get_output_embeddings()
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (B, T, D)

    # Position t predicts token t + 1.
    targets = labels[:, 1:]  # (B, T-1)
    selected = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][selected])  # (N, V), N = labelled positions
    return F.cross_entropy(logits.float(), targets[selected])
