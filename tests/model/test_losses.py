"""Attention loss (Eq. 8): hand-computed values, zero for empty masks, monotone in coverage."""
from __future__ import annotations

import pytest
import torch

from trackgo_model.adapter import CollectedMap
from trackgo_model.losses import attention_loss


def test_hand_computed_value_both_normalisations():
    # one layer, B=1, grid 2×2, 1 head, F=2, A(i,i) = 0.5 everywhere
    diag = torch.full((1, 4, 1, 2), 0.5)
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # frame 0, top-left cell fully covered
    masks[0, 1, 2:, 2:3] = True  # frame 1, bottom-right cell half covered
    maps = [CollectedMap("l0", diag, (2, 2))]
    # per position Σ_i (0.5·φ)²: pos0 0.25, pos3 (0.5·0.5)² = 0.0625 → mean over 4 positions
    assert attention_loss(maps, masks).item() == pytest.approx((0.25 + 0.0625) / 4)
    assert attention_loss(maps, masks, normalisation="sum").item() == pytest.approx(0.25 + 0.0625)
    # a second layer at grid 1×1 with A(i,i)=1: φ = [1/4, 1/8]; term = 1/16 + 1/64
    maps.append(CollectedMap("l1", torch.ones(1, 1, 1, 2), (1, 1)))
    l1 = 1 / 16 + 1 / 64
    assert attention_loss(maps, masks).item() == pytest.approx(((0.25 + 0.0625) / 4 + l1) / 2)
    assert attention_loss(maps, masks, normalisation="sum").item() == pytest.approx(0.3125 + l1)


def test_zero_with_empty_masks_and_grows_with_coverage():
    torch.manual_seed(0)
    maps = [CollectedMap("a", torch.rand(2, 12, 3, 5), (3, 4)), CollectedMap("b", torch.rand(2, 2, 3, 5), (1, 2))]
    masks = torch.zeros(2, 5, 24, 32)
    assert attention_loss(maps, masks).item() == 0.0
    values = []
    for cols in (4, 8, 16, 24, 32):
        masks = torch.zeros(2, 5, 24, 32, dtype=torch.uint8)
        masks[..., :cols] = 3  # label ids > 0 count as moving
        values.append(attention_loss(maps, masks).item())
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_gradient_reaches_maps_only_where_masks_are():
    diag = torch.rand(1, 4, 2, 3, requires_grad=True)
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 1, 0, 1] = 1.0
    attention_loss([CollectedMap("a", diag, (2, 2))], masks).backward()
    nz = diag.grad.nonzero()
    assert set(map(tuple, nz[:, [1, 3]].tolist())) == {(1, 1)}


def test_errors():
    with pytest.raises(ValueError, match="collect_attention"):
        attention_loss([], torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="h·w"):
        attention_loss([CollectedMap("a", torch.rand(1, 5, 1, 2), (2, 2))], torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="B, F, h, w"):
        attention_loss([CollectedMap("a", torch.rand(1, 4, 1, 2), (2, 2))], torch.zeros(2, 4, 4))
