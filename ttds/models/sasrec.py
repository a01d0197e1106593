"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) as a plain nn.Module.

Item ids: callers use item_idx 0..n_items-1; inside the model an item is ``item_idx + 1`` so that row 0 of
the embedding table is padding. Sequences are left-padded, so the last position contains the most recent item.

Differences from the original implementation, which are choices of this project:
- Blocks are standard pre-LN (LayerNorm -> causal self-attention -> residual, LayerNorm -> FFN -> residual,
  final LayerNorm). The original normalises only the attention queries.
- Positions count back from the end of the window (the last item always gets position max_len - 1), so a
  short unpadded input scores the same as the same items left-padded to max_len.
- Training uses full-softmax cross-entropy over all items at every non-pad position by default. The original's
  binary cross-entropy against sampled negatives is ``sampled_bce_loss`` (``sasrec.loss=bce``), kept to compare
  with published numbers that used it. Item embeddings are shared between input and output, as in the original.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PAD = 0  # model-side id of padding; model-side item id = item_idx + 1
IGNORE_INDEX = -100  # target of padded positions, skipped by the loss


def sample_negatives(positives: torch.Tensor, n_items: int, negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``negatives`` item_idx per entry of ``positives`` (N,), uniformly from the other n_items - 1 items: (N, negatives)."""
    if n_items < 2:
        raise ValueError(f"sampled negatives need at least 2 items, got n_items={n_items}; use sasrec.loss=ce.")

    # Draw from 0..n_items-2, then step over the positive, so every other item has the same chance.
    draws = torch.randint(0, n_items - 1, (positives.shape[0], negatives), generator=generator)
    draws = draws.to(positives.device)
    return draws + (draws >= positives.unsqueeze(1)).long()


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"sasrec.hidden={hidden} is not divisible by sasrec.heads={heads}; pick heads that divide hidden.")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(hidden, dim=-1)
        q, k, v = (part.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2) for part in (q, k, v))  # (B, H, T, C/H)

        # allowed: (B, 1, T, T), True where query i may attend to key j.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(batch, length, hidden)  # (B, T, C)
        return self.out_dropout(self.out(y))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = CausalSelfAttention(hidden, heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), allowed)
        return x + self.ffn(self.ffn_norm(x))


class SASRec(nn.Module):
    """Causal transformer over item sequences that scores every catalogue item as the next one."""

    def __init__(self, n_items: int, hidden: int = 64, layers: int = 2, heads: int = 2, max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items={n_items}; SASRec needs at least one item.")
        self.n_items = n_items
        self.hidden = hidden
        self.max_len = max_len

        self.item_embedding = nn.Embedding(n_items + 1, hidden, padding_idx=PAD)  # row 0 = padding
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.apply(self._init_weights)
        self.valid_metrics: dict[str, float] = {}  # HR@10/NDCG@10 of the kept weights on the validation split, if any

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) for model-side ids ``input_ids`` (B, T), left-padded with 0, T <= max_len."""
        batch, length = input_ids.shape
        if length > self.max_len:
            raise ValueError(f"input has {length} positions but max_len={self.max_len}; keep the last max_len items (see pad_histories).")
        is_item = input_ids != PAD  # (B, T)

        positions = torch.arange(self.max_len - length, self.max_len, device=input_ids.device)  # (T,)
        x = self.item_embedding(input_ids) * math.sqrt(self.hidden) + self.position_embedding(positions)
        x = self.embedding_dropout(x) * is_item.unsqueeze(-1)  # (B, T, C), padding zeroed

        # Query i attends to the item keys j <= i. A padding query attends only to itself, because an
        # all-masked attention row gives NaN. Its output is zeroed below and never read.
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
        diagonal = torch.eye(length, dtype=torch.bool, device=input_ids.device)
        allowed = (causal & is_item.unsqueeze(1)) | diagonal  # (B, T, T)
        allowed = allowed.unsqueeze(1)  # (B, 1, T, T), shared by all heads

        for block in self.blocks:
            x = block(x, allowed) * is_item.unsqueeze(-1)
        return self.final_norm(x)

    def item_embeddings(self) -> torch.Tensor:
        """Item embedding table without the padding row: (n_items, C), row i for item_idx i."""
        return self.item_embedding.weight[1:]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., n_items) of every item for hidden states (..., C); padding is never a candidate."""
        return hidden @ self.item_embeddings().T

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy over positions whose target (item_idx, B x T) is not IGNORE_INDEX."""
        hidden = self(input_ids)  # (B, T, C)
        labelled = targets != IGNORE_INDEX  # (B, T)
        # Logits only where there is a target: (N, n_items) instead of (B, T, n_items).
        return F.cross_entropy(self.logits(hidden[labelled]), targets[labelled])

    def sampled_bce_loss(self, input_ids: torch.Tensor, targets: torch.Tensor, negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the mean binary cross-entropy of each labelled position's target against ``negatives`` sampled items.

        Negatives are drawn uniformly from the items other than the position's target (the original SASRec also
        skips the rest of the user's history). Both terms are averaged over labelled positions, as in the original.
        """
        hidden = self(input_ids)  # (B, T, C)
        labelled = targets != IGNORE_INDEX  # (B, T)
        states = hidden[labelled]  # (N, C)
        positives = targets[labelled]  # (N,) item_idx

        sampled = sample_negatives(positives, self.n_items, negatives, generator)  # (N, negatives)
        table = self.item_embeddings()  # (n_items, C)
        positive_logits = (states * table[positives]).sum(-1)  # (N,)
        negative_logits = torch.einsum("nc,nkc->nk", states, table[sampled])  # (N, negatives)
        positive_loss = F.binary_cross_entropy_with_logits(positive_logits, torch.ones_like(positive_logits))
        negative_loss = F.binary_cross_entropy_with_logits(negative_logits, torch.zeros_like(negative_logits), reduction="none").sum(-1).mean()
        return positive_loss + negative_loss

    def predict(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_items) of every item as the next one after left-padded histories ``input_ids`` (B, T)."""
        return self.logits(self(input_ids)[:, -1])

    def user_states(self, sequences: Sequence[Sequence[int]], batch_size: int = 512) -> torch.Tensor:
        """Final hidden state (n_users, C) after each user's last max_len items; float32 on the model's device.

        ``sequences[u]`` contains user ``u``'s item_idx values in time order. Pass training items only. A user
        with no items gets a zero vector.
        """
        was_training = self.training
        self.eval()
        device = self.item_embedding.weight.device
        states = []
        try:
            for start in range(0, len(sequences), batch_size):
                input_ids = pad_histories(sequences[start : start + batch_size], self.max_len).to(device)  # (B, max_len)
                if int(input_ids.max()) > self.n_items:
                    raise ValueError(f"a sequence in users {start}..{start + len(input_ids) - 1} has item_idx >= n_items={self.n_items}.")
                with torch.inference_mode():
                    final = self(input_ids)[:, -1].float()  # (B, C)
                    states.append(final * (input_ids[:, -1] != PAD).unsqueeze(-1))
        finally:
            self.train(was_training)

        empty = sum(1 for sequence in sequences if len(sequence) == 0)
        if empty:
            log.warning("%d of %d users have no training items; their SASRec user state is zero.", empty, len(sequences))
        if not states:
            return torch.zeros((0, self.hidden), device=device)
        return torch.cat(states)  # outside inference mode, so the result is an ordinary tensor


def pad_histories(sequences: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Model-side ids (B, max_len) of the last max_len items of each sequence, left-padded with 0.

    ``sequences`` contains item_idx values (0-based), and each is shifted by +1.
    """
    input_ids = torch.zeros((len(sequences), max_len), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        recent = torch.as_tensor(list(sequence[-max_len:]) if len(sequence) else [], dtype=torch.long)
        if len(recent):
            input_ids[row, max_len - len(recent) :] = recent + 1
    return input_ids
