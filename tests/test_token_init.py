"""ID-token rows initialised from the texts of the entities that carry each token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ttds.backbone import BackboneConfig, add_id_tokens, load_backbone
from ttds.backbone.token_init import init_rows_from_texts, text_vectors

TOKENS = ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>"]
IDS = ["<a_0><b_0>", "<a_0><b_1>", "<a_1><b_0>"]
TEXTS = ["a space opera with starships", "a romantic comedy in paris", "a documentary about bees"]


@pytest.fixture(scope="module")
def initialised():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    word_rows = len(tokenizer)
    add_id_tokens(model, tokenizer, TOKENS)
    before = model.get_input_embeddings().weight.detach().clone()
    count = init_rows_from_texts(model, tokenizer, IDS, TEXTS, max_tokens=32, word_rows=word_rows)
    return model, tokenizer, before, count, word_rows


def _row(model, tokenizer, token: str) -> torch.Tensor:
    return model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(token)].detach()


def test_token_of_one_entity_points_at_its_text(initialised):
    model, tokenizer, _, _, _ = initialised
    vectors = text_vectors(model, tokenizer, TEXTS, 32)

    assert F.cosine_similarity(_row(model, tokenizer, "<b_1>"), vectors[1], dim=0) > 0.999
    assert F.cosine_similarity(_row(model, tokenizer, "<a_1>"), vectors[2], dim=0) > 0.999


def test_shared_token_points_at_the_mean_text(initialised):
    model, tokenizer, _, _, _ = initialised
    vectors = text_vectors(model, tokenizer, TEXTS, 32)

    assert F.cosine_similarity(_row(model, tokenizer, "<a_0>"), vectors[:2].mean(0), dim=0) > 0.999
    assert F.cosine_similarity(_row(model, tokenizer, "<b_0>"), vectors[[0, 2]].mean(0), dim=0) > 0.999


def test_rows_have_the_word_norm(initialised):
    model, tokenizer, before, count, word_rows = initialised
    word_norm = before[:word_rows].norm(dim=-1).mean()

    assert count == 4
    assert torch.isclose(_row(model, tokenizer, "<a_0>").norm(), word_norm, rtol=1e-4)


def test_unused_token_and_words_keep_their_rows(initialised):
    model, tokenizer, before, _, word_rows = initialised
    unused = tokenizer.convert_tokens_to_ids("<b_2>")
    weight = model.get_input_embeddings().weight.detach()

    assert torch.equal(weight[unused], before[unused])
    assert torch.equal(weight[:word_rows], before[:word_rows])


def test_word_rows_past_the_id_tokens_is_rejected(initialised):
    model, tokenizer, _, _, _ = initialised
    with pytest.raises(ValueError, match="word_rows"):
        init_rows_from_texts(model, tokenizer, IDS, TEXTS, max_tokens=32, word_rows=len(tokenizer))


def test_one_text_per_entity_is_required(initialised):
    model, tokenizer, _, _, word_rows = initialised
    with pytest.raises(ValueError, match="one text per entity"):
        init_rows_from_texts(model, tokenizer, IDS, TEXTS[:2], max_tokens=32, word_rows=word_rows)
