"""Residual quantizer: L levels of K codewords that encode a latent vector as L integer codes.

Shapes: B = batch, L = levels, K = codes per level, D = latent dimension.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SMALL_BATCH_POLICIES = ("noise", "error")


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances between rows of x (B, D) and rows of y (K, D), as (B, K)."""
    return ((x * x).sum(-1, keepdim=True) - 2 * x @ y.T + (y * y).sum(-1)).clamp_min(0)


def _nearest(x: Tensor, centroids: Tensor, chunk: int = 65536) -> Tensor:
    """Index of the nearest centroid for each row of x (N, D), in chunks so N x K never fills memory."""
    return torch.cat([squared_distances(part, centroids).argmin(dim=1) for part in x.split(chunk)])


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Pick k seed rows of x (N, D), each with probability proportional to its squared distance to the seeds so far."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    seeds = [first]
    min_distance = squared_distances(x, x[first : first + 1]).squeeze(1)  # (N,)
    for _ in range(1, k):
        # Sampling runs on the CPU so one seeded generator serves any device.
        weights = min_distance.double().cpu()
        pick = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        seeds.append(pick)
        min_distance = torch.minimum(min_distance, squared_distances(x, x[pick : pick + 1]).squeeze(1))
    return x[seeds].clone()


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator, noise: float) -> Tensor:
    """Cluster rows of x (N, D) into k centroids (k, D): k-means++ seeding, then Lloyd iterations.

    With k or fewer distinct rows, the centroids are those rows, and the remaining ones are copies
    of them (in sorted row order) plus Gaussian jitter of ``noise`` times the rows' RMS norm, drawn
    from ``generator``. A cluster that empties keeps its previous centroid.
    """
    x = x.float()
    distinct = torch.unique(x, dim=0)  # sorted rows, so the fallback does not depend on input order
    if distinct.shape[0] <= k:
        n_extra = k - distinct.shape[0]
        copies = distinct[torch.arange(n_extra, device=x.device) % distinct.shape[0]]
        rms = x.pow(2).sum(-1).mean().sqrt().item()
        scale = noise * rms if rms > 0 else noise
        jitter = torch.randn(copies.shape, generator=generator).to(x.device)
        if n_extra:
            log.warning("k-means got %d distinct vectors for %d codes; %d codes start as jittered copies", distinct.shape[0], k, n_extra)
        return torch.cat([distinct, copies + scale * jitter])

    centroids = _kmeans_plus_plus(x, k, generator)
    for _ in range(iters):
        assign = _nearest(x, centroids)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return centroids


@dataclass
class QuantizerConfig:
    """Settings of the residual quantizer; the latent dimension comes from the tower."""

    levels: int = 3  # L: codes per ID before the collision suffix
    codebook_size: int = 256  # K: codewords per level
    codebook_weight: float = 1.0  # weight of ||sg(residual) - codeword||^2, which moves the codewords
    commitment_weight: float = 0.25  # beta: weight of ||residual - sg(codeword)||^2, which moves the encoder
    kmeans_init: bool = True  # initialise each level by k-means on the first batch of residuals
    kmeans_iters: int = 20  # Lloyd iterations per level of that initialisation
    small_batch: str = "noise"  # fewer vectors than codes at init: "noise" fills the rest with jittered copies, "error" raises
    init_noise: float = 0.01  # jitter of those copies and of repeated dead-code seeds, as a fraction of the residuals' RMS norm
    dead_code_steps: int = 100  # re-seed a code unused for this many training steps; 0 turns the reset off
    sinkhorn_levels: list[int] | None = None  # levels with balanced assignment in training; None = the last level, [] = none
    sinkhorn_epsilon: float = 0.05  # entropy weight of the Sinkhorn transport, on costs scaled to [0, 1]
    sinkhorn_iters: int = 30  # Sinkhorn normalisation rounds
    seed: int = 0  # seed of k-means++ and of the jitter

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError(f"quantizer.levels={self.levels} must be at least 1.")
        if self.codebook_size < 2:
            raise ValueError(f"quantizer.codebook_size={self.codebook_size} must be at least 2.")
        if self.codebook_weight < 0 or self.commitment_weight < 0:
            raise ValueError(
                f"quantizer.codebook_weight={self.codebook_weight} and quantizer.commitment_weight={self.commitment_weight} "
                "must be non-negative."
            )
        if self.small_batch not in SMALL_BATCH_POLICIES:
            raise ValueError(f"quantizer.small_batch={self.small_batch!r} is not one of {SMALL_BATCH_POLICIES}.")
        if self.dead_code_steps < 0:
            raise ValueError(f"quantizer.dead_code_steps={self.dead_code_steps} is negative; use 0 to turn the reset off.")
        if self.sinkhorn_epsilon <= 0:
            raise ValueError(f"quantizer.sinkhorn_epsilon={self.sinkhorn_epsilon} must be positive.")
        if self.sinkhorn_levels is None:
            self.sinkhorn_levels = [self.levels - 1]
        bad = [level for level in self.sinkhorn_levels if not 0 <= level < self.levels]
        if bad:
            raise ValueError(f"quantizer.sinkhorn_levels={self.sinkhorn_levels} has levels {bad} outside 0..{self.levels - 1}.")


