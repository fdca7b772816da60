"""TrackGo model assembly: a SVD UNet + trajectory encoder + TrackAdapters (spec §3–5).

    unet = build_unet("tiny", device="cpu")           # or a pretrained SVD UNet
    model = TrackGoUNet.from_unet(unet, TrackGoConfig())
    out = model(sample, t, clip_tokens, added_time_ids, trajectories=P)   # (B, F, 4, h, w)
    model.save_trackgo("ckpt/"); model = load_trackgo(fresh_unet, "ckpt/")

Only TrackGo's own tensors are saved (encoder, adapters and, when trained, the temporal attn1
to_q/to_k/to_v); the SVD UNet itself comes from its own checkpoint.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trackgo_data.config import atomic_write_bytes, atomic_write_json, config_from_dict

from .adapter import TrackContext, install_track_adapters, remove_track_adapters
from .configs import ATTENTION_MODES, KernelConfig, TrackGoConfig, unet_config
from .encoder import TrajectoryEncoder
from .groups import TrackGoModel
from .losses import attention_loss

log = logging.getLogger(__name__)

CONFIG_NAME = "trackgo_config.json"
WEIGHTS_NAME = "trackgo.safetensors"
FORMAT = "trackgo-checkpoint-v2"
#: v1 wrote the gated rule as O = A·V + g·A′·V; its paper-mode files compute what v2 computes
FORMAT_V1 = "trackgo-checkpoint-v1"


def build_unet(preset_or_config: str | dict[str, Any] = "tiny", device: str | torch.device = "meta",
               dtype: torch.dtype | None = None):
    """A randomly initialised ``UNetSpatioTemporalConditionModel`` from a preset name or config.

    On ``device="meta"`` no memory is allocated (parameter counts, adapter placement).
    """
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel(**unet_config(preset_or_config))
    if torch.device(device).type != "meta":
        unet = unet.to(device)  # a few diffusers tensors are created with the legacy CPU constructor
    if dtype is not None and dtype != unet.dtype:
        unet = unet.to(dtype)
    return unet


@dataclass
class EncodedTrajectories:
    """Encoder trunk of a trajectory video, reusable across denoising steps.

    trunk: (B·F, C, h0, w0) with batch-major rows; batch, frames: B and F.
    """

    trunk: torch.Tensor
    batch: int
    frames: int

    def repeat(self, n: int) -> "EncodedTrajectories":
        """Stack ``n`` copies along the batch (as ``torch.cat([x] * n)`` does for the sample)."""
        return EncodedTrajectories(torch.cat([self.trunk] * n), self.batch * n, self.frames)


class TrackGoUNet(TrackGoModel):
    """SVD UNet with a TrackAdapter on every temporal attn1 and the trajectory encoder.

    Attributes: ``unet`` (the diffusers model; adapters live inside it as the attn1
    processors), ``encoder``, ``adapters`` ({module path: processor}), ``context``, ``cfg``.
    """

    def __init__(self, unet, cfg: TrackGoConfig | dict | None = None) -> None:
        super().__init__()
        if isinstance(cfg, dict) or cfg is None:
            cfg = TrackGoConfig.from_dict(cfg)
        self.cfg = cfg
        self.unet = unet
        self.context = TrackContext.from_config(cfg)
        self.adapters = install_track_adapters(unet, self.context, cfg)
        widths = sorted({a.width for a in self.adapters.values()})
        p = next(unet.parameters())
        with torch.device(p.device):
            self.encoder = TrajectoryEncoder(widths, cfg.encoder).to(p.dtype)
        self.injection = None  # mode="injection": the peers' additive features instead of the adapters
        if cfg.mode == "injection":
            from .injection import TrajectoryInjection

            self.injection = TrajectoryInjection(unet, self.encoder.trunk_channels, cfg.encoder.pooling)
        self._motion_masks: torch.Tensor | None = None

    @classmethod
    def from_unet(cls, unet, cfg: TrackGoConfig | dict | None = None) -> "TrackGoUNet":
        return cls(unet, cfg)

    # -- properties the pipeline reads ---------------------------------------------------------
    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # -- forward -------------------------------------------------------------------------------
    def encode(self, trajectories: torch.Tensor) -> EncodedTrajectories:
        """P (B, F, 3, H, W) (float in [−1, 1] or uint8) → reusable :class:`EncodedTrajectories`."""
        if trajectories.ndim != 5:
            raise ValueError(f"trajectories must be (B, F, 3, H, W); got {tuple(trajectories.shape)}")
        b, f = trajectories.shape[:2]
        return EncodedTrajectories(self.encoder.trunk(trajectories.to(self.device)), b, f)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, trajectories: torch.Tensor | EncodedTrajectories | None = None,
                motion_masks: torch.Tensor | None = None, collect_attention: bool = False,
                return_dict: bool | None = None):
        """One UNet evaluation.

        Args:
            sample: (B, F, 8, h, w) noisy latents ⊕ conditioning-image latents.
            timestep: scalar or (B,) continuous timestep (0.25·ln σ).
            encoder_hidden_states: (B, 1, D) CLIP image token.
            added_time_ids: (B, 3) [fps − 1, motion_bucket_id, noise_aug_strength].
            trajectories: P (B, F, 3, 8h, 8w) or ``encode(P)``; its batch must equal the
                sample's (for classifier-free guidance duplicate it like the sample). None: the
                adapters are bypassed and the output is the bare UNet's.
            motion_masks: (B, F, h′, w′) moving-component masks kept for :meth:`attention_loss`.
            collect_attention: record A(i, i) of every temporal layer (``attention_maps()``).

            return_dict: None (default) returns the tensor; False returns ``(tensor,)`` and True
                diffusers' ``UNetSpatioTemporalConditionOutput``, as the bare UNet does (so code
                written for ``unet(..., return_dict=False)[0]`` works unchanged).

        Returns: (B, F, 4, h, w) UNet output.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, F, C, h, w); got {tuple(sample.shape)}")
        bsz, frames, _, h, w = sample.shape
        enc = None
        if trajectories is not None:
            if isinstance(trajectories, torch.Tensor):
                expect = (bsz, frames, trajectories.shape[2], 8 * h, 8 * w)
                if tuple(trajectories.shape) != expect:
                    raise ValueError(
                        f"trajectories have shape {tuple(trajectories.shape)}; the sample needs {expect} "
                        "(same batch — duplicate for guidance — same frames, 8× the latent size)"
                    )
                enc = self.encode(trajectories)
            else:
                enc = trajectories
            if (enc.batch, enc.frames) != (bsz, frames):
                raise ValueError(f"encoded trajectories are for (B, F) = {(enc.batch, enc.frames)}, "
                                 f"the sample is {(bsz, frames)}")
        self._motion_masks = motion_masks
        adapted = enc is not None and self.injection is None
        self.context.begin(batch=bsz, frames=frames, latent_hw=(h, w), collect=collect_attention,
                           encoder=self.encoder if adapted else None, trunk=enc.trunk if adapted else None)
        if self.injection is not None:
            self.injection.begin(enc.trunk if enc is not None else None)
        try:
            out = self.unet(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0]
        finally:
            self.context.end()
            if self.injection is not None:
                self.injection.end()
        if return_dict is None:
            return out
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

        return UNetSpatioTemporalConditionOutput(sample=out)

    def attention_loss(self, motion_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted L_attn (Eq. 8) of the last collected maps; multiply by ``cfg.attn_loss.weight``."""
        masks = motion_masks if motion_masks is not None else self._motion_masks
        if masks is None:
            raise ValueError("attention_loss needs motion masks (pass them here or to forward)")
        return attention_loss(self.attention_maps(), masks, normalisation=self.cfg.attn_loss.normalisation,
                              pooling=self.cfg.encoder.pooling)

    def inference_modes(self) -> tuple[str, ...]:
        return ("injection",) if self.injection is not None else ATTENTION_MODES

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def set_kernels(self, kernels: KernelConfig | dict | None = None) -> KernelConfig:
        """Choose how the adapters and the encoder run (speed only; see :class:`KernelConfig`)."""
        kernels = config_from_dict(KernelConfig, kernels, path="kernels")
        if kernels.attention == "flex":
            raise ValueError("kernels.attention=flex is the Wan kernel; SVD's are explicit, sdpa, compiled, triton")
        self.context.kernel = kernels.attention
        self.context.fused_projections = kernels.fused_projections
        self.encoder.set_channels_last(kernels.encoder_channels_last)
        return kernels

    def kernels(self) -> KernelConfig:
        """The current :class:`KernelConfig`."""
        return KernelConfig(attention=self.context.kernel, fused_projections=self.context.fused_projections,
                            encoder_channels_last=self.encoder.channels_last)

    def remove_adapters(self) -> dict[str, Any]:
        return remove_track_adapters(self.unet)

    # -- parameter groups ---------------------------------------------------------------------
    def encoder_group(self) -> dict[str, nn.Parameter]:
        """The encoder; in ``mode="injection"`` without its own heads, which that mode does not use."""
        return {f"encoder.{n}": p for n, p in self.encoder.named_parameters()
                if self.injection is None or not n.startswith("heads.")}

    def adapter_group(self) -> dict[str, nn.Parameter]:
        """The adapters (:class:`~trackgo_model.groups.TrackGoModel`), or in ``mode="injection"`` the
        injection's projections (``injection.heads.*``)."""
        if self.injection is not None:
            return {f"injection.{n}": p for n, p in self.injection.named_parameters()}
        return super().adapter_group()

    # -- checkpoints ---------------------------------------------------------------------------
    def save_trackgo(self, directory: str | Path, tensors: dict[str, torch.Tensor] | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
        """Write ``trackgo.safetensors`` (TrackGo tensors only) and ``trackgo_config.json``, atomically
        (:func:`save_checkpoint`)."""
        return save_checkpoint(self, directory, tensors, base="svd", extra=extra)

    def load_trackgo(self, directory: str | Path) -> "TrackGoUNet":
        """Load TrackGo tensors saved by :meth:`save_trackgo` (strict: same keys and shapes)."""
        return load_checkpoint(self, directory, base="svd")


def save_checkpoint(model, directory: str | Path, tensors: dict[str, torch.Tensor] | None = None, *,
                    base: str, extra: dict[str, Any] | None = None) -> Path:
    """Write a TrackGo model's own tensors and config (any base: ``model`` has ``cfg``, ``adapters``,
    ``encoder`` and ``checkpoint_parameters()``), atomically.

    tensors: the values to write instead of the model's own (e.g. full tensors gathered from a
    sharded training run); the keys must be those of ``checkpoint_parameters()``. extra: further
    keys of ``trackgo_config.json`` (e.g. ``wan_move``).
    """
    from safetensors.torch import save

    directory = Path(directory)
    params = model.checkpoint_parameters()
    if tensors is None:
        tensors = params
    elif sorted(tensors) != sorted(params):
        raise ValueError(f"save_trackgo: tensors must have exactly the keys of checkpoint_parameters(); "
                         f"missing {sorted(set(params) - set(tensors))[:3]} "
                         f"unexpected {sorted(set(tensors) - set(params))[:3]}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_json(directory / CONFIG_NAME, {
        "format": FORMAT,
        "base": base,
        "trackgo": model.cfg.to_dict(),
        "num_adapters": len(model.adapters),
        "adapter_widths": list(model.encoder.widths),
        "groups": list(model.checkpoint_groups()),
        **(extra or {}),
    })
    log.info("saved %d TrackGo tensors to %s", len(tensors), directory)
    return directory


def load_checkpoint(model, directory: str | Path, *, base: str):
    """Load into ``model`` the tensors :func:`save_checkpoint` wrote (strict: same base, keys and
    shapes); returns ``model``."""
    from safetensors.torch import load_file

    meta = read_trackgo_config(directory)
    if meta.get("base", "svd") != base:
        raise ValueError(f"{directory}: a TrackGo checkpoint for the {meta['base']!r} base, this model is {base!r}")
    if meta["num_adapters"] != len(model.adapters):
        raise ValueError(f"{directory}: checkpoint has {meta['num_adapters']} adapters, this model {len(model.adapters)}")
    state = load_file(str(Path(directory) / WEIGHTS_NAME))
    params = model.checkpoint_parameters()
    if model.cfg.mode == "paper":  # files written before gates left the paper-mode groups
        params.update({k: g for k, g in model.gates().items() if k in state})
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"{directory}: checkpoint keys do not match this model; "
                         f"missing {missing[:5]}{'…' if len(missing) > 5 else ''} "
                         f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
    with torch.no_grad():
        for k, p in params.items():
            if tuple(state[k].shape) != tuple(p.shape):
                raise ValueError(f"{directory}: {k} has shape {tuple(state[k].shape)}, model {tuple(p.shape)}")
            p.copy_(state[k])
    return model


def read_trackgo_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``trackgo_config.json`` of a checkpoint dir (clear error when files are missing)."""
    directory = Path(directory)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a TrackGo checkpoint: missing {', '.join(missing)} "
            f"(supply a directory written by save_trackgo / `trackgo train`)"
        )
    meta = json.loads((directory / CONFIG_NAME).read_text())
    if meta.get("format") == FORMAT_V1 and meta.get("trackgo", {}).get("mode") != "paper":
        raise ValueError(f"{directory}: a {FORMAT_V1} checkpoint of the gated rule O = A·V + g·A′·V, which is now "
                         f"O = A·V + g·(A′ − 1/F)·V; its weights do not carry over: train it again")
    if meta.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{directory / CONFIG_NAME}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_trackgo(unet, directory: str | Path) -> TrackGoUNet:
    """Wrap ``unet`` (e.g. the pretrained SVD UNet) with the TrackGo checkpoint in ``directory``."""
    meta = read_trackgo_config(directory)
    return TrackGoUNet(unet, TrackGoConfig.from_dict(meta["trackgo"])).load_trackgo(directory)


def count_params(preset_or_config: str | dict[str, Any] = "svd-xt", cfg: TrackGoConfig | None = None) -> dict[str, int]:
    """Exact counts on the meta device: {"unet_params", "added_params", "num_adapters"}."""
    unet = build_unet(preset_or_config, device="meta")
    unet_params = sum(p.numel() for p in unet.parameters())
    model = TrackGoUNet(unet, cfg)
    return {"unet_params": unet_params, "added_params": model.added_parameters(),
            "num_adapters": len(model.adapters)}
