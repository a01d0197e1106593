"""Exact prefix trie over the catalogue's semantic-ID token sequences, stored as tensors.

Every catalogue ID is a path from the root, followed by one EOS edge into a leaf; the leaf stores the
item index. Edges are kept in CSR order (sorted by parent node, then token), so a batch of nodes gets
its allowed tokens with a gather and takes a step with one ``searchsorted``, on CPU or GPU alike.
Node ids are numbered breadth first: the root is 0, and every node at depth d has a smaller id than
every node at depth d + 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

DEAD = -1  # node id of a prefix that is not in the trie


@dataclass(frozen=True)
class PrefixTrie:
    """Catalogue trie; build it with ``PrefixTrie.from_sequences``.

    edge_keys: (E,) int64, ``parent * stride + token``, sorted ascending.
    edge_tokens: (E,) token of each edge.
    edge_children: (E,) node that each edge leads to.
    child_offsets: (n_nodes + 1,) the edges of node n are ``child_offsets[n]:child_offsets[n + 1]``.
    leaf_items: (n_nodes,) item index of a leaf (the node after EOS), -1 for every other node.
    """

    edge_keys: Tensor
    edge_tokens: Tensor
    edge_children: Tensor
    child_offsets: Tensor
    leaf_items: Tensor
    eos_id: int
    stride: int  # larger than every token id, so keys of different parents never overlap
    max_children_by_depth: tuple[int, ...]  # widest node at each depth; the last depth holds only leaves
    min_length: int  # tokens of the shortest ID, EOS included
    max_length: int  # tokens of the longest ID, EOS included

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], eos_id: int, special_ids: Iterable[int] = ()) -> PrefixTrie:
        """Build the trie; item i is ``sequences[i]``, given without EOS.

        ``special_ids`` (padding, BOS, UNK, ...) may not appear inside an ID, so a search constrained by
        this trie can never return them.
        """
        rows = _padded_sequences(sequences, eos_id, set(special_ids))  # (n_items, L + 1), -1 after EOS
        n_items, width = rows.shape
        lengths = (rows >= 0).sum(1)
        stride = int(rows.max()) + 1

        # Level by level: the unique (parent, token) pairs at column d are the edges of depth d.
        parents = torch.zeros(n_items, dtype=torch.long)
        next_node = 1
        keys, children, max_children = [], [], []
        for depth in range(width):
            active = rows[:, depth] >= 0
            level_keys = parents[active] * stride + rows[active, depth]
            unique_keys, inverse = torch.unique(level_keys, sorted=True, return_inverse=True)
            level_children = torch.arange(next_node, next_node + len(unique_keys))

            parents[active] = level_children[inverse]
            parents[~active] = DEAD
            keys.append(unique_keys)
            children.append(level_children)
            max_children.append(int(torch.unique(unique_keys // stride, return_counts=True)[1].max()))
            next_node += len(unique_keys)

        edge_keys = torch.cat(keys)
        n_nodes = next_node
        leaves = _leaf_of_each_item(rows, edge_keys, torch.cat(children), stride)
        if len(torch.unique(leaves)) < n_items:
            leaves_sorted, order = leaves.sort(stable=True)
            repeat = int(torch.nonzero(leaves_sorted[1:] == leaves_sorted[:-1])[0])
            first, second = int(order[repeat]), int(order[repeat + 1])
            raise ValueError(
                f"items {first} and {second} have the same ID {list(sequences[first])}; "
                "semantic IDs must be unique, so add a collision suffix level before building the trie."
            )

        leaf_items = torch.full((n_nodes,), -1, dtype=torch.long)
        leaf_items[leaves] = torch.arange(n_items)
        counts = torch.bincount(edge_keys // stride, minlength=n_nodes)
        child_offsets = torch.zeros(n_nodes + 1, dtype=torch.long)
        child_offsets[1:] = counts.cumsum(0)
        return cls(
            edge_keys=edge_keys,
            edge_tokens=edge_keys % stride,
            edge_children=torch.cat(children),
            child_offsets=child_offsets,
            leaf_items=leaf_items,
            eos_id=eos_id,
            stride=stride,
            max_children_by_depth=(*max_children, 0),
            min_length=int(lengths.min()),
            max_length=int(lengths.max()),
        )

    @property
    def n_nodes(self) -> int:
        return len(self.leaf_items)

    @property
    def n_items(self) -> int:
        return int((self.leaf_items >= 0).sum())

    @property
    def device(self) -> torch.device:
        return self.edge_keys.device

    def to(self, device: torch.device | str) -> PrefixTrie:
        """Return a copy with every tensor on ``device`` (self when it is already there)."""
        if torch.device(device) == self.device:
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {name: value.to(device) if isinstance(value, Tensor) else value for name, value in values.items()}
        return PrefixTrie(**moved)

    def children(self, nodes: Tensor, width: int | None = None) -> tuple[Tensor, Tensor]:
        """Gather the allowed next tokens of each node and the nodes they lead to.

        nodes: (N,) node ids, DEAD allowed. ``width`` is the number of columns to return. Passing
        ``max_children_by_depth[d]`` when every node is at depth d or is a leaf avoids a device sync. Returns (tokens, child_nodes), each (N, width), padded with -1.
        """
        safe = nodes.clamp(min=0)
        starts = self.child_offsets[safe]
        counts = torch.where(nodes >= 0, self.child_offsets[safe + 1] - starts, 0)  # (N,)
        if width is None:
            width = int(counts.max()) if len(counts) else 0

        columns = torch.arange(width, device=nodes.device)
        valid = columns[None, :] < counts[:, None]  # (N, width)
        edges = (starts[:, None] + columns[None, :]).clamp(max=max(len(self.edge_keys) - 1, 0))
        tokens = torch.where(valid, self.edge_tokens[edges], -1)
        child_nodes = torch.where(valid, self.edge_children[edges], -1)
        return tokens, child_nodes

    def allowed_mask(self, nodes: Tensor, vocab_size: int) -> Tensor:
        """Return a (N, vocab_size) bool mask of the tokens allowed after each node."""
        if self.stride > vocab_size:
            raise ValueError(f"the trie uses token ids up to {self.stride - 1}, but vocab_size={vocab_size}; pass the model's vocabulary size.")
        tokens, _ = self.children(nodes)

        # Padding slots write into an extra column that is cut off afterwards.
        columns = torch.where(tokens >= 0, tokens, vocab_size)
        mask = torch.zeros(len(nodes), vocab_size + 1, dtype=torch.bool, device=nodes.device)
        mask.scatter_(1, columns, True)
        return mask[:, :vocab_size]

    def step(self, nodes: Tensor, tokens: Tensor) -> Tensor:
        """Follow one token from each node; a missing edge, a DEAD node or a leaf gives DEAD."""
        in_range = (nodes >= 0) & (tokens >= 0) & (tokens < self.stride)
        keys = nodes * self.stride + tokens
        position = torch.searchsorted(self.edge_keys, keys).clamp(max=max(len(self.edge_keys) - 1, 0))
        found = in_range & (self.edge_keys[position] == keys)
        return torch.where(found, self.edge_children[position], DEAD)

    def items_of(self, nodes: Tensor) -> Tensor:
        """Map leaf nodes to item indices; every other node, DEAD included, maps to -1."""
        items = self.leaf_items[nodes.clamp(min=0)]
        return torch.where(nodes >= 0, items, -1)

    def walk(self, sequences: Tensor) -> Tensor:
        """Return the node reached by each row of a (N, T) token tensor; -1 entries end a row early."""
        nodes = torch.zeros(len(sequences), dtype=torch.long, device=sequences.device)
        for column in sequences.T:
            nodes = torch.where(column >= 0, self.step(nodes, column), nodes)
        return nodes

    def sequence_to_item(self, sequence: Sequence[int]) -> int | None:
        """Return the item whose ID is ``sequence`` (EOS at the end optional), or None if there is none."""
        tokens = list(sequence)
        if not tokens or tokens[-1] != self.eos_id:
            tokens.append(self.eos_id)
        node = self.walk(torch.tensor([tokens], dtype=torch.long, device=self.device))
        item = int(self.items_of(node)[0])
        return item if item >= 0 else None


def _padded_sequences(sequences: Sequence[Sequence[int]], eos_id: int, special_ids: set[int]) -> Tensor:
    """Check the IDs and return them as a (n_items, max_len + 1) tensor with EOS appended, -1 after it."""
    if len(sequences) == 0:
        raise ValueError("the catalogue has no item IDs; a trie needs at least one sequence.")
    if eos_id < 0:
        raise ValueError(f"eos_id={eos_id} is negative; pass the tokenizer's eos_token_id.")

    special_ids = special_ids - {eos_id}
    max_len = max(len(sequence) for sequence in sequences)
    rows = torch.full((len(sequences), max_len + 1), -1, dtype=torch.long)
    for item, sequence in enumerate(sequences):
        tokens = [int(token) for token in sequence]
        if not tokens:
            raise ValueError(f"item {item} has an empty ID; every item needs at least one ID token.")
        if min(tokens) < 0:
            raise ValueError(f"item {item} has a negative token id in {tokens}; token ids start at 0.")
        if eos_id in tokens:
            raise ValueError(f"item {item} has the EOS token {eos_id} inside its ID {tokens}; pass IDs without EOS, the trie appends it.")
        forbidden = special_ids.intersection(tokens)
        if forbidden:
            raise ValueError(
                f"item {item} has special token ids {sorted(forbidden)} in its ID {tokens}; "
                "IDs must use only the semantic-ID tokens added to the vocabulary."
            )
        rows[item, : len(tokens)] = torch.tensor(tokens)
        rows[item, len(tokens)] = eos_id
    return rows


def _leaf_of_each_item(rows: Tensor, edge_keys: Tensor, edge_children: Tensor, stride: int) -> Tensor:
    """Walk every padded row down the edge table and return the leaf it ends in, (n_items,)."""
    nodes = torch.zeros(len(rows), dtype=torch.long)
    for column in rows.T:
        active = column >= 0
        position = torch.searchsorted(edge_keys, nodes * stride + column)
        nodes = torch.where(active, edge_children[position.clamp(max=len(edge_keys) - 1)], nodes)
    return nodes
