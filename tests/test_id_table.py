import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ttds.tokenizer.id_table import SemanticIdTable
from ttds.tokenizer.module import fit_tower
from ttds.tokenizer.towers import tower_config_from_dict


@pytest.fixture
def collided_table() -> SemanticIdTable:
    # B is given first, but A sorts first, so A gets suffix 0.
    return SemanticIdTable([[12, 24, 52], [3, 1, 7], [12, 24, 52]], ["B", "C", "A"], codebook_size=64)


def test_collision_suffix_follows_key_order(collided_table):
    assert collided_table.codes_of(2) == (12, 24, 52, 0)
    assert collided_table.codes_of(0) == (12, 24, 52, 1)
    assert collided_table.codes_of(1) == (3, 1, 7, 0)
    assert collided_table.n_suffix == 2


def test_entity_of_full_ids(collided_table):
    assert collided_table.entity_of((12, 24, 52, 0)) == 2
    assert collided_table.entity_of((12, 24, 52, 1)) == 0
    assert collided_table.entity_of((3, 1, 7, 0)) == 1
    assert collided_table.entity_of((12, 24, 52, 2)) is None


def test_entity_of_rejects_wrong_length(collided_table):
    with pytest.raises(ValueError, match=r"has 3 parts, but IDs in this table have 4"):
        collided_table.entity_of((12, 24, 52))
    with pytest.raises(ValueError, match=r"has 5 parts"):
        collided_table.entity_of((12, 24, 52, 0, 0))


def test_item_tokens_use_level_letters():
    table = SemanticIdTable([[12, 24, 52]], ["A"], codebook_size=64)
    assert table.tokens_of(0) == ["<a_12>", "<b_24>", "<c_52>", "<d_0>"]


def test_user_table_reports_collisions():
    table = SemanticIdTable([[3, 1, 7], [3, 1, 7], [0, 1, 2]], ["u2", "u1", "u3"], codebook_size=8, prefix="u", add_suffix=False)
    report = table.collision_report()

    assert table.tokens_of(0) == ["<ua_3>", "<ub_1>", "<uc_7>"]
    assert table.entity_of((3, 1, 7)) == 1
    assert report["collision_rate_before_suffix"] == pytest.approx(1 / 3)
    assert report["collision_rate_after_suffix"] == pytest.approx(1 / 3)
    assert "<ud_0>" not in table.vocabulary()


def test_vocabulary_lists_every_code_and_suffix(collided_table):
    vocabulary = collided_table.vocabulary()

    assert len(vocabulary) == 3 * 64 + 2
    assert len(set(vocabulary)) == len(vocabulary)
    assert vocabulary[0] == "<a_0>"
    assert vocabulary[-1] == "<d_1>"
    assert all(token in vocabulary for sequence in collided_table.token_sequences() for token in sequence)


def test_token_sequences_match_tokens_of(collided_table):
    sequences = collided_table.token_sequences()
    assert sequences == [collided_table.tokens_of(index) for index in range(3)]


def test_collision_rates_with_suffix(collided_table):
    report = collided_table.collision_report()

    assert report["collision_rate_before_suffix"] == pytest.approx(1 / 3)
    assert report["collision_rate_after_suffix"] == 0.0
    assert report["max_group_size"] == 2


def test_suffix_budget_too_small_raises():
    with pytest.raises(ValueError, match=r"3 entities share one code tuple but max_suffix=2"):
        SemanticIdTable([[1, 1], [1, 1], [1, 1]], ["a", "b", "c"], codebook_size=4, max_suffix=2)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="keys must be unique"):
        SemanticIdTable([[1, 1], [2, 2]], ["a", "a"], codebook_size=4)
    with pytest.raises(ValueError, match=r"codes must lie in 0..3"):
        SemanticIdTable([[1, 4]], ["a"], codebook_size=4)
    with pytest.raises(ValueError, match="got 1 keys for 2 code rows"):
        SemanticIdTable([[1, 1], [2, 2]], ["a"], codebook_size=4)