@dataclass
class QuantizerOutput:
    """Result of one quantizer pass. Loss terms are already weighted; index l is level l."""

    z_q: Tensor  # (B, D) straight-through quantized latent
    codes: Tensor  # (B, L) int64
    codebook_losses: Tensor  # (L,)
    commitment_losses: Tensor  # (L,)
    residual_norms: Tensor  # (L,) mean L2 norm of the residual entering each level, detached

    @property
    def loss(self) -> Tensor:
        return self.codebook_losses.sum() + self.commitment_losses.sum()


def sinkhorn_assign(distances: Tensor, epsilon: float, iters: int) -> Tensor:
    """Assign rows to columns of a (B, K) cost so that columns receive about B/K rows each.

    Runs log-domain Sinkhorn on costs scaled to [0, 1] and takes each row's largest transport weight.
    Returns (B,) int64 column indices.
    """
    cost = distances.float()
    cost = cost / cost.max().clamp_min(1e-12)
    log_plan = -cost / epsilon  # (B, K)
    n_rows, n_cols = cost.shape
    log_row_mass = -torch.log(torch.tensor(float(n_rows), device=cost.device))
    log_col_mass = -torch.log(torch.tensor(float(n_cols), device=cost.device))

    for _ in range(iters):
        log_plan = log_plan - torch.logsumexp(log_plan, dim=0, keepdim=True) + log_col_mass
        log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True) + log_row_mass
    return log_plan.argmax(dim=1)


