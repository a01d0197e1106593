import numpy as np
import pytest
import torch

from ttds.tokenizer.diagnostics import code_usage
from ttds.tokenizer.module import fit_tower
from ttds.tokenizer.towers import DualModalityVAE, TowerConfig, product_of_experts, reconstruction_loss, tower_config_from_dict


def paired_items(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 items in 4 well-separated pairs, in both modalities."""
    generator = torch.Generator().manual_seed(seed)
    semantic_centers = torch.randn(4, 16, generator=generator) * 5
    collaborative_centers = torch.randn(4, 8, generator=generator) * 5
    semantic = semantic_centers.repeat_interleave(2, 0) + 0.05 * torch.randn(8, 16, generator=generator)
    collaborative = collaborative_centers.repeat_interleave(2, 0) + 0.05 * torch.randn(8, 8, generator=generator)
    return semantic.numpy(), collaborative.numpy()


def small_config(**overrides) -> TowerConfig:
    values = {"latent_dim": 8, "hidden_dims": [32], "batch_size": 8, "max_epochs": 20, "quantizer": {"levels": 2, "codebook_size": 4}}
    values.update(overrides)
    return tower_config_from_dict(values)


def test_reconstruction_loss_sums_over_features():
    x = torch.ones(1, 4)
    loss = reconstruction_loss(torch.zeros(1, 4), x)
    doubled = reconstruction_loss(torch.zeros(1, 8), torch.cat([x, x], dim=1))

    assert loss.item() == 4.0
    assert doubled.item() == 8.0


def test_reconstruction_loss_averages_over_batch():
    x = torch.ones(3, 4)
    assert reconstruction_loss(torch.zeros(3, 4), x).item() == 4.0


def test_product_of_experts_weights_by_precision():
    mus = [torch.tensor([[1.0]]), torch.tensor([[3.0]])]
    logvars = [torch.zeros(1, 1), torch.zeros(1, 1)]
    mu, logvar = product_of_experts(mus, logvars, prior_expert=True)
    mu_no_prior, logvar_no_prior = product_of_experts(mus, logvars, prior_expert=False)

    assert torch.allclose(mu, torch.tensor([[4.0 / 3.0]]))
    assert torch.allclose(logvar.exp(), torch.tensor([[1.0 / 3.0]]))
    assert torch.allclose(mu_no_prior, torch.tensor([[2.0]]))
    assert torch.allclose(logvar_no_prior.exp(), torch.tensor([[0.5]]))


def test_config_rejects_unknown_key():
    with pytest.raises(ValueError, match=r"tokenizer has unknown keys \['latent_size'\]"):
        tower_config_from_dict({"latent_size": 8})


def test_config_rejects_unknown_quantizer_key():
    with pytest.raises(ValueError, match=r"tokenizer.quantizer has unknown keys \['beta'\]"):
        tower_config_from_dict({"quantizer": {"beta": 0.25}})


def test_config_rejects_unknown_modality():
    with pytest.raises(ValueError, match="modalities='text'"):
        TowerConfig(modalities="text")


def test_both_modalities_give_every_term():
    semantic, collaborative = paired_items()
    model = DualModalityVAE(small_config(), semantic_dim=16, collaborative_dim=8)
    model.train()
    output = model(torch.from_numpy(semantic), torch.from_numpy(collaborative))
    output.losses["loss"].backward()

    expected = {
        "reconstruction/semantic",
        "reconstruction/collaborative",
        "quantizer/codebook",
        "quantizer/commitment",
        "alignment/infonce",
        "alignment/distribution_kl",
        "alignment/code",
        "prior_kl",
        "loss",
    }
    assert expected <= set(output.losses)
    assert all(torch.isfinite(value) for value in output.losses.values())
    assert model.semantic_encoder.net[0].weight.grad.abs().sum() > 0
    assert model.collaborative_encoder.net[0].weight.grad.abs().sum() > 0


def test_code_alignment_trains_semantic_encoder():
    semantic, collaborative = paired_items()
    model = DualModalityVAE(small_config(), semantic_dim=16, collaborative_dim=8)
    model.train()
    output = model(torch.from_numpy(semantic), torch.from_numpy(collaborative))
    (gradient,) = torch.autograd.grad(output.losses["alignment/code"], model.semantic_encoder.net[0].weight)

    assert output.losses["alignment/code"] > 0
    assert gradient.abs().sum() > 0
    for level in range(2):
        assert output.losses[f"alignment/level{level}_code"] > 0


def test_single_modality_turns_off_other_terms():
    semantic, _ = paired_items()
    model = DualModalityVAE(small_config(modalities="semantic"), semantic_dim=16, collaborative_dim=0)
    model.train()
    output = model(torch.from_numpy(semantic), None)

    assert model.collaborative_encoder is None
    assert model.collaborative_decoder is None
    assert "reconstruction/collaborative" not in output.losses
    assert not any(key.startswith("alignment/") for key in output.losses)
    assert torch.isfinite(output.losses["loss"])


def test_missing_modality_input_raises():
    model = DualModalityVAE(small_config(), semantic_dim=16, collaborative_dim=8)
    with pytest.raises(ValueError, match="needs collaborative vectors, got None"):
        model(torch.zeros(2, 16), None)


def test_wrong_input_width_raises():
    model = DualModalityVAE(small_config(), semantic_dim=16, collaborative_dim=8)
    with pytest.raises(ValueError, match=r"semantic vectors must have shape \(B, 16\), got \(2, 15\)"):
        model(torch.zeros(2, 15), torch.zeros(2, 8))


def test_encode_deterministic_in_training():
    semantic, collaborative = paired_items()
    model = DualModalityVAE(small_config(), semantic_dim=16, collaborative_dim=8)
    model.train()
    s, c = torch.from_numpy(semantic), torch.from_numpy(collaborative)

    assert torch.equal(model.encode(s, c), model.encode(s, c))


def test_fit_tower_separates_pairs():
    semantic, collaborative = paired_items()
    keys = [f"item{index}" for index in range(8)]
    model, table, diagnostics = fit_tower(semantic, collaborative, keys, small_config(max_epochs=10))
    level_stats = code_usage(table.codes, 4)

    assert np.unique(table.codes[:, 0]).size == 4
    assert np.array_equal(table.codes[0::2, 0], table.codes[1::2, 0])
    assert np.unique(table.codes, axis=0).shape[0] >= 4
    assert level_stats[0]["entropy"] > 0
    assert np.unique(table.ids, axis=0).shape[0] == 8
    assert diagnostics["tokenizer/item/level0_usage"] == 1.0
    assert diagnostics["tokenizer/item/collision_rate_after_suffix"] == 0.0
    assert not model.training


def test_fit_tower_five_items_eight_codes():
    generator = torch.Generator().manual_seed(1)
    semantic = (torch.randn(5, 16, generator=generator) * 3).numpy()
    collaborative = (torch.randn(5, 8, generator=generator) * 3).numpy()
    config = small_config(batch_size=5, max_epochs=5, quantizer={"levels": 2, "codebook_size": 8})
    model, table, diagnostics = fit_tower(semantic, collaborative, [f"i{index}" for index in range(5)], config)

    assert torch.isfinite(model.quantizer.codebooks).all()
    assert all(np.isfinite(value) for value in diagnostics.values())
    assert np.unique(table.ids, axis=0).shape[0] == 5


def test_fit_tower_writes_diagnostics(tmp_path):
    semantic, collaborative = paired_items()
    _, _, diagnostics = fit_tower(semantic, collaborative, [f"item{index}" for index in range(8)], small_config(max_epochs=2), diagnostics_dir=tmp_path)

    assert (tmp_path / "item_diagnostics.json").is_file()
    assert (tmp_path / "item_code_usage.png").stat().st_size > 0
    assert "tokenizer/item/reconstruction_semantic" in diagnostics
    assert "tokenizer/item/level1_perplexity" in diagnostics


def test_fit_tower_rejects_nan_vectors():
    semantic, collaborative = paired_items()
    semantic[0, 0] = np.nan
    with pytest.raises(ValueError, match="semantic vectors contains NaN"):
        fit_tower(semantic, collaborative, [f"item{index}" for index in range(8)], small_config())
