"""One Triton kernel for TrackGo's masked temporal attention, forward and backward.

Per sequence (one spatial position of one head; F ≤ 128 frames, head dim d), in one pass over
q, k, v, q′, k′ held in registers (F and d padded to powers of two ≥ 16):

    A′ = softmax(q′k′ᵀ·s)            hit = A′ ≥ α        AM = hit·gap − max_j(hit·gap)
    A  = softmax(qkᵀ·s + AM)          T = A + g·A′ (T = A without a gate)        O = T·v

with s = 1/√d and gap = mask_value − τ (``trackgo_model.attention`` explains why only the gap
matters). Optional outputs: diag(A) (B, heads, F) fp32 — what the attention loss reads — and the
number of hits per row (B, heads, F) int32 — what the motion knob reads. Nothing of size F×F
reaches memory: the backward kernel recomputes A′, the mask and A from q, k, q′, k′ (F ≤ 128 keeps
that cheap) and returns dq, dk, dv, dq′, dk′ and the gate's gradient. The mask is piecewise
constant in A′, so, as in autograd of the explicit kernel, no gradient flows through it.

Logits and softmaxes are fp32; T is cast to v's dtype before T·v and the logit gradients to the
inputs' dtype before their products, as autograd does for the explicit kernel. fp32 inputs use
IEEE products (no TF32). the explicit kernel of ``attention.track_attention`` stays the checked reference.

CUDA tensors run the compiled kernels. CPU tensors run in Triton's interpreter — slow, for tests —
which Triton switches on for a whole process: ``TRITON_INTERPRET=1`` in the environment when
``triton`` is first imported (the test suite sets it on machines without CUDA). The kernels live in
:mod:`trackgo_model.triton_kernels`, imported on first use.
"""
from __future__ import annotations

import torch

MAX_FRAMES = 128
#: launch overrides (None: the heuristic below); benchmarks/gpu_suite.py times the alternatives
LAUNCH: dict[str, int | None] = {"seq": None, "num_warps": None}


def available() -> str | None:
    """None when the kernel can run here, else why not (one line)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the Triton kernel needs the `triton` package (it ships with CUDA builds of torch)"
    return None


def _kernels():
    """:mod:`trackgo_model.triton_kernels` (importing it imports triton: on first use only)."""
    from . import triton_kernels

    return triton_kernels


def interpreted() -> bool:
    """True when Triton runs this process's kernels in its interpreter (see the module docstring)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels().track_attention_fwd, InterpretedFunction)


def check_device(device: torch.device, in_interpreter: bool) -> None:
    """Raise unless tensors on ``device`` can run the kernels: CUDA ones always, CPU ones when
    Triton runs ``in_interpreter``."""
    if device.type == "cuda" or (in_interpreter and device.type == "cpu"):
        return
    raise RuntimeError(f"the Triton attention kernel runs on CUDA devices; got {device.type} tensors "
                       "(on a CPU, for tests only, Triton's interpreter runs it: set TRITON_INTERPRET=1 "
                       "before Python starts)")


def _launch_shape(x: torch.Tensor, interpret: bool) -> dict:
    import triton

    _, heads, frames, d = x.shape
    if frames > MAX_FRAMES:
        raise ValueError(f"the Triton attention kernel handles up to {MAX_FRAMES} frames, got {frames}")
    n_seq = x.shape[0] * heads
    cuda = x.device.type == "cuda"
    seq = LAUNCH["seq"] or (4 if cuda and n_seq >= 4 * 1024 else 1)  # sequences per program
    warps = LAUNCH["num_warps"] or (4 if frames > 32 or d > 64 else 2)
    return dict(BLOCK_F=max(16, triton.next_power_of_2(frames)), BLOCK_D=max(16, triton.next_power_of_2(d)),
                SEQ=seq if cuda else 1, PRECISION="ieee" if x.dtype == torch.float32 else "tf32", INTERP=interpret,
                num_warps=warps), n_seq


