"""PrefixTrie: exact prefixes, EOS only after a full ID, vectorised lookups."""

import pytest
import torch

from ttds.decoding import PrefixTrie
from ttds.decoding.trie import DEAD

PAD, BOS, EOS, UNK = 0, 1, 2, 3


def level1(code: int) -> int:
    return 10 + code


def level2(code: int) -> int:
    return 30 + code


def level3(code: int) -> int:
    return 50 + code


TWO_ITEMS = [[level1(1), level2(2), level3(3)], [level1(8), level2(2), level3(9)]]


def walk_prefix(trie: PrefixTrie, prefix: list[int]) -> torch.Tensor:
    return trie.walk(torch.tensor([prefix]))


def allowed_after(trie: PrefixTrie, prefix: list[int]) -> set[int]:
    tokens, _ = trie.children(walk_prefix(trie, prefix))
    return {int(token) for token in tokens[0] if token >= 0}


def test_shared_middle_code_keeps_suffixes_apart():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    assert allowed_after(trie, [level1(1), level2(2)]) == {level3(3)}
    assert allowed_after(trie, [level1(8), level2(2)]) == {level3(9)}


def test_root_allows_only_level1_codes():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    assert allowed_after(trie, []) == {level1(1), level1(8)}


def test_eos_only_after_full_id():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    assert EOS not in allowed_after(trie, [level1(1)])
    assert EOS not in allowed_after(trie, [level1(1), level2(2)])
    assert allowed_after(trie, [level1(1), level2(2), level3(3)]) == {EOS}


def test_dead_prefix_has_no_continuation():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    dead = walk_prefix(trie, [level1(1), level2(7)])

    assert int(dead[0]) == DEAD
    assert allowed_after(trie, [level1(1), level2(7)]) == set()
    assert int(trie.step(dead, torch.tensor([level3(3)]))[0]) == DEAD


def test_leaf_after_eos_is_terminal():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    leaf = walk_prefix(trie, [*TWO_ITEMS[1], EOS])

    assert int(trie.items_of(leaf)[0]) == 1
    assert allowed_after(trie, [*TWO_ITEMS[1], EOS]) == set()
    assert int(trie.step(leaf, torch.tensor([EOS]))[0]) == DEAD


def test_sequence_to_item_maps_ids_back():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    assert trie.sequence_to_item(TWO_ITEMS[0]) == 0
    assert trie.sequence_to_item([*TWO_ITEMS[1], EOS]) == 1
    assert trie.sequence_to_item([level1(1), level2(2)]) is None
    assert trie.sequence_to_item([level1(1), level2(2), level3(9)]) is None


def test_interior_nodes_map_to_no_item():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    interior = walk_prefix(trie, TWO_ITEMS[0])

    assert int(trie.items_of(interior)[0]) == -1


def test_step_rejects_tokens_beyond_the_key_stride():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    # Without the range check, root * stride + (stride + t) would alias node 1's edge for token t.
    aliased = torch.tensor([trie.stride + level2(2)])

    assert int(trie.step(torch.tensor([0]), aliased)[0]) == DEAD


def test_batched_lookups_match_python_dict_trie():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 6, (300, 3), generator=generator)
    sequences = sorted({(level1(int(a)), level2(int(b)), level3(int(c))) for a, b, c in codes})
    trie = PrefixTrie.from_sequences([list(sequence) for sequence in sequences], eos_id=EOS)
    reference: dict = {}
    for sequence in sequences:
        node = reference
        for token in (*sequence, EOS):
            node = node.setdefault(token, {})

    prefixes = [list(sequence[:length]) for sequence in sequences for length in range(4)]
    nodes = torch.cat([walk_prefix(trie, prefix) for prefix in prefixes])
    mask = trie.allowed_mask(nodes, vocab_size=64)

    for row, prefix in enumerate(prefixes):
        expected = reference
        for token in prefix:
            expected = expected[token]
        assert set(torch.nonzero(mask[row]).flatten().tolist()) == set(expected), prefix


def test_children_width_matches_depth_maximum():
    trie = PrefixTrie.from_sequences([[10, 30], [10, 31], [11, 30]], eos_id=EOS)

    depth1 = trie.walk(torch.tensor([[10], [11]]))
    tokens, children = trie.children(depth1, trie.max_children_by_depth[1])

    assert trie.max_children_by_depth == (2, 2, 1, 0)
    assert tokens.tolist() == [[30, 31], [30, -1]]
    assert (children[1, 1] == -1).item()


def test_variable_length_ids_record_both_lengths():
    trie = PrefixTrie.from_sequences([[10, 30], [10, 31, 50]], eos_id=EOS)

    assert trie.min_length == 3
    assert trie.max_length == 4
    assert allowed_after(trie, [10, 30]) == {EOS}
    assert allowed_after(trie, [10, 31]) == {50}


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match=r"items 0 and 2 have the same ID \[10, 30\]; semantic IDs must be unique"):
        PrefixTrie.from_sequences([[10, 30], [10, 31], [10, 30]], eos_id=EOS)


def test_eos_inside_an_id_is_rejected():
    with pytest.raises(ValueError, match=r"item 1 has the EOS token 2 inside its ID"):
        PrefixTrie.from_sequences([[10, 30], [10, EOS]], eos_id=EOS)


def test_special_ids_inside_an_id_are_rejected():
    with pytest.raises(ValueError, match=r"item 0 has special token ids \[0\]"):
        PrefixTrie.from_sequences([[10, PAD]], eos_id=EOS, special_ids=[PAD, BOS, UNK])


def test_empty_catalogue_is_rejected():
    with pytest.raises(ValueError, match="the catalogue has no item IDs"):
        PrefixTrie.from_sequences([], eos_id=EOS)


def test_allowed_mask_rejects_small_vocabulary():
    trie = PrefixTrie.from_sequences(TWO_ITEMS, eos_id=EOS)

    with pytest.raises(ValueError, match="pass the model's vocabulary size"):
        trie.allowed_mask(torch.tensor([0]), vocab_size=20)
