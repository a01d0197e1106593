"""Task registry, mixture config and the per-epoch example list."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ttds.data.config import build_strict, closest_hint
from ttds.tasks.alignment import IdToTitle, ItemToId, TextToUser, UserToText
from ttds.tasks.base import Example, Task, TemplateSet, Vocabulary, tidy_prompt
from ttds.tasks.high_order import ItemToItems, ItemToUser, UserToUsers
from ttds.tasks.sequential import IdsToNextTitle, Sequential, TitlesToNextId
from ttds.tasks.task_data import TaskData

log = logging.getLogger(__name__)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Sequential(),
        TitlesToNextId(),
        IdsToNextTitle(),
        ItemToId(),
        IdToTitle(),
        UserToText(),
        TextToUser(),
        ItemToUser(),
        ItemToItems(),
        UserToUsers(),
    )
}
HIGH_ORDER_TASKS = ("item_to_user", "item_to_items", "user_to_users")
USER_ID_TASKS = ("user_to_text", "text_to_user", "item_to_user", "user_to_users")


@dataclass
class TaskSpec:
    """Share of one task in an epoch."""

    weight: float = 1.0  # examples per epoch = weight x number of sequential records
    max_examples: int | None = None  # cap per epoch; None = no cap

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"task weight={self.weight} is negative; use 0 to turn a task off.")


@dataclass
class TasksConfig:
    """Task mixture that trains the LM: task weights, caps, templates file and response length."""

    templates: str  # path of the templates YAML
    mixture: dict[str, TaskSpec] = field(default_factory=lambda: {"sequential": TaskSpec()})
    neighbours: int = 5  # items/users listed in a high-order response

    def __post_init__(self) -> None:
        self.mixture = {name: spec if isinstance(spec, TaskSpec) else build_strict(TaskSpec, dict(spec), f"tasks.mixture.{name}") for name, spec in self.mixture.items()}
        unknown = sorted(set(self.mixture) - set(TASKS))
        if unknown:
            raise ValueError(f"tasks.mixture has unknown tasks {unknown}; valid tasks are {sorted(TASKS)}.{closest_hint(unknown, TASKS)}")
        if "sequential" not in self.mixture or self.mixture["sequential"].weight <= 0:
            raise ValueError("tasks.mixture.sequential must be present with weight > 0: it is the task that is evaluated.")


def tasks_config_from_dict(values: dict[str, Any]) -> TasksConfig:
    return build_strict(TasksConfig, dict(values), "tasks")


def without_user_id_tasks(cfg: TasksConfig) -> TasksConfig:
    """Return a copy of ``cfg`` in which the tasks that read or write user IDs have weight 0 (runs without user IDs)."""
    dropped = [name for name in USER_ID_TASKS if name in cfg.mixture and cfg.mixture[name].weight > 0]
    if dropped:
        log.info("no user IDs: dropping tasks %s", dropped)
    mixture = {name: TaskSpec(0.0, spec.max_examples) if name in USER_ID_TASKS else spec for name, spec in cfg.mixture.items()}
    return TasksConfig(templates=cfg.templates, mixture=mixture, neighbours=cfg.neighbours)


class TaskRecords:
    """Index-only records of every task in a mixture, built once from the training views.

    ``history_labels`` marks the examples of tasks whose prompt lists the history as item IDs, so that the collator
    labels those IDs too (llm.history_labels).
    """

    def __init__(self, data: TaskData, cfg: TasksConfig, templates: TemplateSet, history_labels: bool = False):
        self.cfg = cfg
        self.templates = templates
        self.history_labels = history_labels
        self.records: dict[str, list[tuple]] = {}
        for name, spec in cfg.mixture.items():
            if spec.weight == 0:
                continue
            templates.for_task(name)  # fail early on a task without templates
            self.records[name] = TASKS[name].build(data)
            log.info("task %s: %d records", name, len(self.records[name]))

    def epoch_examples(self, epoch: int, seed: int) -> list[tuple[str, int, int]]:
        """Return the epoch's (task, record index, template index) triples in a seeded shuffled order."""
        rng = np.random.default_rng([seed, epoch])
        n_sequential = len(self.records["sequential"])
        examples: list[tuple[str, int, int]] = []
        for name, records in self.records.items():
            spec = self.cfg.mixture[name]
            n_examples = round(spec.weight * n_sequential)
            if spec.max_examples is not None:
                n_examples = min(n_examples, spec.max_examples)
            if not records or n_examples == 0:
                continue

            # Whole passes over the records, then a random subset for the remainder.
            full, rest = divmod(n_examples, len(records))
            chosen = np.concatenate([np.tile(np.arange(len(records)), full), rng.choice(len(records), rest, replace=False)])
            n_templates = len(self.templates.for_task(name))
            template_ids = rng.integers(0, n_templates, size=len(chosen))
            examples.extend((name, int(r), int(t)) for r, t in zip(chosen, template_ids, strict=True))

        order = rng.permutation(len(examples))
        return [examples[i] for i in order]

    def render(self, example: tuple[str, int, int], vocab: Vocabulary) -> Example:
        name, record_index, template_index = example
        template = self.templates.for_task(name)[template_index]
        task = TASKS[name]
        prompt, response = task.render(self.records[name][record_index], vocab, template)
        return Example(tidy_prompt(prompt), response, self.history_labels and task.history_in_prompt)


class PromptDataset(torch.utils.data.Dataset):
    """One epoch of Examples (prompt, response, history_labels), rendered on access with the current vocabulary."""

    def __init__(self, records: TaskRecords, vocab: Vocabulary, epoch: int = 0, seed: int = 0):
        self.records = records
        self.vocab = vocab
        self.seed = seed
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.examples = self.records.epoch_examples(epoch, self.seed)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.records.render(self.examples[index], self.vocab)
