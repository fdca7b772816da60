"""The peers' way of conditioning on trajectories, for comparison with TrackGo's TrackAdapter.

DragAnything and MotionPro (like ControlNet and T2I-Adapter) add trajectory features to the
UNet's feature maps instead of re-weighting its temporal attention. Here (``mode="injection"``
of :class:`~trackgo_model.configs.TrackGoConfig`) the same trajectory encoder's trunk feature
(B·F, C, h0, w0) is, at each injection point, average-pooled to the point's grid, projected by a
zero-initialised 1×1 convolution to the point's width and added to the point's output:

    conv_in                        (B·F, c0, h0, w0)   the latent grid
    down_blocks.i.resnets.0        (B·F, c_i, h_i, w_i) the first resnet of every down block

Zero-initialised projections (weights and biases) add nothing, so a fresh model computes exactly
what the base UNet computes, and their gradient is non-zero from the first step. The adapters'
attention stays the stock attention.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import pool_to


def injection_points(unet) -> list[tuple[str, int]]:
    """[(module path, output channels)]: ``conv_in`` and the first resnet of every down block."""
    points = [("conv_in", int(unet.conv_in.out_channels))]
    for i, block in enumerate(unet.down_blocks):
        resnet = block.resnets[0]
        points.append((f"down_blocks.{i}.resnets.0", int(resnet.spatial_res_block.conv2.out_channels)))
    return points


class TrajectoryInjection(nn.Module):
    """Zero-initialised projections of the trajectory trunk, added to the UNet at
    :func:`injection_points` by forward hooks while :meth:`running` (module docstring)."""

    def __init__(self, unet, trunk_channels: int, pooling: str = "avg") -> None:
        super().__init__()
        self.points = injection_points(unet)
        p = next(unet.parameters())
        self.heads = nn.ModuleDict()
        for path, width in self.points:
            head = nn.Conv2d(trunk_channels, width, 1, device=p.device, dtype=p.dtype)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.heads[path.replace(".", "_")] = head
        self.pooling = pooling
        self.trunk: torch.Tensor | None = None
        self.handles = [unet.get_submodule(path).register_forward_hook(self.hook(path)) for path, _ in self.points]

    def hook(self, path: str):
        head = self.heads[path.replace(".", "_")]

        def add(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if self.trunk is None:
                return output
            if output.shape[0] != self.trunk.shape[0]:
                raise ValueError(f"{path}: output has {output.shape[0]} frames, the trajectories "
                                 f"{self.trunk.shape[0]}")
            feature = F.conv2d(pool_to(self.trunk, tuple(output.shape[-2:]), self.pooling).to(head.weight.dtype),
                               head.weight, head.bias)
            return output + feature.to(output.dtype)

        return add

    def begin(self, trunk: torch.Tensor | None) -> None:
        """Add the projections of ``trunk`` (B·F, C, h0, w0) in the coming forward (None: nothing)."""
        self.trunk = trunk

    def end(self) -> None:
        self.trunk = None
