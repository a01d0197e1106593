"""Stage 1 (dynamic index): the LM and both towers train together while the IDs move.

The LM re-embeds entity texts (mean-pooled last hidden state, no gradient) on a schedule, the towers
re-encode those embeddings with the fixed collaborative vectors, and the ID strings that prompts are
rendered from are replaced. Each side has its own interval: ``refresh_every`` for items and
``user_refresh_every`` for users. In ``full`` mode every text of a side is re-embedded at once every
interval steps. In ``rolling`` mode each step re-embeds a 1/interval slice of a fixed permutation, and
the side's IDs are recomputed after the last slice of each cycle. Either way each text is at most one
interval old, but in rolling mode no single step pays for a whole pass. Between refreshes the towers keep
training on the cached embeddings with their own losses, and an alignment loss (InfoNCE + MSE) pulls
the LM's embedding of an entity's ID string toward its embedding of the entity's text, text side detached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttds.backbone.loss import causal_lm_loss
from ttds.llm.config import LLMConfig
from ttds.llm.pooling import encode_texts, pooled_embeddings
from ttds.llm.recommender import RecommenderModule
from ttds.tasks.base import Vocabulary
from ttds.tokenizer.id_table import SemanticIdTable
from ttds.tokenizer.towers import DualModalityVAE

log = logging.getLogger(__name__)


@dataclass
class EntitySide:
    """Everything stage 1 needs about one entity type (items or users)."""

    name: str  # "item" or "user"
    tower: DualModalityVAE
    texts: list[str]  # the text the LM embeds, one per entity
    keys: list[str]  # stable keys for collision suffixes
    semantic: Tensor  # (N, d_s) current text embeddings
    collaborative: Tensor | None  # (N, d_c) fixed SASRec vectors, or None when the tower is semantic-only
    n_suffix_tokens: int  # suffix tokens in the vocabulary; 0 for a table without suffixes
    codes: np.ndarray | None = None  # (N, L) codes the prompts start from; None: the first ID update has nothing to keep


def render_ids(table: SemanticIdTable, n_suffix_tokens: int) -> list[str]:
    """ID strings of every entity; a suffix beyond the vocabulary's suffix tokens is clipped to the last one.

    NOTE: clipping can make two items share an ID string in prompts during stage 1; the frozen table built
    afterwards has unique IDs or raises.
    """
    ids = table.ids  # (N, L) or (N, L + 1)
    if table.has_suffix:
        ids = ids.copy()
        ids[:, -1] = np.minimum(ids[:, -1], n_suffix_tokens - 1)
    letters = [table.prefix + chr(ord("a") + level) for level in range(ids.shape[1])]
    return ["".join(f"<{letters[level]}_{code}>" for level, code in enumerate(row)) for row in ids.tolist()]


def rolling_slice(n: int, interval: int, step: int) -> np.ndarray:
    """Return the positions, in a fixed permutation of ``n`` entities, that ``step`` re-embeds in rolling mode.

    Steps ``k * interval`` to ``(k + 1) * interval - 1`` cover every position exactly once, in slices whose sizes
    differ by at most one (tests/test_dynamic_refresh.py checks both). The slice depends only on the step, so a
    resumed run continues the schedule where it stopped.
    """
    start, stop = n * step // interval, n * (step + 1) // interval
    return np.arange(start, stop) % n


def info_nce(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of each query against all keys in the batch, its own key being the positive: (B, D), (B, D) -> ()."""
    logits = queries @ keys.T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))


