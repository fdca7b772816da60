"""TrackAdapter (spec §4, §9): the attention kernel, the diffusers processor, its installation.

``track_attention`` is a pure function on (batch, heads, F, d) tensors.

Paper rule (Eq. 2–4):
    A′ = softmax(Q′K′ᵀ/√d),   AM_ij = mask_value (−10⁴) where A′_ij ≥ α, τ elsewhere,
    A  = softmax(QKᵀ/√d + AM),  O = (A + A′)·V                                  (mode="paper")

Default (mode="gated"): O = A·V + g·(A′·V) with a per-head gate g (zero-initialised in the
adapter). A fresh encoder emits one constant vector (see trackgo_model.encoder), so A′ is exactly
uniform, its mask row constant, and with g = 0 a freshly wrapped UNet computes exactly what SVD
computes.

Two interpretations, both exact consequences of softmax's shift invariance (spec §9):

* The mask is applied as AM − max_j AM_ij. This leaves A unchanged in exact arithmetic, but a
  row whose mask is constant (every entry masked, or none) becomes an exact zero mask instead of
  adding −10⁴ to every logit, which would wipe out the logits' precision in fp16/bf16 (a fully
  masked row therefore equals the unmasked softmax, as the formula says). Only the gap between
  mask_value and τ matters: τ = mask_value turns masking off, τ = 0 is the strongest masking.
* Unspecified-region motion strength ``motion`` = m ≥ 0. A row i is *unspecified* when its mask
  is constant (for F > 5 that is "no entry of A′ reaches α": the user gave no trajectory there
  and the literal rule cannot act). In such rows the total attention A″ = A + g·A′ (gated) or
  A + A′ (paper), whose row sum is s = 1 + g (resp. 2), is blended toward the uniform row of the
  same mass: A″_i ← m·A″_i + (1 − m)·s/F. The output there becomes m·O_i + (1 − m)·s·mean_j V_j,
  so at a position whose rows are all unspecified the temporal variance of the attention output
  scales by exactly m²: m = 1 is unchanged, m = 0 freezes the unspecified region (every frame gets
  the temporal mean), m > 1 amplifies its motion (extrapolation; weights can turn negative).
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("gated", "paper")


def _as_head_gate(gate: torch.Tensor | float, heads: int, like: torch.Tensor) -> torch.Tensor | float:
    if not isinstance(gate, torch.Tensor):
        return float(gate)
    g = gate.to(dtype=like.dtype, device=like.device)
    if g.ndim == 0:
        return g
    if g.numel() != heads:
        raise ValueError(f"gate must be a scalar or have one value per head ({heads}), got shape {tuple(g.shape)}")
    return g.reshape(1, heads, 1, 1)


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
    return_maps: bool = False,
    sdpa: bool = True,
    compiled: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """TrackAdapter temporal attention (see the module docstring for the exact rules).

    Args:
        q, k, v: (B, heads, F, d) original-branch query/key/value (from the layer input X).
        q_prime, k_prime: (B, heads, F, d) adapter-branch query/key (from the encoder feature f).
        alpha: A′ threshold of Eq. 3.
        tau: mask value where A′ < α (None → 0).
        mode: ``"gated"`` (O = A·V + g·A′·V; ``gate=None`` means g = 0 and skips the A′·V term)
            or ``"paper"`` (O = (A + A′)·V; ``gate`` must be None).
        gate: scalar or (heads,) tensor, gated mode only.
        motion: unspecified-region motion strength m ≥ 0.
        return_maps: also return (A, A′), each (B, heads, F, F); A is the masked original-branch
            map of Eq. 4, before the motion blend.
        sdpa: original branch through ``F.scaled_dot_product_attention`` with the additive mask
            (plus a second matmul for A′·V); False (and always with ``return_maps``) forms A
            explicitly and applies A + g·A′ in one matmul. Same result; speed differs by device.
        compiled: run the explicit kernel through ``torch.compile`` (Inductor fuses the mask,
            both softmaxes and the blend, forward and backward); ignores ``sdpa``. The first call
            per shape compiles (seconds).

    Returns:
        out: (B, heads, F, d) in v's dtype, and with ``return_maps`` the tuple (A, A′).
    """
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
    heads, frames, d = q.shape[1], q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d)

    g = 1.0 if mode == "paper" else (None if gate is None else _as_head_gate(gate, heads, v))
    mass = 1.0 if g is None else 1.0 + g
    # AM − τ is a constant shift per row: only the gap mask_value − τ matters (module docstring)
    gap = float(mask_value) - (0.0 if tau is None else float(tau))
    if compiled or return_maps or not sdpa:
        kernel = _compiled_kernel() if compiled else _explicit_kernel
        out, a, a_prime, hit = kernel(q, k, v, q_prime, k_prime, g, float(alpha), gap, scale,
                                      return_maps, motion != 1.0)
    else:
        a_prime, hit, am = _adapter_branch(q_prime, k_prime, float(alpha), gap, scale)
        a = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=am.to(q.dtype))
        if g is not None:
            out = out + g * torch.matmul(a_prime.to(v.dtype), v)

    if motion != 1.0:
        # rows whose mask is constant: every entry on the same side of α
        n_hit = hit.sum(dim=-1)
        unspecified = ((n_hit == 0) | (n_hit == frames)).unsqueeze(-1)  # (B, heads, F, 1)
        v_mean = v.mean(dim=-2, keepdim=True)
        blended = motion * out + (1.0 - motion) * mass * v_mean
        out = torch.where(unspecified, blended, out)

    if return_maps:
        return out, (a, a_prime)
    return out


def _adapter_branch(q_prime: torch.Tensor, k_prime: torch.Tensor, alpha: float, gap: float, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A′ in fp32, the hit map A′ ≥ α, the additive mask with each row's maximum subtracted).

    The mask is built from python scalars only: no host→device copies (they would synchronise
    the stream). Constant rows (every entry masked, or none) become exact zeros."""
    a_prime = torch.softmax(torch.matmul(q_prime, k_prime.transpose(-1, -2)).float() * scale, dim=-1)
    hit = a_prime >= alpha
    am = hit.float() * gap
    return a_prime, hit, am - am.amax(dim=-1, keepdim=True)


