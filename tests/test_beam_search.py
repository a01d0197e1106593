"""Constrained beam search on tiny random Hugging Face causal LMs (Llama, Qwen2, BERT as a decoder)."""

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import polars as pl
import pytest
import torch
from torch import Tensor, nn
from transformers import BertConfig, BertLMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicLayer

from ttds.decoding import (
    DecodingConfig,
    PrefixTrie,
    constrained_beam_search,
    history_exclusion_mask,
    load_decoding_config,
    recommendations_frame,
    search_with_config,
)
from ttds.decoding.beam import _BeamLayer, _fan_out_cache, _forward, _forward_spec, _reorder_cache

# Token layout of the tiny vocabulary: specials, prompt words, then one block per ID level.
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_IDS = (PAD, BOS, EOS, UNK)
PROMPT_WORDS = range(4, 10)
VOCAB_SIZE = 64


def level1(code: int) -> int:
    return 10 + code


def level2(code: int) -> int:
    return 30 + code


def level3(code: int) -> int:
    return 50 + code


def grid_catalogue(n1: int, n2: int, n3: int) -> list[list[int]]:
    return [[level1(a), level2(b), level3(c)] for a in range(n1) for b in range(n2) for c in range(n3)]


def build_model(family: str) -> nn.Module:
    torch.manual_seed(0)
    shared = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shared, num_key_value_heads=2, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shared, num_key_value_heads=2, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS))
    else:
        model = BertLMHeadModel(BertConfig(**shared, is_decoder=True, pad_token_id=PAD))
    return model.eval()


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return build_model("llama")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run these tiny models on one thread, because on a loaded machine syncing two threads costs far more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def shifted_logits(model: nn.Module, shift: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Replace the model's logits by ``shift(logits)`` while the block runs."""
    handle = model.get_output_embeddings().register_forward_hook(lambda module, inputs, output: shift(output))
    try:
        yield
    finally:
        handle.remove()


def add_to_tokens(tokens: list[int], value: float) -> Callable[[Tensor], Tensor]:
    bonus = torch.zeros(VOCAB_SIZE)
    bonus[tokens] = value
    return lambda logits: logits + bonus


def left_padded(prompts: list[list[int]]) -> tuple[Tensor, Tensor]:
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), PAD)
    attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, length - len(prompt) :] = 1
    return input_ids, attention_mask


def random_prompts(n: int, seed: int, min_length: int = 2, max_length: int = 7) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (n,), generator=generator)
    return [torch.randint(PROMPT_WORDS.start, PROMPT_WORDS.stop, (int(length),), generator=generator).tolist() for length in lengths]


def brute_force_scores(model: nn.Module, prompt: list[int], catalogue: list[list[int]]) -> Tensor:
    """Score every catalogue ID plus EOS by teacher forcing: sum of log-softmax over the full vocabulary."""
    scores = []
    for sequence in catalogue:
        full = torch.tensor([prompt + sequence + [EOS]])  # (1, T), unpadded
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=full).logits.float(), dim=-1)
        targets = full[0, len(prompt) :]
        scores.append(log_probs[0, len(prompt) - 1 : -1].gather(1, targets[:, None]).sum())
    return torch.stack(scores)


def test_random_logits_yield_only_catalogue_ids(llama):
    catalogue = [[level1(1), level2(2), level3(3)], [level1(8), level2(2), level3(9)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS, special_ids=SPECIAL_IDS)
    generator = torch.Generator().manual_seed(1)
    input_ids, attention_mask = left_padded(random_prompts(100, seed=1))

    with shifted_logits(llama, lambda logits: logits + 10 * torch.randn(logits.shape, generator=generator)):
        result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=10, top_k=10)

    assert set(result.items[:, :2].flatten().tolist()) == {0, 1}
    assert (result.items[:, 2:] == -1).all()
    for row in range(100):
        for slot in range(2):
            item = int(result.items[row, slot])
            assert result.sequences[row, slot].tolist() == [*catalogue[item], EOS]


