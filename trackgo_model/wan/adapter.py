"""TrackAdapter for Wan's DiT blocks: a diffusers attention processor on every block's attn1.

The adapter's own weights and the per-forward state are those of the SVD adapter
(:mod:`trackgo_model.adapter`: ``TrackContext``, ``ForwardState``, ``CollectedMap``); only the
attention it computes differs (:func:`trackgo_model.wan.attention.track_attention_3d`).
"""
from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from ..adapter import CollectedMap, TrackContext, install_adapters, remove_adapters
from ..configs import alpha_at
from .attention import track_attention_3d

__all__ = ["WanTrackAdapterProcessor", "install_wan_adapters", "remove_wan_adapters", "self_attention_paths"]

_TARGET = re.compile(r"(^|\.)blocks\.\d+\.attn1\.processor$")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, N, heads, d): consecutive pairs (x₀, x₁) of the last axis
    rotate by the angle whose cosine/sine the tables (1, N, 1, d) hold at the pair's even/odd slot."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


class WanTrackAdapterProcessor(nn.Module):
    """Processor of one Wan self-attention (attn1) with a TrackAdapter.

    Holds W′_q, W′_k and the query/key RMS norms (copies of the host's at construction) and a
    per-head gate. ``hidden_states`` is (B, N, C), N = F·h·w tokens frame-major. During a forward
    with trajectories the output is to_out(track_attention_3d(…)); otherwise it is Wan's stock
    processor's, except that ``collect`` also records diag(A) of the plain attention.
    """

    def __init__(self, attn, context: TrackContext, *, name: str = "", gate_init: float = 1.0) -> None:
        super().__init__()
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        for a in ("to_q", "to_k", "to_v", "to_out", "norm_q", "norm_k", "heads"):
            if not hasattr(attn, a):
                raise TypeError(f"{name or 'layer'}: not a diffusers WanAttention (missing {a})")
        self.name = name
        self.width = attn.to_q.in_features
        self.heads = attn.heads
        self.to_q_prime = copy.deepcopy(attn.to_q)
        self.to_k_prime = copy.deepcopy(attn.to_k)
        self.norm_q_prime = copy.deepcopy(attn.norm_q)
        self.norm_k_prime = copy.deepcopy(attn.norm_k)
        w = attn.to_q.weight
        self.gate = nn.Parameter(torch.full((attn.heads,), float(gate_init), device=w.device, dtype=w.dtype))
        self.context = context  # shared by every adapter; a plain object, not a submodule
        self.kernel = "explicit"  # attention.KERNELS; TrackGoWan.set_attention_kernel sets every adapter's
        self.stock = WanAttnProcessor()

    def forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        state = self.context.state
        if state is None or not (state.active or state.collect):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None or attention_mask is not None or attn.fused_projections:
            raise ValueError(f"{self.name}: the TrackAdapter supports Wan's unfused self-attention only")
        b, n, _ = hidden_states.shape
        frames, heads = state.frames, attn.heads
        if n % frames:
            raise ValueError(f"{self.name}: {n} tokens are not {frames} frames of equal size")
        positions = n // frames
        grid = state.grid_for(b * positions)

        def heads_first(x: torch.Tensor) -> torch.Tensor:  # (B, N, heads·d) → (B, heads, N, d)
            return x.unflatten(2, (heads, -1)).transpose(1, 2)

        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (heads, -1))
        v = heads_first(attn.to_v(hidden_states))
        if rotary_emb is not None:
            q, k = apply_rotary(q, *rotary_emb), apply_rotary(k, *rotary_emb)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if state.active:
            f = state.feature(self.width, grid).to(self.to_q_prime.weight.dtype)  # (B·P, F, C)
            f = f.view(b, positions, frames, -1)

            def adapter_side(lin: nn.Linear, norm: nn.Module) -> torch.Tensor:  # → (B, heads, P, F, d)
                return norm(lin(f)).unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4).to(q.dtype)

            knobs = state.knobs
            result = track_attention_3d(
                q, k, v, adapter_side(self.to_q_prime, self.norm_q_prime), adapter_side(self.to_k_prime, self.norm_k_prime),
                alpha=alpha_at(knobs.alpha, knobs.alpha_frames, frames), mode=knobs.mode,
                gate=self.gate if knobs.mode == "gated" else None, tau=knobs.tau, mask_value=knobs.mask_value,
                with_diag=state.collect, with_hits=True, kernel=self.kernel)
            out, diag = result.out, result.diag
            state.hits[self.name] = result.hits.detach()
        else:  # collecting without trajectories: plain attention, explicit map
            a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1)
            out = torch.matmul(a.to(v.dtype), v)
            diag = a.diagonal(dim1=-2, dim2=-1).reshape(b, heads, frames, positions).transpose(-1, -2)
        if diag is not None:  # (B, heads, P, F) → CollectedMap's (B, P, heads, F)
            state.collected[self.name] = CollectedMap(self.name, diag.transpose(1, 2), grid)
        out = out.transpose(1, 2).flatten(2, 3).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


def self_attention_paths(transformer) -> list[str]:
    """Module paths of every ``blocks.*.attn1`` of a ``WanTransformer3DModel`` (model order)."""
    return [k[: -len(".processor")] for k in transformer.attn_processors if _TARGET.search(k)]


def install_wan_adapters(transformer, context: TrackContext, cfg=None) -> dict[str, WanTrackAdapterProcessor]:
    """Put a :class:`WanTrackAdapterProcessor` on every block's attn1 (one per block, nowhere
    else); returns {module path: processor}. A second installation raises."""
    return install_adapters(transformer, self_attention_paths(transformer), WanTrackAdapterProcessor, context, cfg,
                            expected=transformer.config.num_layers, what="self-attention layers (one per block)")


def remove_wan_adapters(transformer) -> dict[str, WanTrackAdapterProcessor]:
    """Restore Wan's stock processor on every adapted layer; returns the removed adapters."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    return remove_adapters(transformer, self_attention_paths(transformer), WanTrackAdapterProcessor, WanAttnProcessor)