def test_extend_keeps_existing_ids(collided_table):
    extended = collided_table.extend([[3, 1, 7], [12, 24, 52], [5, 5, 5]], ["Z", "AA", "D"])

    for index in range(3):
        assert extended.codes_of(index) == collided_table.codes_of(index)
    assert extended.codes_of(3) == (3, 1, 7, 1)
    assert extended.codes_of(4) == (12, 24, 52, 2)
    assert extended.codes_of(5) == (5, 5, 5, 0)
    assert extended.n_suffix == 3
    assert len(collided_table) == 3


def test_extend_exhausted_suffix_space_raises():
    table = SemanticIdTable([[1, 1], [1, 1]], ["a", "b"], codebook_size=4, max_suffix=3)
    bigger = table.extend([[1, 1]], ["c"])

    assert bigger.codes_of(2) == (1, 1, 2)
    with pytest.raises(ValueError, match="suffix space exhausted: a collision group needs suffix 3, but max_suffix=3"):
        bigger.extend([[1, 1]], ["d"])


def test_extend_rejects_existing_key(collided_table):
    with pytest.raises(ValueError, match="key 'A' is already in the table"):
        collided_table.extend([[0, 0, 0]], ["A"])


def test_save_load_round_trip(collided_table, tmp_path):
    collided_table.save(tmp_path)
    loaded = SemanticIdTable.load(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())

    assert np.array_equal(loaded.ids, collided_table.ids)
    assert loaded.keys == collided_table.keys
    assert loaded.entity_of((12, 24, 52, 1)) == 0
    assert loaded.token_sequences() == collided_table.token_sequences()
    assert loaded.n_suffix == 2
    assert metadata["content_hash"] == collided_table.content_hash
    assert metadata["levels"] == 3


def test_load_rejects_changed_files(collided_table, tmp_path):
    collided_table.save(tmp_path)
    other = SemanticIdTable([[12, 24, 52], [3, 1, 7], [12, 24, 53]], ["B", "C", "A"], codebook_size=64)
    other.save(tmp_path / "other")
    (tmp_path / "other" / "ids.safetensors").replace(tmp_path / "ids.safetensors")

    with pytest.raises(ValueError, match="content hash .* but metadata.json records"):
        SemanticIdTable.load(tmp_path)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json is missing"):
        SemanticIdTable.load(tmp_path)


def test_suffix_independent_of_row_order():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(500, 2))
    keys = [f"k{index:04d}" for index in range(500)]
    permutation = rng.permutation(500)
    table = SemanticIdTable(codes, keys, codebook_size=3)
    shuffled = SemanticIdTable(codes[permutation], [keys[index] for index in permutation], codebook_size=3)

    assert np.array_equal(shuffled.ids, table.ids[permutation])


FIT_AND_SAVE = textwrap.dedent(
    """
    import sys
    from tests.test_id_table import fit_and_save

    fit_and_save(sys.argv[1])
    """
)


def fit_and_save(directory: str) -> None:
    generator = torch.Generator().manual_seed(0)
    semantic = torch.randn(24, 16, generator=generator).numpy()
    collaborative = torch.randn(24, 8, generator=generator).numpy()
    config = tower_config_from_dict(
        {"latent_dim": 8, "hidden_dims": [32], "batch_size": 12, "max_epochs": 2, "quantizer": {"levels": 2, "codebook_size": 4}}
    )
    _, table, _ = fit_tower(semantic, collaborative, [f"item{index}" for index in range(24)], config)
    table.save(directory)


def test_same_seed_identical_table_files(tmp_path):
    # One run in a fresh process, one in this one; they overlap to halve the wall time.
    runs = [tmp_path / "subprocess", tmp_path / "here"]
    process = subprocess.Popen(
        [sys.executable, "-c", FIT_AND_SAVE, str(runs[0])], cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    fit_and_save(str(runs[1]))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-2000:]

    for name in ("ids.safetensors", "keys.parquet", "metadata.json"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert len(SemanticIdTable.load(runs[0])) == 24
