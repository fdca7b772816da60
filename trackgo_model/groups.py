"""What every TrackGo model shares, whatever its base network (SVD's UNet, Wan's DiT): the
parameter groups' derived views, the adapters' collected maps and mask hits.

A subclass sets ``cfg`` (TrackGoConfig), ``adapters`` ({module path: processor with a ``gate``}),
``encoder``, ``context`` (TrackContext) and ``base_attr`` (the attribute holding the base network),
and defines ``remove_adapters()`` (the stock processors back, the adapters returned).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

from .adapter import set_processors
from .configs import ATTENTION_MODES

__all__ = ["TrackGoModel"]


class TrackGoModel(nn.Module):
    """Base class of ``TrackGoUNet`` and ``TrackGoWan`` (module docstring)."""

    #: the attribute that holds the base network, also the key prefix of its parameters
    base_attr = "unet"

    def named_group_parameters(self, groups: tuple[str, ...] | list[str] | None = None) -> dict[str, nn.Parameter]:
        """{checkpoint key: parameter} of the groups (default ``cfg.trainable``).

        encoder → ``encoder.*`` (:meth:`encoder_group`); adapter → ``adapters.<path>.*`` — W′_q,
        W′_k (and their norms where the base has them) and, in ``mode="gated"`` only, the gate
        (:meth:`adapter_group`); temporal_qkv → ``<base>.<path>.to_{q,k,v}.*`` of every adapted
        attention; unet → ``<base>.*``, every base parameter outside the adapters (a base trained
        from scratch). The groups follow ``cfg.mode``, not the inference-time mode switch.
        """
        base = getattr(self, self.base_attr)
        out: dict[str, nn.Parameter] = {}
        for g in tuple(self.cfg.trainable if groups is None else groups):
            if g == "encoder":
                out.update(self.encoder_group())
            elif g == "adapter":
                out.update(self.adapter_group())
            elif g == "temporal_qkv":
                for path in self.adapters:
                    attn = base.get_submodule(path)
                    for lin in ("to_q", "to_k", "to_v"):
                        out.update({f"{self.base_attr}.{path}.{lin}.{n}": p
                                    for n, p in getattr(attn, lin).named_parameters()})
            elif g == "unet":
                out.update({f"{self.base_attr}.{n}": p for n, p in base.named_parameters() if ".processor." not in n})
            else:
                raise ValueError(f"unknown parameter group {g!r}")
        return out

    def remove_adapters(self) -> dict[str, Any]:
        raise NotImplementedError

    @contextlib.contextmanager
    def without_adapters(self) -> Iterator[Any]:
        """Temporarily the stock processors (e.g. for ``save_pretrained``); yields the base network."""
        base = getattr(self, self.base_attr)
        removed = self.remove_adapters()
        try:
            yield base
        finally:
            set_processors(base, removed)

    def inference_modes(self) -> tuple[str, ...]:
        """The modes :meth:`set_inference` accepts for this model."""
        return ATTENTION_MODES

    def set_inference(self, tau: float | None = None, motion: float = 1.0, mode: str | None = None) -> None:
        """Inference knobs: τ (None → 0), unspecified-region motion strength, and optionally the mode."""
        if motion < 0:
            raise ValueError(f"motion must be >= 0, got {motion}")
        if mode is not None and mode not in self.inference_modes():
            raise ValueError(f"mode must be one of {self.inference_modes()} for this model, got {mode!r}")
        self.context.tau, self.context.motion = tau, float(motion)
        if mode is not None:
            self.context.mode = mode

    def encoder_group(self) -> dict[str, nn.Parameter]:
        return {f"encoder.{n}": p for n, p in self.encoder.named_parameters()}

    def adapter_group(self) -> dict[str, nn.Parameter]:
        """Every adapter's parameters; the gates only in ``mode="gated"`` (the paper's O = (A + A′)·V
        has none: an unused parameter would stall DDP and take optimizer state for nothing)."""
        return {f"adapters.{path}.{n}": p for path, a in self.adapters.items() for n, p in a.named_parameters()
                if n != "gate" or self.cfg.mode == "gated"}

    def attention_maps(self) -> list:
        """``CollectedMap``s of the last forward with ``collect_attention=True`` (model order)."""
        return [self.context.collected[p] for p in self.adapters if p in self.context.collected]

    def mask_hits(self) -> dict[str, float]:
        """{layer path: fraction of its A′ entries ≥ α} in the last forward with trajectories."""
        return {p: float(self.context.hits[p]) for p in self.adapters if p in self.context.hits}

    def gates(self) -> dict[str, nn.Parameter]:
        """{``adapters.<path>.gate``: per-head gate} of every adapter, whatever the mode."""
        return {f"adapters.{path}.gate": a.gate for path, a in self.adapters.items()}

    def trainable_parameters(self, groups: tuple[str, ...] | list[str] | None = None) -> list[nn.Parameter]:
        return list(self.named_group_parameters(groups).values())

    def freeze_for_training(self, cfg=None) -> list[nn.Parameter]:
        """requires_grad only on ``cfg.trainable`` groups (default: this model's config); returns them."""
        params = self.trainable_parameters((cfg or self.cfg).trainable)
        self.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        return params

    def added_parameters(self) -> int:
        """Encoder + adapters (W′, and the gates in gated mode): what TrackGo adds to the base."""
        return sum(p.numel() for p in self.named_group_parameters(("encoder", "adapter")).values())

    def checkpoint_groups(self) -> tuple[str, ...]:
        """The groups a TrackGo checkpoint holds: encoder, adapter, and temporal_qkv when trained."""
        return ("encoder", "adapter") + (("temporal_qkv",) if "temporal_qkv" in self.cfg.trainable else ())

    def checkpoint_parameters(self) -> dict[str, nn.Parameter]:
        """{key: parameter} of what ``save_trackgo`` writes (encoder, adapters, trained q/k/v)."""
        return self.named_group_parameters(self.checkpoint_groups())
