"""The speed candidates against the reference: the Triton kernel (Triton's interpreter on CPU, the
compiled kernel on CUDA) and fused projections + channels-last encoder inside the UNet — values and
gradients, both modes, with the attention loss's diag(A) and the motion knob's hit counts.

Triton interprets its kernels when the process was started with TRITON_INTERPRET=1 (tests/conftest.py
sets it without CUDA): the kernel tests then run on CPU tensors, otherwise on CUDA ones."""
from __future__ import annotations

import copy

import pytest
import torch

from trackgo_model.attention import track_attention
from trackgo_model.model import TrackGoUNet, build_unet

triton = pytest.importorskip("triton", reason="the Triton kernel needs the triton package")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

from trackgo_model import fused_attention  # noqa: E402  (imports triton)

#: where the kernel runs in this process: CPU tensors in Triton's interpreter, else CUDA ones
DEVICE = "cpu" if fused_attention.interpreted() else ("cuda" if torch.cuda.is_available() else None)
runnable = pytest.mark.skipif(DEVICE is None, reason="neither CUDA nor Triton's interpreter (TRITON_INTERPRET=1)")


def inputs(shape, seed, dtype=torch.float32, device="cpu", peaky=3.0):
    """q, k, v and a peaky q′, k′ (partially masked rows); the last head's q′ = 0 → uniform A′."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    qp, kp = (torch.randn(shape, generator=g) * peaky for _ in range(2))
    qp[:, -1] = 0.0
    return [x.to(device, dtype) for x in (q, k, v, qp, kp)]


CASES = [
    dict(mode="gated", gate=torch.tensor([0.3, -0.2, 0.7])),
    dict(mode="gated", gate=torch.tensor([0.3, -0.2, 0.7]), motion=0.4, tau=-20.0),
    dict(mode="gated"),  # no gate: T = A
    dict(mode="paper"),
    dict(mode="paper", motion=1.5, tau=-1.0e4),
]


def run(xs, case, kernel, *, weights):
    """out and diag(A) of ``kernel`` and the gradients of Σ w·out + Σ w′·diag w.r.t. inputs (+ gate)."""
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    kw = dict(case)
    if isinstance(kw.get("gate"), torch.Tensor):
        kw["gate"] = kw["gate"].to(xs[0].device).clone().requires_grad_(True)
        xs.append(kw["gate"])
    result = track_attention(*xs[:5], kernel=kernel, with_diag=True, **kw)
    out, diag = result.out, result.diag
    loss = (out.float() * weights[0]).sum() + (diag * weights[1]).sum()
    grads = torch.autograd.grad(loss, xs, allow_unused=True)
    return out, diag, grads


def compare(xs, case, *, atol, rtol):
    """Triton on ``xs`` against the explicit kernel on the same values in fp32 (for bf16 inputs the
    fp32 reference keeps rounding from flipping an A′ entry across α between the two)."""
    out_shape, diag_shape = xs[0].shape, xs[0].shape[:3]
    g = torch.Generator().manual_seed(7)
    weights = (torch.randn(out_shape, generator=g).to(xs[0].device), torch.randn(diag_shape, generator=g).to(xs[0].device))
    ref = run([x.float() for x in xs], case, "explicit", weights=weights)
    fused = run(xs, case, "triton", weights=weights)
    torch.testing.assert_close(fused[0].float(), ref[0].float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(fused[1], ref[1], atol=atol, rtol=rtol)
    for name, a, b in zip(["q", "k", "v", "q'", "k'", "gate"], fused[2], ref[2]):
        assert (a is None) == (b is None) or (b is not None and not b.any()), name
        if b is not None and a is not None:
            assert b.abs().sum() > 0, name
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"d{name}: {m}")
    return ref


@runnable
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_triton_kernel_equals_explicit_fp32(case):
    """F = 7 (padded to 16) with partially, fully and not masked rows; non-contiguous inputs as the
    processor hands them over ((N, F, heads·d) viewed as (N, heads, F, d))."""
    n, heads, frames, d = 2, 3, 7, 16
    xs = [x.reshape(n, heads, frames, d).transpose(1, 2).contiguous().transpose(1, 2)
          for x in inputs((n, heads, frames, d), seed=1, device=DEVICE)]
    assert not xs[0].is_contiguous()
    compare(xs, case, atol=2e-5, rtol=1e-4)


@runnable
def test_triton_kernel_bf16_and_25_frames():
    """bf16 at SVD's head width and 25 frames (F padded to 32): within bf16 rounding of the
    reference, with partially masked rows among them."""
    xs = inputs((1, 2, 25, 64), seed=4, dtype=torch.bfloat16, peaky=1.2, device=DEVICE)
    case = dict(mode="gated", gate=torch.tensor([0.5, -0.4], device=DEVICE), motion=0.5)
    _, ap = track_attention(*(x.float() for x in xs), kernel="explicit", with_maps=True, **case).maps
    hits = (ap >= 0.2).sum(-1)
    assert ((hits > 0) & (hits < 25)).any()
    compare(xs, case, atol=4e-2, rtol=4e-2)


def test_triton_kernel_errors():
    xs = inputs((1, 2, 4, 16), seed=0)
    # CPU tensors outside Triton's interpreter: one message saying how to get it
    with pytest.raises(RuntimeError, match="CUDA devices.*TRITON_INTERPRET=1"):
        fused_attention.check_device(torch.device("cpu"), in_interpreter=False)
    fused_attention.check_device(torch.device("cpu"), in_interpreter=True)
    fused_attention.check_device(torch.device("cuda"), in_interpreter=False)
    if not fused_attention.interpreted():
        with pytest.raises(RuntimeError, match="CUDA devices.*TRITON_INTERPRET=1"):
            track_attention(*xs, kernel="triton")
    with pytest.raises(ValueError, match="full maps"):
        track_attention(*xs, kernel="triton", with_maps=True)
    with pytest.raises(ValueError, match="kernel must be one of"):
        track_attention(*xs, kernel="flash")
    if DEVICE is not None:
        with pytest.raises(ValueError, match="up to 128 frames"):
            track_attention(*inputs((1, 1, 129, 16), seed=0, device=DEVICE), kernel="triton")


def _tiny_model(mode: str, seed: int = 0) -> TrackGoUNet:
    torch.manual_seed(seed)
    model = TrackGoUNet.from_unet(build_unet("tiny", device="cpu"), {"mode": mode})
    with torch.no_grad():  # a trained-looking model: P matters, gates open
        for head in model.encoder.heads.values():
            head.weight.normal_(0.0, 0.1)
        for a in model.adapters.values():
            a.gate.fill_(0.3)
    return model


def _unet_step(model, latent_hw, frames, seed=0, device="cpu", dtype=torch.float32):
    """Output and the gradients of L = mean(out²) + L_attn w.r.t. the trainable groups."""
    g = torch.Generator().manual_seed(seed)
    h, w = latent_hw
    sample = torch.randn(1, frames, 8, h, w, generator=g).to(device, dtype)
    t = torch.rand(1, generator=g).to(device, dtype)
    ehs = torch.randn(1, 1, 32, generator=g).to(device, dtype)
    ati = torch.randn(1, 3, generator=g).to(device, dtype)
    p = (torch.rand(1, frames, 3, 8 * h, 8 * w, generator=g) * 2 - 1).to(device, dtype)
    masks = (torch.rand(1, frames, h, w, generator=g) > 0.5).float().to(device)
    params = model.freeze_for_training()
    out = model(sample, t, ehs, ati, trajectories=p, motion_masks=masks, collect_attention=True)
    loss = out.float().square().mean() + model.attention_loss().float()
    return out, torch.autograd.grad(loss, params)


@runnable
@pytest.mark.parametrize("mode", ["gated", "paper"])
def test_unet_with_every_candidate_equals_reference(mode):
    """TrackGo UNet with the Triton kernel, fused projections and the channels-last encoder: the
    same output and gradients (encoder, W′, gates, temporal W_q/W_k/W_v) as the reference path,
    with the attention loss. Tolerances are relative to each tensor's largest entry: this random
    tiny UNet turns a 1e-7 relative change of its input into 6e-5 of its output, so fp32
    reassociation alone moves the result by ~1e-4; a wrong term moves it by tens of percent."""
    model = _tiny_model(mode).to(DEVICE)
    fast = copy.deepcopy(model)
    ref_out, ref_grads = _unet_step(model, (2, 4), frames=4, device=DEVICE)
    fast.set_kernels({"attention": "triton", "fused_projections": True, "encoder_channels_last": True})
    assert fast.kernels().attention == "triton" and fast.encoder.convs[0].weight.is_contiguous(
        memory_format=torch.channels_last)
    out, grads = _unet_step(fast, (2, 4), frames=4, device=DEVICE)
    assert_rel_close(out, ref_out, 1e-4)
    assert len(grads) == len(ref_grads) and sum(int(g.abs().sum() > 0) for g in ref_grads) > len(ref_grads) // 2
    names = list(model.named_group_parameters())
    for name, a, b in zip(names, grads, ref_grads):
        assert_rel_close(a, b, 1e-3, name)


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float, name: str = "") -> None:
    a, b = a.detach(), b.detach()
    err, scale = float((a - b).abs().max()), float(b.abs().max())
    assert err <= rel * scale + 1e-8, f"{name}: max error {err:.3g} vs largest entry {scale:.3g}"


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=["gated", "paper"])
def test_compiled_triton_kernel_on_cuda(case, dtype, tol):
    """The compiled (not interpreted) kernel at a real layer shape: 25 frames, head dim 64."""
    xs = inputs((96, 3, 25, 64), seed=2, dtype=dtype, device="cuda", peaky=1.2)
    compare(xs, case, atol=tol, rtol=tol)
