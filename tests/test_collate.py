"""Prompt/response collation: labels by token position, EOS, padding sides and left truncation of prompts."""

from __future__ import annotations

import pytest
import torch
from test_backbone import ID_TOKENS, build_bpe_tokenizer, tiny_model

from ttds.backbone import BackboneConfig, GenerationCollator, PromptCollator, add_id_tokens, load_backbone, position_ids_from_mask
from ttds.backbone.collate import special_prefix_ids
from ttds.tasks.base import Example

PROMPT = "The user bought these items before: <a_12><b_1>, <a_3><b_4>. Which item comes next? Answer:"
RESPONSE = "<a_3><b_4>"


def _wordpiece():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    add_id_tokens(model, tokenizer, ID_TOKENS)
    return tokenizer


def _bpe():
    """Byte-level BPE with no pad token of its own: it pads with EOS, as Llama and GPT-2 tokenizers do."""
    tokenizer = build_bpe_tokenizer(with_bos=True)
    add_id_tokens(tiny_model("llama", len(tokenizer)), tokenizer, ID_TOKENS)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizer(request):
    return _wordpiece() if request.param == "wordpiece" else _bpe()


def test_only_response_and_eos_carry_labels(tokenizer):
    batch = PromptCollator(tokenizer, 128)([(PROMPT, RESPONSE)])
    response_ids = tokenizer.convert_tokens_to_ids(["<a_3>", "<b_4>"])

    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled == response_ids + [tokenizer.eos_token_id]

    width = int(batch["attention_mask"][0].sum())
    assert batch["labels"][0, width - 3 : width].tolist() == response_ids + [tokenizer.eos_token_id]
    assert (batch["labels"][0, : width - 3] == -100).all()


def test_prompt_ids_match_separate_encoding(tokenizer):
    batch = PromptCollator(tokenizer, 128)([(PROMPT, RESPONSE)])
    prompt_ids = special_prefix_ids(tokenizer) + tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0, : len(prompt_ids)].tolist() == prompt_ids


def test_labels_follow_positions_when_prompt_contains_response(tokenizer):
    # The response text also appears inside the prompt; text matching would mask the wrong copy.
    batch = PromptCollator(tokenizer, 128)([(f"{RESPONSE} is what the user bought last. Next:", RESPONSE)])
    labels = batch["labels"][0]
    assert (labels != -100).sum() == 3
    assert labels[-3:].tolist() == tokenizer.convert_tokens_to_ids(["<a_3>", "<b_4>"]) + [tokenizer.eos_token_id]


def test_eos_keeps_label_when_pad_is_eos():
    tokenizer = _bpe()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    batch = PromptCollator(tokenizer, 128)([(PROMPT, RESPONSE), ("Next:", "<c_7>")])

    short = batch["labels"][1]
    width = int(batch["attention_mask"][1].sum())
    assert short[width - 1] == tokenizer.eos_token_id
    assert (short[width:] == -100).all()
    assert (batch["input_ids"][1, width:] == tokenizer.pad_token_id).all()


def test_training_batch_pads_right(tokenizer):
    batch = PromptCollator(tokenizer, 128)([(PROMPT, RESPONSE), ("Next:", "<c_7>")])
    mask = batch["attention_mask"]
    width = int(mask[1].sum())

    assert mask[0].all()
    assert mask[1, :width].all()
    assert not mask[1, width:].any()
    assert batch["input_ids"].shape == batch["labels"].shape


def test_long_prompt_loses_its_left_end():
    tokenizer = _bpe()
    collator = PromptCollator(tokenizer, 12)
    batch = collator([("a user with a long history of small purchases then <a_12><b_1>", RESPONSE)])
    ids = batch["input_ids"][0].tolist()

    assert len(ids) == 12
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-5:] == tokenizer.convert_tokens_to_ids(["<a_12>", "<b_1>", "<a_3>", "<b_4>"]) + [tokenizer.eos_token_id]
    assert collator.truncated_prompts == 1


def test_response_too_long_raises(tokenizer):
    with pytest.raises(ValueError, match="more than max_length=4 allows"):
        PromptCollator(tokenizer, 4)([(PROMPT, "<a_3><b_4><c_7><d_0>")])


def test_empty_batch_raises(tokenizer):
    with pytest.raises(ValueError, match="empty batch"):
        PromptCollator(tokenizer, 64)([])


def test_generation_batch_pads_left(tokenizer):
    batch = GenerationCollator(tokenizer, 128)([PROMPT, "Next:"])
    short = tokenizer("Next:", add_special_tokens=False)["input_ids"]
    prefix = special_prefix_ids(tokenizer)
    width = batch["input_ids"].shape[1]

    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"][1, width - len(short) :].tolist() == short
    assert batch["attention_mask"][1, : width - len(short) - len(prefix)].sum() == 0
    assert batch["attention_mask"][1, width - len(short) - len(prefix) :].all()
    assert batch["attention_mask"][0].all()


def test_generation_prompt_truncated_from_left():
    tokenizer = _bpe()
    batch = GenerationCollator(tokenizer, 6)(["a user with a long history of small purchases then <a_12><b_1>"])
    ids = batch["input_ids"][0].tolist()

    assert len(ids) == 6
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-2:] == tokenizer.convert_tokens_to_ids(["<a_12>", "<b_1>"])


def test_special_prefix_follows_tokenizer():
    assert special_prefix_ids(_bpe()) == [_bpe().bos_token_id]
    assert special_prefix_ids(build_bpe_tokenizer(with_bos=False)) == []
    wordpiece = _wordpiece()
    assert special_prefix_ids(wordpiece) == [wordpiece.cls_token_id]


def test_position_ids_start_at_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_left_padded_minilm_needs_position_ids():
    model, tokenizer = load_backbone(BackboneConfig(kind="embedded-minilm"), "cpu")
    collator = GenerationCollator(tokenizer, 64)
    padded = collator(["a long prompt about the user and the items", "short"])
    alone = collator(["short"])

    with torch.no_grad():
        expected = model(**alone).logits[0, -1]
        with_positions = model(**padded, position_ids=position_ids_from_mask(padded["attention_mask"])).logits[1, -1]
        without_positions = model(**padded).logits[1, -1]

    assert torch.allclose(with_positions, expected, atol=1e-4)
    assert not torch.allclose(without_positions, expected, atol=1e-4)


def test_history_labels_label_the_prompts_item_ids(tokenizer):
    item_ids = tokenizer.convert_tokens_to_ids(ID_TOKENS)
    collator = PromptCollator(tokenizer, 128, prompt_label_ids=item_ids)
    batch = collator([Example(PROMPT, RESPONSE, True), Example(PROMPT, RESPONSE, False)])
    history = tokenizer.convert_tokens_to_ids(["<a_12>", "<b_1>", "<a_3>", "<b_4>"])
    response = tokenizer.convert_tokens_to_ids(["<a_3>", "<b_4>"]) + [tokenizer.eos_token_id]

    dense_labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert dense_labels == history + response
    sparse_labels = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert sparse_labels == response

    # A label always equals the input token at its position, so position t - 1 predicts it.
    labelled = batch["labels"][0] != -100
    assert torch.equal(batch["labels"][0][labelled], batch["input_ids"][0][labelled])


def test_history_labels_need_the_item_token_ids(tokenizer):
    with pytest.raises(ValueError, match="prompt_label_ids"):
        PromptCollator(tokenizer, 128)([Example(PROMPT, RESPONSE, True)])
