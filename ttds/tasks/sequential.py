"""Sequential tasks: a history predicts the next item, as IDs or as titles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ttds.tasks.base import Vocabulary
from ttds.tasks.task_data import TaskData

# Placeholders that _history_fields fills, for the templates check that runs before training.
HISTORY_FIELDS = ("user", "history", "history_titles")


def _history_fields(record: tuple, vocab: Vocabulary) -> dict[str, str]:
    user, history, _ = record
    return {
        "user": vocab.user_ids[user],
        "history": vocab.items(history),
        "history_titles": "; ".join(vocab.item_titles[i] for i in history),
    }


@dataclass
class Sequential:
    """User ID + history item IDs -> next item ID (the main task). Record: (user, history, target)."""

    name: str = "sequential"
    fields: ClassVar[tuple[str, ...]] = HISTORY_FIELDS
    history_in_prompt: bool = True

    def build(self, data: TaskData) -> list[tuple]:
        return data.training_pairs

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(**_history_fields(record, vocab)), vocab.item_ids[record[2]]


@dataclass
class TitlesToNextId:
    """History as titles -> next item ID."""

    name: str = "titles_to_next_id"
    fields: ClassVar[tuple[str, ...]] = HISTORY_FIELDS
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return data.training_pairs

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(**_history_fields(record, vocab)), vocab.item_ids[record[2]]


@dataclass
class IdsToNextTitle:
    """History as IDs -> next item's title."""

    name: str = "ids_to_next_title"
    fields: ClassVar[tuple[str, ...]] = HISTORY_FIELDS
    history_in_prompt: bool = True

    def build(self, data: TaskData) -> list[tuple]:
        return data.training_pairs

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(**_history_fields(record, vocab)), vocab.item_titles[record[2]]
