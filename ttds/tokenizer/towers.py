"""Dual-modality VAE: one tower of the twin-tower semantic ID generator.

Two encoders map an entity's semantic vector s (B, d_s) and collaborative vector c (B, d_c) to
Gaussian posteriors over one latent (B, D). A product of experts fuses them, a residual quantizer
turns the fused latent into L codes, and two decoders rebuild s and c from the quantized latent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttds.data.config import build_strict
from ttds.tokenizer.quantizer import QuantizerConfig, QuantizerOutput, ResidualQuantizer

log = logging.getLogger(__name__)

MODALITIES = ("semantic", "collaborative", "both")
LOGVAR_RANGE = (-10.0, 10.0)  # keeps exp(logvar) finite in bf16 and float32


@dataclass
class TowerConfig:
    """One tower's model, loss weights, training and ID-table settings; conf/tokenizer mirrors it."""

    name: str = "item"  # tower name in logged metrics: tokenizer/<name>/...
    modalities: str = "both"  # "semantic", "collaborative" or "both"; with one, the other encoder, decoder and alignment are off
    latent_dim: int = 32  # D
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # encoder layers; decoders mirror them
    dropout: float = 0.0
    standardize_inputs: bool = True  # scale each input feature to zero mean, unit variance with statistics of the fitted rows
    prior_expert: bool = True  # include N(0, I) as an expert in the product of experts
    sample_latent: bool = True  # train on a reparameterised sample of the fused posterior; encoding always uses its mean
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    semantic_reconstruction_weight: float = 1.0
    collaborative_reconstruction_weight: float = 1.0
    quantizer_weight: float = 1.0  # scales the quantizer's already weighted codebook and commitment terms
    infonce_weight: float = 0.1  # instance level: InfoNCE between the two posterior means
    infonce_temperature: float = 0.1
    distribution_kl_weight: float = 0.01  # distribution level: KL(q_s||q_c) + KL(q_c||q_s)
    code_alignment_weight: float = 0.1  # code level: semantic-only latent predicts the fused codes
    code_alignment_temperature: float = 1.0  # divides the negative squared distances before the softmax
    prior_kl_weight: float = 0.001  # KL(q(z|s,c) || N(0, I))

    learning_rate: float = 1e-3  # AdamW
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 20  # default for the trainer when trainer_kwargs does not set it
    seed: int = 0

    id_prefix: str = ""  # token prefix: "" for items (<a_12>), "u" for users (<ua_3>)
    add_suffix: bool = True  # append a collision suffix so every ID is unique (items); users may collide
    max_suffix: int | None = None  # fixed suffix vocabulary size; None sizes it from the largest collision group

    def __post_init__(self) -> None:
        if isinstance(self.quantizer, dict):
            self.quantizer = build_strict(QuantizerConfig, self.quantizer, "tokenizer.quantizer")
        if self.modalities not in MODALITIES:
            raise ValueError(f"tokenizer.modalities={self.modalities!r} is not one of {MODALITIES}.")
        if self.latent_dim < 1:
            raise ValueError(f"tokenizer.latent_dim={self.latent_dim} must be at least 1.")
        if any(width < 1 for width in self.hidden_dims):
            raise ValueError(f"tokenizer.hidden_dims={self.hidden_dims} must contain positive widths.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"tokenizer.dropout={self.dropout} must be in [0, 1).")
        weights = {
            "semantic_reconstruction_weight": self.semantic_reconstruction_weight,
            "collaborative_reconstruction_weight": self.collaborative_reconstruction_weight,
            "quantizer_weight": self.quantizer_weight,
            "infonce_weight": self.infonce_weight,
            "distribution_kl_weight": self.distribution_kl_weight,
            "code_alignment_weight": self.code_alignment_weight,
            "prior_kl_weight": self.prior_kl_weight,
        }
        negative = {key: value for key, value in weights.items() if value < 0}
        if negative:
            raise ValueError(f"tokenizer loss weights must be non-negative, got {negative}.")
        for key in ("infonce_temperature", "code_alignment_temperature", "learning_rate"):
            if getattr(self, key) <= 0:
                raise ValueError(f"tokenizer.{key}={getattr(self, key)} must be positive.")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise ValueError(f"tokenizer.batch_size={self.batch_size} and tokenizer.max_epochs={self.max_epochs} must be at least 1.")
        if self.max_suffix is not None and self.max_suffix < 1:
            raise ValueError(f"tokenizer.max_suffix={self.max_suffix} must be at least 1, or None to size it from the data.")

    @property
    def uses_semantic(self) -> bool:
        return self.modalities in ("semantic", "both")

    @property
    def uses_collaborative(self) -> bool:
        return self.modalities in ("collaborative", "both")


def tower_config_from_dict(values: dict[str, Any], prefix: str = "tokenizer") -> TowerConfig:
    """Build a TowerConfig from a plain mapping (a resolved Hydra node), rejecting unknown keys.

    ``prefix`` names the node in error messages, e.g. "tokenizer.item".
    """
    values = {key: value for key, value in values.items() if key != "_target_"}
    return build_strict(TowerConfig, values, prefix)


@dataclass
class TowerOutput:
    """One forward pass: weighted loss terms (``losses["loss"]`` is their sum), codes and reconstructions."""

    losses: dict[str, Tensor]
    codes: Tensor  # (B, L)
    quantized: QuantizerOutput
    s_hat: Tensor | None  # (B, d_s), in standardised units
    c_hat: Tensor | None  # (B, d_c), in standardised units


def reconstruction_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error summed over features and averaged over the batch.

    A per-feature mean would shrink this term by the input width and let the quantizer terms
    dominate, which collapses the codes.
    """
    return (x_hat - x).pow(2).sum(dim=-1).mean()


def gaussian_kl(mu_p: Tensor, logvar_p: Tensor, mu_q: Tensor, logvar_q: Tensor) -> Tensor:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) for diagonal Gaussians (B, D), summed over D, averaged over B."""
    kl = 0.5 * (logvar_q - logvar_p + (logvar_p.exp() + (mu_p - mu_q).pow(2)) / logvar_q.exp() - 1)
    return kl.sum(dim=-1).mean()


def product_of_experts(mus: list[Tensor], logvars: list[Tensor], prior_expert: bool) -> tuple[Tensor, Tensor]:
    """Fuse diagonal Gaussian experts (each (B, D)) into one: precisions add, means are precision-weighted.

    With ``prior_expert`` a standard normal joins as one more expert (mean 0, precision 1). It keeps
    the fused variance bounded when an encoder reports a very low precision, and with one modality
    it makes the fused posterior a shrunk copy of that modality's posterior.
    """
    precisions = [torch.exp(-logvar) for logvar in logvars]
    weighted_means = [mu * precision for mu, precision in zip(mus, precisions, strict=True)]
    total_precision = torch.stack(precisions).sum(dim=0)
    total_mean = torch.stack(weighted_means).sum(dim=0)
    if prior_expert:
        total_precision = total_precision + 1.0
    mu = total_mean / total_precision
    return mu, -torch.log(total_precision)


def _mlp(widths: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2:
            layers.extend([nn.GELU(), nn.Dropout(dropout)])
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """MLP from an input vector (B, d) to a diagonal Gaussian posterior: mean and log-variance, each (B, D)."""

    def __init__(self, input_dim: int, hidden_dims: list[int], latent_dim: int, dropout: float):
        super().__init__()
        self.net = _mlp([input_dim, *hidden_dims, 2 * latent_dim], dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class DualModalityVAE(nn.Module):
    """Semantic and collaborative encoders, product-of-experts fusion, residual quantizer and two decoders."""

    def __init__(self, config: TowerConfig, semantic_dim: int, collaborative_dim: int):
        super().__init__()
        self.config = config
        self.semantic_dim = semantic_dim
        self.collaborative_dim = collaborative_dim
        latent, hidden = config.latent_dim, config.hidden_dims

        self.semantic_encoder = self.semantic_decoder = None
        self.collaborative_encoder = self.collaborative_decoder = None
        if config.uses_semantic:
            if semantic_dim < 1:
                raise ValueError(f"tokenizer.modalities={config.modalities!r} needs semantic vectors, got dimension {semantic_dim}.")
            self.semantic_encoder = GaussianEncoder(semantic_dim, hidden, latent, config.dropout)
            self.semantic_decoder = _mlp([latent, *reversed(hidden), semantic_dim], config.dropout)
        if config.uses_collaborative:
            if collaborative_dim < 1:
                raise ValueError(
                    f"tokenizer.modalities={config.modalities!r} needs collaborative vectors, got dimension {collaborative_dim}."
                )
            self.collaborative_encoder = GaussianEncoder(collaborative_dim, hidden, latent, config.dropout)
            self.collaborative_decoder = _mlp([latent, *reversed(hidden), collaborative_dim], config.dropout)
        self.quantizer = ResidualQuantizer(config.quantizer, latent)

        # Per-feature statistics of the fitted rows; identity until set_input_statistics is called.
        self.register_buffer("semantic_mean", torch.zeros(max(semantic_dim, 0)))
        self.register_buffer("semantic_std", torch.ones(max(semantic_dim, 0)))
        self.register_buffer("collaborative_mean", torch.zeros(max(collaborative_dim, 0)))
        self.register_buffer("collaborative_std", torch.ones(max(collaborative_dim, 0)))

    @torch.no_grad()
    def set_input_statistics(self, s: Tensor | None, c: Tensor | None) -> None:
        """Store per-feature mean and standard deviation of s (N, d_s) and c (N, d_c) for standardisation."""
        for x, mean, std in ((s, self.semantic_mean, self.semantic_std), (c, self.collaborative_mean, self.collaborative_std)):
            if x is None or x.shape[1] == 0:
                continue
            mean.copy_(x.float().mean(dim=0))
            # Constant features keep a unit scale so they standardise to zero instead of dividing by zero.
            spread = x.float().std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
            std.copy_(torch.where(spread > 1e-6, spread, torch.ones_like(spread)))

    def standardize(self, s: Tensor | None, c: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Apply the stored statistics to the modalities this tower uses; drop the other one."""
        self._check_inputs(s, c)
        s = (s - self.semantic_mean.to(s.dtype)) / self.semantic_std.to(s.dtype) if self.config.uses_semantic else None
        c = (c - self.collaborative_mean.to(c.dtype)) / self.collaborative_std.to(c.dtype) if self.config.uses_collaborative else None
        return s, c

    def posteriors(self, s: Tensor | None, c: Tensor | None) -> dict[str, tuple[Tensor, Tensor]]:
        """Gaussian posteriors (mean, log-variance), each (B, D), of standardised inputs: per modality and fused."""
        self._check_inputs(s, c)
        posteriors = {}
        if self.semantic_encoder is not None:
            posteriors["semantic"] = self.semantic_encoder(s)
        if self.collaborative_encoder is not None:
            posteriors["collaborative"] = self.collaborative_encoder(c)
        experts = list(posteriors.values())
        posteriors["fused"] = product_of_experts([mu for mu, _ in experts], [logvar for _, logvar in experts], self.config.prior_expert)
        return posteriors

    def forward(self, s: Tensor | None, c: Tensor | None) -> TowerOutput:
        """Run the tower on raw inputs s (B, d_s) and c (B, d_c) and return the weighted loss terms."""
        cfg = self.config
        s, c = self.standardize(s, c)
        posteriors = self.posteriors(s, c)
        mu, logvar = posteriors["fused"]  # (B, D)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training and cfg.sample_latent else mu

        quantized = self.quantizer(z)
        losses: dict[str, Tensor] = {
            "quantizer/codebook": cfg.quantizer_weight * quantized.codebook_losses.sum(),
            "quantizer/commitment": cfg.quantizer_weight * quantized.commitment_losses.sum(),
            "prior_kl": cfg.prior_kl_weight * gaussian_kl(mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar)),
        }

        s_hat = c_hat = None
        if self.semantic_decoder is not None:
            s_hat = self.semantic_decoder(quantized.z_q)
            losses["reconstruction/semantic"] = cfg.semantic_reconstruction_weight * reconstruction_loss(s_hat, s)
        if self.collaborative_decoder is not None:
            c_hat = self.collaborative_decoder(quantized.z_q)
            losses["reconstruction/collaborative"] = cfg.collaborative_reconstruction_weight * reconstruction_loss(c_hat, c)
        breakdown: dict[str, Tensor] = {}
        if cfg.modalities == "both":
            alignment, breakdown = self._alignment_losses(posteriors, quantized.codes)
            losses.update(alignment)

        total = sum(losses.values())
        # Per-level breakdowns are logged but are already inside the totals above.
        losses.update(breakdown)
        for level in range(self.quantizer.levels):
            losses[f"quantizer/level{level}_codebook"] = cfg.quantizer_weight * quantized.codebook_losses[level]
            losses[f"quantizer/level{level}_commitment"] = cfg.quantizer_weight * quantized.commitment_losses[level]
        losses["loss"] = total
        return TowerOutput(losses=losses, codes=quantized.codes, quantized=quantized, s_hat=s_hat, c_hat=c_hat)

    def _alignment_losses(
        self, posteriors: dict[str, tuple[Tensor, Tensor]], fused_codes: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Return the weighted alignment terms and, separately, the per-level parts of the code-level term."""
        cfg = self.config
        mu_s, logvar_s = posteriors["semantic"]
        mu_c, logvar_c = posteriors["collaborative"]

        # Instance level: each entity's semantic mean should pick out its own collaborative mean in the batch.
        similarity = F.normalize(mu_s, dim=-1) @ F.normalize(mu_c, dim=-1).T / cfg.infonce_temperature  # (B, B)
        targets = torch.arange(similarity.shape[0], device=similarity.device)
        infonce = 0.5 * (F.cross_entropy(similarity, targets) + F.cross_entropy(similarity.T, targets))

        # Distribution level: symmetric KL between the two posteriors.
        symmetric_kl = gaussian_kl(mu_s, logvar_s, mu_c, logvar_c) + gaussian_kl(mu_c, logvar_c, mu_s, logvar_s)

        # Code level: the semantic mean, quantized along the fused codes' residual path, should choose those codes.
        logits = self.quantizer.code_logits(mu_s, fused_codes, cfg.code_alignment_temperature)
        per_level = [F.cross_entropy(level_logits, fused_codes[:, level]) for level, level_logits in enumerate(logits)]

        terms = {
            "alignment/infonce": cfg.infonce_weight * infonce,
            "alignment/distribution_kl": cfg.distribution_kl_weight * symmetric_kl,
            "alignment/code": cfg.code_alignment_weight * torch.stack(per_level).sum(),
        }
        breakdown = {f"alignment/level{level}_code": cfg.code_alignment_weight * term for level, term in enumerate(per_level)}
        return terms, breakdown

    @torch.no_grad()
    def latent(self, s: Tensor | None, c: Tensor | None) -> Tensor:
        """Fused posterior mean (B, D) of raw inputs; the deterministic latent that IDs are computed from."""
        s, c = self.standardize(s, c)
        return self.posteriors(s, c)["fused"][0]

    @torch.no_grad()
    def encode(self, s: Tensor | None, c: Tensor | None, previous: Tensor | None = None, stickiness: float = 0.0) -> Tensor:
        """Codes (B, L) of raw inputs: nearest codeword of the fused posterior mean at every level, no balancing.

        ``previous`` and ``stickiness`` are passed to ``ResidualQuantizer.encode``: rows keep codes they already have
        unless the nearest codeword is clearly closer.
        """
        return self.quantizer.encode(self.latent(s, c), previous, stickiness)

    @torch.no_grad()
    def reconstruction_errors(self, s: Tensor | None, c: Tensor | None) -> dict[str, float]:
        """Unweighted reconstruction loss per modality from the deterministic codes, in standardised units."""
        s_std, c_std = self.standardize(s, c)
        z_hat = self.quantizer.decode(self.encode(s, c))
        errors = {}
        if self.semantic_decoder is not None:
            errors["semantic"] = float(reconstruction_loss(self.semantic_decoder(z_hat.to(s_std.dtype)), s_std))
        if self.collaborative_decoder is not None:
            errors["collaborative"] = float(reconstruction_loss(self.collaborative_decoder(z_hat.to(c_std.dtype)), c_std))
        return errors

    def _check_inputs(self, s: Tensor | None, c: Tensor | None) -> None:
        expected = (("semantic", s, self.semantic_dim, self.config.uses_semantic), ("collaborative", c, self.collaborative_dim, self.config.uses_collaborative))
        for name, x, dim, used in expected:
            if not used:
                continue
            if x is None:
                raise ValueError(f"tokenizer.modalities={self.config.modalities!r} needs {name} vectors, got None.")
            if x.ndim != 2 or x.shape[1] != dim:
                raise ValueError(f"{name} vectors must have shape (B, {dim}), got {tuple(x.shape)}.")
