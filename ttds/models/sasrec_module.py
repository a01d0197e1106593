"""Training of SASRec with Lightning on training sequences, with early stopping on the validation split.

Inputs are plain: ``sequences[u]`` is user ``u``'s training item_idx values in time order (see
``sequences_by_user`` for the ``training_sequences`` view), and ``valid_targets[u]`` is the item of user ``u``'s
validation event or -1. Validation predicts that item from the user's training sequence, so test targets are
never read here. ``sasrec_embeddings`` trains (or loads from cache) and returns the item embeddings and final
user states that the collaborative side of the twin towers uses.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from ttds.data.config import build_strict
from ttds.embeddings.cache import TensorCache, sha256_json
from ttds.models.sasrec import IGNORE_INDEX, SASRec, pad_histories

log = logging.getLogger(__name__)

MONITOR = "val/ndcg@10"  # early stopping and best-weights metric
NO_TARGET = -1  # valid_targets entry of a user without a validation event
UNKEYED_TRAINER_KWARGS = ("callbacks", "logger", "enable_progress_bar", "enable_model_summary")


@dataclass
class SASRecConfig:
    """SASRec size and training settings."""

    hidden: int = 64  # embedding and hidden size
    layers: int = 2  # transformer blocks
    heads: int = 2  # attention heads; must divide hidden
    max_len: int = 50  # items the model reads, the most recent ones
    dropout: float = 0.2  # embedding, attention and FFN dropout
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    epochs: int = 50  # maximum training epochs
    batch_size: int = 128  # training windows per step
    patience: int = 5  # validation epochs without a better val/ndcg@10 before stopping; 0 never stops early
    seed: int = 0  # seeds weights, dropout and shuffling
    loss: str = "ce"  # "ce": full-softmax cross-entropy; "bce": binary cross-entropy against sampled negatives (the original SASRec)
    negatives: int = 1  # with loss="bce": negatives sampled per labelled position

    def __post_init__(self) -> None:
        positive = {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "max_len": self.max_len}
        positive |= {"epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"sasrec.{name}={value} must be at least 1.")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"sasrec.loss={self.loss!r} is invalid; use 'ce' (full softmax) or 'bce' (sampled negatives).")
        if self.negatives < 1:
            raise ValueError(f"sasrec.negatives={self.negatives} must be at least 1.")
        if self.hidden % self.heads:
            raise ValueError(f"sasrec.hidden={self.hidden} is not divisible by sasrec.heads={self.heads}; pick heads that divide hidden.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sasrec.dropout={self.dropout} must be in [0, 1).")
        if self.lr <= 0 or self.weight_decay < 0 or self.patience < 0:
            raise ValueError(
                f"sasrec.lr={self.lr} must be positive, sasrec.weight_decay={self.weight_decay} and "
                f"sasrec.patience={self.patience} must not be negative."
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SASRecConfig:
        return build_strict(cls, values, "sasrec")


def sequences_by_user(training_sequences: pl.DataFrame, n_users: int) -> list[np.ndarray]:
    """Turn the ``training_sequences`` view (user_idx, items) into one int64 array per user_idx 0..n_users-1.

    Users absent from the view (no training event) get an empty array.
    """
    sequences = [np.empty(0, dtype=np.int64) for _ in range(n_users)]
    for user, items in zip(training_sequences["user_idx"].to_list(), training_sequences["items"].to_list(), strict=True):
        if not 0 <= user < n_users:
            raise ValueError(f"training_sequences has user_idx={user} outside 0..{n_users - 1}; pass the dataset's n_users.")
        sequences[user] = np.asarray(items, dtype=np.int64)
    return sequences


def targets_by_user(examples: pl.DataFrame, n_users: int) -> np.ndarray:
    """Turn evaluation examples (user_idx, target) into an int64 array over users, -1 where a user has none."""
    targets = np.full(n_users, NO_TARGET, dtype=np.int64)
    targets[examples["user_idx"].to_numpy()] = examples["target"].to_numpy()
    return targets


def sha256_sequences(sequences: Sequence[Sequence[int]]) -> str:
    """Hash sequences of ints; each is length-prefixed, so [[1, 2], [3]] and [[1], [2, 3]] differ."""
    digest = hashlib.sha256()
    for sequence in sequences:
        array = np.asarray(sequence, dtype=np.int64)
        digest.update(len(array).to_bytes(8, "little"))
        digest.update(array.tobytes())
    return digest.hexdigest()


def _check_items(sequences: Sequence[Sequence[int]], n_items: int) -> None:
    lengths = np.array([len(sequence) for sequence in sequences])
    flat = np.concatenate([np.asarray(sequence, dtype=np.int64) for sequence in sequences]) if lengths.sum() else np.empty(0)
    outside = np.flatnonzero((flat < 0) | (flat >= n_items))
    if len(outside):
        user = int(np.searchsorted(np.cumsum(lengths), outside[0], side="right"))
        raise ValueError(f"sequences[{user}] has item_idx outside 0..{n_items - 1}; check n_items and the sequences.")


def training_windows(sequences: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each training sequence into windows of up to max_len next-item steps, counted back from its end.

    Returns model-side inputs (N, max_len), left-padded with 0, and item_idx targets (N, max_len), padded with
    IGNORE_INDEX. Input position t contains item t of the window, and its target is item t + 1. A window
    does not see the items of the windows before it.
    """
    inputs, targets = [], []
    for sequence in sequences:
        sequence = np.asarray(sequence, dtype=np.int64)
        for end in range(len(sequence) - 1, 0, -max_len):  # end = number of (input, target) steps covered
            start = max(0, end - max_len)
            window_inputs = np.zeros(max_len, dtype=np.int64)
            window_targets = np.full(max_len, IGNORE_INDEX, dtype=np.int64)
            window_inputs[max_len - (end - start) :] = sequence[start:end] + 1
            window_targets[max_len - (end - start) :] = sequence[start + 1 : end + 1]
            inputs.append(window_inputs)
            targets.append(window_targets)
    if not inputs:
        raise ValueError("no user has two or more training items, so SASRec has nothing to learn from.")
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank (B,) of each target item_idx among scores (B, n_items); items with a tied score rank below it."""
    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    return (scores > target_scores).sum(dim=1)


class SASRecDataModule(L.LightningDataModule):
    """Training windows of each user's training sequence, and validation examples (training sequence -> valid item)."""

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        max_len: int,
        batch_size: int,
        valid_targets: np.ndarray | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.sequences = sequences
        self.max_len = max_len
        self.batch_size = batch_size
        self.valid_targets = valid_targets
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.valid_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TensorDataset(*training_windows(self.sequences, self.max_len))
        if self.valid_set is None and self.valid_targets is not None:
            users = [u for u, target in enumerate(self.valid_targets) if target != NO_TARGET and len(self.sequences[u])]
            histories = pad_histories([self.sequences[u] for u in users], self.max_len)  # (U, max_len)
            self.valid_set = TensorDataset(histories, torch.as_tensor(self.valid_targets[users], dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid_set, batch_size=self.batch_size * 4)


class SASRecModule(L.LightningModule):
    """Next-item training of SASRec (full softmax, or sampled BCE with sasrec.loss=bce); logs train/loss and val/hr@10, val/ndcg@10."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.save_hyperparameters({"n_items": n_items, **asdict(cfg)})
        self.cfg = cfg
        self.model = SASRec(n_items, cfg.hidden, cfg.layers, cfg.heads, cfg.max_len, cfg.dropout)
        self._negatives = torch.Generator().manual_seed(cfg.seed)  # draws the negatives of sasrec.loss=bce, seeded like the weights

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        if self.cfg.loss == "bce":
            loss = self.model.sampled_bce_loss(inputs, targets, self.cfg.negatives, self._negatives)
        else:
            loss = self.model.loss(inputs, targets)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(inputs))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        histories, targets = batch
        ranks = target_ranks(self.model.predict(histories).float(), targets)  # (B,)
        hits = (ranks < 10).float()
        ndcg = hits / torch.log2(ranks.float() + 2.0)
        self.log("val/hr@10", hits.mean(), prog_bar=True, batch_size=len(targets))
        self.log(MONITOR, ndcg.mean(), prog_bar=True, batch_size=len(targets))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


class BestWeights(Callback):
    """Keeps a CPU copy of the weights with the best val/ndcg@10 in memory, so no pickled checkpoint is written."""

    def __init__(self) -> None:
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or MONITOR not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[MONITOR])
        log.info("SASRec epoch %d: val/hr@10=%.4f %s=%.4f", trainer.current_epoch, float(trainer.callback_metrics["val/hr@10"]), MONITOR, score)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
            self.state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in pl_module.model.state_dict().items()}


def train_sasrec(
    sequences: Sequence[Sequence[int]],
    n_items: int,
    cfg: SASRecConfig,
    trainer_kwargs: dict[str, Any] | None = None,
    valid_targets: np.ndarray | None = None,
) -> SASRec:
    """Train SASRec on training sequences and return it in eval mode.

    With ``valid_targets``, each epoch ends with validation (training sequence -> valid item), training stops
    after ``cfg.patience`` epochs without a better val/ndcg@10, and the best epoch's weights are returned; the
    metrics are logged. ``trainer_kwargs`` override the Trainer defaults (CPU or GPU chosen automatically,
    no logger, no checkpoints), e.g. ``{"precision": "bf16-mixed"}``.
    """
    if len(sequences) == 0:
        raise ValueError("sequences is empty; pass one training sequence per user.")
    _check_items(sequences, n_items)
    if valid_targets is not None:
        valid_targets = np.asarray(valid_targets, dtype=np.int64)
        if valid_targets.shape != (len(sequences),):
            raise ValueError(f"valid_targets has shape {valid_targets.shape}; expected ({len(sequences)},), one entry per user, -1 for none.")
        if valid_targets.max(initial=NO_TARGET) >= n_items or valid_targets.min(initial=NO_TARGET) < NO_TARGET:
            raise ValueError(f"valid_targets has an item_idx outside 0..{n_items - 1} (or -1 for no target).")

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = SASRecModule(n_items, cfg)
    datamodule = SASRecDataModule(sequences, cfg.max_len, cfg.batch_size, valid_targets, cfg.seed)
    best = BestWeights()
    validate = valid_targets is not None and any(
        target != NO_TARGET and len(sequence) for target, sequence in zip(valid_targets, sequences, strict=True)
    )

    kwargs: dict[str, Any] = {
        "max_epochs": cfg.epochs,
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(trainer_kwargs or {})
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if validate:
        callbacks.append(best)
        if cfg.patience:
            callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience))
    else:
        kwargs["limit_val_batches"] = 0
    trainer = L.Trainer(callbacks=callbacks, **kwargs)

    datamodule.setup("fit")
    log.info("SASRec: %d training windows from %d users, %d items", len(datamodule.train_set), len(sequences), n_items)
    if validate:
        trainer.fit(module, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.val_dataloader())
    else:
        trainer.fit(module, train_dataloaders=datamodule.train_dataloader())

    model = module.model
    if best.state is not None:
        model.load_state_dict(best.state)
        log.info("SASRec: best epoch %d of %d, %s", best.best_epoch, trainer.current_epoch, best.best_metrics)
    model.valid_metrics = dict(best.best_metrics)  # empty without validation
    return model.eval()


@torch.inference_mode()
def evaluate_ranking(
    model: SASRec,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 512,
) -> dict[str, float]:
    """HR@k and NDCG@k of full ranking over all items, for histories (item_idx lists) and their target item_idx."""
    if len(histories) != len(targets) or not len(targets):
        raise ValueError(f"got {len(histories)} histories and {len(targets)} targets; pass the same non-zero number of each.")
    model.eval()
    device = model.item_embedding.weight.device
    ranks = []
    for start in range(0, len(targets), batch_size):
        input_ids = pad_histories(histories[start : start + batch_size], model.max_len).to(device)
        batch_targets = torch.as_tensor(np.asarray(targets[start : start + batch_size]), dtype=torch.long, device=device)
        ranks.append(target_ranks(model.predict(input_ids).float(), batch_targets).cpu())
    rank = torch.cat(ranks).double()  # (N,), 0-based

    metrics = {}
    for k in ks:
        hits = (rank < k).double()
        metrics[f"hr@{k}"] = float(hits.mean())
        metrics[f"ndcg@{k}"] = float((hits / torch.log2(rank + 2.0)).mean())
    return metrics


@dataclass
class SASRecEmbeddings:
    """Collaborative vectors from SASRec: item embeddings (n_items, C) and final user states (n_users, C)."""

    items: torch.Tensor
    users: torch.Tensor
    model: SASRec


def sasrec_embeddings(
    sequences: Sequence[Sequence[int]],
    n_items: int,
    cfg: SASRecConfig,
    valid_targets: np.ndarray | None = None,
    cache_dir: str | Path | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> SASRecEmbeddings:
    """Train SASRec (or load it from ``cache_dir``) and return its item embeddings and user states, on CPU.

    The cache key is a hash of the training sequences, the validation targets, n_items, ``cfg`` and
    ``trainer_kwargs`` other than the ones in UNKEYED_TRAINER_KWARGS (callbacks and loggers, whose reprs
    change from run to run). The entry stores the model weights as well, so a hit also returns the model.
    """
    keyed_kwargs = {name: value for name, value in (trainer_kwargs or {}).items() if name not in UNKEYED_TRAINER_KWARGS}
    key = sha256_json(
        {
            "sequences": sha256_sequences(sequences),
            "valid_targets": sha256_sequences([valid_targets]) if valid_targets is not None else None,
            "n_items": n_items,
            "config": asdict(cfg),
            "trainer_kwargs": keyed_kwargs,
        }
    )
    cache = TensorCache(cache_dir) if cache_dir is not None else None
    entry = cache.load(key) if cache is not None else None

    if entry is not None:
        tensors, meta = entry
        model = SASRec(n_items, cfg.hidden, cfg.layers, cfg.heads, cfg.max_len, cfg.dropout)
        model.load_state_dict({name.removeprefix("model."): tensor for name, tensor in tensors.items() if name.startswith("model.")})
        model.valid_metrics = meta.get("valid_metrics", {})
        return SASRecEmbeddings(items=tensors["items"], users=tensors["users"], model=model.eval())

    model = train_sasrec(sequences, n_items, cfg, trainer_kwargs, valid_targets)
    items = model.item_embeddings().detach().float().cpu().clone()  # a copy, so changing it leaves the model alone
    users = model.user_states(sequences).cpu()
    if cache is not None:
        tensors = {"items": items, "users": users} | {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
        cache.save(key, tensors, {"kind": "sasrec", "config": asdict(cfg), "n_items": n_items, "valid_metrics": model.valid_metrics})
    return SASRecEmbeddings(items=items, users=users, model=model)
