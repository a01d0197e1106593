"""Tuning tasks: records, rendering, the mixture, and no leakage from validation or test targets."""

import polars as pl
import pytest

from ttds.data.config import PreprocessConfig
from ttds.data.pipeline import build_processed
from ttds.data.schema import RawDataset, conform_items, empty_users
from ttds.data.views import training_sequences
from ttds.paths import CONF_DIR
from ttds.tasks.base import Vocabulary, load_templates
from ttds.tasks.registry import TASKS, TaskRecords, TasksConfig
from ttds.tasks.task_data import TaskData

SEQUENCES = {
    "u1": ["i1", "i2", "i3", "i4", "i5"],
    "u2": ["i2", "i3", "i6", "i1", "i7", "i8"],
    "u3": ["i3", "i1", "i2", "i6", "i4"],
    "u4": ["i5", "i6", "i7", "i8", "i2", "i3"],
}


def _raw(sequences: dict[str, list[str]]) -> RawDataset:
    rows = [(user, item, t) for user, items in sequences.items() for t, item in enumerate(items)]
    interactions = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "file_row": list(range(len(rows))),
            "rating": [None] * len(rows),
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "file_row": pl.Int64, "rating": pl.Float64},
    )
    items = conform_items(pl.DataFrame({"item_id": [f"i{k}" for k in range(1, 9)], "title": [f"Movie {k}" for k in range(1, 9)]}))
    return RawDataset(name="toy", interactions=interactions, items=items, users=empty_users())


def _vocab(ds) -> Vocabulary:
    titles = ds.items["title"].to_list()
    sequences = dict(zip(*training_sequences(ds).to_dict(as_series=False).values(), strict=True))
    return Vocabulary(
        item_ids=[f"<a_{i}><b_0>" for i in range(ds.n_items)],
        user_ids=[f"<ua_{u}>" for u in range(ds.n_users)],
        item_titles=titles,
        item_texts=[f"{t}. Drama" for t in titles],
        user_texts=["; ".join(titles[i] for i in sequences.get(u, [])) for u in range(ds.n_users)],
    )


def _all_tasks_config() -> TasksConfig:
    return TasksConfig(templates=str(CONF_DIR / "tasks" / "templates_v1.yaml"), mixture={name: {"weight": 1.0} for name in TASKS})


def _rendered_training_examples(sequences):
    ds = build_processed(_raw(sequences), PreprocessConfig(kcore=0))
    cfg = _all_tasks_config()
    records = TaskRecords(TaskData(ds, max_history=20, neighbours=3), cfg, load_templates(cfg.templates))
    vocab = _vocab(ds)
    return {
        name: sorted(TASKS[name].render(record, vocab, records.templates.for_task(name)[0]) for record in task_records)
        for name, task_records in records.records.items()
    }


def test_sequential_records_follow_the_split():
    ds = build_processed(_raw({"u1": SEQUENCES["u1"]}), PreprocessConfig(kcore=0))
    data = TaskData(ds, max_history=20, neighbours=3)
    index = {item_id: idx for idx, item_id in zip(ds.items["item_idx"], ds.items["item_id"], strict=True)}
    i1, i2, i3 = index["i1"], index["i2"], index["i3"]

    assert data.training_pairs == [(0, (i1,), i2), (0, (i1, i2), i3)]


def test_every_task_renders_prompt_and_response():
    examples = _rendered_training_examples(SEQUENCES)
    assert set(examples) == set(TASKS)
    for name, pairs in examples.items():
        assert pairs, name
        for prompt, response in pairs:
            assert "{" not in prompt, (name, prompt)
            assert response, (name, prompt)


def test_sequential_prompt_holds_history_ids_and_user_id():
    examples = _rendered_training_examples({"u1": SEQUENCES["u1"]})
    prompt, response = examples["sequential"][0]
    assert "<ua_0>" in prompt
    assert "<a_0><b_0>" in prompt
    assert response.startswith("<a_")


