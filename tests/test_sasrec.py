import math

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch

from ttds.data.dataset import ProcessedDataset
from ttds.data.views import evaluation_examples, training_sequences
from ttds.models.sasrec import IGNORE_INDEX, SASRec, pad_histories, sample_negatives
from ttds.models.sasrec_module import (
    SASRecConfig,
    SASRecDataModule,
    evaluate_ranking,
    sasrec_embeddings,
    sequences_by_user,
    targets_by_user,
    train_sasrec,
    training_windows,
)

N_ITEMS = 30
TINY = SASRecConfig(hidden=32, layers=1, heads=2, max_len=10, dropout=0.0, lr=5e-3, epochs=6, batch_size=64, patience=0)
CPU = {"accelerator": "cpu"}


def successor_sequences(n_users: int = 300, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Users walk the catalogue in order (item t + 1 follows item t, wrapping); the last two steps are valid and test."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for _ in range(n_users):
        walk = (rng.integers(N_ITEMS) + np.arange(rng.integers(5, 15))) % N_ITEMS
        train.append(walk[:-2])
        valid.append(walk[-2])
        test.append(walk[-1])
    return train, np.array(valid), np.array(test)


@pytest.fixture(scope="module")
def trained():
    train, valid, test = successor_sequences()
    model = train_sasrec(train, N_ITEMS, TINY, CPU, valid_targets=valid)
    return model, train, valid, test


def test_sasrec_learns_successor_pattern(trained):
    model, train, valid, test = trained
    valid_metrics = evaluate_ranking(model, train, valid, ks=(1, 10))
    assert valid_metrics["hr@1"] > 0.95
    assert model.valid_metrics["val/hr@10"] > 0.95

    test_histories = [np.append(sequence, target) for sequence, target in zip(train, valid, strict=True)]
    assert evaluate_ranking(model, test_histories, test, ks=(1,))["hr@1"] > 0.95


def test_full_softmax_loss_decreases(trained):
    # Near-uniform scores at initialisation give a loss of log(n_items) only if every item is a class.
    model, train, _, _ = trained
    inputs, targets = training_windows(train, TINY.max_len)

    L.seed_everything(1, verbose=False)
    untrained = SASRec(N_ITEMS, TINY.hidden, TINY.layers, TINY.heads, TINY.max_len, dropout=0.0).eval()
    with torch.no_grad():
        initial = float(untrained.loss(inputs, targets))
        final = float(model.loss(inputs, targets))
    assert abs(initial - math.log(N_ITEMS)) < 0.2
    assert final < 0.5 * initial


def test_scores_cover_every_item_and_never_padding(trained):
    model = trained[0]
    scores = model.predict(pad_histories([[1, 2, 3], [7]], model.max_len))
    assert scores.shape == (2, N_ITEMS)
    assert model.item_embeddings().shape == (N_ITEMS, TINY.hidden)
    assert torch.equal(model.item_embeddings(), model.item_embedding.weight[1:])
    assert int(scores.argmax(dim=-1)[0]) == 4


def test_left_padding_does_not_change_scores(trained):
    model = trained[0]
    with torch.no_grad():
        padded = model.predict(pad_histories([[5, 6, 7]], model.max_len))
        unpadded = model.predict(torch.tensor([[6, 7, 8]]))  # model-side ids: item_idx + 1
    assert torch.allclose(padded, unpadded, atol=1e-5)


def test_user_states_read_last_max_len_items(trained):
    model, train, _, _ = trained
    long_sequence = np.arange(25) % N_ITEMS
    states = model.user_states([long_sequence, long_sequence[-TINY.max_len :], np.array([], dtype=np.int64)])
    assert states.shape == (3, TINY.hidden)
    assert torch.allclose(states[0], states[1], atol=1e-5)
    assert torch.equal(states[2], torch.zeros(TINY.hidden))
    assert not states.is_inference()


def test_training_windows_cut_from_end():
    inputs, targets = training_windows([np.arange(8)], max_len=4)
    pad = IGNORE_INDEX
    assert inputs.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]  # model-side ids, 0 = padding
    assert targets.tolist() == [[4, 5, 6, 7], [pad, 1, 2, 3]]  # item_idx


def test_training_windows_skip_users_with_one_item():
    inputs, _ = training_windows([np.array([3]), np.array([1, 2])], max_len=4)
    assert inputs.tolist() == [[0, 0, 0, 2]]


def make_dataset() -> ProcessedDataset:
    """Users whose valid and test items (20+) appear in no training event."""
    rows = []
    for user in range(6):
        items = [user, user + 1, user + 2, user + 3, 20 + user, 26 + user]
        for position, item in enumerate(items):
            split = {4: "valid", 5: "test"}.get(position, "train")
            rows.append({"user_idx": user, "item_idx": item, "timestamp": position, "position": position, "split": split})
    events = pl.DataFrame(rows).with_columns(pl.col("user_idx", "item_idx", "position").cast(pl.Int32))
    items = pl.DataFrame({"item_idx": pl.Series(range(32), dtype=pl.Int32), "item_id": [str(i) for i in range(32)]})
    users = pl.DataFrame({"user_idx": pl.Series(range(6), dtype=pl.Int32), "user_id": [str(u) for u in range(6)]})
    return ProcessedDataset(name="split", events=events, items=items, users=users)