class DynamicRecommenderModule(RecommenderModule):
    """RecommenderModule plus the two towers, the periodic refresh and the ID-text alignment loss."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        cfg: LLMConfig,
        total_steps: int,
        sides: list[EntitySide],
        vocab: Vocabulary,
        text_max_length: int,
        add_special_tokens: bool = True,
        seed: int = 0,
    ):
        super().__init__(model, cfg, total_steps)
        self.tokenizer = tokenizer
        self.sides = {side.name: side for side in sides}
        self.towers = nn.ModuleDict({side.name: side.tower for side in sides})
        for side in sides:
            self.register_buffer(f"semantic_{side.name}", side.semantic.float().clone())
            if side.collaborative is not None:
                self.register_buffer(f"collaborative_{side.name}", side.collaborative.float().clone(), persistent=False)
        self.vocab = vocab
        self.text_max_length = text_max_length  # the tokenize stage's semantic_encoder.max_length
        self.add_special_tokens = add_special_tokens
        # Calls of refresh(), which re-embeds every side at once. Scheduled re-embeds do not count, so in the llm
        # stage this is the single freeze step after training.
        self.refreshes = 0
        self.reembedded = {side.name: 0 for side in sides}  # texts re-embedded so far, per side, restored on resume
        self.id_updates = {side.name: 0 for side in sides}  # scheduled ID recomputations so far, per side
        self._resumed = False  # True once a checkpoint's prompt IDs are restored, so on_train_start keeps them
        # Current codes (N, L) per side: what `llm.id_stickiness` compares a recomputed code with.
        self.codes: dict[str, Tensor | None] = {side.name: None if side.codes is None else torch.as_tensor(side.codes, dtype=torch.long) for side in sides}
        self.last_moved: dict[str, int] = {}  # entities whose ID string changed at the last update, per side
        # One fixed permutation per side for rolling mode, seeded from the run's seed.
        self._orders = {side.name: np.random.default_rng(seed + i).permutation(len(side.texts)) for i, side in enumerate(sides)}
        self._generator = torch.Generator().manual_seed(cfg.checkpoint_every_n_steps * 7919 + total_steps)

    # --- IDs ---

    def _inputs(self, name: str, index: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        tower = self.towers[name]
        s = getattr(self, f"semantic_{name}")
        c = getattr(self, f"collaborative_{name}", None)
        if index is not None:
            s = s[index]
            c = c[index] if c is not None else None
        return (s if tower.config.uses_semantic else None), (c if tower.config.uses_collaborative else None)

    @torch.no_grad()
    def table(self, name: str, max_suffix: int | None = None) -> SemanticIdTable:
        """Deterministic ID table of one side from the current embeddings and tower (nearest codeword, no balancing).

        With ``llm.id_stickiness`` > 0 an entity keeps its current code at a level unless the nearest codeword is
        clearly closer (``ResidualQuantizer.encode``).
        """
        tower = self.towers[name]
        was_training = tower.training
        tower.eval()
        s, c = self._inputs(name)
        previous = self.codes[name] if self.cfg.id_stickiness > 0 else None
        parts = []
        for s_part, c_part, p_part in _chunks(s, c, previous):
            s_part, c_part = (x.to(self.device) if x is not None else None for x in (s_part, c_part))
            parts.append(tower.encode(s_part, c_part, p_part, self.cfg.id_stickiness).cpu())
        codes = torch.cat(parts)  # (N, L)
        tower.train(was_training)
        config = tower.config
        return SemanticIdTable(codes.numpy(), self.sides[name].keys, config.quantizer.codebook_size, config.id_prefix, config.add_suffix, max_suffix)

    def update_vocabulary(self, names: list[str] | None = None) -> None:
        """Recompute, in place, the ID strings that prompts render from, for sides ``names`` (default: every side).

        Without user IDs the module has only the item side.
        """
        for name in names if names is not None else list(self.sides):
            table = self.table(name)
            ids = render_ids(table, self.sides[name].n_suffix_tokens)
            current = self.vocab.item_ids if name == "item" else self.vocab.user_ids
            moved = sum(old != new for old, new in zip(current, ids, strict=True))
            current[:] = ids
            self.codes[name] = torch.from_numpy(table.codes.astype(np.int64))
            self.last_moved[name] = moved
            if self._trainer is not None and self.trainer.training:
                # Large values late in stage 1 mean the index has not settled. A rising collision rate means the
                # towers map more entities onto the same codes (Scientific users: 42% after tokenize, 60% after stage 1).
                self.log(f"train/{name}_ids_moved", float(moved), batch_size=1)
                self.log(f"train/{name}_collision_rate", table.collision_report()["collision_rate_before_suffix"], batch_size=1)

    def reembed(self, name: str, index: np.ndarray | None = None) -> None:
        """Re-embed the texts of side ``name`` at rows ``index`` (all rows when None) with the current LM."""
        side = self.sides[name]
        rows = np.arange(len(side.texts)) if index is None else index
        texts = [side.texts[i] for i in rows.tolist()]
        vectors = encode_texts(
            self.model, self.tokenizer, texts, batch_size=64, max_length=self.text_max_length, device=self.device,
            add_special_tokens=self.add_special_tokens,
        )  # (len(rows), D) on CPU
        getattr(self, f"semantic_{name}")[torch.from_numpy(rows).to(self.device)] = vectors.to(self.device)
        self.reembedded[name] += len(rows)

    def refresh(self) -> None:
        """Re-embed every text of every side with the current LM, then recompute the IDs that prompts use.

        The llm stage calls this once after stage 1 training, just before it freezes the ID tables. One call encodes
        every item and user text: on MovieTweetings and 2 CPU cores about 640 s, against 1.8 s per training step.
        """
        for name in self.sides:
            self.reembed(name)
        self.update_vocabulary()
        self.refreshes += 1
        log.info("stage 1: full refresh %d at step %d", self.refreshes, self.global_step)

    def scheduled_refresh(self, step: int) -> list[str]:
        """Re-embed the texts that ``llm.refresh_mode`` schedules for ``step`` and return the sides whose IDs are due."""
        changed = []
        for name, side in self.sides.items():
            interval = self.cfg.refresh_interval(name)
            if self.cfg.refresh_mode == "rolling":
                positions = rolling_slice(len(side.texts), interval, step)
                if len(positions):
                    self.reembed(name, self._orders[name][positions])
                # IDs follow once per cycle, so prompts keep stable IDs between updates, as in full mode.
                if (step + 1) % interval == 0:
                    changed.append(name)
            elif step > 0 and step % interval == 0:
                self.reembed(name)
                changed.append(name)
                log.info("stage 1: re-embedded every %s text at step %d", name, step)
        return changed

    # --- losses ---

    def _sample(self, n: int, size: int) -> Tensor:
        return torch.randint(0, n, (min(size, n),), generator=self._generator)

    def tower_loss(self) -> Tensor:
        total = torch.zeros((), device=self.device)
        for name, tower in self.towers.items():
            index = self._sample(len(self.sides[name].keys), self.cfg.tower_batch_size)
            s, c = self._inputs(name, index)
            output = tower(s, c)
            self.log(f"train/tower_{name}_loss", output.losses["loss"].detach(), batch_size=index.numel())
            total = total + output.losses["loss"]
        return total

    def alignment_loss(self) -> Tensor:
        total = torch.zeros((), device=self.device)
        for name, side in self.sides.items():
            index = self._sample(len(side.keys), self.cfg.align_batch_size)
            id_strings = self.vocab.item_ids if name == "item" else self.vocab.user_ids
            batch = self.tokenizer([id_strings[i] for i in index.tolist()], padding=True, add_special_tokens=False, return_tensors="pt")
            id_vectors = pooled_embeddings(self.model, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))  # (B, D)
            text_vectors = getattr(self, f"semantic_{name}")[index.to(self.device)].detach()  # (B, D)
            loss = info_nce(id_vectors, text_vectors, self.cfg.align_temperature) + F.mse_loss(id_vectors, text_vectors, reduction="sum") / index.numel()
            self.log(f"train/align_{name}_loss", loss.detach(), batch_size=index.numel())
            total = total + loss
        return total

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        changed = self.scheduled_refresh(self.global_step)
        if changed:
            self.update_vocabulary(changed)
            for name in changed:
                self.id_updates[name] += 1

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        lm_loss = causal_lm_loss(self.model, batch)
        loss = lm_loss
        if self.cfg.tower_weight > 0:
            loss = loss + self.cfg.tower_weight * self.tower_loss()
        if self.cfg.align_weight > 0:
            loss = loss + self.cfg.align_weight * self.alignment_loss()
        self.log("train/lm_loss", lm_loss.detach(), prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/loss", loss.detach(), batch_size=batch["input_ids"].shape[0])
        return loss

    # --- optimisation and checkpoints ---

    def param_groups(self) -> list[dict]:
        """Return the LM group plus one group per tower, at the tower's own learning rate and no weight decay."""
        groups = super().param_groups()
        for tower in self.towers.values():
            groups.append({"params": [p for p in tower.parameters() if p.requires_grad], "lr": tower.config.learning_rate, "weight_decay": 0.0})
        return groups

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {name for name, p in self.named_parameters() if p.requires_grad}
        keep |= {name for name, _ in self.named_buffers() if name.startswith("semantic_") or name.startswith("towers.")}
        checkpoint["state_dict"] = {name: value for name, value in checkpoint["state_dict"].items() if name in keep}
        checkpoint["ttds_refreshes"] = self.refreshes
        checkpoint["ttds_reembedded"] = dict(self.reembedded)
        checkpoint["ttds_id_updates"] = dict(self.id_updates)
        # The prompts' ID strings: mid-cycle they differ from what the restored vectors would give now.
        checkpoint["ttds_ids"] = {"item": list(self.vocab.item_ids), "user": list(self.vocab.user_ids)}
        checkpoint["ttds_codes"] = {name: codes.clone() for name, codes in self.codes.items() if codes is not None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.refreshes = checkpoint.get("ttds_refreshes", 0)
        self.reembedded.update(checkpoint.get("ttds_reembedded", {}))
        self.id_updates.update(checkpoint.get("ttds_id_updates", {}))
        restored = checkpoint.get("ttds_ids")
        if restored is not None:
            # Restored here rather than in on_train_start: a stage resumed at its last step skips the training loop,
            # and the freeze that follows compares against these IDs.
            self.vocab.item_ids[:] = restored["item"]
            self.vocab.user_ids[:] = restored["user"]
            self._resumed = True
        if "ttds_codes" in checkpoint:
            self.codes.update(checkpoint["ttds_codes"])
        elif restored is not None and self.cfg.id_stickiness > 0:
            # A checkpoint from before llm.id_stickiness: its IDs no longer match the start codes, so keep nothing.
            log.warning("stage-1 checkpoint has no ttds_codes, so the next ID update ignores llm.id_stickiness")
            self.codes = dict.fromkeys(self.codes)

    def on_train_start(self) -> None:
        if self._resumed:
            # Resuming: prompts continue with the IDs they had when the checkpoint was written (on_load_checkpoint).
            return
        # A fresh start: the IDs of the tokenize stage's towers, recomputed from the vectors stage 1 starts from.
        self.update_vocabulary()


def _chunks(*tensors: Tensor | None, size: int = 8192):
    """Yield aligned row slices of the tensors that are not None (None stays None)."""
    n = next(t for t in tensors if t is not None).shape[0]
    for start in range(0, n, size):
        yield tuple(t[start : start + size] if t is not None else None for t in tensors)
