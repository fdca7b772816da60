"""TrackAdapter (spec §4): the per-forward context, the diffusers processor, its installation.

The attention itself — the paper's rule, the gated default and the interpretations of spec §9 —
is ``trackgo_model.attention.track_attention`` (re-exported here).
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KERNELS, MODES, track_attention

__all__ = ["KERNELS", "MODES", "CollectedMap", "TrackAdapterProcessor", "TrackContext", "install_track_adapters",
           "remove_track_adapters", "restore_track_adapters", "temporal_attn1_paths", "track_attention"]


# ----------------------------------------------------------------------------------------------
# Per-forward state shared by all adapters, the diffusers processor, and its installation.
# ----------------------------------------------------------------------------------------------

_TARGET = re.compile(r"(^|\.)temporal_transformer_blocks\.\d+\.attn1\.processor$")


@dataclass
class CollectedMap:
    """Original-branch self-attention A(i, i) of one temporal layer.

    name: the layer's module path; diag: (B, h·w, heads, F); grid: (h, w) of the layer.
    """

    name: str
    diag: torch.Tensor
    grid: tuple[int, int]


class TrackContext:
    """Per-forward state read by every :class:`TrackAdapterProcessor` (one shared instance).

    ``begin`` records the batch size B, the frame count F, the latent grid (h0, w0), the encoder
    and its trunk feature (B·F, C, h0, w0) for this forward; ``end`` drops them. While no trunk is
    set the adapters behave exactly like diffusers' stock processor. Collected maps persist until
    the next ``begin`` (``collected``: layer path → :class:`CollectedMap`).
    """

    def __init__(self, *, alpha: float = 0.2, tau: float | None = None, mode: str = "gated",
                 motion: float = 1.0, mask_value: float = -1.0e4) -> None:
        self.alpha, self.tau, self.mode, self.motion, self.mask_value = alpha, tau, mode, motion, mask_value
        self.batch: int | None = None
        self.frames: int | None = None
        self.latent_hw: tuple[int, int] | None = None
        self.encoder = None
        self.trunk: torch.Tensor | None = None
        self.collect = False
        # Attention kernel (KERNELS). "explicit" (A formed, one matmul with A + g·A′) by default.
        # Measured on an H200 (SVD-xt, 1024×576×14, bf16): explicit 0.82 ms vs 1.88 ms through
        # F.scaled_dot_product_attention with an additive float mask (no fused kernel takes one
        # for F ≤ 25); UNet forward ÷ bare 1.041 explicit vs 1.077 "sdpa". "compiled"
        # (torch.compile of the explicit kernel) and "triton" (one fused pass, forward and
        # backward) stay opt-in until a GPU run shows they win (benchmarks/gpu_suite.py).
        self.kernel = "explicit"
        # True: one GEMM for [W_q | W_k | W_v] on X and one for [W′_q | W′_k] on f (weights
        # concatenated per call, so the separate Linear layers keep their gradients).
        self.fused_projections = False
        self.collected: dict[str, CollectedMap] = {}
        self._cache: dict[tuple[int, int, int], torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg) -> "TrackContext":
        return cls(alpha=cfg.alpha, tau=cfg.tau, mode=cfg.mode, motion=cfg.motion, mask_value=cfg.mask_value)

    @property
    def active(self) -> bool:
        return self.trunk is not None

    def begin(self, *, batch: int, frames: int, latent_hw: tuple[int, int], encoder=None,
              trunk: torch.Tensor | None = None, collect: bool = False) -> None:
        if trunk is not None:
            expect = (batch * frames, latent_hw[0], latent_hw[1])
            got = (trunk.shape[0], trunk.shape[2], trunk.shape[3])
            if got != expect:
                raise ValueError(f"trajectory feature has (B·F, h, w) = {got}, the sample needs {expect}")
            if encoder is None:
                raise ValueError("a trunk feature needs the encoder that projects it")
        self.batch, self.frames, self.latent_hw = batch, frames, tuple(latent_hw)
        self.encoder, self.trunk, self.collect = encoder, trunk, collect
        self.collected = {}
        self._cache = {}

    def end(self) -> None:
        self.encoder, self.trunk, self.collect = None, None, False
        self._cache = {}

    def snapshot(self) -> dict:
        """This forward's state, for re-running a checkpointed block during backward."""
        state = dict(self.__dict__)
        state["_cache"] = dict(self._cache)  # the features as they were when the block began
        return state

    @contextlib.contextmanager
    def replaying(self, state: dict):
        """Run a block again exactly as when ``state`` was taken (activation checkpointing).

        The feature cache starts as it was then, so the re-run repeats the same operations;
        collected maps go to a scratch dict (the loss already holds the first run's)."""
        live = dict(self.__dict__)
        self.__dict__.update(state)
        self._cache, self.collected = dict(state["_cache"]), {}
        try:
            yield
        finally:
            self.__dict__.clear()
            self.__dict__.update(live)

    def grid_for(self, sequences: int) -> tuple[int, int]:
        """The (h, w) of a layer whose temporal attention sees ``sequences`` = B·h·w rows."""
        if self.batch is None or self.latent_hw is None:
            raise RuntimeError("TrackContext.begin was not called for this forward")
        if sequences % self.batch:
            raise ValueError(f"{sequences} attention rows are not a multiple of the batch {self.batch}")
        hw = sequences // self.batch
        h, w = self.latent_hw
        for _ in range(32):
            if h * w == hw:
                return h, w
            if h == 1 and w == 1:
                break
            h, w = -(-h // 2), -(-w // 2)
        raise ValueError(f"no grid ceil(h0/2^k)×ceil(w0/2^k) of latent {self.latent_hw} has {hw} positions")

    def feature(self, width: int, grid: tuple[int, int]) -> torch.Tensor:
        """Encoder feature for a layer of ``width`` channels at ``grid``: (B·h·w, F, width)."""
        key = (width, grid[0], grid[1])
        if key not in self._cache:
            self._cache[key] = self.encoder.sequence_features(self.trunk, width, grid, self.batch)
        return self._cache[key]


class TrackAdapterProcessor(nn.Module):
    """diffusers attention processor for one temporal self-attention (attn1) with a TrackAdapter.

    Holds W′_q, W′_k (copies of the host's to_q/to_k at construction) and a per-head gate
    (used in mode="gated"). ``hidden_states`` is (B·h·w, F, C): diffusers folds space into the
    batch for temporal attention. With an active context the output is
    to_out(track_attention(Q, K, V, f·W′_q, f·W′_k)); without one it is the stock processor.
    """

    def __init__(self, attn, context: TrackContext, *, name: str = "", gate_init: float = 0.0) -> None:
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        for a in ("to_q", "to_k", "to_v", "to_out", "heads"):
            if not hasattr(attn, a):
                raise TypeError(f"{name or 'layer'}: not a diffusers Attention (missing {a})")
        self.name = name
        self.width = attn.to_q.in_features
        self.heads = attn.heads
        self.to_q_prime = _copy_linear(attn.to_q)
        self.to_k_prime = _copy_linear(attn.to_k)
        w = attn.to_q.weight
        self.gate = nn.Parameter(torch.full((attn.heads,), float(gate_init), device=w.device, dtype=w.dtype))
        self.__dict__["context"] = context  # plain attribute: never registered as a submodule
        self.__dict__["_stock"] = AttnProcessor2_0()

    def forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        ctx = self.context
        if not (ctx.active or ctx.collect):
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if (encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
                or attn.spatial_norm is not None or attn.group_norm is not None
                or attn.norm_q is not None or attn.norm_k is not None):
            raise ValueError(f"{self.name}: TrackAdapter supports plain temporal self-attention only")
        n, frames, _ = hidden_states.shape
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (N, F, heads·d) → (N, heads, F, d)
            return x.view(n, frames, heads, -1).transpose(1, 2)

        fused = ctx.fused_projections
        if fused:
            q, k, v = map(split, _linear_cat(hidden_states, (attn.to_q, attn.to_k, attn.to_v), self.name))
        else:
            q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        grid = ctx.grid_for(n)
        diag = None
        if ctx.active:
            f = ctx.feature(self.width, grid).to(self.to_q_prime.weight.dtype)
            if fused:
                qp, kp = (split(x).to(q.dtype) for x in _linear_cat(f, (self.to_q_prime, self.to_k_prime), self.name))
            else:
                qp, kp = split(self.to_q_prime(f)).to(q.dtype), split(self.to_k_prime(f)).to(q.dtype)
            res = track_attention(
                q, k, v, qp, kp, alpha=ctx.alpha, tau=ctx.tau, mode=ctx.mode,
                gate=self.gate if ctx.mode == "gated" else None, motion=ctx.motion,
                mask_value=ctx.mask_value, return_diag=ctx.collect, kernel=ctx.kernel,
            )
            out, diag = res if ctx.collect else (res, None)
        else:  # collecting without trajectories: plain attention, explicit map
            a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1)
            out, diag = torch.matmul(a.to(v.dtype), v), a.diagonal(dim1=-2, dim2=-1)
        if diag is not None:  # (N, heads, F)
            ctx.collected[self.name] = CollectedMap(
                self.name, diag.reshape(ctx.batch, n // ctx.batch, heads, frames), grid
            )
        out = out.transpose(1, 2).reshape(n, frames, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _linear_cat(x: torch.Tensor, layers: tuple[nn.Linear, ...], name: str) -> tuple[torch.Tensor, ...]:
    """(x·W_1ᵀ + b_1, x·W_2ᵀ + b_2, …) from one GEMM with [W_1 | W_2 | …] (views of its output).

    The weights are concatenated per call, so autograd hands each Linear its own gradient."""
    if any(type(lin) is not nn.Linear for lin in layers):
        raise TypeError(f"{name}: fused projections need plain torch.nn.Linear layers, got "
                        f"{[type(lin).__name__ for lin in layers]}; switch fused_projections off")
    weight = torch.cat([lin.weight for lin in layers])
    if all(lin.bias is None for lin in layers):
        bias = None
    else:
        bias = torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias
                          for lin in layers])
    return F.linear(x, weight, bias).split([lin.out_features for lin in layers], dim=-1)