def _explicit_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_prime: torch.Tensor,
                     k_prime: torch.Tensor, g: torch.Tensor | float | None, alpha: float, gap: float,
                     scale: float, maps: bool = True, want_hit: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Explicit path on (B, heads, F, d) inputs → (out (B, heads, F, d), A, A′, hit (B, heads, F, F)).

    A and A′ in fp32; one matmul with A″ = A + g·A′ (just A when g is None). A and A′ are
    returned only with ``maps``, hit only with ``want_hit`` (None otherwise), so a compiled kernel
    need not write out maps nobody reads."""
    a_prime, hit, am = _adapter_branch(q_prime, k_prime, alpha, gap, scale)
    a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() * scale + am, dim=-1)
    if g is None:
        total = a
    else:
        total = a + (g.float() if isinstance(g, torch.Tensor) else g) * a_prime
    out = torch.matmul(total.to(v.dtype), v)
    return out, (a if maps else None), (a_prime if maps else None), (hit if want_hit else None)


@functools.cache
def _compiled_kernel():
    """``torch.compile`` of :func:`_explicit_kernel`, built on first use."""
    return torch.compile(_explicit_kernel, fullgraph=True)


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
        # Original branch: explicit A (one matmul with A + g·A′) by default. Measured on an H200
        # (SVD-xt, 1024×576×14, bf16): the explicit kernel 0.82 ms vs 1.88 ms through
        # F.scaled_dot_product_attention with an additive float mask (no fused kernel takes one
        # for F ≤ 25); UNet forward ÷ bare 1.041 explicit vs 1.077 SDPA. Set True to compare.
        self.sdpa = False
        # True: the explicit kernel through torch.compile (fused elementwise work; compiles on
        # the first forward of each shape). Off by default until measured on a GPU.
        self.compiled = False
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

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        grid = ctx.grid_for(n)
        maps = None
        if ctx.active:
            f = ctx.feature(self.width, grid).to(self.to_q_prime.weight.dtype)
            qp, kp = split(self.to_q_prime(f)).to(q.dtype), split(self.to_k_prime(f)).to(q.dtype)
            res = track_attention(
                q, k, v, qp, kp, alpha=ctx.alpha, tau=ctx.tau, mode=ctx.mode,
                gate=self.gate if ctx.mode == "gated" else None, motion=ctx.motion,
                mask_value=ctx.mask_value, return_maps=ctx.collect, sdpa=ctx.sdpa, compiled=ctx.compiled,
            )
            out, maps = res if ctx.collect else (res, None)
        else:  # collecting without trajectories: plain attention, explicit map
            a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), dim=-1)
            out, maps = torch.matmul(a.to(v.dtype), v), (a, None)
        if maps is not None:
            diag = maps[0].diagonal(dim1=-2, dim2=-1)  # (N, heads, F)
            ctx.collected[self.name] = CollectedMap(
                self.name, diag.reshape(ctx.batch, n // ctx.batch, heads, frames), grid
            )
        out = out.transpose(1, 2).reshape(n, frames, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


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
