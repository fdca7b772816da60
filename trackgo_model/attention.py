"""TrackGo's masked temporal attention (spec §4, §9): ``track_attention``, a pure function on
(batch, heads, F, d) tensors, and its kernels (explicit, SDPA, compiled; the Triton one lives in
:mod:`trackgo_model.fused_attention`). :mod:`trackgo_model.adapter` puts it into the UNet.

Paper rule (Eq. 2–4):
    A′ = softmax(Q′K′ᵀ/√d),   AM_ij = mask_value (−10⁴) where A′_ij ≥ α, τ elsewhere,
    A  = softmax(QKᵀ/√d + AM),  O = (A + A′)·V                                  (mode="paper")

Gated (mode="gated"): O = A·V + g·(A′ − 1/F)·V with a per-head gate g. The paper's extra term
A′·V less its value for a uniform A′ (the temporal mean of V): a fresh encoder emits one constant
vector (see trackgo_model.encoder), so A′ is exactly uniform, its mask row constant, and a freshly
wrapped UNet computes exactly what SVD computes — whatever g is. The gate starts at 1 (the
adapter's ``gate_init``), so W′ and the encoder get gradient from the first step; with g = 1 the
rule is the paper's minus its constant shift, O = (A + A′)·V − mean_j V_j, and the total
attention A″ = A + g·(A′ − 1/F) keeps rows summing to 1.

Two interpretations, both exact consequences of softmax's shift invariance (spec §9):

* The mask is applied as AM − max_j AM_ij. This leaves A unchanged in exact arithmetic, but a
  row whose mask is constant (every entry masked, or none) becomes an exact zero mask instead of
  adding −10⁴ to every logit, which would wipe out the logits' precision in fp16/bf16 (a fully
  masked row therefore equals the unmasked softmax, as the formula says). Only the gap between
  mask_value and τ matters: τ = mask_value turns masking off, τ = 0 is the strongest masking.
* Unspecified-region motion strength ``motion`` = m ≥ 0. A row i is *unspecified* when its mask
  is constant (for F > 5 that is "no entry of A′ reaches α": the user gave no trajectory there
  and the literal rule cannot act). In such rows the total attention A″ = A + g·(A′ − 1/F)
  (gated) or A + A′ (paper), whose row sum is s = 1 (resp. 2), is blended toward the uniform row
  of the same mass: A″_i ← m·A″_i + (1 − m)·s/F. The output there becomes m·O_i + (1 − m)·s·mean_j V_j,
  so at a position whose rows are all unspecified the temporal variance of the attention output
  scales by exactly m²: m = 1 is unchanged, m = 0 freezes the unspecified region (every frame gets
  the temporal mean), m > 1 amplifies its motion (extrapolation; weights can turn negative).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .configs import ATTENTION_KERNELS
from .configs import ATTENTION_MODES as MODES

#: the SVD temporal attention's kernels ("flex" is Wan's, trackgo_model.wan.attention)
KERNELS = tuple(k for k in ATTENTION_KERNELS if k != "flex")
__all__ = ["KERNELS", "MODES", "TrackAttention", "adapter_map", "track_attention"]


class TrackAttention(NamedTuple):
    """What :func:`track_attention` returns.

    out: (B, heads, F, d) in v's dtype. diag: diag(A) (B, heads, F) fp32, differentiable — all the
    attention loss reads — when ``with_diag``. maps: (A, A′), each (B, heads, F, F) fp32, when
    ``with_maps``; A is the masked original-branch map of Eq. 4, before the motion blend.
    hits: the fraction of A′ entries ≥ α (where the mask acts), a 0-dim fp32 tensor, when
    ``with_hits``.
    """

    out: torch.Tensor
    diag: torch.Tensor | None = None
    maps: tuple[torch.Tensor, torch.Tensor] | None = None
    hits: torch.Tensor | None = None


def track_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_prime: torch.Tensor,
    k_prime: torch.Tensor,
    *,
    alpha: float = 0.2,
    tau: float | None = None,
    mode: str = "gated",
    gate: torch.Tensor | float | None = None,
    motion: float = 1.0,
    mask_value: float = -1.0e4,
    kernel: str = "explicit",
    with_diag: bool = False,
    with_maps: bool = False,
    with_hits: bool = False,
) -> TrackAttention:
    """TrackAdapter temporal attention (see the module docstring for the exact rules).

    Args:
        q, k, v: (B, heads, F, d) original-branch query/key/value (from the layer input X).
        q_prime, k_prime: (B, heads, F, d) adapter-branch query/key (from the encoder feature f).
        alpha: A′ threshold of Eq. 3.
        tau: mask value where A′ < α (None → 0).
        mode: ``"gated"`` (O = A·V + g·(A′ − 1/F)·V; ``gate=None`` means g = 0 and skips the
            term) or ``"paper"`` (O = (A + A′)·V; ``gate`` must be None).
        gate: scalar or (heads,) tensor, gated mode only.
        motion: unspecified-region motion strength m ≥ 0.
        kernel: how it is computed, one of :data:`KERNELS` — the same function, the speed differs
            by device. ``explicit``: A formed in fp32, one matmul with A + g·A′. ``sdpa``: the
            original branch through ``F.scaled_dot_product_attention`` with the additive mask,
            a second matmul for A′·V (with ``with_diag``/``with_maps`` it computes as
            ``explicit``: SDPA gives no map). ``compiled``: ``explicit`` through
            ``torch.compile`` (the first call per shape compiles, seconds). ``triton``: one fused
            pass per sequence, forward and backward, nothing F×F in memory
            (:mod:`trackgo_model.fused_attention`; no ``with_maps``).
        with_diag: also compute diag(A) (``TrackAttention.diag``).
        with_maps: also return the full maps (``TrackAttention.maps``).
        with_hits: also return the fraction of A′ entries ≥ α (``TrackAttention.hits``).

    Returns:
        :class:`TrackAttention`.
    """
    _check_arguments(q, k, v, q_prime, k_prime, mode=mode, gate=gate, motion=motion, kernel=kernel,
                     with_diag=with_diag, with_maps=with_maps)
    heads = q.shape[1]
    scale = 1.0 / math.sqrt(q.shape[3])
    g = 1.0 if mode == "paper" else (None if gate is None else _as_head_gate(gate, heads, v))
    # AM − τ is a constant shift per row: only the gap mask_value − τ matters (module docstring)
    gap = float(mask_value) - (0.0 if tau is None else float(tau))
    want_hit = motion != 1.0 or with_hits
    diag = maps = None
    centred = mode == "paper" or g is None  # the gated rule's −g·mean_j V_j still to subtract?
    if kernel == "triton":
        from .fused_attention import triton_track_attention

        out, diag, n_hit = triton_track_attention(q, k, v, q_prime, k_prime, g, float(alpha), gap, scale,
                                                  want_diag=with_diag, want_nhit=want_hit)
    elif kernel != "sdpa" or with_maps or with_diag:
        run = _compiled_kernel() if kernel == "compiled" else _explicit_kernel
        extra = "diag" if with_diag else ("maps" if with_maps else None)
        centre = 1.0 / q.shape[2] if mode == "gated" else 0.0
        out, got, n_hit = run(q, k, v, q_prime, k_prime, g, float(alpha), gap, scale, extra, want_hit, centre)
        diag, maps = (got, None) if with_diag else (None, got)
        centred = True
    else:
        a_prime, hit, am = _adapter_branch(q_prime, k_prime, float(alpha), gap, scale)
        n_hit = hit.sum(dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=am.to(q.dtype))
        if g is not None:
            out = out + g * torch.matmul(a_prime.to(v.dtype), v)
    if not centred:  # the triton and SDPA paths computed A·V + g·A′·V
        out = out - g * v.mean(dim=-2, keepdim=True)
    if motion != 1.0:
        out = _blend_unspecified(out, v, n_hit, motion, mass=2.0 if mode == "paper" else 1.0)
    hits = n_hit.sum().float() / (n_hit.numel() * q.shape[2]) if with_hits else None
    return TrackAttention(out, diag, maps, hits)


def _check_arguments(q, k, v, q_prime, k_prime, *, mode, gate, motion, kernel, with_diag, with_maps) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "paper" and gate is not None:
        raise ValueError("mode='paper' has no gate (O = (A + A')·V); pass gate=None")
    if motion < 0:
        raise ValueError(f"motion must be >= 0, got {motion}")
    if q.ndim != 4 or q.shape != k.shape or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"q, k, v must be (B, heads, F, d) of matching shapes; got {q.shape}, {k.shape}, {v.shape}")
    if q_prime.shape != q.shape or k_prime.shape != q.shape:
        raise ValueError(f"q_prime/k_prime must match q's shape {tuple(q.shape)}; got {q_prime.shape}, {k_prime.shape}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if with_maps and (with_diag or kernel == "triton"):
        raise ValueError("with_maps gives the full maps (not from the triton kernel); "
                         "for diag(A) ask with_diag instead")


def _as_head_gate(gate: torch.Tensor | float, heads: int, like: torch.Tensor) -> torch.Tensor | float:
    if not isinstance(gate, torch.Tensor):
        return float(gate)
    g = gate.to(dtype=like.dtype, device=like.device)
    if g.ndim == 0:
        return g
    if g.numel() != heads:
        raise ValueError(f"gate must be a scalar or have one value per head ({heads}), got shape {tuple(g.shape)}")
    return g.reshape(1, heads, 1, 1)


def _blend_unspecified(out: torch.Tensor, v: torch.Tensor, n_hit: torch.Tensor, motion: float,
                       mass: torch.Tensor | float) -> torch.Tensor:
    """The motion knob: rows whose mask is constant (every entry on the same side of α; n_hit
    (B, heads, F) is 0 or F) become m·O_i + (1 − m)·mass·mean_j V_j, ``mass`` the row sum of the
    total attention (1 in gated mode, 2 in paper mode)."""
    frames = v.shape[-2]
    unspecified = ((n_hit == 0) | (n_hit == frames)).unsqueeze(-1)  # (B, heads, F, 1)
    blended = motion * out + (1.0 - motion) * mass * v.mean(dim=-2, keepdim=True)
    return torch.where(unspecified, blended, out)


def adapter_map(q_prime: torch.Tensor, k_prime: torch.Tensor, alpha: float, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2–3 on (…, F, d) inputs: (A′ = softmax(Q′K′ᵀ·scale) in fp32, the hit map A′ ≥ α (bool)),
    each (…, F, F). Shared by every base model's adapter."""
    a_prime = torch.softmax(torch.matmul(q_prime, k_prime.transpose(-1, -2)).float() * scale, dim=-1)
    return a_prime, a_prime >= alpha


