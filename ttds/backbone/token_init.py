"""Start each ID token's embedding row at the content of the entities that carry it.

add_id_tokens gives every new row the vocabulary mean plus small noise, so at the first step all item IDs in a
prompt look alike and the LM can only learn which IDs are popular. Here a token such as ``<a_12>`` starts at the
mean word embedding of the texts of the items whose ID contains it. Items that share a code prefix start close, and
a history of IDs carries its items' content from the first step. With a tied output head (MiniLM, GPT-2) the
response logits start from the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@torch.no_grad()
def text_vectors(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
    """Return the mean input-embedding row of each text's first ``max_tokens`` tokens, shape (len(texts), D).

    A text with no tokens gets a zero vector.
    """
    weight = model.get_input_embeddings().weight
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    vectors = torch.zeros(len(texts), weight.shape[1], dtype=torch.float32)
    for row, ids in enumerate(encoded):
        if ids:
            vectors[row] = weight[torch.tensor(ids, device=weight.device)].float().mean(0).cpu()
    return vectors


@torch.no_grad()
def init_rows_from_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    id_strings: Sequence[str],
    texts: Sequence[str],
    max_tokens: int,
    word_rows: int,
) -> int:
    """Set the input row of every token used in ``id_strings`` to the mean text vector of the entities that carry it.

    ``id_strings[e]`` is entity e's ID (e.g. ``<a_12><b_3><c_7>``) and ``texts[e]`` its text. Rows are rescaled to
    the mean norm of the first ``word_rows`` rows (the vocabulary before the ID tokens), so they are as large as words.
    Call it after add_id_tokens and before apply_lora, whose trainable rows start from these values. Returns the
    number of rows set; tokens that no entity carries keep their rows.
    """
    if len(id_strings) != len(texts):
        raise ValueError(f"{len(id_strings)} ID strings but {len(texts)} texts; pass one text per entity.")
    weight = model.get_input_embeddings().weight
    token_ids = tokenizer(list(id_strings), add_special_tokens=False)["input_ids"]
    new_rows = sorted({token for ids in token_ids for token in ids})
    if new_rows and new_rows[0] < word_rows:
        raise ValueError(
            f"ID token id {new_rows[0]} is below word_rows={word_rows}, so it would overwrite a word; "
            "pass the vocabulary size from before add_id_tokens."
        )
    word_norm = weight[:word_rows].float().norm(dim=-1).mean()

    vectors = text_vectors(model, tokenizer, texts, max_tokens)  # (E, D)
    sums = torch.zeros(weight.shape[0], weight.shape[1], dtype=torch.float32)
    counts = torch.zeros(weight.shape[0], dtype=torch.float32)
    for entity, ids in enumerate(token_ids):
        index = torch.tensor(ids)
        sums.index_add_(0, index, vectors[entity].expand(len(ids), -1))
        counts.index_add_(0, index, torch.ones(len(ids)))

    rows = torch.tensor(new_rows)
    means = sums[rows] / counts[rows, None]  # (R, D)
    means = means / means.norm(dim=-1, keepdim=True).clamp(min=1e-12) * word_norm
    weight[rows.to(weight.device)] = means.to(device=weight.device, dtype=weight.dtype)
    log.info("initialised %d ID-token rows from the texts of %d entities", len(new_rows), len(texts))
    return len(new_rows)
