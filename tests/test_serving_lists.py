"""Serving and evaluation guards: short recommendation lists are counted, an edited templates file is rejected."""

import json

import polars as pl
import pytest

from ttds.serving import count_short_lists
from ttds.stages.evaluate import check_templates_unchanged


def test_short_and_missing_users_are_counted():
    frames = [pl.DataFrame({"user_idx": [1, 1]}), pl.DataFrame({"user_idx": [2]})]  # user 3 got nothing

    assert count_short_lists(frames, n_users=3, top_k=2) == 2


def test_full_lists_count_zero():
    assert count_short_lists([pl.DataFrame({"user_idx": [1, 1, 2, 2]})], n_users=2, top_k=2) == 0


def test_no_frames_count_every_user():
    assert count_short_lists([], n_users=4, top_k=10) == 4


def test_changed_templates_file_is_rejected(tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "DONE.json").write_text(json.dumps({"templates_sha256": "a" * 64}))

    check_templates_unchanged(tmp_path, "templates.yaml", "a" * 64)
    with pytest.raises(ValueError, match="changed since the LM"):
        check_templates_unchanged(tmp_path, "templates.yaml", "b" * 64)


def test_run_without_llm_stage_is_not_checked(tmp_path):
    check_templates_unchanged(tmp_path, "templates.yaml", "b" * 64)
