"""Task interface, the strings a prompt is rendered from, and template loading."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import yaml


@dataclass
class Vocabulary:
    """The strings prompts are rendered from, indexed by item_idx or user_idx.

    The ID strings change during the dynamic stage (the index moves with the model), so records keep
    indices and are rendered with whatever Vocabulary is current.
    """

    item_ids: list[str]  # e.g. "<a_12><b_24><c_52><d_0>"
    user_ids: list[str]  # e.g. "<ua_3><ub_1><uc_7>"; empty strings when the run has no user IDs
    item_titles: list[str]
    item_texts: list[str]
    user_texts: list[str]

    def items(self, indices: list[int] | tuple[int, ...]) -> str:
        return ", ".join(self.item_ids[i] for i in indices)

    def users(self, indices: list[int] | tuple[int, ...]) -> str:
        return ", ".join(self.user_ids[u] for u in indices)


def tidy_prompt(prompt: str) -> str:
    """Collapse the double spaces an empty field (e.g. no user ID) leaves in a template."""
    return re.sub(r" {2,}", " ", prompt)


class Example(NamedTuple):
    """One rendered training example.

    ``history_labels`` makes the collator label the item-ID tokens of the prompt as well as the response, so that
    every history item is a next-item target of the items before it (set only for prompts whose IDs are a history).
    """

    prompt: str
    response: str
    history_labels: bool = False


class Task(Protocol):
    """A tuning task: ``build`` makes index-only records once, ``render`` turns one into (prompt, response).

    ``history_in_prompt`` is true when the prompt's item IDs are the user's history in order, oldest first.
    ``fields`` lists the placeholders that ``render`` fills, so templates can be checked before training.
    """

    name: str
    history_in_prompt: bool
    fields: ClassVar[tuple[str, ...]]

    def build(self, views: Any) -> list[tuple]: ...

    def render(self, record: tuple, vocab: Vocabulary, template: str) -> tuple[str, str]: ...


@dataclass(frozen=True)
class TemplateSet:
    """Prompt templates per task, with the file's version and content hash."""

    version: int
    sha256: str
    templates: dict[str, list[str]]

    def for_task(self, task: str) -> list[str]:
        if task not in self.templates or not self.templates[task]:
            raise ValueError(f"no templates for task {task!r}; add a list under '{task}:' in the templates file.")
        return self.templates[task]


def load_templates(path: str | Path) -> TemplateSet:
    """Read a templates YAML file: ``version: int`` and, per task, a list of ``{prompt: str}`` entries."""
    path = Path(path)
    raw_bytes = path.read_bytes()
    data = yaml.safe_load(raw_bytes)
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise ValueError(f"{path}: the templates file must be a mapping with an integer 'version' key.")

    templates: dict[str, list[str]] = {}
    for task, entries in data.items():
        if task == "version":
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("prompt"), str) for e in entries):
            raise ValueError(f"{path}: task {task!r} must be a list of entries with a string 'prompt'.")
        templates[task] = [entry["prompt"] for entry in entries]

    return TemplateSet(version=data["version"], sha256=hashlib.sha256(raw_bytes).hexdigest(), templates=templates)
