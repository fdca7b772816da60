"""What every TrackGo model shares, whatever its base network (SVD's UNet, Wan's DiT): the
parameter groups' derived views, the adapters' collected maps and mask hits.

A subclass sets ``cfg`` (TrackGoConfig), ``adapters`` ({module path: processor with a ``gate``}),
``encoder`` and ``context`` (TrackContext), and defines ``named_group_parameters(groups)``:
{checkpoint key: parameter} of the named groups (``encoder``, ``adapter``, ``temporal_qkv``,
``unet``).
"""
from __future__ import annotations

from torch import nn

__all__ = ["TrackGoModel"]


class TrackGoModel(nn.Module):
    """Base class of ``TrackGoUNet`` and ``TrackGoWan`` (module docstring)."""

    def named_group_parameters(self, groups=None) -> dict[str, nn.Parameter]:
        raise NotImplementedError

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
