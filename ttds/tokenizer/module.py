"""Lightning training of one tower on in-memory vectors, and ``fit_tower``, which returns its ID table."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ttds.tokenizer.diagnostics import tower_diagnostics
from ttds.tokenizer.id_table import SemanticIdTable
from ttds.tokenizer.towers import DualModalityVAE, TowerConfig

log = logging.getLogger(__name__)

ENCODE_BATCH = 8192  # rows per forward pass when encoding or initialising outside training


def _optional(x: Tensor) -> Tensor | None:
    """Zero-width columns stand for a modality the tower does not use (TensorDataset cannot carry None)."""
    return None if x.shape[1] == 0 else x


class TowerDataModule(L.LightningDataModule):
    """Shuffled minibatches of (s, c) rows; an unused modality is a zero-width tensor."""

    def __init__(self, s: Tensor, c: Tensor, batch_size: int, seed: int):
        super().__init__()
        self.dataset = TensorDataset(s, c)
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, generator=generator)


class TowerModule(L.LightningModule):
    """Trains one DualModalityVAE with AdamW; logs every loss term as ``train/<tower>/<term>``."""

    def __init__(self, config: TowerConfig, semantic_dim: int, collaborative_dim: int):
        super().__init__()
        self.save_hyperparameters({"config": asdict(config), "semantic_dim": semantic_dim, "collaborative_dim": collaborative_dim})
        self.config = config
        self.model = DualModalityVAE(config, semantic_dim, collaborative_dim)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        s, c = batch
        output = self.model(_optional(s), _optional(c))
        metrics = {f"train/{self.config.name}/{key}": value.detach() for key, value in output.losses.items() if key != "loss"}
        for level, norm in enumerate(output.quantized.residual_norms):
            metrics[f"train/{self.config.name}/quantizer/level{level}_residual_norm"] = norm
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=s.shape[0])
        self.log(f"train/{self.config.name}/loss", output.losses["loss"].detach(), prog_bar=True, batch_size=s.shape[0])
        return output.losses["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay)


def _as_tensor(x: np.ndarray | Tensor | None, n_rows: int, name: str) -> Tensor:
    if x is None:
        return torch.zeros(n_rows, 0)
    x = torch.as_tensor(x, dtype=torch.float32) if not isinstance(x, Tensor) else x.float()
    if x.ndim != 2 or x.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows}, d), one row per key, got {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; fix the embeddings before tokenizing.")
    return x


@torch.no_grad()
def encode_all(model: DualModalityVAE, s: Tensor, c: Tensor, batch_size: int = ENCODE_BATCH) -> np.ndarray:
    """Deterministic codes (N, L) of all rows, in chunks on the model's device; zero-width s or c means unused."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    codes = []
    for s_part, c_part in zip(s.split(batch_size), c.split(batch_size), strict=True):
        s_part, c_part = _optional(s_part.to(device)), _optional(c_part.to(device))
        codes.append(model.encode(s_part, c_part).cpu())
    model.train(was_training)
    return torch.cat(codes).numpy()


@torch.no_grad()
def _reconstruction_errors(model: DualModalityVAE, s: Tensor, c: Tensor, batch_size: int = ENCODE_BATCH) -> dict[str, float]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for s_part, c_part in zip(s.split(batch_size), c.split(batch_size), strict=True):
        errors = model.reconstruction_errors(_optional(s_part.to(device)), _optional(c_part.to(device)))
        for modality, value in errors.items():
            totals[modality] = totals.get(modality, 0.0) + value * s_part.shape[0]
    model.train(was_training)
    return {modality: total / s.shape[0] for modality, total in totals.items()}


def build_id_table(model: DualModalityVAE, s: Tensor, c: Tensor, keys: list[str], config: TowerConfig) -> SemanticIdTable:
    """Encode every entity deterministically and assign collision suffixes as the config sets."""
    codes = encode_all(model, s, c)
    return SemanticIdTable(
        codes,
        keys,
        codebook_size=config.quantizer.codebook_size,
        prefix=config.id_prefix,
        add_suffix=config.add_suffix,
        max_suffix=config.max_suffix,
    )


def fit_tower(
    semantic: np.ndarray | Tensor | None,
    collaborative: np.ndarray | Tensor | None,
    keys: list[str],
    config: TowerConfig,
    trainer_kwargs: dict[str, Any] | None = None,
    diagnostics_dir: str | Path | None = None,
) -> tuple[DualModalityVAE, SemanticIdTable, dict[str, float]]:
    """Train one tower on semantic (N, d_s) and collaborative (N, d_c) vectors and freeze its IDs.

    Steps: seed, standardise inputs, k-means initialisation of the codebooks on the latents of all N
    rows, training with a Lightning Trainer (``trainer_kwargs`` override the defaults: no logger,
    no checkpoints, ``max_epochs`` from the config), then deterministic encoding into a
    SemanticIdTable. Returns the trained model (in eval mode), the table and the flat diagnostics.
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    n_rows = len(keys)
    s = _as_tensor(semantic if config.uses_semantic else None, n_rows, "semantic vectors")
    c = _as_tensor(collaborative if config.uses_collaborative else None, n_rows, "collaborative vectors")

    module = TowerModule(config, s.shape[1], c.shape[1])
    model = module.model
    if config.standardize_inputs:
        model.set_input_statistics(_optional(s), _optional(c))
    if config.quantizer.kmeans_init:
        model.eval()
        latents = torch.cat([model.latent(_optional(sp), _optional(cp)) for sp, cp in zip(s.split(ENCODE_BATCH), c.split(ENCODE_BATCH), strict=True)])
        model.quantizer.initialise(latents)
        model.train()

    settings: dict[str, Any] = {
        "max_epochs": config.max_epochs,
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    settings.update(trainer_kwargs or {})
    trainer = L.Trainer(**settings)
    trainer.fit(module, datamodule=TowerDataModule(s, c, config.batch_size, config.seed))

    model.eval()
    table = build_id_table(model, s, c, keys, config)
    errors = _reconstruction_errors(model, s, c)
    diagnostics = tower_diagnostics(config.name, table, errors, diagnostics_dir)
    log.info("fitted %s tower on %d entities: %s", config.name, n_rows, {key: round(value, 4) for key, value in diagnostics.items()})
    return model, table, diagnostics