def test_training_reads_only_training_events():
    ds = make_dataset()
    sequences = sequences_by_user(training_sequences(ds), ds.n_users)
    valid = targets_by_user(evaluation_examples(ds, "valid", max_history=20), ds.n_users)
    datamodule = SASRecDataModule(sequences, max_len=10, batch_size=4, valid_targets=valid)
    datamodule.setup("fit")

    train_items = {int(i) - 1 for i in datamodule.train_set.tensors[0].unique() if i > 0}
    train_targets = {int(i) for i in datamodule.train_set.tensors[1].unique() if i != IGNORE_INDEX}
    valid_inputs = {int(i) - 1 for i in datamodule.valid_set.tensors[0].unique() if i > 0}
    valid_targets = datamodule.valid_set.tensors[1].tolist()
    assert train_items | train_targets == set(range(9))
    assert valid_inputs == set(range(9))
    assert valid_targets == list(range(20, 26))


def test_cached_embeddings_skip_training(tmp_path):
    train, valid, _ = successor_sequences(n_users=40)
    cfg = SASRecConfig(hidden=16, layers=1, heads=2, max_len=10, epochs=1, batch_size=32)
    first = sasrec_embeddings(train, N_ITEMS, cfg, valid, cache_dir=tmp_path, trainer_kwargs=CPU)

    class CountFits(L.Callback):
        fits = 0

        def on_fit_start(self, trainer, pl_module):
            CountFits.fits += 1

    second = sasrec_embeddings(train, N_ITEMS, cfg, valid, cache_dir=tmp_path, trainer_kwargs=CPU | {"callbacks": [CountFits()]})
    assert CountFits.fits == 0
    assert torch.equal(first.items, second.items)
    assert torch.equal(first.users, second.users)
    assert first.users.shape == (40, 16)
    assert torch.allclose(second.model.user_states(train), first.users, atol=1e-6)

    changed = [np.append(sequence, 0) for sequence in train]
    sasrec_embeddings(changed, N_ITEMS, cfg, valid, cache_dir=tmp_path, trainer_kwargs=CPU | {"callbacks": [CountFits()]})
    assert CountFits.fits == 1


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"sasrec has unknown keys \['hidden_size'\]"):
        SASRecConfig.from_dict({"hidden_size": 32})
    with pytest.raises(ValueError, match="sasrec.hidden=30 is not divisible by sasrec.heads=4"):
        SASRecConfig(hidden=30, heads=4)


def test_train_rejects_items_outside_catalogue():
    with pytest.raises(ValueError, match=r"sequences\[1\] has item_idx outside 0..29"):
        train_sasrec([np.array([0, 1]), np.array([2, 30])], N_ITEMS, TINY, CPU)
    with pytest.raises(ValueError, match=r"valid_targets has shape \(1,\); expected \(2,\)"):
        train_sasrec([np.array([0, 1]), np.array([2, 3])], N_ITEMS, TINY, CPU, valid_targets=np.array([4]))


def test_bce_training_learns_successor_pattern():
    train, valid, _ = successor_sequences(seed=1)
    config = SASRecConfig(**{**TINY.__dict__, "loss": "bce", "negatives": 4, "epochs": 10})
    model = train_sasrec(train, N_ITEMS, config, CPU, valid_targets=valid)

    assert evaluate_ranking(model, train, valid, ks=(10,))["hr@10"] > 0.9


def test_negatives_skip_the_positive_uniformly():
    positives = torch.tensor([0, 2, 4])
    sampled = sample_negatives(positives, 5, 4000, torch.Generator().manual_seed(0))  # (3, 4000)

    assert sampled.shape == (3, 4000)
    assert not (sampled == positives.unsqueeze(1)).any()
    for row, positive in enumerate(positives.tolist()):
        counts = torch.bincount(sampled[row], minlength=5).float()
        others = torch.cat([counts[:positive], counts[positive + 1 :]])
        assert others.min() > 900, (row, counts.tolist())  # 1,000 expected for each of the 4 other items


def test_bce_loss_is_finite_and_trains():
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, hidden=16, layers=1, heads=2, max_len=10, dropout=0.0)
    train, _, _ = successor_sequences(n_users=50)
    inputs, targets = training_windows(train, 10)
    before = float(model.sampled_bce_loss(inputs, targets, 1, torch.Generator().manual_seed(0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        optimizer.zero_grad()
        model.sampled_bce_loss(inputs, targets, 1, torch.Generator().manual_seed(step)).backward()
        optimizer.step()
    after = float(model.sampled_bce_loss(inputs, targets, 1, torch.Generator().manual_seed(0)))

    assert math.isfinite(before)
    assert abs(before - 2 * math.log(2)) < 0.1  # near-zero logits: log 2 for the positive and for the negative
    assert after < 0.5 * before


def test_config_rejects_unknown_loss():
    with pytest.raises(ValueError, match=r"sasrec.loss='bpr' is invalid; use 'ce'"):
        SASRecConfig(loss="bpr")
    with pytest.raises(ValueError, match="sasrec.negatives=0 must be at least 1"):
        SASRecConfig(loss="bce", negatives=0)
