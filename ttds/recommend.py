"""Recommender: prompts from user histories, constrained beam search, ranked catalogue items."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ttds.backbone.collate import GenerationCollator
from ttds.decoding.beam import BeamResult, DecodingConfig, search_with_config
from ttds.decoding.results import history_exclusion_mask
from ttds.decoding.trie import PrefixTrie
from ttds.tasks.base import Vocabulary, tidy_prompt
from ttds.tasks.sequential import Sequential
from ttds.tokenizer.id_table import SemanticIdTable

log = logging.getLogger(__name__)

# Evaluation and serving always use the first sequential template, so results do not depend on a random draw.
EVAL_TEMPLATE_INDEX = 0


def build_trie(tokenizer, item_table: SemanticIdTable) -> PrefixTrie:
    """Exact trie over the token ids of every catalogue item's ID, each followed by EOS."""
    sequences = [tokenizer.convert_tokens_to_ids(tokens) for tokens in item_table.token_sequences()]
    special = [i for i in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.unk_token_id) if i is not None and i != tokenizer.eos_token_id]
    return PrefixTrie.from_sequences(sequences, eos_id=tokenizer.eos_token_id, special_ids=special)


@dataclass
class Recommender:
    """A frozen model with its catalogue trie; ``recommend`` ranks items for users in batches."""

    model: nn.Module
    tokenizer: object
    trie: PrefixTrie
    vocab: Vocabulary
    template: str
    decoding: DecodingConfig
    prompt_max_length: int
    batch_size: int

    def __post_init__(self) -> None:
        self.collator = GenerationCollator(self.tokenizer, self.prompt_max_length)
        self.device = next(self.model.parameters()).device
        self.trie = self.trie.to(self.device)
        self.decoding.check_catalogue(self.trie)

    def prompts(self, users: Sequence[int], histories: Sequence[Sequence[int]]) -> list[str]:
        task = Sequential()
        return [tidy_prompt(task.render((u, tuple(h), 0), self.vocab, self.template)[0]) for u, h in zip(users, histories, strict=True)]

    @torch.no_grad()
    def recommend(self, users: Sequence[int], histories: Sequence[Sequence[int]], seen: Sequence[Sequence[int]] | None = None) -> BeamResult:
        """Rank the top-K items for each (user, history) pair; histories hold item indices, oldest first.

        With ``exclude_history`` the items of ``seen`` are removed (default: the histories). Prompts show only the
        last ``max_history`` items, so pass every item of the user as ``seen`` to exclude older ones too.
        """
        batch = self.collator(self.prompts(users, histories))
        exclude = None
        if self.decoding.exclude_history:
            exclude = history_exclusion_mask(seen if seen is not None else histories, self.trie.n_items, self.device)
        return search_with_config(
            self.model, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device), self.trie, self.decoding, exclude
        )

    def batches(
        self, users: Sequence[int], histories: Sequence[Sequence[int]], seen: Sequence[Sequence[int]] | None = None
    ) -> Iterator[tuple[range, BeamResult]]:
        for start in range(0, len(users), self.batch_size):
            span = range(start, min(start + self.batch_size, len(users)))
            batch_seen = [seen[i] for i in span] if seen is not None else None
            yield span, self.recommend([users[i] for i in span], [histories[i] for i in span], batch_seen)
