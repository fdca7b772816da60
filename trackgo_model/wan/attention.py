"""TrackGo's masked attention inside a DiT block's full self-attention (docs/wan.md).

Wan attends over all N = F·P tokens of a clip at once (F latent frames, P = h·w patch positions,
flattened frame-major). The paper's temporal attention is the part of that attention between
tokens at the same position p: the F×F block A_p of frame t to frame u at p. The adapter works
there, per position and head, exactly as in SVD (spec §4):

    A′_p = softmax(Q′_p K′_pᵀ/√d)                              (F×F, from the trajectory feature)
    AM[(t,p),(u,p)] = mask_value where A′_p[t,u] ≥ α, τ where not; 0 between different positions
    A  = softmax(QKᵀ/√d + AM)                                   (N×N, the block's own attention)
    O  = A·V + g·(A′_p − c)·V_p                                 (the adapter term acts within p)

mode="paper": g = 1, c = 0 (O = A·V + A′·V, the paper's (A + A′)·V with A′ on its own block);
mode="gated": per-head g, c = 1/F. A fresh encoder makes A′_p exactly uniform (1/F): with
α > 1/F nothing is masked and, gated, the adapter term is zero — the block computes what the base
computes. Unlike SVD, a masked entry here really removes a key (the row also holds the other
positions' keys), so α ≤ 1/F — where a uniform A′ would mask the whole block — is refused.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..attention import TrackAttention, adapter_map

__all__ = ["KERNELS", "position_mask", "track_attention_3d"]

#: implementations of the masked attention (see ``track_attention_3d``)
KERNELS = ("explicit", "flex")


def position_mask(hit: torch.Tensor, mask_value: float, tau: float | None) -> torch.Tensor:
    """The additive mask AM over all tokens from the per-position hit map.

    hit: (B, heads, P, F, F) bool. Returns (B, heads, N, N) fp32 with N = F·P (frame-major):
    ``mask_value`` where hit, τ (None → 0) on the other same-position entries, 0 elsewhere.
    """
    b, heads, p, f, _ = hit.shape
    tau = 0.0 if tau is None else float(tau)
    am = torch.where(hit, float(mask_value), tau)  # (B, heads, P, F, F)
    eye = torch.eye(p, dtype=am.dtype, device=am.device)
    return torch.einsum("bhptu,pq->bhtpuq", am, eye).reshape(b, heads, f * p, f * p)


def track_attention_3d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_prime: torch.Tensor,
    k_prime: torch.Tensor,
    *,
    alpha: float,
    mode: str = "gated",
    gate: torch.Tensor | float | None = None,
    tau: float | None = None,
    mask_value: float = -1.0e4,
    with_diag: bool = False,
    with_hits: bool = False,
    kernel: str = "explicit",
) -> TrackAttention:
    """Masked full attention with the per-position adapter term (module docstring).

    Args:
        q, k, v: (B, heads, N, d) the block's query (after its norm and rotary embedding), key, value.
        q_prime, k_prime: (B, heads, P, F, d) adapter query/key per position; N = F·P.
        alpha: threshold on A′; must exceed 1/F (module docstring).
        mode: ``gated`` (``gate`` scalar or (heads,); None means g = 0) or ``paper`` (no gate).
        tau: mask value on same-position entries below α (None → 0).
        with_diag: also return diag(A) — A[(t,p),(t,p)], the attention of a token to itself, what
            the attention loss reads — as (B, heads, P, F) fp32, differentiable.
        with_hits: also return the fraction of A′ entries ≥ α.
        kernel: how the masked N×N attention runs — the same function either way. ``explicit``:
            A formed in fp32 when ``with_diag``, else ``scaled_dot_product_attention`` with a dense
            (B, heads, N, N) mask (without any mask when nothing is hit: the base's own call);
            for the tiny and toy sizes. ``flex``: FlexAttention with a ``score_mod`` that adds
            AM_p[t, u] where query and key share a position — nothing N×N in memory when compiled
            (on CUDA it is; PyTorch has no FlexAttention backward on the CPU) — and diag(A) from the
            log-sum-exp: A[i, i] = exp(q_i·k_i/√d + AM_ii − lse_i).

    Returns :class:`~trackgo_model.attention.TrackAttention` with ``out`` (B, heads, N, d).
    """
    b, heads, n, d = q.shape
    _, _, p, frames, _ = q_prime.shape
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or k_prime.shape != q_prime.shape:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"q′ {tuple(q_prime.shape)}, k′ {tuple(k_prime.shape)}")
    if q_prime.shape[:2] != (b, heads) or p * frames != n:
        raise ValueError(f"q′ is (B, heads, P, F, d) = {tuple(q_prime.shape)}, q has N = {n} tokens "
                         f"for (B, heads) = {(b, heads)}: need P·F = N")
    if mode not in ("gated", "paper"):
        raise ValueError(f"mode must be 'gated' or 'paper', got {mode!r}")
    if mode == "paper" and gate is not None:
        raise ValueError("mode='paper' has no gate; pass gate=None")
    if frames > 1 and alpha <= 1.0 / frames:
        raise ValueError(f"alpha {alpha:g} must exceed 1/F = 1/{frames}: a uniform A′ would mask every "
                         "same-position key and the base model would change (set trackgo.alpha_frames)")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    scale = 1.0 / math.sqrt(d)
    a_prime, hit = adapter_map(q_prime, k_prime, alpha, scale)  # (B, heads, P, F, F)
    if frames == 1:  # one frame: no temporal structure to act on
        hit = torch.zeros_like(hit)
    diag = None
    if kernel == "flex":
        out, diag = _flex(q, k, v, hit, mask_value, tau, scale, with_diag)
    elif with_diag:
        logits = torch.matmul(q, k.transpose(-1, -2)).float() * scale + position_mask(hit, mask_value, tau)
        a = torch.softmax(logits, dim=-1)
        out = torch.matmul(a.to(v.dtype), v)
        diag = a.diagonal(dim1=-2, dim2=-1).reshape(b, heads, frames, p).transpose(-1, -2)
    elif bool(hit.any()) or (tau not in (None, 0.0)):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=position_mask(hit, mask_value, tau).to(q.dtype))
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    if mode == "paper" or gate is not None:
        g = 1.0 if mode == "paper" else gate
        centre = 0.0 if mode == "paper" else 1.0 / frames
        v_pos = v.reshape(b, heads, frames, p, -1).transpose(2, 3)  # (B, heads, P, F, d)
        term = torch.matmul((a_prime - centre).to(v.dtype), v_pos).transpose(2, 3).reshape(b, heads, n, -1)
        if isinstance(g, torch.Tensor) and g.ndim == 1:
            g = g.to(v.dtype).view(1, heads, 1, 1)
        out = out + g * term
    hits = hit.float().mean() if with_hits else None
    return TrackAttention(out, diag, None, hits)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hit: torch.Tensor, mask_value: float,
          tau: float | None, scale: float, with_diag: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The masked attention through FlexAttention: (out (B, heads, N, d), diag (B, heads, P, F) or None)."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise ValueError("kernel='flex' has no backward on the CPU (PyTorch's FlexAttention); use kernel='explicit'")
    b, heads, p, frames, _ = hit.shape
    am = torch.where(hit, float(mask_value), 0.0 if tau is None else float(tau)).to(torch.float32)

    def score_mod(score, bi, hi, qi, ki):
        same = (qi % p) == (ki % p)
        return score + torch.where(same, am[bi, hi, qi % p, qi // p, ki // p], 0.0)

    run = _compiled_flex() if q.device.type == "cuda" else flex_attention
    out, lse = run(q, k, v, score_mod=score_mod, scale=scale, return_lse=True)
    if not with_diag:
        return out, None
    self_logit = (q.float() * k.float()).sum(-1) * scale  # (B, heads, N): q_i·k_i/√d
    own = am.diagonal(dim1=-2, dim2=-1).transpose(-1, -2).reshape(b, heads, frames * p)  # AM_ii, frame-major
    diag = torch.exp(self_logit + own - lse.float())
    return out, diag.reshape(b, heads, frames, p).transpose(-1, -2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