def test_dead_prefix_is_dropped(llama):
    catalogue = [[level1(1), level2(2), level3(3)], [level1(8), level2(2), level3(9)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(4, seed=2))

    # The only continuation of (a1, b2) gets probability 0, so that prefix is dead.
    with shifted_logits(llama, add_to_tokens([level3(3)], float("-inf"))):
        result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=4, top_k=4)

    assert (result.items[:, 0] == 1).all()
    assert (result.items[:, 1:] == -1).all()
    assert torch.isinf(result.scores[:, 1:]).all()
    assert (result.sequences[:, 1:] == -1).all()


def test_preferred_dead_prefix_is_never_completed(llama):
    catalogue = [[level1(1), level2(2), level3(3)], [level1(8), level2(2), level3(9)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(6, seed=3))

    # b7 is the model's favourite token everywhere, and a1 beats a8 at the first step.
    with shifted_logits(llama, lambda logits: add_to_tokens([level2(7)], 30.0)(add_to_tokens([level1(1)], 5.0)(logits))):
        constrained = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=4, top_k=2)
        free = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=4, top_k=2, constrained=False)

    assert (free.sequences[:, 0] == level2(7)).all()
    assert (free.items == -1).all()
    assert not (constrained.sequences == level2(7)).any()
    assert (constrained.items[:, 0] == 0).all()


def test_level1_first_and_eos_last(llama):
    catalogue = grid_catalogue(4, 3, 2)
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(5, seed=4))

    with shifted_logits(llama, add_to_tokens([EOS], 30.0)):
        result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=10, top_k=10)

    first_tokens = set(result.sequences[:, :, 0].flatten().tolist())
    assert first_tokens <= {level1(code) for code in range(4)}
    assert (result.sequences[:, :, 3] == EOS).all()
    assert not (result.sequences[:, :, :3] == EOS).any()
    assert (result.items >= 0).all()


def test_special_ids_are_never_returned(llama):
    catalogue = grid_catalogue(3, 2, 2)
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS, special_ids=SPECIAL_IDS)
    input_ids, attention_mask = left_padded(random_prompts(6, seed=5))

    with shifted_logits(llama, add_to_tokens([PAD, BOS, UNK], 40.0)):
        result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=12, top_k=12)

    generated = set(result.sequences.flatten().tolist())
    assert not generated & {PAD, BOS, UNK}
    assert set(result.items.flatten().tolist()) == set(range(len(catalogue)))


def test_small_catalogue_returns_no_filler(llama):
    catalogue = [[level1(0), level2(0), level3(0)], [level1(0), level2(1), level3(0)], [level1(2), level2(0), level3(5)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(3, seed=6))

    result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=5, top_k=5)

    assert result.items.shape == (3, 5)
    assert (result.items[:, 3:] == -1).all()
    for row in range(3):
        assert sorted(result.items[row, :3].tolist()) == [0, 1, 2]
    assert torch.isfinite(result.scores[:, :3]).all()
    assert (result.scores[:, 3:] == float("-inf")).all()


