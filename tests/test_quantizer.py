import pytest
import torch

from ttds.tokenizer.quantizer import QuantizerConfig, ResidualQuantizer, kmeans, sinkhorn_assign


def clustered_latents(n_clusters: int = 4, per_cluster: int = 16, dim: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, dim, generator=generator) * 4
    return centers.repeat_interleave(per_cluster, 0) + 0.1 * torch.randn(n_clusters * per_cluster, dim, generator=generator)


def test_commitment_weight_reaches_every_level():
    z = clustered_latents()
    terms = {}
    for weight in (0.0, 1.0):
        quantizer = ResidualQuantizer(QuantizerConfig(levels=3, codebook_size=4, commitment_weight=weight, sinkhorn_levels=[]), dim=8)
        quantizer.train()
        terms[weight] = quantizer(z).commitment_losses

    for level in range(3):
        assert terms[0.0][level] == 0
        assert terms[1.0][level] > 0
        assert terms[1.0][level] != terms[0.0][level]


def test_commitment_gradient_reaches_every_level():
    quantizer = ResidualQuantizer(QuantizerConfig(levels=3, codebook_size=4, sinkhorn_levels=[]), dim=8)
    quantizer.train()
    z = clustered_latents().requires_grad_(True)
    output = quantizer(z)

    for level in range(3):
        (gradient,) = torch.autograd.grad(output.commitment_losses[level], z, retain_graph=True)
        assert gradient.abs().sum() > 0


def test_codebook_loss_trains_own_level():
    quantizer = ResidualQuantizer(QuantizerConfig(levels=3, codebook_size=4, sinkhorn_levels=[]), dim=8)
    quantizer.train()
    output = quantizer(clustered_latents())

    for level in range(3):
        (gradient,) = torch.autograd.grad(output.codebook_losses[level], quantizer.codebooks, retain_graph=True)
        assert gradient[level].abs().sum() > 0
        others = [other for other in range(3) if other != level]
        assert gradient[others].abs().sum() == 0


def test_straight_through_keeps_gradient():
    quantizer = ResidualQuantizer(QuantizerConfig(levels=2, codebook_size=4), dim=8)
    quantizer.train()
    z = clustered_latents().requires_grad_(True)
    output = quantizer(z)
    output.z_q.sum().backward()

    assert torch.equal(z.grad, torch.ones_like(z))
    assert torch.allclose(output.z_q, quantizer.decode(output.codes), atol=1e-5)


def test_output_has_per_level_norms():
    quantizer = ResidualQuantizer(QuantizerConfig(levels=3, codebook_size=4), dim=8)
    quantizer.train()
    output = quantizer(clustered_latents())

    assert output.codes.shape == (64, 3)
    assert output.codes.dtype == torch.long
    assert output.residual_norms.shape == (3,)
    assert output.residual_norms[1] < output.residual_norms[0]


def test_kmeans_init_is_deterministic_under_seed():
    z = clustered_latents()
    first = ResidualQuantizer(QuantizerConfig(levels=2, codebook_size=8, seed=3), dim=8)
    second = ResidualQuantizer(QuantizerConfig(levels=2, codebook_size=8, seed=3), dim=8)
    first.initialise(z)
    second.initialise(z)

    assert torch.equal(first.codebooks, second.codebooks)
    assert bool(first.initialised)


def test_kmeans_finds_separated_clusters():
    z = clustered_latents(n_clusters=4, per_cluster=16)
    centroids = kmeans(z, 4, iters=10, generator=torch.Generator().manual_seed(0), noise=0.01)
    nearest = torch.cdist(z, centroids).argmin(1)

    assert nearest.unique().numel() == 4
    for cluster in range(4):
        assert nearest[cluster * 16 : (cluster + 1) * 16].unique().numel() == 1


def test_too_few_vectors_fall_back():
    z = clustered_latents(n_clusters=5, per_cluster=1)
    quantizer = ResidualQuantizer(QuantizerConfig(levels=2, codebook_size=8), dim=8)
    quantizer.train()
    output = quantizer(z)

    assert torch.isfinite(quantizer.codebooks).all()
    assert torch.isfinite(output.loss)
    assert quantizer.encode(z)[:, 0].unique().numel() == 5
    assert torch.unique(quantizer.codebooks[0], dim=0).shape[0] == 8


def test_too_few_vectors_strict_raises():
    quantizer = ResidualQuantizer(QuantizerConfig(levels=2, codebook_size=8, small_batch="error"), dim=8)
    quantizer.train()

    with pytest.raises(ValueError, match="got 5 vectors for codebook_size=8"):
        quantizer(clustered_latents(n_clusters=5, per_cluster=1))