def _adapter_branch(q_prime: torch.Tensor, k_prime: torch.Tensor, alpha: float, gap: float, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A′ in fp32, the hit map A′ ≥ α, the additive mask with each row's maximum subtracted).

    The mask is built from python scalars only: no host→device copies (they would synchronise
    the stream). Constant rows (every entry masked, or none) become exact zeros."""
    a_prime, hit = adapter_map(q_prime, k_prime, alpha, scale)
    am = hit.float() * gap
    return a_prime, hit, am - am.amax(dim=-1, keepdim=True)


def _explicit_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_prime: torch.Tensor,
                     k_prime: torch.Tensor, g: torch.Tensor | float | None, alpha: float, gap: float,
                     scale: float, extra: str | None = None, want_hit: bool = True, centre: float = 0.0):
    """Explicit path on (B, heads, F, d) inputs → (out (B, heads, F, d), extra, hits per row
    (B, heads, F) or None).

    A and A′ in fp32; one matmul with A″ = A + g·(A′ − centre) (just A when g is None; centre is
    1/F in gated mode, 0 in paper mode). ``extra``: None,
    ``"diag"`` (diag(A), (B, heads, F)) or ``"maps"`` ((A, A′), each (B, heads, F, F)); the hit
    counts only with ``want_hit``. A compiled kernel thus writes out no map nobody reads."""
    a_prime, hit, am = _adapter_branch(q_prime, k_prime, alpha, gap, scale)
    a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() * scale + am, dim=-1)
    if g is None:
        total = a
    else:
        total = a + (g.float() if isinstance(g, torch.Tensor) else g) * (a_prime - centre)
    out = torch.matmul(total.to(v.dtype), v)
    n_hit = hit.sum(dim=-1) if want_hit else None
    if extra == "diag":
        return out, a.diagonal(dim1=-2, dim2=-1), n_hit
    return out, ((a, a_prime) if extra == "maps" else None), n_hit


@functools.cache
def _compiled_kernel():
    """``torch.compile`` of :func:`_explicit_kernel`, built on first use."""
    return torch.compile(_explicit_kernel, fullgraph=True)