def _strides(*xs: torch.Tensor) -> list[int]:
    return [s for x in xs for s in x.stride()[:3]]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _TrackAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, qp, kp, gate, alpha, gap, scale, use_gate, want_diag, want_nhit):
        q, k, v, qp, kp = (_last_dim_contiguous(x) for x in (q, k, v, qp, kp))
        bsz, heads, frames, d = q.shape
        meta, n_seq = _launch_shape(q, interpreted())
        # output laid out (N, F, heads, d): the processor's transpose back to (N, F, heads·d) is free
        out = torch.empty(bsz, frames, heads, d, device=q.device, dtype=v.dtype).transpose(1, 2)
        diag = torch.empty(bsz, heads, frames, device=q.device, dtype=torch.float32) if want_diag else out
        nhit = torch.empty(bsz, heads, frames, device=q.device, dtype=torch.int32) if want_nhit else out
        grid = (-(-n_seq // meta["SEQ"]),)
        _kernels().track_attention_fwd[grid](
            q, k, v, qp, kp, gate, out, diag, nhit, *_strides(q, k, v, qp, kp, out), n_seq, heads, frames, d,
            alpha, gap, scale, USE_GATE=use_gate, WANT_DIAG=want_diag, WANT_NHIT=want_nhit, **meta)
        ctx.save_for_backward(q, k, v, qp, kp, gate)
        ctx.args = (alpha, gap, scale, use_gate)
        ctx.mark_non_differentiable(*([nhit] if want_nhit else []))
        return out, (diag if want_diag else None), (nhit if want_nhit else None)

    @staticmethod
    def backward(ctx, dout, ddiag, _dnhit):
        q, k, v, qp, kp, gate = ctx.saved_tensors
        alpha, gap, scale, use_gate = ctx.args
        bsz, heads, frames, d = q.shape
        meta, n_seq = _launch_shape(q, interpreted())
        dout = _last_dim_contiguous(dout)
        grads = [torch.empty(bsz, heads, frames, d, device=q.device, dtype=x.dtype) for x in (q, k, v)]
        if use_gate:
            grads += [torch.empty(bsz, heads, frames, d, device=q.device, dtype=x.dtype) for x in (qp, kp)]
            dg = torch.empty(n_seq, device=q.device, dtype=torch.float32)
        else:
            grads += [grads[0], grads[0]]  # never written
            dg = grads[0]
        has_ddiag = ddiag is not None
        ddiag = ddiag.contiguous().float() if has_ddiag else dout
        grid = (-(-n_seq // meta["SEQ"]),)
        _kernels().track_attention_bwd[grid](
            q, k, v, qp, kp, gate, dout, ddiag, *grads, dg, *_strides(q, k, v, qp, kp, dout), n_seq, heads, frames,
            d, alpha, gap, scale, USE_GATE=use_gate, HAS_DDIAG=has_ddiag, **meta)
        dq, dk, dv, dqp, dkp = grads
        if not use_gate:
            return dq, dk, dv, None, None, None, None, None, None, None, None, None
        dgate = dg.view(bsz, heads).sum(0) if ctx.needs_input_grad[5] else None
        return dq, dk, dv, dqp, dkp, dgate, None, None, None, None, None, None


def triton_track_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_prime: torch.Tensor,
                           k_prime: torch.Tensor, gate: torch.Tensor | float | None, alpha: float, gap: float,
                           scale: float, *, want_diag: bool = False, want_nhit: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The fused kernel on (B, heads, F, d) inputs of one dtype.

    gate: None (T = A), a python float (one value for every head; 1.0 is the paper's rule) or a
    (heads,) / scalar tensor (differentiable). Returns (out (B, heads, F, d) in v's dtype,
    diag(A) (B, heads, F) fp32 or None, hits per row (B, heads, F) int32 or None).
    """
    why = available()
    if why:
        raise RuntimeError(why)
    check_device(q.device, interpreted())
    if len({x.dtype for x in (q, k, v, q_prime, k_prime)}) != 1:
        raise TypeError("the Triton attention kernel needs q, k, v, q′, k′ of one dtype")
    heads = q.shape[1]
    use_gate = gate is not None
    if not use_gate:
        g = q.new_zeros(heads, dtype=torch.float32)
    elif isinstance(gate, torch.Tensor):
        g = gate.float().reshape(-1).expand(heads).contiguous()
    else:
        g = q.new_full((heads,), float(gate), dtype=torch.float32)
    return _TrackAttention.apply(q, k, v, q_prime, k_prime, g, float(alpha), float(gap), float(scale),
                                 use_gate, bool(want_diag), bool(want_nhit))