def test_dead_code_reseeded_from_residuals():
    z = clustered_latents(n_clusters=2, per_cluster=8)
    quantizer = ResidualQuantizer(QuantizerConfig(levels=1, codebook_size=3, dead_code_steps=2, sinkhorn_levels=[]), dim=8)
    quantizer.initialise(z)
    with torch.no_grad():
        quantizer.codebooks[0, 2] = 1000.0  # far from every latent, so never chosen
    quantizer.train()

    quantizer(z)
    quantizer(z)
    assert quantizer.steps_unused[0, 2] == 2
    assert quantizer.codebooks[0, 2, 0] == 1000.0

    quantizer(z)
    assert quantizer.codebooks[0, 2].abs().max() < 100
    assert any(torch.equal(quantizer.codebooks[0, 2], row) for row in z)


def test_sinkhorn_spreads_skewed_assignment():
    distances = torch.tensor([[0.0, 1.0, 1.0, 1.0]]).repeat(8, 1) + 0.01 * torch.arange(8.0).unsqueeze(1) * torch.tensor([0.0, 1.0, 2.0, 3.0])
    balanced = sinkhorn_assign(distances, epsilon=0.05, iters=50)

    assert distances.argmin(1).unique().numel() == 1
    assert balanced.unique().numel() == 4
    assert torch.bincount(balanced, minlength=4).max() <= 3


def test_encode_ignores_sinkhorn():
    z = clustered_latents()
    quantizer = ResidualQuantizer(QuantizerConfig(levels=2, codebook_size=8, sinkhorn_levels=[0, 1]), dim=8)
    quantizer.initialise(z)
    quantizer.eval()

    assert torch.equal(quantizer.encode(z), quantizer(z).codes)
    assert torch.equal(quantizer.encode(z), quantizer.encode(z.clone()))


def test_config_rejects_invalid_values():
    with pytest.raises(ValueError, match="sinkhorn_levels"):
        QuantizerConfig(levels=2, sinkhorn_levels=[2])
    with pytest.raises(ValueError, match="small_batch"):
        QuantizerConfig(small_batch="pad")
    with pytest.raises(ValueError, match="non-negative"):
        QuantizerConfig(commitment_weight=-1)


def test_sinkhorn_defaults_to_last_level():
    assert QuantizerConfig(levels=3).sinkhorn_levels == [2]
    assert QuantizerConfig(levels=3, sinkhorn_levels=[]).sinkhorn_levels == []


def _two_code_quantizer(levels: int = 1) -> ResidualQuantizer:
    """Codewords (0, 0) and (1, 0) at every level, so the distances of a latent are easy to write down."""
    quantizer = ResidualQuantizer(QuantizerConfig(levels=levels, codebook_size=2, kmeans_init=False), dim=2)
    quantizer.codebooks.data[:] = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    return quantizer.eval()


def test_sticky_encode_keeps_code_within_margin():
    quantizer = _two_code_quantizer()
    z = torch.tensor([[0.55, 0.0]])  # squared distance 0.3025 to code 0, 0.2025 to code 1 (ratio 1.49)
    previous = torch.tensor([[0]])

    assert quantizer.encode(z).tolist() == [[1]]
    assert quantizer.encode(z, previous, stickiness=0.6).tolist() == [[0]]
    assert quantizer.encode(z, previous, stickiness=0.3).tolist() == [[1]]
    assert quantizer.encode(z, previous, stickiness=0.0).tolist() == [[1]]


def test_sticky_encode_uses_kept_residual():
    quantizer = _two_code_quantizer(levels=2)
    quantizer.codebooks.data[1] = torch.tensor([[0.0, 0.0], [1.2, 0.0]])
    z = torch.tensor([[1.2, 0.0]])  # nearest path: level 0 code 1 (residual 0.2), then level 1 code 0
    previous = torch.tensor([[0, 0]])  # level 0 code 0 is 1.44 away against 0.04 for code 1

    assert quantizer.encode(z, previous, stickiness=1.0).tolist() == [[1, 0]]
    # Level 0 kept at m = 50 leaves the residual 1.2, which level 1's code 1 matches exactly, so level 1 moves.
    assert quantizer.encode(z, previous, stickiness=50.0).tolist() == [[0, 1]]


def test_sticky_encode_rejects_bad_arguments():
    quantizer = _two_code_quantizer(levels=2)
    z = torch.zeros(3, 2)

    with pytest.raises(ValueError, match="stickiness"):
        quantizer.encode(z, torch.zeros(3, 2, dtype=torch.long), stickiness=-0.1)
    with pytest.raises(ValueError, match="expected"):
        quantizer.encode(z, torch.zeros(2, 2, dtype=torch.long), stickiness=0.5)
