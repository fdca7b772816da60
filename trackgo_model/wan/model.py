"""TrackGo on Wan's image-to-video DiT (docs/wan.md): ``WanTransformer3DModel`` + the trajectory
encoder + a TrackAdapter in every block's self-attention.

    transformer = build_transformer("tiny", device="cpu")     # or load_transformer(diffusers_folder)
    model = TrackGoWan(transformer, TrackGoConfig(alpha_frames=25))
    out = model(x, t, text, image_embeds, trajectories=P)      # x: (B, 36, F, h, w) → (B, 16, F, h, w)
    model.save_trackgo("ckpt/"); TrackGoWan(fresh_transformer).load_trackgo("ckpt/")

P has the clip's pixel frames, L = r·(F − 1) + 1 for the VAE's temporal ratio r (4): the
encoder's per-frame trunk is averaged over the frames each latent frame stands for (frame 0
alone, then groups of r, as Wan's VAE groups them), then over the 2×2 patch (the token grid).
Parameter groups are the SVD model's: ``encoder``, ``adapter``, ``temporal_qkv`` (here the
to_q/to_k/to_v of every adapted self-attention: Wan's only attention across frames) and ``unet``
(the whole transformer, adapters excluded: a base trained from scratch).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from trackgo_data.config import atomic_write_bytes

from ..adapter import CheckpointedForward, TrackContext, checkpointed_blocks
from ..configs import ATTENTION_MODES, TrackGoConfig
from ..encoder import TrajectoryEncoder
from ..groups import TrackGoModel
from ..losses import attention_loss
from ..model import EncodedTrajectories, load_checkpoint, save_checkpoint
from .adapter import install_wan_adapters, remove_wan_adapters

__all__ = ["WAN_PRESETS", "TrackGoWan", "build_transformer", "count_params", "latent_frame_masks",
           "load_transformer", "pool_frames"]

_WAN_14B = {"patch_size": [1, 2, 2], "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6}
_TINY = {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 36,
         "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 64, "num_layers": 2,
         "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 64}
#: ``WanTransformer3DModel`` configs. Wan2.1 image-to-video (480P and 720P share the layout) attends
#: to 257 CLIP image tokens through extra key/value projections; Wan2.2 I2V-A14B has no image
#: encoder and two such transformers (high- and low-noise experts, folders ``transformer`` and
#: ``transformer_2``), each made TrackGo on its own. ``tiny*``: the same layouts, CPU-sized.
WAN_PRESETS: dict[str, dict[str, Any]] = {
    "wan2.1-i2v-14b": {**_WAN_14B, "image_dim": 1280, "added_kv_proj_dim": 5120},
    "wan2.2-i2v-a14b": dict(_WAN_14B),
    "tiny": {**_TINY, "image_dim": 16, "added_kv_proj_dim": 24},
    "tiny-2.2": dict(_TINY),
}


def build_transformer(preset_or_config: str | dict[str, Any] = "tiny", device: str | torch.device = "meta",
                      dtype: torch.dtype | None = None):
    """A randomly initialised ``WanTransformer3DModel`` from a preset name or config dict."""
    from diffusers import WanTransformer3DModel

    if isinstance(preset_or_config, str):
        if preset_or_config not in WAN_PRESETS:
            raise ValueError(f"unknown Wan preset {preset_or_config!r}; known: {sorted(WAN_PRESETS)}")
        preset_or_config = WAN_PRESETS[preset_or_config]
    with torch.device(device):
        model = WanTransformer3DModel(**copy.deepcopy(preset_or_config))
    return model if dtype is None else model.to(dtype)


def load_transformer(path: str | Path, subfolder: str = "transformer", dtype: torch.dtype | None = None):
    """``WanTransformer3DModel`` from a diffusers folder (the pipeline's root, or the transformer
    folder itself with ``subfolder=""``); one clear error when it is not there."""
    from diffusers import WanTransformer3DModel

    folder = Path(path) / subfolder if subfolder else Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no Wan transformer at {folder} (no config.json): supply a diffusers-format Wan image-to-video "
            f"folder, e.g. a local copy of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, with its {subfolder or 'transformer'}/ "
            "folder; weights are not downloaded")
    return WanTransformer3DModel.from_pretrained(str(Path(path)), subfolder=subfolder or None, torch_dtype=dtype)


def pool_frames(x: torch.Tensor, batch: int, ratio: int) -> torch.Tensor:
    """Per-pixel-frame features (B·L, C, h, w) → per-latent-frame (B·F, C, h, w): frame 0 alone,
    then the mean of each group of ``ratio`` frames; L = ratio·(F − 1) + 1."""
    frames = x.shape[0] // batch
    if x.shape[0] % batch or (frames - 1) % ratio:
        raise ValueError(f"{x.shape[0]} rows are not B = {batch} clips of r·(F − 1) + 1 frames (r = {ratio})")
    x = x.reshape(batch, frames, *x.shape[1:])
    rest = x[:, 1:].reshape(batch, (frames - 1) // ratio, ratio, *x.shape[2:]).mean(dim=2)
    return torch.cat([x[:, :1], rest], dim=1).flatten(0, 1)


def latent_frame_masks(masks: torch.Tensor, ratio: int) -> torch.Tensor:
    """Motion masks (B, L, H, W) per pixel frame → (B, F, H, W) per latent frame: frame 0 alone,
    then the union (max) of each group of ``ratio`` frames."""
    b, frames = masks.shape[:2]
    if (frames - 1) % ratio:
        raise ValueError(f"{frames} mask frames are not r·(F − 1) + 1 for r = {ratio}")
    m = masks.float() if masks.is_floating_point() else (masks > 0).float()
    rest = m[:, 1:].reshape(b, (frames - 1) // ratio, ratio, *m.shape[2:]).amax(dim=2)
    return torch.cat([m[:, :1], rest], dim=1)


class TrackGoWan(TrackGoModel):
    """Wan DiT with a TrackAdapter on every block's self-attention and the trajectory encoder.

    ``temporal_ratio``/``spatial_ratio``: the VAE's compression (Wan2.1's VAE: 4 and 8).
    Attributes: ``transformer``, ``encoder``, ``adapters`` ({path: processor}), ``context``, ``cfg``.
    """

    base_attr = "transformer"

    def __init__(self, transformer, cfg: TrackGoConfig | dict | None = None, *, temporal_ratio: int = 4,
                 spatial_ratio: int = 8) -> None:
        super().__init__()
        if isinstance(cfg, dict) or cfg is None:
            cfg = TrackGoConfig.from_dict(cfg)
        if cfg.mode not in ATTENTION_MODES:
            raise ValueError(f"TrackGo on Wan supports modes {ATTENTION_MODES}, got {cfg.mode!r}")
        if spatial_ratio != 8:
            raise ValueError(f"the trajectory encoder works at /8: a VAE with spatial ratio {spatial_ratio} "
                             "(e.g. Wan2.2-TI2V-5B's 16) is not supported")
        self.cfg, self.transformer = cfg, transformer
        self.temporal_ratio, self.spatial_ratio = int(temporal_ratio), int(spatial_ratio)
        self.context = TrackContext.from_config(cfg)
        self.adapters = install_wan_adapters(transformer, self.context, cfg)
        p = next(transformer.parameters())
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        with torch.device(p.device):
            self.encoder = TrajectoryEncoder([inner], cfg.encoder)
        if next(self.encoder.parameters()).dtype != p.dtype:
            self.encoder.to(p.dtype)
        self._motion_masks: torch.Tensor | None = None

    @property
    def config(self):
        return self.transformer.config

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def encode(self, trajectories: torch.Tensor) -> EncodedTrajectories:
        """P (B, L, 3, H, W) → trunk per latent frame (B·F, C, H/8, W/8), F = (L − 1)/r + 1."""
        if trajectories.ndim != 5:
            raise ValueError(f"trajectories must be (B, L, 3, H, W); got {tuple(trajectories.shape)}")
        b, length = trajectories.shape[:2]
        trunk = pool_frames(self.encoder.trunk(trajectories.to(self.device)), b, self.temporal_ratio)
        return EncodedTrajectories(trunk, b, (length - 1) // self.temporal_ratio + 1)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None,
                trajectories: torch.Tensor | EncodedTrajectories | None = None,
                motion_masks: torch.Tensor | None = None, collect_attention: bool = False) -> torch.Tensor:
        """One transformer evaluation.

        Args:
            hidden_states: (B, C_in, F, h, w) noisy latents ⊕ mask ⊕ first-frame latents (36 ch).
            timestep: (B,) diffusion timestep.
            encoder_hidden_states: (B, 512, text_dim) text tokens.
            encoder_hidden_states_image: (B, 257, image_dim) CLIP image tokens (Wan2.1) or None.
            trajectories: P (B, r·(F − 1) + 1, 3, 8h, 8w) or ``encode(P)``; None: the bare model.
            motion_masks: moving-component masks, (B, L or F, H′, W′), kept for :meth:`attention_loss`.
            collect_attention: record A(i, i) of every adapted layer.

        Returns: (B, C_out, F, h, w).
        """
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be (B, C, F, h, w); got {tuple(hidden_states.shape)}")
        if self.transformer.gradient_checkpointing and torch.is_grad_enabled():
            raise ValueError("diffusers' gradient checkpointing re-runs Wan's blocks after the forward, without the "
                             "adapters' state; use TrackGoWan.enable_gradient_checkpointing() instead")
        b, _, frames, h, w = hidden_states.shape
        enc = trajectories
        if isinstance(trajectories, torch.Tensor):
            length = self.temporal_ratio * (frames - 1) + 1
            expect = (b, length, trajectories.shape[2], self.spatial_ratio * h, self.spatial_ratio * w)
            if tuple(trajectories.shape) != expect:
                raise ValueError(f"trajectories have shape {tuple(trajectories.shape)}; the latents need {expect} "
                                 f"(same batch, r·(F − 1) + 1 = {length} frames, {self.spatial_ratio}× the latent size)")
            enc = self.encode(trajectories)
        if enc is not None and (enc.batch, enc.frames) != (b, frames):
            raise ValueError(f"encoded trajectories are for (B, F) = {(enc.batch, enc.frames)}, the latents {(b, frames)}")
        self._motion_masks = motion_masks
        self.context.begin(batch=b, frames=frames, latent_hw=(h, w), collect=collect_attention,
                           encoder=self.encoder if enc is not None else None,
                           trunk=enc.trunk if enc is not None else None)
        try:
            return self.transformer(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                                    return_dict=False)[0]
        finally:
            self.context.end()

    def attention_loss(self, motion_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Unweighted L_attn (Eq. 8) of the last collected maps. Masks with L = r·(F − 1) + 1
        frames are first brought to the latent frames (:func:`latent_frame_masks`)."""
        masks = motion_masks if motion_masks is not None else self._motion_masks
        if masks is None:
            raise ValueError("attention_loss needs motion masks (pass them here or to forward)")
        maps = self.attention_maps()
        if maps and masks.shape[1] != maps[0].diag.shape[-1]:
            masks = latent_frame_masks(masks, self.temporal_ratio)
        return attention_loss(maps, masks, normalisation=self.cfg.attn_loss.normalisation,
                              pooling=self.cfg.encoder.pooling)

    def set_attention_kernel(self, kernel: str) -> None:
        """How every adapter computes the masked attention (``explicit`` | ``flex``: the same function;
        see :func:`~trackgo_model.wan.attention.track_attention_3d`)."""
        from .attention import KERNELS

        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        for adapter in self.adapters.values():
            adapter.kernel = kernel

    def set_kernels(self, kernels=None):
        """The training config's ``model.kernels``: only ``attention`` (explicit | flex) applies to Wan."""
        from trackgo_data.config import config_from_dict

        from ..configs import KernelConfig

        kernels = config_from_dict(KernelConfig, kernels, path="kernels")
        if kernels != KernelConfig(attention=kernels.attention):
            raise ValueError("TrackGo on Wan has no fused projections or channels-last encoder switch; "
                             "set only kernels.attention")
        self.set_attention_kernel(kernels.attention)
        return kernels

    def enable_gradient_checkpointing(self) -> int:
        """Activation checkpointing of every transformer block: each re-runs in backward with the
        adapters' state of its first run (:class:`~trackgo_model.adapter.CheckpointedForward`); the
        same gradients, attention loss included. Returns the number of blocks."""
        self.transformer.disable_gradient_checkpointing()
        for block in self.transformer.blocks:
            block.forward = CheckpointedForward(block, self.context)
        return len(self.transformer.blocks)

    def disable_gradient_checkpointing(self) -> None:
        for block in checkpointed_blocks(self.transformer):
            del block.forward  # the class's forward again

    def remove_adapters(self) -> dict[str, Any]:
        return remove_wan_adapters(self.transformer)

    def save_trackgo(self, directory: str | Path, tensors: dict[str, torch.Tensor] | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
        """TrackGo's own tensors and config (the transformer comes from its own folder)."""
        return save_checkpoint(self, directory, tensors, base="wan", extra=extra)

    def save_transformer(self, directory: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
        """The whole transformer as a diffusers folder: this model's config with the values of
        ``tensors`` (keys ``transformer.<name>``, every one of the transformer's) — what a run that
        trained the whole transformer (``model.wan_move``) exports beside its TrackGo tensors."""
        from safetensors.torch import save

        added = {f"{path}.processor.{n}" for path, a in self.adapters.items() for n in a.state_dict()}
        own = {k: v for k, v in self.transformer.state_dict().items() if k not in added}
        weights = {k[len("transformer."):]: v for k, v in tensors.items() if k.startswith("transformer.")}
        if sorted(weights) != sorted(own):
            raise ValueError(f"save_transformer: tensors do not cover the transformer (missing "
                             f"{sorted(set(own) - set(weights))[:3]}, unknown {sorted(set(weights) - set(own))[:3]})")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", own[k].dtype).contiguous() for k, v in weights.items()}
        atomic_write_bytes(directory / "diffusion_pytorch_model.safetensors", save(state, metadata={"format": "pt"}))
        self.transformer.save_config(str(directory))
        return directory

    def load_trackgo(self, directory: str | Path) -> "TrackGoWan":
        return load_checkpoint(self, directory, base="wan")


def count_params(preset_or_config: str | dict[str, Any] = "wan2.1-i2v-14b", cfg: TrackGoConfig | None = None
                 ) -> dict[str, int]:
    """Exact counts on the meta device: {"transformer_params", "added_params", "temporal_qkv_params",
    "num_adapters"}."""
    transformer = build_transformer(preset_or_config, device="meta")
    total = sum(p.numel() for p in transformer.parameters())
    model = TrackGoWan(transformer, cfg)
    qkv = sum(p.numel() for p in model.named_group_parameters(("temporal_qkv",)).values())
    return {"transformer_params": total, "added_params": model.added_parameters(), "temporal_qkv_params": qkv,
            "num_adapters": len(model.adapters)}
