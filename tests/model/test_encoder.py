"""Trajectory encoder: shapes, normalisation, per-frame independence, pooling commutes with heads."""
from __future__ import annotations

import pytest
import torch

from trackgo_model.configs import EncoderConfig
from trackgo_model.encoder import TrajectoryEncoder, pool_to


def _randomise_heads(enc: TrajectoryEncoder) -> None:
    torch.manual_seed(1)
    for head in enc.heads.values():
        torch.nn.init.normal_(head.weight, std=0.2)
        torch.nn.init.normal_(head.bias, std=0.2)


def test_structure_six_convs_two_pools_overall_eight():
    enc = TrajectoryEncoder([32, 64])
    assert len(enc.convs) == 6
    assert [c.stride[0] for c in enc.convs] == [1, 2, 1, 1, 1, 1]
    p = torch.rand(2, 3, 3, 48, 80) * 2 - 1
    out = enc(p)
    assert set(out) == {32, 64}
    assert out[32].shape == (6, 32, 6, 10) and out[64].shape == (6, 64, 6, 10)


def test_fresh_features_are_one_nonzero_constant_vector():
    enc = TrajectoryEncoder([32, 64])
    out = enc(torch.rand(1, 3, 3, 16, 24) * 2 - 1)
    for w, f in out.items():
        expect = enc.heads[str(w)].bias.view(1, w, 1, 1).expand_as(f)
        assert torch.equal(f, expect)  # same vector at every frame and position
        assert f.abs().max() > 0.1
    assert torch.count_nonzero(enc.heads["32"].weight) == 0
    assert enc.trunk(torch.rand(1, 2, 3, 16, 16)).std() > 0


def test_uint8_input_is_mapped_to_minus_one_one():
    enc = TrajectoryEncoder([32])
    _randomise_heads(enc)
    u8 = torch.randint(0, 256, (1, 2, 3, 16, 24), dtype=torch.uint8)
    as_float = u8.float() / 127.5 - 1.0
    assert as_float.min() >= -1 and as_float.max() <= 1
    torch.testing.assert_close(enc(u8)[32], enc(as_float)[32])


def test_frames_are_encoded_independently():
    enc = TrajectoryEncoder([32])
    _randomise_heads(enc)
    p = torch.rand(1, 4, 3, 16, 16) * 2 - 1
    perm = torch.tensor([2, 0, 3, 1])
    full = enc(p)[32]
    torch.testing.assert_close(enc(p[:, perm])[32], full[perm])


@pytest.mark.parametrize("op", ["avg", "nearest"])
@pytest.mark.parametrize("grid", [(3, 5), (2, 3), (1, 1)])
def test_features_at_equals_project_then_pool(op, grid):
    enc = TrajectoryEncoder([32, 64], EncoderConfig(pooling=op))
    _randomise_heads(enc)
    trunk = enc.trunk(torch.rand(1, 2, 3, 48, 80) * 2 - 1)  # /8 → 6×10
    for w in (32, 64):
        slow = pool_to(enc.project(trunk, w), grid, op)
        torch.testing.assert_close(enc.features_at(trunk, w, grid), slow, atol=1e-6, rtol=1e-5)


def test_avg_pool_is_area_average_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = pool_to(x, (2, 2), "avg")
    expect = torch.tensor([[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]])
    torch.testing.assert_close(out[0, 0], expect)


def test_bad_inputs_raise():
    enc = TrajectoryEncoder([32])
    with pytest.raises(ValueError, match="divisible by 8"):
        enc(torch.zeros(1, 2, 3, 12, 16))
    with pytest.raises(ValueError, match="B, F, 3"):
        enc(torch.zeros(1, 2, 4, 16, 16))
    with pytest.raises(TypeError, match="uint8 or float"):
        enc(torch.zeros(1, 2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(KeyError, match="no encoder head"):
        enc.project(torch.zeros(1, 256, 2, 2), 48)
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="max")


def test_sequence_features_is_features_at_in_temporal_layout():
    enc = TrajectoryEncoder([32])
    _randomise_heads(enc)
    bsz, frames = 2, 3
    trunk = enc.trunk(torch.rand(bsz, frames, 3, 40, 56) * 2 - 1)  # 5×7
    grid = (3, 4)
    seq = enc.sequence_features(trunk, 32, grid, bsz)
    ref = enc.features_at(trunk, 32, grid).reshape(bsz, frames, 32, 3, 4)
    assert seq.shape == (bsz * 12, frames, 32)
    for b, y, x in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        torch.testing.assert_close(seq[b * 12 + y * 4 + x], ref[b, :, :, y, x])


def test_channels_last_trunk_equals_reference_values_and_gradients():
    """set_channels_last: the same trunk and weight gradients (fp32), within bf16 rounding under
    autocast; the trunk comes out channels-last and switching back restores the layout."""
    torch.manual_seed(0)
    enc = TrajectoryEncoder([32])
    fast = TrajectoryEncoder([32])
    fast.load_state_dict(enc.state_dict())
    fast.set_channels_last(True)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in fast.convs)
    p = torch.rand(1, 3, 3, 32, 48) * 2 - 1
    ref, out = enc.trunk(p), fast.trunk(p)
    assert out.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(ref.shape)
    g_ref = torch.autograd.grad((ref * w).sum(), list(enc.convs.parameters()))
    g_out = torch.autograd.grad((out * w).sum(), list(fast.convs.parameters()))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16, out16 = enc.trunk(p), fast.trunk(p)
    assert out16.dtype == ref16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref16.float(), atol=0.05, rtol=0.05)
    seq_ref, seq_out = (e.sequence_features(t, 32, (2, 3), 1) for e, t in ((enc, ref), (fast, out)))
    torch.testing.assert_close(seq_out, seq_ref, atol=1e-5, rtol=1e-5)
    fast.set_channels_last(False)
    assert not fast.channels_last and fast.convs[1].weight.is_contiguous()