@pytest.mark.parametrize("family", ["llama", "qwen2", "bert"])
def test_beam_search_matches_brute_force(family):
    model = build_model(family)
    catalogue = grid_catalogue(3, 2, 2) + [[level1(5), level2(9), level3(1)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    prompts = random_prompts(3, seed=7, min_length=2, max_length=8)
    input_ids, attention_mask = left_padded(prompts)

    result = constrained_beam_search(model, input_ids, attention_mask, trie, beam_width=len(catalogue), top_k=len(catalogue))

    for row, prompt in enumerate(prompts):
        expected = brute_force_scores(model, prompt, catalogue)
        expected_scores, expected_items = expected.sort(descending=True)
        assert result.items[row].tolist() == expected_items.tolist()
        torch.testing.assert_close(result.scores[row], expected_scores, atol=1e-4, rtol=1e-5)


def test_mixed_length_ids_match_brute_force(llama):
    catalogue = [[level1(0), level2(0)], [level1(0), level2(1), level3(0)], [level1(1), level2(0), level3(2)], [level1(2)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    prompts = random_prompts(3, seed=11)
    input_ids, attention_mask = left_padded(prompts)

    result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=4, top_k=4)

    for row, prompt in enumerate(prompts):
        expected_scores, expected_items = brute_force_scores(llama, prompt, catalogue).sort(descending=True)
        assert result.items[row].tolist() == expected_items.tolist()
        torch.testing.assert_close(result.scores[row], expected_scores, atol=1e-4, rtol=1e-5)
        for slot, item in enumerate(result.items[row].tolist()):
            length = len(catalogue[item])
            assert result.sequences[row, slot, : length + 1].tolist() == [*catalogue[item], EOS]
            assert (result.sequences[row, slot, length + 1 :] == -1).all()


def test_bfloat16_model_returns_catalogue_ids():
    model = build_model("llama").to(torch.bfloat16)
    trie = PrefixTrie.from_sequences(grid_catalogue(3, 2, 2), eos_id=EOS)

    result = constrained_beam_search(model, *left_padded(random_prompts(4, seed=12)), trie, beam_width=6, top_k=6)

    assert result.scores.dtype == torch.float32
    assert (result.items >= 0).all()
    assert torch.isfinite(result.scores).all()


def test_results_do_not_depend_on_batch_size(llama):
    catalogue = grid_catalogue(5, 4, 3)
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    prompts = random_prompts(8, seed=8, min_length=1, max_length=9)
    input_ids, attention_mask = left_padded(prompts)

    whole = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=20, top_k=10)
    chunks = [constrained_beam_search(llama, *left_padded(prompts[start : start + 2]), trie, beam_width=20, top_k=10) for start in range(0, 8, 2)]

    assert torch.equal(whole.items, torch.cat([chunk.items for chunk in chunks]))
    torch.testing.assert_close(whole.scores, torch.cat([chunk.scores for chunk in chunks]), atol=1e-5, rtol=1e-5)


def test_excluded_history_items_are_replaced_not_dropped(llama):
    catalogue = grid_catalogue(3, 2, 2)
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(2, seed=9))
    plain = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=12, top_k=5)
    histories = [plain.items[0, :2].tolist(), []]

    exclude = history_exclusion_mask(histories, n_items=len(catalogue))
    result = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=12, top_k=5, exclude_items=exclude)

    assert result.items[0].tolist() == plain.items[0].tolist()[2:] + _next_items(llama, input_ids[:1], attention_mask[:1], trie, 2)
    assert result.items[1].tolist() == plain.items[1].tolist()
    assert (result.items >= 0).all()


def _next_items(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, trie: PrefixTrie, count: int) -> list[int]:
    """Items ranked 6th and 7th for one user, which move up when two higher items are excluded."""
    ranked = constrained_beam_search(model, input_ids, attention_mask, trie, beam_width=12, top_k=5 + count)
    return ranked.items[0, 5:].tolist()


def test_recommendations_frame_maps_items_to_catalogue_rows(llama):
    catalogue = [[level1(0), level2(0), level3(0)], [level1(0), level2(1), level3(0)], [level1(2), level2(0), level3(5)]]
    trie = PrefixTrie.from_sequences(catalogue, eos_id=EOS)
    items = pl.DataFrame({"item_idx": [0, 1, 2], "item_id": ["i0", "i1", "i2"], "title": ["Alpha", "Beta", "Gamma"]})
    result = constrained_beam_search(llama, *left_padded(random_prompts(2, seed=10)), trie, beam_width=5, top_k=5)

    frame = recommendations_frame(result, items, user_idx=[40, 41])

    assert frame.height == 6
    assert frame["rank"].to_list() == [1, 2, 3, 1, 2, 3]
    assert frame["user_idx"].to_list() == [40, 40, 40, 41, 41, 41]
    first = frame.row(0, named=True)
    assert first["item_idx"] == int(result.items[0, 0])
    assert first["item_id"] == f"i{first['item_idx']}"
    assert first["score"] == pytest.approx(float(result.scores[0, 0]))