def test_eval_targets_do_not_reach_training():
    original = _rendered_training_examples(SEQUENCES)
    # New valid and test targets, each taken from items the user has not seen, so no duplicate appears.
    replacements = {"u1": ["i7", "i8"], "u2": ["i5", "i4"], "u3": ["i8", "i7"], "u4": ["i4", "i1"]}
    altered = {user: items[:-2] + replacements[user] for user, items in SEQUENCES.items()}
    assert altered != SEQUENCES

    changed = _rendered_training_examples(altered)
    for name in TASKS:
        assert changed[name] == original[name], name


def test_mixture_weights_and_caps_set_epoch_counts():
    ds = build_processed(_raw(SEQUENCES), PreprocessConfig(kcore=0))
    cfg = TasksConfig(
        templates=str(CONF_DIR / "tasks" / "templates_v1.yaml"),
        mixture={"sequential": {"weight": 1.0}, "item_to_id": {"weight": 0.5}, "id_to_title": {"weight": 2.0, "max_examples": 3}},
    )
    records = TaskRecords(TaskData(ds, max_history=20, neighbours=3), cfg, load_templates(cfg.templates))
    n_sequential = len(records.records["sequential"])
    examples = records.epoch_examples(epoch=0, seed=0)
    counts = {name: sum(1 for e in examples if e[0] == name) for name in cfg.mixture}

    assert counts["sequential"] == n_sequential
    assert counts["item_to_id"] == round(0.5 * n_sequential)
    assert counts["id_to_title"] == 3
    assert records.epoch_examples(epoch=0, seed=0) == examples
    assert records.epoch_examples(epoch=1, seed=0) != examples


def test_unknown_task_in_mixture_is_rejected():
    with pytest.raises(ValueError, match=r"unknown tasks \['sequentail'\]"):
        TasksConfig(templates="x.yaml", mixture={"sequential": {"weight": 1.0}, "sequentail": {"weight": 1.0}})


def test_unknown_task_spec_key_is_rejected():
    with pytest.raises(ValueError, match=r"unknown keys \['wieght'\]"):
        TasksConfig(templates="x.yaml", mixture={"sequential": {"wieght": 1.0}})


def test_templates_carry_version_and_hash():
    templates = load_templates(CONF_DIR / "tasks" / "templates_v1.yaml")
    assert templates.version == 1
    assert len(templates.sha256) == 64
    assert len(templates.for_task("sequential")) >= 2


@pytest.mark.parametrize("path", sorted((CONF_DIR / "tasks").glob("templates_v*.yaml")), ids=lambda path: path.stem)
def test_every_templates_file_renders_every_task(path):
    templates = load_templates(path)
    assert set(templates.templates) == set(TASKS)


def test_v2_sequential_prompts_end_with_the_history():
    ds = build_processed(_raw({"u1": SEQUENCES["u1"]}), PreprocessConfig(kcore=0))
    cfg = TasksConfig(templates=str(CONF_DIR / "tasks" / "templates_v2.yaml"), mixture={"sequential": {"weight": 1.0}})
    records = TaskRecords(TaskData(ds, max_history=20, neighbours=3), cfg, load_templates(cfg.templates), history_labels=True)
    vocab = _vocab(ds)

    for template_index in range(len(records.templates.for_task("sequential"))):
        example = records.render(("sequential", 1, template_index), vocab)
        history = records.records["sequential"][1][1]
        assert example.prompt.endswith(vocab.items(history) + ",")
        assert example.history_labels


def test_history_labels_only_mark_history_tasks():
    ds = build_processed(_raw(SEQUENCES), PreprocessConfig(kcore=0))
    cfg = _all_tasks_config()
    records = TaskRecords(TaskData(ds, max_history=20, neighbours=3), cfg, load_templates(cfg.templates), history_labels=True)
    vocab = _vocab(ds)

    marked = {name for name in records.records if records.render((name, 0, 0), vocab).history_labels}
    assert marked == {"sequential", "ids_to_next_title"}
