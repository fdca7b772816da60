"""The same checks on a GPU (skipped where CUDA is absent): kernel vs reference, fresh = bare."""
from __future__ import annotations

import copy

import pytest
import torch

from trackgo_model.attention import track_attention
from trackgo_model.model import TrackGoUNet, build_unet

from .test_adapter import make_inputs, reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("case", [dict(mode="paper", tau=-100.0), dict(mode="gated", gate=0.4, motion=0.5)])
def test_track_attention_on_cuda_matches_reference(case):
    ins = make_inputs(7, seed=3)
    ref_out, ref_a, _ = reference(*ins, **case)
    dev = [x.cuda() for x in ins]
    out = track_attention(*dev, kernel="sdpa", **case).out
    res = track_attention(*dev, with_maps=True, **case)  # the explicit kernel
    out_maps, (a, _) = res.out, res.maps
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out_maps.double().cpu(), ref_out, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(a.double().cpu(), ref_a, atol=1e-4, rtol=1e-3)
    out16 = track_attention(*(x.bfloat16() for x in dev), kernel="sdpa", **case).out
    torch.testing.assert_close(out16.double().cpu(), ref_out, atol=0.05, rtol=0.05)


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@torch.no_grad()
def test_fresh_model_reproduces_bare_unet_on_cuda(dtype, tol):
    torch.manual_seed(0)
    bare = build_unet("tiny", device="cuda", dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    b, f, h, w = 2, 6, 8, 12
    sample = torch.randn(b, f, 8, h, w, generator=g).cuda().to(dtype)
    t = torch.rand(b, generator=g).cuda().to(dtype)
    ehs = torch.randn(b, 1, 32, generator=g).cuda().to(dtype)
    ati = torch.randn(b, 3, generator=g).cuda().to(dtype)
    p = (torch.rand(b, f, 3, 8 * h, 8 * w, generator=g) * 2 - 1).cuda().to(dtype)
    ref = bare(sample, t, ehs, ati).sample.float()
    model = TrackGoUNet.from_unet(copy.deepcopy(bare))
    out = model(sample, t, ehs, ati, trajectories=p).float()
    assert model.encoder.heads["32"].weight.dtype == dtype
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
