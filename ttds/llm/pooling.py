"""Mean-pooled last hidden states of the backbone's decoder, with or without gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def decoder_of(model: nn.Module) -> nn.Module:
    """The transformer body under the LM head, through a peft wrapper if there is one (LoRA stays active)."""
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(hf_model, hf_model.base_model_prefix)


def pooled_embeddings(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """L2-normalised mean over real tokens of the last hidden state: (B, T) ids -> (B, D)."""
    hidden = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return F.normalize(pooled.float(), dim=-1)


@torch.no_grad()
def encode_texts(
    model: nn.Module, tokenizer, texts: list[str], batch_size: int, max_length: int, device: torch.device, add_special_tokens: bool = True
) -> Tensor:
    """Embed every text with ``pooled_embeddings`` in eval mode, longest texts first for tight padding: (N, D) on CPU.

    Stage 1 passes the tokenize stage's ``semantic_encoder`` max_length and add_special_tokens, and padding is on
    the right as in that encoder. With ``semantic_encoder.kind=backbone`` a refreshed vector therefore differs from
    the tokenize stage's vector only through what the LM has learned since.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: Tensor | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
            padding_side="right",  # positions start at 0 for every text, as in the tokenize stage's encoder
            return_tensors="pt",
        )
        vectors = pooled_embeddings(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
        if out is None:
            out = torch.empty(len(texts), vectors.shape[1])
        out[torch.tensor(chunk)] = vectors
    model.train(was_training)
    return out