def test_beam_width_below_top_k_is_rejected(llama):
    trie = PrefixTrie.from_sequences(grid_catalogue(2, 2, 2), eos_id=EOS)

    with pytest.raises(ValueError, match=r"beam_width=3 is below top_k=5; set beam_width>=5"):
        constrained_beam_search(llama, *left_padded([[4, 5]]), trie, beam_width=3, top_k=5)


def test_right_padded_prompts_are_rejected(llama):
    trie = PrefixTrie.from_sequences(grid_catalogue(2, 2, 2), eos_id=EOS)
    input_ids = torch.tensor([[4, 5, PAD], [4, 5, 6]])
    attention_mask = (input_ids != PAD).long()

    with pytest.raises(ValueError, match="pad prompts on the LEFT"):
        constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=4, top_k=2)


def test_short_max_new_tokens_is_rejected(llama):
    trie = PrefixTrie.from_sequences(grid_catalogue(2, 2, 2), eos_id=EOS)

    with pytest.raises(ValueError, match=r"max_new_tokens=3 is shorter than the longest catalogue ID plus EOS \(4 tokens\)"):
        constrained_beam_search(llama, *left_padded([[4, 5]]), trie, beam_width=4, top_k=2, max_new_tokens=3)


def test_config_rejects_top_k_above_beam_width():
    with pytest.raises(ValueError, match=r"decoding.beam_width=5 is below max\(decoding.top_k\)=10; set decoding.beam_width>=10"):
        DecodingConfig(beam_width=5, top_k=[1, 5, 10])


def test_config_rejects_min_length_beyond_id_length():
    trie = PrefixTrie.from_sequences(grid_catalogue(2, 2, 2), eos_id=EOS)

    with pytest.raises(ValueError, match=r"decoding.min_new_tokens=5 conflicts with the catalogue constraint"):
        load_decoding_config({"beam_width": 10, "top_k": [1, 5, 10], "min_new_tokens": 5}, trie)


def test_config_accepts_min_length_the_trie_implies():
    trie = PrefixTrie.from_sequences(grid_catalogue(2, 2, 2), eos_id=EOS)

    config = load_decoding_config({"beam_width": 10, "top_k": [10], "min_new_tokens": 4}, trie)

    assert config.min_new_tokens == 4


@pytest.mark.parametrize("name", ["forced_bos_token_id", "forced_eos_token_id"])
def test_config_rejects_forced_tokens(name):
    with pytest.raises(ValueError, match=rf"decoding.{name}=11 conflicts with the catalogue constraint"):
        load_decoding_config({"beam_width": 10, "top_k": [10], name: 11})


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"decoding has unknown keys \['num_beams'\]"):
        load_decoding_config({"num_beams": 10})


def test_search_with_config_returns_max_k_columns(llama):
    trie = PrefixTrie.from_sequences(grid_catalogue(3, 2, 2), eos_id=EOS)
    config = load_decoding_config({"beam_width": 8, "top_k": [1, 5]}, trie)

    result = search_with_config(llama, *left_padded([[4, 5], [6]]), trie, config)

    assert result.items.shape == (2, 5)
    assert (result.items >= 0).all()


