"""TaskData: the training-only views the tasks read, computed once per dataset and shared."""

from __future__ import annotations

from functools import cached_property

from ttds.data import views
from ttds.data.dataset import ProcessedDataset


class TaskData:
    """Lazily computed training views as plain Python lists, for record building."""

    def __init__(self, dataset: ProcessedDataset, max_history: int, neighbours: int):
        self.dataset = dataset
        self.max_history = max_history
        self.neighbours = neighbours  # how many co-interacted items/users a high-order response lists

    @cached_property
    def training_pairs(self) -> list[tuple[int, tuple[int, ...], int]]:
        frame = views.training_pairs(self.dataset, self.max_history)
        return [(u, tuple(h), t) for u, h, t in zip(frame["user_idx"], frame["history"], frame["target"], strict=True)]

    @cached_property
    def item_users(self) -> list[tuple[int, tuple[int, ...]]]:
        frame = views.item_users(self.dataset)
        return [(i, tuple(users)) for i, users in zip(frame["item_idx"], frame["users"], strict=True)]

    @cached_property
    def training_items(self) -> list[int]:
        """Items with at least one training event, in index order."""
        return sorted(i for i, users in self.item_users if users)

    @cached_property
    def training_users(self) -> list[int]:
        frame = views.training_sequences(self.dataset)
        return sorted(int(u) for u, items in zip(frame["user_idx"], frame["items"], strict=True) if len(items) > 0)

    def _neighbour_lists(self, kind: str) -> list[tuple[int, tuple[int, ...]]]:
        frame = views.co_interaction(self.dataset, kind=kind, top_k=self.neighbours)
        grouped = frame.group_by("src", maintain_order=True).agg("dst").sort("src")
        return [(int(s), tuple(int(d) for d in dst)) for s, dst in zip(grouped["src"], grouped["dst"], strict=True)]

    @cached_property
    def item_neighbours(self) -> list[tuple[int, tuple[int, ...]]]:
        return self._neighbour_lists("item")

    @cached_property
    def user_neighbours(self) -> list[tuple[int, tuple[int, ...]]]:
        return self._neighbour_lists("user")
