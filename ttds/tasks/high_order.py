"""High-order user-item tasks, built from training interactions only.

item_to_user: item ID + the users who chose it so far (time order) -> the next user.
item_to_items: item ID -> the items most co-interacted with it (second order, item side).
user_to_users: user ID -> the users who share the most items with them (second order, user side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ttds.tasks.base import Vocabulary
from ttds.tasks.task_data import TaskData


@dataclass
class ItemToUser:
    """Record: (item, previous users, next user); previous users truncated to the last max_history."""

    name: str = "item_to_user"
    fields: ClassVar[tuple[str, ...]] = ("item", "users")
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        records = []
        for item, users in data.item_users:
            for j in range(1, len(users)):
                records.append((item, users[max(0, j - data.max_history) : j], users[j]))
        return records

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        item, previous, target = record
        return template.format(item=vocab.item_ids[item], users=vocab.users(previous)), vocab.user_ids[target]


@dataclass
class ItemToItems:
    """Record: (item, neighbour items by co-interaction count, most first)."""

    name: str = "item_to_items"
    fields: ClassVar[tuple[str, ...]] = ("item",)
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return [(item, neighbours) for item, neighbours in data.item_neighbours if neighbours]

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(item=vocab.item_ids[record[0]]), vocab.items(record[1])


@dataclass
class UserToUsers:
    """Record: (user, neighbour users by shared-item count, most first)."""

    name: str = "user_to_users"
    fields: ClassVar[tuple[str, ...]] = ("user",)
    history_in_prompt: bool = False

    def build(self, data: TaskData) -> list[tuple]:
        return [(user, neighbours) for user, neighbours in data.user_neighbours if neighbours]

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]:
        return template.format(user=vocab.user_ids[record[0]]), vocab.users(record[1])
