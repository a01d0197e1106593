import pickle

import pytest
import torch

from ttds.checkpoint_io import load_tree, save_tree


def test_tree_round_trip_keeps_types(tmp_path):
    tree = {
        "step": 6,
        "lr": 0.001,
        "name": "ttds",
        "flag": True,
        "none": None,
        "betas": (0.9, 0.999),
        "state": {0: {"exp_avg": torch.arange(4.0)}, 1: {"step": torch.tensor(3.0)}},
        "groups": [{"params": [0, 1], "weight": torch.ones(2, 3, dtype=torch.bfloat16)}],
    }
    save_tree(tree, tmp_path / "x.ckpt")
    loaded = load_tree(tmp_path / "x.ckpt")

    assert loaded["step"] == 6
    assert loaded["betas"] == (0.9, 0.999)
    assert set(loaded["state"]) == {0, 1}
    assert torch.equal(loaded["state"][0]["exp_avg"], torch.arange(4.0))
    assert loaded["groups"][0]["weight"].dtype == torch.bfloat16
    assert loaded["none"] is None
    assert loaded["flag"] is True


def test_tree_rejects_unstorable_objects(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['module'\] contains a Linear"):
        save_tree({"module": torch.nn.Linear(2, 2)}, tmp_path / "x.ckpt")


def test_load_tree_rejects_pickle_files(tmp_path):
    path = tmp_path / "pickled.ckpt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(Exception, match=r"header|safetensors|deserializ"):
        load_tree(path)
