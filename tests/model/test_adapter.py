"""track_attention against a loop-by-loop reference; adapter placement, layout and context."""
from __future__ import annotations

import math

import pytest
import torch

from trackgo_model.adapter import TrackAdapterProcessor, TrackContext, install_track_adapters, temporal_attn1_paths
from trackgo_model.attention import track_attention
from trackgo_model.encoder import TrajectoryEncoder
from trackgo_model.model import build_unet


def reference(q, k, v, qp, kp, *, alpha=0.2, tau=None, mode="gated", gate=None, motion=1.0, mask_value=-1.0e4):
    """Literal rule, python loops over batch/head/i/j, float64. Returns (out, A, A′).

    paper: A″ = A + A′; gated: A″ = A + g·(A′ − 1/F)."""
    q, k, v, qp, kp = (x.detach().double() for x in (q, k, v, qp, kp))
    bsz, heads, frames, d = q.shape
    out = torch.zeros_like(v)
    a_all = torch.zeros(bsz, heads, frames, frames, dtype=torch.float64)
    ap_all = torch.zeros_like(a_all)
    t = 0.0 if tau is None else float(tau)
    for b in range(bsz):
        for h in range(heads):
            if mode == "paper":
                g = 1.0
            elif gate is None:
                g = 0.0
            else:
                gt = torch.as_tensor(gate, dtype=torch.float64).flatten()
                g = float(gt[0] if gt.numel() == 1 else gt[h])
            for i in range(frames):
                sp = [sum(float(qp[b, h, i, c] * kp[b, h, j, c]) for c in range(d)) / math.sqrt(d)
                      for j in range(frames)]
                ep = [math.exp(x - max(sp)) for x in sp]
                ap = [x / sum(ep) for x in ep]
                mask = [mask_value if ap[j] >= alpha else t for j in range(frames)]
                s = [sum(float(q[b, h, i, c] * k[b, h, j, c]) for c in range(d)) / math.sqrt(d) + mask[j]
                     for j in range(frames)]
                e = [math.exp(x - max(s)) for x in s]
                a = [x / sum(e) for x in e]
                centre = 0.0 if mode == "paper" else 1.0 / frames
                row = [a[j] + g * (ap[j] - centre) for j in range(frames)]
                if motion != 1.0 and all(m == mask[0] for m in mask):  # unspecified row
                    mass = sum(row)
                    row = [motion * x + (1.0 - motion) * mass / frames for x in row]
                for j in range(frames):
                    out[b, h, i] += row[j] * v[b, h, j]
                    a_all[b, h, i, j] = a[j]
                    ap_all[b, h, i, j] = ap[j]
    return out, a_all, ap_all