class ResidualQuantizer(nn.Module):
    """L codebooks; level l quantizes what levels 0..l-1 left over.

    Codewords learn only from their codebook loss (residuals are passed on with the chosen codeword
    detached), and the encoder learns from the commitment loss of every level plus, through the
    straight-through estimator, from whatever consumes ``z_q``.
    """

    def __init__(self, config: QuantizerConfig, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"quantizer dim={dim} must be at least 1.")
        self.config = config
        self.dim = dim
        levels, size = config.levels, config.codebook_size
        self.codebooks = nn.Parameter(torch.randn(levels, size, dim) / dim**0.5)  # (L, K, D)
        self.register_buffer("initialised", torch.tensor(not config.kmeans_init))
        self.register_buffer("steps_unused", torch.zeros(levels, size, dtype=torch.long))  # (L, K)
        self._generator = torch.Generator().manual_seed(config.seed)

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @torch.no_grad()
    def initialise(self, z: Tensor) -> None:
        """Set every codebook by k-means on the residuals of ``z`` (B, D), level after level.

        With fewer distinct residuals than codes, k-means cannot place K centroids: the policy
        ``small_batch="noise"`` takes every distinct residual once and fills the remaining codes with
        copies jittered by seeded noise, and ``small_batch="error"`` raises.
        """
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"quantizer initialisation expects latents of shape (B, {self.dim}), got {tuple(z.shape)}.")
        if z.shape[0] < self.codebook_size and self.config.small_batch == "error":
            raise ValueError(
                f"k-means initialisation got {z.shape[0]} vectors for codebook_size={self.codebook_size}; "
                "pass a larger first batch, lower quantizer.codebook_size or set quantizer.small_batch='noise'."
            )

        residual = z.detach().float()  # (B, D)
        for level in range(self.levels):
            centroids = kmeans(
                residual,
                self.codebook_size,
                iters=self.config.kmeans_iters,
                generator=self._generator,
                noise=self.config.init_noise,
            )  # (K, D)
            self.codebooks.data[level] = centroids.to(self.codebooks.dtype)
            nearest = squared_distances(residual, centroids).argmin(dim=1)
            residual = residual - centroids[nearest]

        self.initialised.fill_(True)
        self.steps_unused.zero_()
        log.info("initialised %d codebooks of %d codes by k-means on %d latents", self.levels, self.codebook_size, z.shape[0])

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize latents z (B, D). In training mode this also initialises the codebooks on the first
        batch, re-seeds dead codes and uses Sinkhorn assignment on ``sinkhorn_levels``."""
        if self.training and not bool(self.initialised):
            self.initialise(z)

        residual = z  # (B, D)
        z_hat = torch.zeros_like(z)
        codes, codebook_losses, commitment_losses, residual_norms = [], [], [], []
        for level in range(self.levels):
            if self.training:
                self._reset_dead_codes(level, residual.detach())
            codebook = self.codebooks[level]  # (K, D)

            with torch.no_grad():
                distances = squared_distances(residual.detach().float(), codebook.detach().float())  # (B, K)
                use_sinkhorn = self.training and level in self.config.sinkhorn_levels and z.shape[0] > 1
                if use_sinkhorn:
                    idx = sinkhorn_assign(distances, self.config.sinkhorn_epsilon, self.config.sinkhorn_iters)
                else:
                    idx = distances.argmin(dim=1)  # (B,)
            chosen = codebook[idx].to(z.dtype)  # (B, D)

            # Squared distances are summed over D and averaged over the batch, like the reconstruction loss.
            codebook_losses.append(self.config.codebook_weight * (chosen - residual.detach()).pow(2).sum(-1).mean())
            commitment_losses.append(self.config.commitment_weight * (residual - chosen.detach()).pow(2).sum(-1).mean())
            residual_norms.append(residual.detach().float().norm(dim=-1).mean())

            if self.training:
                self._count_usage(level, idx)
            codes.append(idx)
            z_hat = z_hat + chosen.detach()
            residual = residual - chosen.detach()

        # Straight-through: consumers see z_hat, the encoder gets the gradient of z.
        z_q = z + (z_hat - z).detach()
        return QuantizerOutput(
            z_q=z_q,
            codes=torch.stack(codes, dim=-1),
            codebook_losses=torch.stack(codebook_losses),
            commitment_losses=torch.stack(commitment_losses),
            residual_norms=torch.stack(residual_norms),
        )

    @torch.no_grad()
    def encode(self, z: Tensor, previous: Tensor | None = None, stickiness: float = 0.0) -> Tensor:
        """Map latents (B, D) to codes (B, L) by nearest codeword at every level, with no balancing.

        With ``previous`` codes (B, L) and ``stickiness`` m > 0, a row keeps its previous code at a level while that
        codeword's squared distance to the residual is at most (1 + m) times the nearest one's, so small moves of
        the latent leave the ID as it was. Levels are decided in order, each on the residual the kept or new
        codes of the levels above leave. m = 0 is plain nearest codeword.
        """
        if stickiness < 0:
            raise ValueError(f"stickiness={stickiness} must not be negative; use 0 for the plain nearest codeword.")
        if previous is not None and previous.shape != (z.shape[0], self.levels):
            raise ValueError(
                f"previous codes have shape {tuple(previous.shape)}; expected {(z.shape[0], self.levels)}, one code per "
                "level for each latent. Pass codes from a table of this quantizer, or previous=None."
            )
        sticky = previous is not None and stickiness > 0

        residual = z.detach().float()
        codes = []
        for level in range(self.levels):
            codebook = self.codebooks[level].float()
            distances = squared_distances(residual, codebook)  # (B, K)
            idx = distances.argmin(dim=1)  # (B,)
            if sticky:
                old = previous[:, level].to(idx.device)  # (B,)
                nearest = distances.gather(1, idx[:, None]).squeeze(1)
                keep = distances.gather(1, old[:, None]).squeeze(1) <= (1.0 + stickiness) * nearest
                idx = torch.where(keep, old, idx)
            codes.append(idx)
            residual = residual - codebook[idx]
        return torch.stack(codes, dim=-1)

    def decode(self, codes: Tensor) -> Tensor:
        """Sum the codewords of codes (B, L) into latents (B, D)."""
        levels = torch.arange(self.levels, device=codes.device)
        return self.codebooks[levels, codes].sum(dim=1)

    def code_logits(self, z: Tensor, target_codes: Tensor, temperature: float) -> list[Tensor]:
        """Score every codeword of every level for latents z (B, D), following the residual path of target_codes (B, L).

        Level l's logits (B, K) are -||r_l - e_k||^2 / temperature, where r_l subtracts the target
        codewords of levels below l. The codebooks are detached, so a loss on these logits moves only z.
        """
        residual = z
        logits = []
        for level in range(self.levels):
            codebook = self.codebooks[level].detach().to(z.dtype)
            logits.append(-squared_distances(residual, codebook) / temperature)
            residual = residual - codebook[target_codes[:, level]]
        return logits

    @torch.no_grad()
    def _count_usage(self, level: int, idx: Tensor) -> None:
        used = torch.zeros(self.codebook_size, dtype=torch.bool, device=idx.device)
        used[idx] = True
        self.steps_unused[level] += 1
        self.steps_unused[level][used] = 0

    @torch.no_grad()
    def _reset_dead_codes(self, level: int, residual: Tensor) -> None:
        """Move codes unused for dead_code_steps steps onto the residuals (B, D) that the codebook serves worst."""
        if self.config.dead_code_steps == 0:
            return
        dead = (self.steps_unused[level] >= self.config.dead_code_steps).nonzero().squeeze(1)
        if dead.numel() == 0:
            return

        codebook = self.codebooks.data[level]
        error = squared_distances(residual.float(), codebook.float()).min(dim=1).values  # (B,)
        worst = error.argsort(descending=True, stable=True)
        picks = worst[torch.arange(dead.numel(), device=worst.device) % worst.numel()]
        replacement = residual[picks].float()

        # More dead codes than rows: the repeated rows get seeded jitter so no two codewords coincide.
        repeated = torch.arange(dead.numel(), device=worst.device) >= worst.numel()
        if repeated.any():
            scale = self.config.init_noise * residual.float().pow(2).sum(-1).mean().sqrt().clamp_min(1e-6)
            noise = torch.randn(replacement.shape, generator=self._generator).to(replacement.device)
            replacement[repeated] += scale * noise[repeated]

        codebook[dead] = replacement.to(codebook.dtype)
        self.steps_unused[level][dead] = 0
        log.debug("re-seeded %d dead codes at level %d", dead.numel(), level)
