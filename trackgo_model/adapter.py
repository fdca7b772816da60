"""TrackAdapter (spec §4): the per-forward state, the diffusers processor, its installation.

The attention itself — the paper's rule, the gated default and the interpretations of spec §9 —
is :func:`trackgo_model.attention.track_attention`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import track_attention
from .configs import alpha_at

__all__ = ["AttentionKnobs", "CheckpointedForward", "CollectedMap", "ForwardState", "TrackAdapterProcessor",
           "TrackContext", "checkpointed_blocks", "install_adapters", "install_track_adapters", "remove_adapters",
           "remove_track_adapters", "restore_track_adapters", "set_processors", "temporal_attn1_paths"]

_TARGET = re.compile(r"(^|\.)temporal_transformer_blocks\.\d+\.attn1\.processor$")


@dataclass
class CollectedMap:
    """Original-branch self-attention A(i, i) of one temporal layer.

    name: the layer's module path; diag: (B, h·w, heads, F); grid: (h, w) of the layer.
    """

    name: str
    diag: torch.Tensor
    grid: tuple[int, int]


@dataclass(frozen=True)
class AttentionKnobs:
    """The arguments of :func:`~trackgo_model.attention.track_attention` that every adapter
    shares (see there), and ``fused_projections``: one GEMM for [W_q | W_k | W_v] on X and one for
    [W′_q | W′_k] on f (weights concatenated per call, so each Linear keeps its own gradient)."""

    alpha: float = 0.2
    alpha_frames: int | None = None
    tau: float | None = None
    mode: str = "gated"
    motion: float = 1.0
    mask_value: float = -1.0e4
    kernel: str = "explicit"
    fused_projections: bool = False


@dataclass
class ForwardState:
    """What every :class:`TrackAdapterProcessor` reads during one UNet forward.

    batch B, frames F and the latent grid (h0, w0) of the sample; ``encoder`` and its ``trunk``
    feature (B·F, C, h0, w0) — without a trunk the adapters act as diffusers' stock processor;
    ``collect``: record each layer's diag(A) into ``collected`` (layer path → :class:`CollectedMap`);
    ``features``: the encoder features computed so far, (width, h, w) → (B·h·w, F, width), shared
    by the layers of one width and grid; ``hits``: layer path → the fraction of its A′ entries
    ≥ α in this forward (0-dim tensors, detached).
    """

    batch: int
    frames: int
    latent_hw: tuple[int, int]
    knobs: AttentionKnobs
    encoder: Any = None
    trunk: torch.Tensor | None = None
    collect: bool = False
    features: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)
    collected: dict[str, CollectedMap] = field(default_factory=dict)
    hits: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.trunk is not None

    def for_rerun(self) -> "ForwardState":
        """This state for running a block again (activation checkpointing re-runs it in backward):
        the features computed so far — the same tensors, so the re-run repeats the same operations —
        and a scratch ``collected`` (the loss already holds the first run's maps)."""
        return dataclasses.replace(self, features=dict(self.features), collected={}, hits={})

    def grid_for(self, sequences: int) -> tuple[int, int]:
        """The (h, w) of a layer whose temporal attention sees ``sequences`` = B·h·w rows."""
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
        if key not in self.features:
            self.features[key] = self.encoder.sequence_features(self.trunk, width, grid, self.batch)
        return self.features[key]


class TrackContext:
    """The adapters' shared knobs and the state of the forward in progress (one instance per model).

    The knobs (:class:`AttentionKnobs` fields) are plain attributes, changed between forwards
    (``TrackGoUNet.set_inference``/``set_kernels``). :meth:`begin` starts a forward: ``state`` is
    then a :class:`ForwardState` holding the knobs as they were; :meth:`end` clears it. Outside a
    forward the adapters act as diffusers' stock processor. ``collected`` (layer path →
    :class:`CollectedMap`) holds the maps of the last forward until the next :meth:`begin`.
    """

    def __init__(self, *, alpha: float = 0.2, alpha_frames: int | None = None, tau: float | None = None,
                 mode: str = "gated", motion: float = 1.0, mask_value: float = -1.0e4) -> None:
        self.alpha, self.alpha_frames, self.tau, self.mode = alpha, alpha_frames, tau, mode
        self.motion, self.mask_value = motion, mask_value
        self.kernel = "explicit"  # one of attention.KERNELS; benchmarks/gpu_suite.py times the others
        self.fused_projections = False
        self.state: ForwardState | None = None
        self.collected: dict[str, CollectedMap] = {}
        self.hits: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg) -> "TrackContext":
        return cls(alpha=cfg.alpha, alpha_frames=cfg.alpha_frames, tau=cfg.tau, mode=cfg.mode, motion=cfg.motion,
                   mask_value=cfg.mask_value)

    def knobs(self) -> AttentionKnobs:
        return AttentionKnobs(alpha=self.alpha, alpha_frames=self.alpha_frames, tau=self.tau, mode=self.mode,
                              motion=self.motion,
                              mask_value=self.mask_value, kernel=self.kernel,
                              fused_projections=self.fused_projections)

    def begin(self, *, batch: int, frames: int, latent_hw: tuple[int, int], encoder=None,
              trunk: torch.Tensor | None = None, collect: bool = False) -> ForwardState:
        """Start a forward of B = ``batch`` samples of F = ``frames`` frames on the latent grid
        ``latent_hw``; ``trunk`` (B·F, C, h0, w0) with its ``encoder``, or None (stock attention)."""
        if trunk is not None:
            expect = (batch * frames, latent_hw[0], latent_hw[1])
            got = (trunk.shape[0], trunk.shape[2], trunk.shape[3])
            if got != expect:
                raise ValueError(f"trajectory feature has (B·F, h, w) = {got}, the sample needs {expect}")
            if encoder is None:
                raise ValueError("a trunk feature needs the encoder that projects it")
        self.collected, self.hits = {}, {}
        self.state = ForwardState(batch=batch, frames=frames, latent_hw=tuple(latent_hw), knobs=self.knobs(),
                                  encoder=encoder, trunk=trunk, collect=collect, collected=self.collected,
                                  hits=self.hits)
        return self.state

    def end(self) -> None:
        self.state = None

    @contextlib.contextmanager
    def running(self, state: ForwardState):
        """Make ``state`` the current one for the duration (a checkpointed block re-run in
        backward, after the forward has ended), then put the previous one back."""
        previous, self.state = self.state, state
        try:
            yield state
        finally:
            self.state = previous


