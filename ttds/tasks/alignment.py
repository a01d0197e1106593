"""Alignment tasks: map between an entity's text and its semantic ID, both ways."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ttds.tasks.base import Vocabulary
from ttds.tasks.task_data import TaskData


@dataclass
class ItemToId:
    """Item text -> item ID. Record: (item,). Item text is metadata, so every catalogue item is used."""

    name: str = "item_to_id"
    fields: ClassVar[tuple[str, ...]] = ("text",)
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return [(i,) for i in range(data.dataset.n_items)]

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(text=vocab.item_texts[record[0]]), vocab.item_ids[record[0]]


@dataclass
class IdToTitle:
    """Item ID -> item title."""

    name: str = "id_to_title"
    fields: ClassVar[tuple[str, ...]] = ("item",)
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return [(i,) for i in range(data.dataset.n_items)]

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(item=vocab.item_ids[record[0]]), vocab.item_titles[record[0]]


@dataclass
class UserToText:
    """User ID -> user text. User texts come from training items only, so only users with training events count."""

    name: str = "user_to_text"
    fields: ClassVar[tuple[str, ...]] = ("user",)
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return [(u,) for u in data.training_users]

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(user=vocab.user_ids[record[0]]), vocab.user_texts[record[0]]


@dataclass
class TextToUser:
    """User text -> user ID."""

    name: str = "text_to_user"
    fields: ClassVar[tuple[str, ...]] = ("user_text",)
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return [(u,) for u in data.training_users]

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(user_text=vocab.user_texts[record[0]]), vocab.user_ids[record[0]]
