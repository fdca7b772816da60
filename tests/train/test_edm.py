"""EDM preconditioning / weighting / σ sampling against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from trackgo_model.train import edm

# σ, c_skip = 1/(σ²+1), c_out = −σ/√(σ²+1), c_in = 1/√(σ²+1), c_noise = ln(σ)/4, w = (σ²+1)/σ²
HAND = [
    (0.5, 0.8, -0.4472135955, 0.8944271910, -0.1732867951, 5.0),
    (1.0, 0.5, -0.7071067812, 0.7071067812, 0.0, 2.0),
    (2.0, 0.2, -0.8944271910, 0.4472135955, 0.1732867951, 1.25),
    (10.0, 1 / 101, -10 / math.sqrt(101), 1 / math.sqrt(101), 0.25 * math.log(10.0), 1.01),
]


@pytest.mark.parametrize("sigma,c_skip,c_out,c_in,c_noise,w", HAND)
def test_preconditioning_and_weight_by_hand(sigma, c_skip, c_out, c_in, c_noise, w):
    sc = edm.edm_precondition(torch.tensor([sigma], dtype=torch.float64))
    assert sc.c_skip.item() == pytest.approx(c_skip, rel=1e-9)
    assert sc.c_out.item() == pytest.approx(c_out, rel=1e-9)
    assert sc.c_in.item() == pytest.approx(c_in, rel=1e-9)
    assert sc.c_noise.item() == pytest.approx(c_noise, abs=1e-9)
    assert edm.edm_loss_weight(torch.tensor([sigma], dtype=torch.float64)).item() == pytest.approx(w, rel=1e-9)


def test_denoiser_and_loss_on_scalars():
    # x0 = 1, ε = 0, σ = 1: F = 0 → D = c_skip·x = 0.5, loss = w·(0.5 − 1)² = 2·0.25 = 0.5
    x0 = torch.ones(1, 1, 1, 1, 1)
    sigma = torch.tensor([1.0])
    x_noisy = edm.add_noise(x0, torch.zeros_like(x0), sigma)
    d = edm.denoised_from_v(torch.zeros_like(x0), x_noisy, sigma)
    assert d.item() == pytest.approx(0.5)
    assert edm.edm_loss(d, x0, sigma).item() == pytest.approx(0.5)
    # σ = 2, ε = 1, x0 = 1 → x = 3; F = 1 → D = 0.2·3 − 2/√5 = 0.6 − 0.894427… ; loss = 1.25·(D − 1)²
    sigma = torch.tensor([2.0])
    x_noisy = edm.add_noise(x0, torch.ones_like(x0), sigma)
    assert x_noisy.item() == pytest.approx(3.0)
    d = edm.denoised_from_v(torch.ones_like(x0), x_noisy, sigma)
    expect_d = 0.6 - 2 / math.sqrt(5)
    assert d.item() == pytest.approx(expect_d, rel=1e-6)
    assert edm.edm_loss(d, x0, sigma).item() == pytest.approx(1.25 * (expect_d - 1) ** 2, rel=1e-6)


def test_perfect_v_prediction_gives_zero_loss_per_sample():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 3, 3, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    sigma = torch.tensor([0.1, 1.0, 30.0])
    x = edm.add_noise(x0, eps, sigma)
    sc = edm.edm_precondition(sigma)
    v = (x0 - edm.expand_like(sc.c_skip, x) * x) / edm.expand_like(sc.c_out, x)  # the v target
    loss = edm.edm_loss(edm.denoised_from_v(v, x, sigma), x0, sigma)
    assert loss.shape == (3,)
    assert torch.all(loss < 1e-8)
    # the per-sample mean: doubling the error in one sample quadruples only that sample's loss
    wrong = edm.edm_loss(x0 + 0.1, x0, sigma)
    wrong2 = edm.edm_loss(x0 + torch.tensor([0.2, 0.1, 0.1]).view(3, 1, 1, 1, 1), x0, sigma)
    assert wrong2[0].item() == pytest.approx(4 * wrong[0].item(), rel=1e-5)
    assert wrong2[1:].tolist() == pytest.approx(wrong[1:].tolist(), rel=1e-6)


def test_sigma_sampling_is_log_normal_and_reproducible():
    g = torch.Generator().manual_seed(3)
    s = edm.sample_sigmas(40000, 0.7, 1.6, generator=g)
    assert torch.all(s > 0)
    logs = torch.log(s)
    assert logs.mean().item() == pytest.approx(0.7, abs=0.03)
    assert logs.std().item() == pytest.approx(1.6, abs=0.03)
    a = edm.sample_log_normal(5, -3.0, 0.5, generator=torch.Generator().manual_seed(1))
    b = edm.sample_log_normal(5, -3.0, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        edm.sample_log_normal(2, 0.0, -1.0)
