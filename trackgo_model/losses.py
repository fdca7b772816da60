"""Attention loss (spec §5, Eq. 8). The diffusion (EDM) loss lives in ``trackgo_model.train.edm``.

    L_attn = Σ_{q ∈ C} Σ_{i=1..F} ( A_q(i, i) · φ(M_i) )²

A_q(i, i): the original-branch attention of frame i to itself in temporal layer q, per spatial
position and head (collected by the adapters, ``CollectedMap.diag``: (B, h·w, heads, F));
M_i: the union mask of the moving components in frame i; φ: adaptive average pooling to the
layer's grid (the fraction of the cell that moves), so a mask is treated like the trajectories.

Normalisation (the paper gives none):
* ``mean`` (default): sum over frames; mean over batch, positions and heads; mean over layers.
  Per moving position this is Σ_i A(i, i)², between F·(1/F)² = 1/F (diffuse temporal attention)
  and F (every frame attends only to itself), scaled by the covered fraction. Its scale on a
  random model, and why λ = 1: docs/measurements.md.
* ``sum``: the literal double sum — over layers, frames and positions; mean over batch and heads.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .encoder import pool_to


def _as_masks(masks: torch.Tensor) -> torch.Tensor:
    if masks.ndim != 4:
        raise ValueError(f"motion masks must be (B, F, h, w); got {tuple(masks.shape)}")
    if masks.is_floating_point():
        return masks.float()
    return (masks > 0).float()  # label maps / bool: every non-zero id moves


def attention_loss(diag_maps: Iterable, masks: torch.Tensor, *, normalisation: str = "mean",
                   pooling: str = "avg") -> torch.Tensor:
    """Eq. 8 over collected maps.

    Args:
        diag_maps: ``CollectedMap``s (or a dict of them), each with ``diag`` (B, h·w, heads, F)
            and ``grid`` (h, w).
        masks: (B, F, H′, W′) motion masks, bool/int (> 0 moves) or float in [0, 1]; any
            resolution ≥ the finest grid (pixels or latents).
        normalisation: ``mean`` | ``sum`` (module docstring).

    Returns a scalar float32 tensor (differentiable w.r.t. the maps).
    """
    if isinstance(diag_maps, dict):
        diag_maps = list(diag_maps.values())
    diag_maps = list(diag_maps)
    if not diag_maps:
        raise ValueError("no attention maps collected: run the model with collect_attention=True first")
    if normalisation not in ("mean", "sum"):
        raise ValueError(f"normalisation must be 'mean' or 'sum', got {normalisation!r}")
    m = _as_masks(masks)
    bsz, frames = m.shape[:2]
    terms = []
    for item in diag_maps:
        diag, (h, w) = item.diag, item.grid
        if diag.shape[0] != bsz or diag.shape[1] != h * w or diag.shape[3] != frames:
            raise ValueError(
                f"map {getattr(item, 'name', '?')} has shape {tuple(diag.shape)}, masks need "
                f"(B={bsz}, h·w={h * w}, heads, F={frames})"
            )
        phi = pool_to(m.flatten(0, 1).unsqueeze(1).to(diag.device), (h, w), pooling)  # (B·F, 1, h, w)
        phi = phi.reshape(bsz, frames, h * w).transpose(1, 2).unsqueeze(2)  # (B, h·w, 1, F)
        sq = (diag.float() * phi).pow(2)  # (B, h·w, heads, F)
        if normalisation == "mean":
            terms.append(sq.sum(dim=-1).mean())
        else:
            terms.append(sq.sum(dim=(1, 3)).mean())
    total = torch.stack(terms)
    return total.mean() if normalisation == "mean" else total.sum()
