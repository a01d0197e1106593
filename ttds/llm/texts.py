"""Clip entity texts to a token budget before they enter prompts and responses."""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def clip_texts(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[str]:
    """Cut every text longer than ``max_tokens`` tokens after the last character of its ``max_tokens``-th token.

    Texts within the budget come back unchanged, and trailing whitespace of a cut text is dropped. User texts of
    long-titled catalogues run to hundreds of tokens (Amazon Scientific: up to 509), which would not fit a
    response of the user_to_text task. Offsets need a fast tokenizer, so a slow one raises ValueError.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be at least 1.")
    if not tokenizer.is_fast:
        raise ValueError(
            f"{type(tokenizer).__name__} is a slow tokenizer, but clipping needs token offsets. Load the fast tokenizer (use_fast=True)."
        )

    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    clipped = []
    for text, offsets in zip(texts, encoded, strict=True):
        if len(offsets) <= max_tokens:
            clipped.append(text)
            continue
        end = offsets[max_tokens - 1][1]  # character index just past the last kept token
        clipped.append(text[:end].rstrip())

    n_clipped = sum(a != b for a, b in zip(texts, clipped, strict=True))
    if n_clipped:
        log.info("clipped %d of %d texts to %d tokens", n_clipped, len(texts), max_tokens)
    return clipped
