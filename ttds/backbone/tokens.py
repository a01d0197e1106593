"""Add semantic-ID tokens to a tokenizer and grow the model's embedding and output rows to match."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import torch
from transformers import AddedToken, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

NOISE_SCALE = 0.02  # std of the init noise, as a fraction of the per-dimension std of the existing rows


def add_id_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str], seed: int = 0) -> list[int]:
    """Add ``tokens`` (e.g. ``<a_12>``) to the vocabulary and return their ids, in the order given.

    The tokens are added as non-special AddedTokens with ``normalized=False``: the tokenizer matches them in the raw
    text before lowercasing, punctuation splitting or byte-level mapping, so ``<a_12><b_1>`` is always two ids. They are
    not special, so ``decode(..., skip_special_tokens=True)`` keeps them. Only the rows of tokens added by this call are
    initialised, to the mean of the existing rows plus small seeded noise. Tokens already in the vocabulary keep their rows.
    """
    tokens = list(tokens)
    _check_token_strings(tokens)

    vocab_before = len(tokenizer)
    added = tokenizer.add_tokens([AddedToken(token, normalized=False, special=False, single_word=False) for token in tokens])
    ids = [tokenizer.convert_tokens_to_ids(token) for token in tokens]

    # Some checkpoints (Qwen2) pad the embedding beyond the tokenizer. Those spare rows are reused without a resize,
    # but they were never trained, so they are initialised like appended rows.
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if added:
        _init_new_rows(model, vocab_before, len(tokenizer), seed)
    log.info(
        "added %d ID tokens (%d already in the vocabulary); vocabulary size %d -> %d",
        added,
        len(tokens) - added,
        vocab_before,
        len(tokenizer),
    )

    check_single_id_tokens(tokenizer, tokens)
    return ids


def check_single_id_tokens(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> None:
    """Raise ValueError unless every token encodes to exactly one id and converts back to the same string."""
    encoded = tokenizer(list(tokens), add_special_tokens=False)["input_ids"]
    for token, ids in zip(tokens, encoded, strict=True):
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(
                f"ID token {token!r} encodes to {len(ids)} ids {pieces}, expected exactly one; "
                "add it with add_id_tokens before encoding any prompt."
            )
        back = tokenizer.convert_ids_to_tokens(ids[0])
        if back != token:
            raise ValueError(
                f"ID token {token!r} encodes to id {ids[0]}, which converts back to {back!r}; the tokenizer rewrites it."
            )


def id_tokens_to_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Join ID-token ids back into their exact text, e.g. ``<a_12><b_1>``.

    ``tokenizer.decode`` may insert spaces between tokens (WordPiece does), so ID strings are rebuilt from the token
    strings instead.
    """
    return "".join(tokenizer.convert_ids_to_tokens(list(ids)))


def _check_token_strings(tokens: list[str]) -> None:
    if not tokens:
        raise ValueError("no ID tokens given; pass the token strings of the ID table.")
    for token in tokens:
        if not token or token != token.strip() or any(ch.isspace() for ch in token):
            raise ValueError(f"ID token {token!r} is empty or contains whitespace; ID tokens must be single words like '<a_12>'.")
    duplicates = sorted(token for token, count in Counter(tokens).items() if count > 1)
    if duplicates:
        raise ValueError(f"ID tokens {duplicates[:5]} appear more than once; pass each token once.")


@torch.no_grad()
def _init_new_rows(model: PreTrainedModel, old_size: int, new_size: int, seed: int) -> None:
    """Set rows old_size..new_size-1 of the input embedding (and of an untied output head) to mean + small noise.

    Starting at the mean keeps the new tokens' logits near the average logit, so the first steps do not spike the
    loss. The seeded noise breaks the symmetry between the new tokens.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)

    for weight in matrices:
        old_rows = weight[:old_size].float()  # (V_old, D)
        mean, std = old_rows.mean(0), old_rows.std(0)  # (D,), (D,)
        noise = torch.randn(new_size - old_size, weight.shape[1], generator=generator)  # (V_new, D)
        rows = mean.cpu() + NOISE_SCALE * std.cpu() * noise
        weight[old_size:new_size] = rows.to(device=weight.device, dtype=weight.dtype)

    bias = getattr(output, "bias", None)
    if bias is not None and bias.shape[0] >= new_size:
        bias[old_size:new_size] = bias[:old_size].mean()
