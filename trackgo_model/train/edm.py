"""EDM preconditioning, loss weighting and noise-level sampling for SVD's v-prediction UNet.

Stable Video Diffusion is trained in the EDM parameterisation (Karras et al. 2022) with a
v-prediction network F. The denoiser is

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))

    c_skip = 1/(σ²+1),  c_out = −σ/√(σ²+1),  c_in = 1/√(σ²+1),  c_noise = 0.25·ln σ

and the training loss on x_noisy = x0 + σ·ε is w(σ)·‖D(x_noisy; σ) − x0‖² with
w(σ) = (σ²+1)/σ², averaged per sample. Noise levels for fine-tuning are drawn as
ln σ ~ N(P_mean, P_std²); the conditioning-image augmentation level as ln σ_cond ~ N(−3, 0.5²).

All functions take ``sigma`` as a tensor of shape (B,) (or any shape) and return tensors of the
same shape; :func:`expand_like` broadcasts a (B,) tensor against (B, F, C, h, w) latents.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EDMScalings:
    """The four EDM coefficients for a batch of noise levels, each shaped like ``sigma``."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_precondition(sigma: torch.Tensor) -> EDMScalings:
    """EDM coefficients for v-prediction at noise levels ``sigma`` (σ_data = 1, SVD's choice).

    sigma: (B,) float, > 0  →  EDMScalings(c_skip, c_out, c_in, c_noise), each (B,)
    """
    sigma = torch.as_tensor(sigma)
    if not torch.is_floating_point(sigma):
        sigma = sigma.float()
    s2p1 = sigma * sigma + 1.0
    return EDMScalings(
        c_skip=1.0 / s2p1,
        c_out=-sigma / torch.sqrt(s2p1),
        c_in=1.0 / torch.sqrt(s2p1),
        c_noise=0.25 * torch.log(sigma),
    )


def edm_loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """w(σ) = (σ²+1)/σ², the EDM weight for σ_data = 1.  sigma: (B,) → (B,)"""
    sigma = torch.as_tensor(sigma)
    return (sigma * sigma + 1.0) / (sigma * sigma)


def expand_like(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, …, 1) with ``target.ndim`` dims, on target's device/dtype."""
    return values.to(device=target.device, dtype=target.dtype).reshape(
        values.shape[0], *([1] * (target.ndim - 1))
    )


def sample_log_normal(
    batch: int,
    mean: float,
    std: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """exp(mean + std·n), n ~ N(0, 1): (batch,) float32. Used for σ (0.7, 1.6) and σ_cond (−3, 0.5)."""
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    n = torch.randn(batch, generator=generator, dtype=torch.float32, device="cpu")
    return torch.exp(mean + std * n).to(device)


def sample_sigmas(
    batch: int,
    p_mean: float = 0.7,
    p_std: float = 1.6,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training noise levels: ln σ ~ N(p_mean, p_std²).  → (batch,) float32"""
    return sample_log_normal(batch, p_mean, p_std, generator=generator, device=device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_noisy = x0 + σ·ε.  x0, noise: (B, …); sigma: (B,)"""
    return x0 + expand_like(sigma, x0) * noise


def denoised_from_v(
    model_output: torch.Tensor, x_noisy: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """D = c_skip·x_noisy + c_out·F, where F = model_output is the network's v-prediction.

    model_output, x_noisy: (B, F, 4, h, w); sigma: (B,) → (B, F, 4, h, w) in model_output's dtype
    promoted with x_noisy's.
    """
    sc = edm_precondition(sigma.float())
    return expand_like(sc.c_skip, x_noisy) * x_noisy + expand_like(sc.c_out, x_noisy) * model_output


def edm_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted loss w(σ)·mean((D − x0)²) over all non-batch dims, in float32.

    denoised, x0: (B, …); sigma: (B,) → (B,)
    """
    err = (denoised.float() - x0.float()) ** 2
    per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
    return edm_loss_weight(sigma.float().to(per_sample.device)) * per_sample