def make_inputs(frames: int, seed: int = 0):
    """Batch 0: peaky A′ (partial masks); batch 1 head 0: q′ = 0 → uniform A′ (constant mask rows)."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, frames, 4)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    qp = torch.randn(shape, generator=g) * 3.0
    kp = torch.randn(shape, generator=g) * 3.0
    qp[1, 0] = 0.0
    return q, k, v, qp, kp


CASES = [
    dict(mode="paper"),
    dict(mode="paper", tau=-100.0),
    dict(mode="paper", tau=-1.0e4),
    dict(mode="gated"),
    dict(mode="gated", gate=torch.tensor([0.3, -0.2, 0.7])),
    dict(mode="gated", gate=torch.tensor([0.3, -0.2, 0.7]), tau=-50.0),
    dict(mode="gated", gate=0.5, motion=0.3),
    dict(mode="paper", motion=1.7, tau=-10.0),
]


@pytest.mark.parametrize("frames", [4, 7])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_track_attention_matches_loop_reference(frames, case):
    q, k, v, qp, kp = make_inputs(frames, seed=frames)
    ref_out, ref_a, ref_ap = reference(q, k, v, qp, kp, **case)
    res = track_attention(q, k, v, qp, kp, with_maps=True, **case)
    out, (a, ap) = res.out, res.maps
    assert res.diag is None
    fused = track_attention(q, k, v, qp, kp, kernel="sdpa", **case).out  # SDPA path, no maps
    explicit = track_attention(q, k, v, qp, kp, **case).out
    torch.testing.assert_close(ap.double(), ref_ap, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.double(), ref_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.double(), ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(explicit.double(), ref_out, atol=1e-5, rtol=1e-4)


def test_inputs_cover_partial_full_and_empty_mask_rows():
    for frames, want_full in ((4, True), (7, False)):
        *_, ap = reference(*make_inputs(frames, seed=frames))
        hits = (ap >= 0.2).sum(-1)
        assert ((hits > 0) & (hits < frames)).any(), "some rows must be partially masked"
        assert (hits == frames).any() == want_full, "F=4: uniform rows are fully masked"
        assert (hits == 0).any() == (not want_full), "F=7: uniform rows have no entry ≥ α"


@pytest.mark.parametrize("kernel", ["explicit", "sdpa"])
def test_fully_masked_rows_equal_plain_softmax_and_stay_finite_in_bf16(kernel):
    q, k, v, qp, kp = make_inputs(4)
    qp = torch.zeros_like(qp)  # A′ uniform 1/4 ≥ 0.2: every entry of every row masked
    plain = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
    out = track_attention(q, k, v, qp, kp, mode="gated", kernel=kernel).out
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=1e-5)
    out16 = track_attention(*(x.bfloat16() for x in (q, k, v, qp, kp)), mode="gated", kernel=kernel).out
    assert torch.isfinite(out16).all()
    torch.testing.assert_close(out16.float(), plain, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("kernel", ["explicit", "sdpa"])
def test_motion_knob_scales_temporal_variance_by_m_squared(kernel):
    q, k, v, qp, kp = make_inputs(7)
    zeros = torch.zeros_like(qp)  # every row unspecified
    gate = torch.tensor([0.4, 0.0, -0.3])
    base = track_attention(q, k, v, zeros, zeros, gate=gate, kernel=kernel).out
    var1 = base.var(dim=-2)
    prev = None
    for m in (0.0, 0.25, 0.5, 1.0, 1.5):
        var = track_attention(q, k, v, zeros, zeros, gate=gate, motion=m, kernel=kernel).out.var(dim=-2)
        torch.testing.assert_close(var, m * m * var1, atol=1e-6, rtol=1e-5)
        if prev is not None:
            assert (var.sum() > prev.sum())
        prev = var
    # rows with a real mask (specified by the user) are not touched by the knob
    out1 = track_attention(q, k, v, qp, kp, gate=gate, kernel=kernel).out
    out0 = track_attention(q, k, v, qp, kp, gate=gate, motion=0.0, kernel=kernel).out
    hits = (track_attention(q, k, v, qp, kp, gate=gate, with_maps=True).maps[1] >= 0.2).sum(-1)
    specified = (hits > 0) & (hits < 7)
    assert specified.any() and (~specified).any()
    torch.testing.assert_close(out0[specified], out1[specified])
    assert not torch.allclose(out0[~specified], out1[~specified])


def test_bad_arguments_raise():
    q, k, v, qp, kp = make_inputs(4)
    with pytest.raises(ValueError, match="mode"):
        track_attention(q, k, v, qp, kp, mode="nope")
    with pytest.raises(ValueError, match="gate"):
        track_attention(q, k, v, qp, kp, mode="paper", gate=0.1)
    with pytest.raises(ValueError, match="motion"):
        track_attention(q, k, v, qp, kp, motion=-1)
    with pytest.raises(ValueError, match="q_prime"):
        track_attention(q, k, v, qp[:, :, :2], kp)


def test_adapters_land_on_temporal_attn1_only_tiny():
    unet = build_unet("tiny", device="meta")
    ctx = TrackContext()
    adapters = install_track_adapters(unet, ctx)
    assert len(adapters) == 4
    for key, proc in unet.attn_processors.items():
        is_target = ".temporal_transformer_blocks." in key and key.endswith(".attn1.processor")
        assert isinstance(proc, TrackAdapterProcessor) == is_target, key
    assert sorted(adapters) == sorted(k[: -len(".processor")] for k, p in unet.attn_processors.items()
                                      if isinstance(p, TrackAdapterProcessor))
    with pytest.raises(ValueError, match="already"):
        install_track_adapters(unet, ctx)


def test_adapters_land_on_16_layers_svd_xt_meta():
    unet = build_unet("svd-xt", device="meta")
    n_total = len(unet.attn_processors)
    adapters = install_track_adapters(unet, TrackContext())
    assert len(adapters) == 16
    assert sum(isinstance(p, TrackAdapterProcessor) for p in unet.attn_processors.values()) == 16
    assert len(unet.attn_processors) == n_total
    assert all(".temporal_transformer_blocks.0.attn1" in p for p in adapters)
    widths = sorted(a.width for a in adapters.values())
    assert widths == [320] * 5 + [640] * 5 + [1280] * 6


def test_install_count_mismatch_raises():
    unet = build_unet("tiny", device="meta")
    with pytest.raises(ValueError, match="implies 5"):
        install_track_adapters(unet, TrackContext(), expected=5)


def test_adapter_weights_start_as_copies():
    unet = build_unet("tiny", device="cpu")
    adapters = install_track_adapters(unet, TrackContext())
    for path, proc in adapters.items():
        attn = unet.get_submodule(path)
        assert torch.equal(proc.to_q_prime.weight, attn.to_q.weight)
        assert torch.equal(proc.to_k_prime.weight, attn.to_k.weight)
        assert proc.to_q_prime.weight.data_ptr() != attn.to_q.weight.data_ptr()
        assert torch.equal(proc.gate, torch.ones(attn.heads))  # gated rule: g starts at 1


def test_grid_inference_with_odd_latents():
    state = TrackContext().begin(batch=2, frames=3, latent_hw=(9, 15))
    assert state.grid_for(2 * 9 * 15) == (9, 15)
    assert state.grid_for(2 * 5 * 8) == (5, 8)
    assert state.grid_for(2 * 3 * 4) == (3, 4)
    with pytest.raises(ValueError, match="no grid"):
        state.grid_for(2 * 7)


def _open_adapter():
    """The first temporal attn1 of a tiny UNet with a gated adapter (gate 0.5) and an encoder whose
    heads are not zero, so that the adapter branch acts: (attn, ctx, proc, enc)."""
    torch.manual_seed(0)
    unet = build_unet("tiny", device="cpu")
    path = temporal_attn1_paths(unet)[0]
    attn = unet.get_submodule(path)
    ctx = TrackContext(mode="gated")
    proc = TrackAdapterProcessor(attn, ctx, name=path)
    with torch.no_grad():
        proc.gate.fill_(0.5)
    enc = TrajectoryEncoder([proc.width])
    for head in enc.heads.values():
        torch.nn.init.normal_(head.weight, std=0.5)
    return attn, ctx, proc, enc


def test_processor_layout_matches_per_position_kernel():
    """Row b·h·w + y·w + x of the processor output uses the feature of (b, y, x) over frames."""
    attn, ctx, proc, enc = _open_adapter()
    bsz, frames, h, w = 2, 6, 3, 4
    trunk = torch.randn(bsz * frames, enc.trunk_channels, h, w)
    ctx.begin(batch=bsz, frames=frames, latent_hw=(h, w), encoder=enc, trunk=trunk)
    x = torch.randn(bsz * h * w, frames, proc.width)
    with torch.no_grad():
        out = proc(attn, x)
        feat = enc.features_at(trunk, proc.width, (h, w)).reshape(bsz, frames, proc.width, h, w)
        heads = attn.heads
        for b, yy, xx in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
            row = b * h * w + yy * w + xx
            f = feat[b, :, :, yy, xx]  # (F, C)

            def split(t):
                return t.view(1, frames, heads, -1).transpose(1, 2)

            o = track_attention(split(attn.to_q(x[row])), split(attn.to_k(x[row])), split(attn.to_v(x[row])),
                                split(proc.to_q_prime(f)), split(proc.to_k_prime(f)), gate=proc.gate).out
            expect = attn.to_out[0](o.transpose(1, 2).reshape(frames, -1))
            torch.testing.assert_close(out[row], expect, atol=1e-5, rtol=1e-5)


def test_kernel_and_processor_make_no_tensors_from_host_data():
    """torch.tensor(...) inside the step would be a blocking host→device copy on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    q, k, v, qp, kp = make_inputs(7)
    with Record() as rec:
        for kernel in ("explicit", "sdpa"):
            track_attention(q, k, v, qp, kp, gate=torch.rand(3), motion=0.5, tau=-3.0, kernel=kernel)
        track_attention(q, k, v, qp, kp, mode="paper", gate=None, with_maps=True)
    assert rec.ops and not any("lift_fresh" in op for op in rec.ops)
    with Record() as probe:
        torch.tensor(1.0)
    assert any("lift_fresh" in op for op in probe.ops)  # the probe does see host-data tensors

    unet = build_unet("tiny", device="cpu")
    path = temporal_attn1_paths(unet)[0]
    attn = unet.get_submodule(path)
    ctx = TrackContext()
    proc = TrackAdapterProcessor(attn, ctx, name=path)
    enc = TrajectoryEncoder([proc.width])
    trunk = torch.randn(4, enc.trunk_channels, 2, 3)
    ctx.begin(batch=2, frames=2, latent_hw=(2, 3), encoder=enc, trunk=trunk, collect=True)
    with Record() as rec:
        proc(attn, torch.randn(12, 2, proc.width))
    assert rec.ops and not any("lift_fresh" in op for op in rec.ops)


