"""Entity texts clipped to a token budget before they enter prompts and responses."""

import pytest
from transformers import AutoTokenizer

from ttds.embeddings.text_encoder import bundled_minilm_path
from ttds.llm.texts import clip_texts

LONG = "Recent items: " + "; ".join(f"Anytime Tools Matched Pair Hardened Drill Block number {i}" for i in range(40))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_minilm_path())


def test_short_text_is_unchanged(tokenizer):
    assert clip_texts(["The Matrix (1999). Action"], tokenizer, 32) == ["The Matrix (1999). Action"]


def test_long_text_is_cut_to_the_budget(tokenizer):
    (clipped,) = clip_texts([LONG], tokenizer, 32)
    n_tokens = len(tokenizer(clipped, add_special_tokens=False)["input_ids"])

    assert LONG.startswith(clipped)
    assert n_tokens == 32
    assert len(tokenizer(LONG, add_special_tokens=False)["input_ids"]) > 300


def test_zero_budget_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="max_tokens=0"):
        clip_texts([LONG], tokenizer, 0)
