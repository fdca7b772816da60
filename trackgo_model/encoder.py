"""Trajectory encoder E (spec §3): the rendered point video P → one feature per adapter width.

Per frame: six 3×3 convolutions with SiLU and two 2×2 average-pooling layers, overall /8 (the
latent grid), then one per-position linear layer (a 1×1 convolution) per distinct adapter width:

    conv 3→c0 · conv c0→c1 stride 2 · avgpool 2 · conv c1→c2 · conv c2→c3 · avgpool 2 ·
    conv c3→c4 · conv c4→c5                      → trunk (B·F, c5, H/8, W/8)
    head[w]: 1×1 linear c5→w                     → f_w  (B·F, w, H/8, W/8)

Initialisation. The heads' weights are zero and their biases random (N(0, head_bias_std²)), so
a fresh encoder emits the same vector at every frame and position: A′ = softmax(Q′K′ᵀ/√d) is then
exactly uniform, its mask row is constant, and by softmax's shift invariance a fresh TrackGo
computes exactly what SVD computes. A zero bias would also do that, but Q′K′ᵀ is bilinear in f,
so f ≡ 0 is a saddle where no gradient reaches the encoder or W′_q/W′_k; a constant non-zero f
lets gradient flow through K′ (once the gate is non-zero). The six convolutions use Kaiming-normal
weights and zero biases so the trunk keeps an O(1) scale.

Deeper temporal layers run on the grids ceil(h0/2^k)×ceil(w0/2^k). Their feature is the /8
feature down-sampled with ``pooling`` = ``avg`` (``adaptive_avg_pool2d``: area averaging, which
also handles odd sizes) or ``nearest``. Both are linear selections/averages with weights summing
to one, so they commute with the per-position linear head; ``features_at`` therefore pools the
narrow trunk first and projects afterwards (same result, less work).

Input P: (B, F, 3, H, W), float in [−1, 1] or uint8 in [0, 255] (mapped by x/127.5 − 1);
H and W must be multiples of 8 (as for SVD's VAE).

Speed switch ``channels_last`` (:meth:`TrajectoryEncoder.set_channels_last`, off by default): the
convolutions run in channels-last layout, and P is converted once — to that layout and to the
compute dtype (autocast's when active) in a single copy — so the full-resolution layers move half
the bytes in bf16 and use the NHWC convolution kernels GPUs prefer. Same function; the trunk
comes out channels-last, which the per-position heads read without a transpose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import EncoderConfig


def pool_to(x: torch.Tensor, grid: tuple[int, int], op: str = "avg") -> torch.Tensor:
    """Down-sample (N, C, h, w) to (N, C, *grid) with the named operator (``avg``|``nearest``)."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    if op == "avg":
        return F.adaptive_avg_pool2d(x, grid)
    if op == "nearest":
        return F.interpolate(x, size=grid, mode="nearest")
    raise ValueError(f"unknown pooling operator {op!r}; known: avg, nearest")


def normalise_trajectories(p: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [−1, 1]; float input is returned unchanged."""
    if p.dtype == torch.uint8:
        return p.float() / 127.5 - 1.0
    if not p.is_floating_point():
        raise TypeError(f"trajectories must be uint8 or float, got {p.dtype}")
    return p


class TrajectoryEncoder(nn.Module):
    """E: (B, F, 3, H, W) → {width: (B·F, width, H/8, W/8)} for the given adapter widths."""

    def __init__(self, widths: list[int] | tuple[int, ...], cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or EncoderConfig()
        self.widths = tuple(sorted({int(w) for w in widths}))
        if not self.widths:
            raise ValueError("TrajectoryEncoder needs at least one adapter width")
        chans = (self.cfg.in_channels,) + tuple(self.cfg.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i == 1 else 1, padding=1) for i in range(6)
        )
        self.pool = nn.AvgPool2d(2)
        self.heads = nn.ModuleDict({str(w): nn.Conv2d(chans[-1], w, 1) for w in self.widths})
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.normal_(head.bias, std=self.cfg.head_bias_std)
        self.channels_last = False

    def set_channels_last(self, enabled: bool = True) -> "TrajectoryEncoder":
        """Run the convolutions channels-last (weights converted in place; same parameters)."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)
        self.channels_last = bool(enabled)
        return self

    @property
    def trunk_channels(self) -> int:
        return self.cfg.channels[-1]

    def trunk(self, p: torch.Tensor) -> torch.Tensor:
        """P (B, F, 3, H, W) or (B·F, 3, H, W) → trunk feature (B·F, c5, H/8, W/8)."""
        p = normalise_trajectories(p)
        if p.ndim == 5:
            p = p.flatten(0, 1)
        if p.ndim != 4 or p.shape[1] != self.cfg.in_channels:
            raise ValueError(f"trajectories must be (B, F, {self.cfg.in_channels}, H, W); got {tuple(p.shape)}")
        if p.shape[-2] % 8 or p.shape[-1] % 8:
            raise ValueError(f"trajectory frames must have H and W divisible by 8; got {tuple(p.shape[-2:])}")
        dtype = self.convs[0].weight.dtype
        if self.channels_last:
            kind = p.device.type
            if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
                dtype = torch.get_autocast_dtype(p.device.type)
            x = p.to(dtype=dtype, memory_format=torch.channels_last)
        else:
            x = p.to(dtype)
        for i, conv in enumerate(self.convs):
            x = F.silu(conv(x))
            if i in (1, 3):
                x = self.pool(x)
        return x

    def project(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """Per-position linear head to ``width``: (N, c5, h, w) → (N, width, h, w)."""
        key = str(int(width))
        if key not in self.heads:
            raise KeyError(f"no encoder head for width {width}; heads: {list(self.widths)}")
        return self.heads[key](x)

    def features_at(self, trunk: torch.Tensor, width: int, grid: tuple[int, int]) -> torch.Tensor:
        """Feature for a layer of ``width`` at ``grid``: (B·F, width, *grid)."""
        return self.project(pool_to(trunk, grid, self.cfg.pooling), width)

    def sequence_features(self, trunk: torch.Tensor, width: int, grid: tuple[int, int], batch: int
                          ) -> torch.Tensor:
        """Feature in temporal-attention layout: (B·h·w, F, width), rows batch-major then y, x.

        Equals ``features_at`` rearranged; pools and permutes the narrow trunk, then applies the
        head as a linear map on the last axis (no copy of the wide result).
        """
        key = str(int(width))
        if key not in self.heads:
            raise KeyError(f"no encoder head for width {width}; heads: {list(self.widths)}")
        x = pool_to(trunk, grid, self.cfg.pooling)  # (B·F, c5, h, w)
        frames = x.shape[0] // batch
        x = x.reshape(batch, frames, x.shape[1], grid[0] * grid[1]).permute(0, 3, 1, 2)  # (B, hw, F, c5)
        head = self.heads[key]
        out = F.linear(x, head.weight.view(head.out_channels, head.in_channels), head.bias)
        return out.reshape(batch * grid[0] * grid[1], frames, int(width))

    def forward(self, p: torch.Tensor) -> dict[int, torch.Tensor]:
        """P (B, F, 3, H, W) → {width: (B·F, width, H/8, W/8)}."""
        t = self.trunk(p)
        return {w: self.project(t, w) for w in self.widths}