def _copy_linear(src: nn.Linear) -> nn.Linear:
    dst = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None,
                    device=src.weight.device, dtype=src.weight.dtype)
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)
    return dst


def temporal_attn1_paths(unet) -> list[str]:
    """Module paths of every ``temporal_transformer_blocks.*.attn1`` in ``unet`` (model order)."""
    return [k[: -len(".processor")] for k in unet.attn_processors if _TARGET.search(k)]


def _set_processors(unet, replace: dict[str, object]) -> None:
    procs = dict(unet.attn_processors)  # set_attn_processor needs a full dict
    for path, proc in replace.items():
        procs[f"{path}.processor"] = proc
    unet.set_attn_processor(procs)


def install_track_adapters(unet, context: TrackContext, cfg=None, *, expected: int | None = None
                           ) -> dict[str, TrackAdapterProcessor]:
    """Put a :class:`TrackAdapterProcessor` on every temporal attn1 of ``unet`` and nowhere else.

    Returns {module path: processor}. The count must equal ``expected`` (default: derived from
    the UNet config, 16 for svd-xt, 4 for tiny); a mismatch or a second installation raises.
    """
    from .configs import expected_temporal_layers

    paths = temporal_attn1_paths(unet)
    if expected is None:
        expected = expected_temporal_layers(dict(unet.config))
    if len(paths) != expected:
        raise ValueError(f"found {len(paths)} temporal attn1 layers, the UNet config implies {expected}")
    gate_init = 0.0 if cfg is None else cfg.gate_init
    adapters = {}
    for path in paths:
        attn = unet.get_submodule(path)
        if isinstance(attn.processor, TrackAdapterProcessor):
            raise ValueError(f"{path} already has a TrackAdapter")
        adapters[path] = TrackAdapterProcessor(attn, context, name=path, gate_init=gate_init)
    _set_processors(unet, adapters)
    return adapters


def remove_track_adapters(unet) -> dict[str, TrackAdapterProcessor]:
    """Restore the stock processor on every adapted layer; returns the removed adapters."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    removed = {p: unet.get_submodule(p).processor for p in temporal_attn1_paths(unet)
               if isinstance(unet.get_submodule(p).processor, TrackAdapterProcessor)}
    _set_processors(unet, {p: AttnProcessor2_0() for p in removed})
    return removed


def restore_track_adapters(unet, adapters: dict[str, TrackAdapterProcessor]) -> None:
    """Put previously removed adapters back (their weights are kept)."""
    _set_processors(unet, adapters)