@pytest.mark.parametrize("case", [dict(mode="gated", gate=torch.tensor([0.3, -0.2, 0.7]), motion=0.5),
                                  dict(mode="paper", tau=-50.0)], ids=["gated", "paper"])
def test_compiled_kernel_matches_reference_values_and_gradients(case):
    """kernel="compiled" (torch.compile of the explicit kernel) against the loop reference, and its
    gradients against eager autograd's for every input and the gate."""
    q, k, v, qp, kp = make_inputs(7, seed=3)
    ref_out, *_ = reference(q, k, v, qp, kp, **case)
    grads = []
    for compiled in (False, True):
        inputs = [x.clone().requires_grad_(True) for x in (q, k, v, qp, kp)]
        kw = dict(case)
        if isinstance(kw.get("gate"), torch.Tensor):
            kw["gate"] = kw["gate"].clone().requires_grad_(True)
            inputs.append(kw["gate"])
        out = track_attention(*inputs[:5], kernel="compiled" if compiled else "explicit", **kw).out
        if compiled:
            torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-4)
        weight = torch.linspace(-1.0, 2.0, out.numel()).reshape(out.shape)
        grads.append(torch.autograd.grad((out * weight).sum(), inputs))
    for eager_g, compiled_g in zip(*grads):
        assert eager_g.abs().sum() > 0
        torch.testing.assert_close(compiled_g, eager_g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("collect", [False, True])
def test_fused_projections_equal_separate_ones_with_gradients_per_layer(collect):
    """One GEMM with [W_q | W_k | W_v] and one with [W′_q | W′_k]: the same output, and each
    separate Linear still gets its own gradient."""
    attn, ctx, proc, enc = _open_adapter()
    trunk = torch.randn(2 * 3, enc.trunk_channels, 2, 2)
    x = torch.randn(2 * 4, 3, proc.width)
    layers = [attn.to_q, attn.to_k, attn.to_v, proc.to_q_prime, proc.to_k_prime]
    results = []
    for fused in (False, True):
        ctx.fused_projections = fused
        ctx.begin(batch=2, frames=3, latent_hw=(2, 2), encoder=enc, trunk=trunk, collect=collect)
        out = proc(attn, x)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        if collect:
            loss = loss + ctx.collected[proc.name].diag.square().sum()
        results.append((out, torch.autograd.grad(loss, [lin.weight for lin in layers])))
        ctx.end()
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    attn.to_k = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(proc.width, proc.width, bias=False))
    ctx.fused_projections = True
    ctx.begin(batch=2, frames=3, latent_hw=(2, 2), encoder=enc, trunk=trunk)
    with pytest.raises(TypeError, match="plain torch.nn.Linear"):
        proc(attn, x)