def prompt_pass(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return _forward(model, _forward_spec(model), input_ids, attention_mask, positions, cache=None)


@pytest.mark.parametrize("family", ["llama", "qwen2", "bert"])
def test_beam_buffers_match_concatenated_cache(family):
    model = build_model(family)
    spec = _forward_spec(model)
    n_users, beam_width, n_fed = 3, 4, 3
    input_ids, attention_mask = left_padded(random_prompts(n_users, seed=13))
    next_positions = attention_mask.sum(1).repeat_interleave(beam_width)  # (B * W,), one past the last prompt position
    fed_mask = torch.ones(n_users * beam_width, n_fed, dtype=torch.long)
    beam_mask = torch.cat([attention_mask.repeat_interleave(beam_width, dim=0), fed_mask], dim=1)
    _, buffered = prompt_pass(model, input_ids, attention_mask)
    _, reference = prompt_pass(model, input_ids, attention_mask)

    rows = torch.arange(n_users).repeat_interleave(beam_width)
    buffered = _fan_out_cache(buffered, rows, beam_width, room=n_fed)
    reference.reorder_cache(rows)
    generator = torch.Generator().manual_seed(13)
    for step in range(n_fed):
        tokens = torch.randint(10, VOCAB_SIZE, (n_users * beam_width, 1), generator=generator)
        mask = beam_mask[:, : input_ids.shape[1] + step + 1]
        buffered_logits, buffered = _forward(model, spec, tokens, mask, (next_positions + step)[:, None], buffered)
        reference_logits, reference = _forward(model, spec, tokens, mask, (next_positions + step)[:, None], reference)
        torch.testing.assert_close(buffered_logits, reference_logits, atol=1e-5, rtol=1e-5)

        # Beams move only within their user; some are copied twice and others dropped.
        sources = torch.randint(0, beam_width, (n_users, beam_width), generator=generator)
        rows = (torch.arange(n_users)[:, None] * beam_width + sources).reshape(-1)
        buffered = _reorder_cache(buffered, rows)
        reference.reorder_cache(rows)

    for layer, expected in zip(buffered.layers, reference.layers, strict=True):
        assert isinstance(layer, _BeamLayer)
        torch.testing.assert_close(layer.keys, expected.keys, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(layer.values, expected.values, atol=1e-6, rtol=1e-6)


def test_beam_buffer_rejects_overflow(llama):
    input_ids, attention_mask = left_padded(random_prompts(2, seed=14))
    _, cache = prompt_pass(llama, input_ids, attention_mask)
    layer = _BeamLayer(cache.layers[0], beam_width=2, room=1)
    new_keys = torch.zeros(4, *layer.keys.shape[1:2], 1, layer.keys.shape[3])

    layer.update(new_keys, new_keys)

    with pytest.raises(ValueError, match=r"beam cache overflow: \d+ positions were preallocated, but fed-back token 2 needs"):
        layer.update(new_keys, new_keys)


def test_sliding_window_cache_matches_full_model():
    full = build_model("qwen2")
    # Layer 1 slides over 64 positions, more than any sequence here, so it attends exactly like the full model.
    config = copy.deepcopy(full.config)
    config.use_sliding_window, config.sliding_window = True, 64
    config.layer_types = ["full_attention", "sliding_attention"]
    windowed = Qwen2ForCausalLM(config).eval()
    windowed.load_state_dict(full.state_dict())
    trie = PrefixTrie.from_sequences(grid_catalogue(4, 3, 2), eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(4, seed=15))
    _, prompt_cache = prompt_pass(windowed, input_ids, attention_mask)

    expected = constrained_beam_search(full, input_ids, attention_mask, trie, beam_width=8, top_k=8)
    result = constrained_beam_search(windowed, input_ids, attention_mask, trie, beam_width=8, top_k=8)

    assert type(prompt_cache.layers[1]) is not DynamicLayer
    assert torch.equal(result.items, expected.items)
    torch.testing.assert_close(result.scores, expected.scores, atol=1e-5, rtol=1e-5)


def test_spare_steps_do_not_change_results(llama):
    trie = PrefixTrie.from_sequences(grid_catalogue(4, 3, 2) + [[level1(7), level2(1)]], eos_id=EOS)
    input_ids, attention_mask = left_padded(random_prompts(4, seed=16))

    exact = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=10, top_k=10)
    spare_steps = trie.max_length + 3
    spare = constrained_beam_search(llama, input_ids, attention_mask, trie, beam_width=10, top_k=10, max_new_tokens=spare_steps)

    assert torch.equal(spare.items, exact.items)
    assert torch.equal(spare.sequences[:, :, : trie.max_length], exact.sequences)
    torch.testing.assert_close(spare.scores, exact.scores)
