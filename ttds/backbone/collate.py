"""Turn (prompt, response) text pairs into padded token batches for training and prompts into batches for generation.

Prompt and response are tokenised separately and their ids concatenated, so the loss mask is set by token position:
labels are -100 over BOS and the prompt, and equal the ids over the response and the EOS that follows it. Padding is
masked by position too, never by id, because many tokenizers pad with the EOS id.

Examples may also ask for labels inside the prompt (``Example.history_labels``): then every prompt token in the
collator's ``prompt_label_ids`` (the item-ID tokens) is labelled too, so each history item is a next-item target of
the items before it, as in SASRec's training, at the cost of the output head on those positions.

When a sequence is too long the prompt loses tokens from its left end (after BOS): prompts put the history last, so
the most recent history survives and the instruction head goes first. The response is never truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ttds.backbone.loss import IGNORE_INDEX

log = logging.getLogger(__name__)


def special_prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Return the special ids the tokenizer puts before a text (e.g. BOS for Llama, [CLS] for BERT, none for Qwen2).

    Found by encoding a probe with and without special tokens, so it follows each tokenizer's own template.
    """
    probe = "probe"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    raise ValueError(
        f"{type(tokenizer).__name__} encodes {probe!r} differently with and without special tokens; cannot find its prefix."
    )


class _PromptEncoder:
    """Shared state of both collators: the tokenizer, the BOS prefix and the left truncation of prompts."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it through load_backbone, which sets one.")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no EOS token; load it through load_backbone, which sets one.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix = special_prefix_ids(tokenizer)
        self.truncated_prompts = 0  # prompts shortened so far, for diagnostics

    def encode_prompts(self, prompts: Sequence[str], budgets: Sequence[int]) -> list[list[int]]:
        """Encode each prompt with the BOS prefix, keeping the last tokens so that each fits its budget."""
        bodies = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        encoded = []
        for body, budget in zip(bodies, budgets, strict=True):
            room = budget - len(self.prefix)
            if len(body) > room:
                self.truncated_prompts += 1
                log.debug("prompt of %d tokens truncated from the left to %d", len(body), room)
                body = body[len(body) - room :] if room > 0 else []
            encoded.append(self.prefix + body)
        return encoded


class PromptCollator(_PromptEncoder):
    """Collate (prompt, response) pairs into right-padded input_ids, attention_mask and labels (B, T) for training.

    ``max_length`` bounds BOS + prompt + response + EOS. A pair may be an ``Example`` with ``history_labels`` set; its
    prompt tokens that are in ``prompt_label_ids`` are labelled as well.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, prompt_label_ids: Collection[int] = ()):
        super().__init__(tokenizer, max_length)
        self.prompt_label_ids = torch.tensor(sorted(prompt_label_ids), dtype=torch.long)

    def __call__(self, pairs: Sequence[Sequence]) -> dict[str, Tensor]:
        _check_not_empty(pairs)
        prompts = [pair[0] for pair in pairs]
        responses = self.tokenizer([pair[1] for pair in pairs], add_special_tokens=False)["input_ids"]
        responses = [ids + [self.tokenizer.eos_token_id] for ids in responses]
        dense = [len(pair) > 2 and bool(pair[2]) for pair in pairs]
        if any(dense) and len(self.prompt_label_ids) == 0:
            raise ValueError("an example requests history labels, but prompt_label_ids is empty; pass the item-ID token ids to PromptCollator.")

        for pair, ids in zip(pairs, responses, strict=True):
            if len(self.prefix) + len(ids) > self.max_length:
                raise ValueError(
                    f"response {pair[1][:60]!r} is {len(ids)} tokens with EOS, more than max_length={self.max_length} allows; "
                    "raise backbone.max_length or shorten the response template."
                )
        prompt_ids = self.encode_prompts(prompts, [self.max_length - len(ids) for ids in responses])

        width = max(len(p) + len(r) for p, r in zip(prompt_ids, responses, strict=True))
        input_ids = torch.full((len(pairs), width), self.tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
        for row, (prompt, response) in enumerate(zip(prompt_ids, responses, strict=True)):
            end = len(prompt) + len(response)
            input_ids[row, :end] = torch.tensor(prompt + response)
            attention_mask[row, :end] = 1
            labels[row, len(prompt) : end] = torch.tensor(response)
            if dense[row]:
                body = torch.tensor(prompt[len(self.prefix) :], dtype=torch.long)
                in_history = torch.isin(body, self.prompt_label_ids)
                labels[row, len(self.prefix) : len(prompt)][in_history] = body[in_history]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class GenerationCollator(_PromptEncoder):
    """Collate prompts into left-padded input_ids and attention_mask (B, T), so every prompt ends at the last column.

    Here ``max_length`` bounds the prompt alone; leave room below the model's limit for the generated ID and EOS.
    """

    def __call__(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        _check_not_empty(prompts)
        prompt_ids = self.encode_prompts(prompts, [self.max_length] * len(prompts))

        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def _check_not_empty(examples: Sequence) -> None:
    if not examples:
        raise ValueError("cannot collate an empty batch; pass at least one example.")


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Return position ids (B, T) that start at 0 on each row's first real token, as training saw them.

    Models with learned absolute positions (BERT) need these under left padding; padded slots get 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