class TrackAdapterProcessor(nn.Module):
    """diffusers attention processor for one temporal self-attention (attn1) with a TrackAdapter.

    Holds W′_q, W′_k (copies of the host's to_q/to_k at construction) and a per-head gate
    (used in mode="gated"). ``hidden_states`` is (B·h·w, F, C): diffusers folds space into the
    batch for temporal attention. During a forward with trajectories (``context.state.active``)
    the output is to_out(track_attention(Q, K, V, f·W′_q, f·W′_k)); otherwise it is the stock
    processor's, except that ``collect`` also records the plain attention's diag(A).
    """

    def __init__(self, attn, context: TrackContext, *, name: str = "", gate_init: float = 1.0) -> None:
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
        self.context = context  # shared by every adapter; a plain object, not a submodule
        self.stock = AttnProcessor2_0()

    def forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        state = self.context.state
        if state is None or not (state.active or state.collect):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if (encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
                or attn.spatial_norm is not None or attn.group_norm is not None
                or attn.norm_q is not None or attn.norm_k is not None):
            raise ValueError(f"{self.name}: TrackAdapter supports plain temporal self-attention only")
        n, frames, _ = hidden_states.shape
        knobs = state.knobs

        def split(x: torch.Tensor) -> torch.Tensor:  # (N, F, heads·d) → (N, heads, F, d)
            return x.view(n, frames, attn.heads, -1).transpose(1, 2)

        q, k, v = map(split, _project(hidden_states, (attn.to_q, attn.to_k, attn.to_v), knobs.fused_projections,
                                      self.name))
        grid = state.grid_for(n)
        if state.active:
            f = state.feature(self.width, grid).to(self.to_q_prime.weight.dtype)
            qp, kp = (split(x).to(q.dtype) for x in _project(f, (self.to_q_prime, self.to_k_prime),
                                                              knobs.fused_projections, self.name))
            result = track_attention(
                q, k, v, qp, kp, alpha=alpha_at(knobs.alpha, knobs.alpha_frames, frames), tau=knobs.tau,
                mode=knobs.mode, gate=self.gate if knobs.mode == "gated" else None, motion=knobs.motion,
                mask_value=knobs.mask_value, kernel=knobs.kernel, with_diag=state.collect, with_hits=True)
            out, diag = result.out, result.diag
            state.hits[self.name] = result.hits.detach()
        else:  # collecting without trajectories: plain attention, explicit map
            a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1)
            out, diag = torch.matmul(a.to(v.dtype), v), a.diagonal(dim1=-2, dim2=-1)
        if diag is not None:  # (N, heads, F)
            state.collected[self.name] = CollectedMap(
                self.name, diag.reshape(state.batch, n // state.batch, attn.heads, frames), grid)
        out = out.transpose(1, 2).reshape(n, frames, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _project(x: torch.Tensor, layers: tuple[nn.Linear, ...], fused: bool, name: str) -> tuple[torch.Tensor, ...]:
    """(layer(x) for each layer), as one GEMM when ``fused`` (see :func:`_linear_cat`)."""
    if fused:
        return _linear_cat(x, layers, name)
    return tuple(layer(x) for layer in layers)


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


class CheckpointedForward:
    """The ``forward`` of one checkpointed block: the block's class forward under non-reentrant
    activation checkpointing, re-run in backward with the adapters' state of the first run.

    block: the module (its class's ``forward`` is what runs); context: the model's
    :class:`~trackgo_model.adapter.TrackContext`. Without gradients the block runs as usual.
    """

    def __init__(self, block: torch.nn.Module, context) -> None:
        self.block = block
        self.context = context

    def __call__(self, *args, **kwargs):
        forward = type(self.block).forward
        if not torch.is_grad_enabled():
            return forward(self.block, *args, **kwargs)
        state = self.context.state
        rerun_state = None if state is None else state.for_rerun()
        runs = 0

        def run(*a, **kw):
            nonlocal runs
            runs += 1
            if runs == 1 or rerun_state is None:
                return forward(self.block, *a, **kw)
            with self.context.running(rerun_state.for_rerun()):  # the re-run during backward
                return forward(self.block, *a, **kw)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)


def checkpointed_blocks(model) -> list[torch.nn.Module]:
    """The blocks of ``model`` that run under a :class:`CheckpointedForward`."""
    return [m for m in model.modules() if isinstance(getattr(m, "forward", None), CheckpointedForward)]


def temporal_attn1_paths(unet) -> list[str]:
    """Module paths of every ``temporal_transformer_blocks.*.attn1`` in ``unet`` (model order)."""
    return [k[: -len(".processor")] for k in unet.attn_processors if _TARGET.search(k)]


def set_processors(model, replace: dict[str, object]) -> None:
    """Put ``replace``'s processors ({attention module path: processor}) on ``model``'s attention
    modules, keeping every other (diffusers' ``set_attn_processor`` needs the full dict)."""
    procs = dict(model.attn_processors)
    for path, proc in replace.items():
        procs[f"{path}.processor"] = proc
    model.set_attn_processor(procs)


def install_adapters(model, paths: list[str], adapter_type: type, context: TrackContext, cfg=None, *,
                     expected: int, what: str) -> dict[str, Any]:
    """An ``adapter_type(attention module, context, name=path, gate_init=…)`` on each of ``paths``.

    ``expected``: how many paths the model's config implies (``what`` names them in the error);
    a mismatch, or a path that already has an adapter, raises. Returns {path: adapter}."""
    if len(paths) != expected:
        raise ValueError(f"found {len(paths)} {what}, the config implies {expected}")
    gate_init = 1.0 if cfg is None else cfg.gate_init
    adapters = {}
    for path in paths:
        attn = model.get_submodule(path)
        if isinstance(attn.processor, adapter_type):
            raise ValueError(f"{path} already has a TrackAdapter")
        adapters[path] = adapter_type(attn, context, name=path, gate_init=gate_init)
    set_processors(model, adapters)
    return adapters


def remove_adapters(model, paths: list[str], adapter_type: type, make_stock) -> dict[str, Any]:
    """Put ``make_stock()`` back on every path whose processor is an ``adapter_type``; returns the
    removed adapters."""
    removed = {p: model.get_submodule(p).processor for p in paths
               if isinstance(model.get_submodule(p).processor, adapter_type)}
    set_processors(model, {p: make_stock() for p in removed})
    return removed


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
    return install_adapters(unet, paths, TrackAdapterProcessor, context, cfg, expected=expected,
                            what="temporal attn1 layers")


def remove_track_adapters(unet) -> dict[str, TrackAdapterProcessor]:
    """Restore the stock processor on every adapted layer; returns the removed adapters."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    return remove_adapters(unet, temporal_attn1_paths(unet), TrackAdapterProcessor, AttnProcessor2_0)


def restore_track_adapters(unet, adapters: dict[str, TrackAdapterProcessor]) -> None:
    """Put previously removed adapters back (their weights are kept)."""
    set_processors(unet, adapters)
