import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ttds.embeddings.cache import TensorCache, cached_encode
from ttds.embeddings.text_encoder import (
    CausalLMEncoder,
    SentenceEncoder,
    TextEncoderConfig,
    build_text_encoder,
    bundled_minilm_path,
)

PARAPHRASES = ("A man is eating a piece of bread.", "Someone is having some bread to eat.")
UNRELATED = "The central bank raised interest rates again."


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    return SentenceEncoder(device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_minilm_path(), local_files_only=True)


@pytest.fixture
def tiny_lm(tokenizer) -> CausalLMEncoder:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CausalLMEncoder(LlamaForCausalLM(config), tokenizer, max_length=64, batch_size=2, device="cpu")


def count_forward_calls(encoder) -> list[int]:
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1

    encoder.model.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_paraphrases_closer_than_unrelated_sentence(minilm):
    embeddings = minilm.encode([*PARAPHRASES, UNRELATED])
    paraphrase_similarity = float(embeddings[0] @ embeddings[1])
    assert paraphrase_similarity > float(embeddings[0] @ embeddings[2]) + 0.3
    assert paraphrase_similarity > float(embeddings[1] @ embeddings[2]) + 0.3


def test_sentence_embeddings_are_unit_length(minilm):
    embeddings = minilm.encode([*PARAPHRASES, UNRELATED])
    assert embeddings.shape == (3, 384)
    assert embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_embeddings_can_change_in_place(minilm):
    embeddings = minilm.encode([UNRELATED])
    embeddings.mul_(2.0)
    assert torch.allclose(embeddings.norm(dim=-1), torch.full((1,), 2.0), atol=1e-5)


def test_length_sorted_batches_keep_input_order(minilm):
    texts = ["short", "a much longer sentence about films, books and music " * 3, "middle length text here"]
    together = minilm.encode(texts)
    for index, text in enumerate(texts):
        alone = minilm.encode([text])[0]
        assert torch.allclose(together[index], alone, atol=1e-5)


def test_long_text_is_truncated_to_max_length():
    encoder = SentenceEncoder(device="cpu", max_length=8)
    long_text = "word " * 500
    assert torch.allclose(encoder.encode([long_text])[0], encoder.encode([long_text + "tail"])[0])


def test_cache_hit_returns_same_tensor_and_skips_model(minilm, tmp_path):
    calls = count_forward_calls(minilm)
    first = cached_encode(minilm, list(PARAPHRASES), tmp_path)
    calls_after_first = calls[0]
    second = cached_encode(minilm, list(PARAPHRASES), tmp_path)
    assert calls_after_first >= 1
    assert calls[0] == calls_after_first
    assert torch.equal(first, second)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_fresh_encoder_hits_its_own_entry(tiny_lm, tmp_path):
    # The tokenizer rewrites its truncation settings on the first call; the key must not change with them.
    first = cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    calls = count_forward_calls(tiny_lm)
    second = cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    assert calls[0] == 0
    assert torch.equal(first, second)


def test_changed_text_invalidates_cache(minilm, tmp_path):
    cached_encode(minilm, list(PARAPHRASES), tmp_path)
    calls = count_forward_calls(minilm)
    changed = cached_encode(minilm, [PARAPHRASES[0], UNRELATED], tmp_path)
    assert calls[0] >= 1
    assert torch.allclose(changed[1], minilm.encode([UNRELATED])[0], atol=1e-5)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_changed_weights_invalidate_cache(tiny_lm, tmp_path):
    texts = list(PARAPHRASES)
    before = cached_encode(tiny_lm, texts, tmp_path)
    with torch.no_grad():
        tiny_lm.model.model.layers[0].mlp.down_proj.weight.add_(0.5)
    calls = count_forward_calls(tiny_lm)
    after = cached_encode(tiny_lm, texts, tmp_path)
    assert calls[0] >= 1
    assert not torch.allclose(before, after)


def test_changed_max_length_invalidates_cache(tiny_lm, tokenizer, tmp_path):
    cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    shorter = CausalLMEncoder(tiny_lm.model, tokenizer, max_length=4, device="cpu")
    calls = count_forward_calls(shorter)
    cached_encode(shorter, list(PARAPHRASES), tmp_path)
    assert calls[0] >= 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_corrupt_cache_file_warns_and_recomputes(tiny_lm, tmp_path):
    expected = cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    (tensor_path,) = tmp_path.glob("*.safetensors")
    tensor_path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="is unreadable"):
        recomputed = cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    assert torch.allclose(recomputed, expected)
    assert TensorCache(tmp_path).load(tensor_path.stem) is not None


def test_readable_but_changed_cache_file_recomputes(tiny_lm, tmp_path):
    expected = cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    (tensor_path,) = tmp_path.glob("*.safetensors")
    data = bytearray(tensor_path.read_bytes())
    data[-4:] = bytes(4)  # zero the last float: same size, still a valid safetensors file
    tensor_path.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match="does not match the sha256"):
        recomputed = cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    assert torch.allclose(recomputed, expected)


def test_cache_sidecar_for_another_key_is_rejected(tiny_lm, tmp_path):
    cached_encode(tiny_lm, list(PARAPHRASES), tmp_path)
    (sidecar_path,) = tmp_path.glob("*.json")
    sidecar_path.write_text(sidecar_path.read_text().replace(sidecar_path.stem, "0" * 64))
    with pytest.warns(UserWarning, match="the sidecar belongs to another key"):
        assert TensorCache(tmp_path).load(sidecar_path.stem) is None


def test_causal_lm_pooling_ignores_padding(tiny_lm):
    short, long = "a short text", "a much longer text that forces padding of the short one in its batch"
    together = tiny_lm.encode([short, long])
    alone = tiny_lm.encode([short])
    assert together.shape == (2, 32)
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_causal_lm_pooling_is_token_mean(tiny_lm, tokenizer):
    text = "mean pooling check"
    encoded = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        hidden = tiny_lm.model(**encoded, output_hidden_states=True).hidden_states[-1]  # (1, T, H)
    assert torch.allclose(tiny_lm.encode([text])[0], hidden[0].mean(dim=0), atol=1e-5)


def test_bundled_minilm_loads_as_causal_lm_encoder():
    encoder = build_text_encoder(TextEncoderConfig(kind="causal_lm", model_path=str(bundled_minilm_path()), device="cpu"))
    embeddings = encoder.encode([UNRELATED])
    assert embeddings.shape == (1, 384)
    assert encoder.model.config.is_decoder


def test_encode_rejects_empty_input(minilm):
    with pytest.raises(ValueError, match="encode\\(\\) got no texts"):
        minilm.encode([])
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType, not str"):
        minilm.encode(["fine", None])


def test_config_rejects_causal_lm_without_path():
    with pytest.raises(ValueError, match="needs text_encoder.model_path"):
        TextEncoderConfig(kind="causal_lm")
    with pytest.raises(ValueError, match="text_encoder.kind='bert' is unknown"):
        TextEncoderConfig(kind="bert")


def test_causal_minilm_cache_key_is_stable_across_loads():
    """The MiniLM folder has no LM-head weights, which load at random; the cache key must not depend on them."""
    first = CausalLMEncoder.from_pretrained(bundled_minilm_path(), max_length=16, device="cpu")
    second = CausalLMEncoder.from_pretrained(bundled_minilm_path(), max_length=16, device="cpu")

    assert not torch.equal(first.model.cls.predictions.transform.dense.weight, second.model.cls.predictions.transform.dense.weight)
    assert first.fingerprint() == second.fingerprint()
