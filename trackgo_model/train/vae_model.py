"""The video VAEs that :mod:`trackgo_model.train.vae` trains from scratch: their sizes
(:class:`VAEModelConfig`, SVD's ``AutoencoderKLTemporalDecoder`` or Wan's ``AutoencoderKLWan``) and
the initialisations that let them learn (docs/toy.md, docs/wan.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: VAE families: SVD's per-frame VAE with a temporal decoder, Wan's causal 3D VAE
VAE_FAMILIES = ("svd", "wan")


@dataclass
class VAEModelConfig:
    """The VAE's size. ``svd``: ``AutoencoderKLTemporalDecoder`` with four blocks of these widths
    (multiples of 32, GroupNorm), ×8 down-sampling. ``wan``: ``AutoencoderKLWan`` with
    base_dim = the first width and dim_mult = the widths over it (each a multiple of the first),
    ``layers_per_block`` residual blocks per level, ×8 in space and ×4 in time."""

    family: str = "svd"
    block_out_channels: tuple[int, ...] = (32, 32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.family not in VAE_FAMILIES:
            raise ValueError(f"model.family must be one of {VAE_FAMILIES}, got {self.family!r}")
        widths = self.block_out_channels
        if self.family == "wan" and (len(widths) != 4 or widths[0] <= 0 or any(c % widths[0] for c in widths)):
            raise ValueError("model.block_out_channels must be four widths, multiples of the first (Wan's dim_mult)")
        if self.family == "svd" and (len(widths) != 4 or any(c % 32 for c in widths)):
            raise ValueError("model.block_out_channels must be four multiples of 32 (×8 down-sampling)")

    def build(self, sample_size: int):
        """A randomly initialised VAE of this family and size."""
        if self.family == "wan":
            from diffusers import AutoencoderKLWan

            first = self.block_out_channels[0]
            return AutoencoderKLWan(base_dim=first, z_dim=self.latent_channels, num_res_blocks=self.layers_per_block,
                                    dim_mult=[c // first for c in self.block_out_channels], attn_scales=[],
                                    temperal_downsample=[False, True, True],
                                    latents_mean=[0.0] * self.latent_channels, latents_std=[1.0] * self.latent_channels)
        from diffusers import AutoencoderKLTemporalDecoder

        return AutoencoderKLTemporalDecoder(**self.diffusers_config(sample_size))

    def diffusers_config(self, sample_size: int) -> dict[str, Any]:
        return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
                "latent_channels": self.latent_channels, "sample_size": sample_size,
                "scaling_factor": 1.0, "force_upcast": True}


def is_wan(vae) -> bool:
    """Whether ``vae`` is Wan's causal 3D VAE (else SVD's per-frame one)."""
    from diffusers import AutoencoderKLWan

    return isinstance(vae, AutoencoderKLWan)


def identity_time_conv(vae) -> None:
    """Start the decoder's last layer, a 3-frame temporal convolution on the RGB output, as the
    identity (centre tap = I, rest 0): its default random init mixes the colour channels of
    neighbouring frames, which a VAE trained from scratch takes long to undo
    (docs/measurements.md)."""
    conv = vae.decoder.time_conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, conv.weight.shape[2] // 2, 0, 0] = torch.eye(conv.weight.shape[0])
        conv.bias.zero_()


@torch.no_grad()
def start_causal_as_2d(vae) -> int:
    """Wan's VAE: every causal convolution over time starts as a 2D one on the newest frame (older
    taps zero), and the temporal resampling ones as the identity on it (the up-sampler's two
    output frames both copies) — so a VAE trained on images first (``image_steps``, where only the
    newest taps see data) codes a video frame by frame at the start of its video steps, latent
    frame k as pixel frame 4k, instead of mixing frames through untrained random taps. Returns the
    number of convolutions changed."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    resampling = {id(m.time_conv) for m in vae.modules() if isinstance(m, WanResample) and hasattr(m, "time_conv")}
    changed = 0
    for conv in vae.modules():
        if not isinstance(conv, WanCausalConv3d) or conv.weight.shape[2] == 1:
            continue
        conv.weight[:, :, :-1] = 0
        if id(conv) in resampling:
            out, inp = conv.weight.shape[:2]
            conv.weight.zero_()
            conv.bias.zero_()
            for start in range(0, out, inp):  # the up-sampler's 2·C outputs: two copies
                conv.weight[start:start + inp, :, -1, 0, 0] = torch.eye(inp)
        changed += 1
    return changed


@dataclass
class PatchCode:
    """A fixed linear code of frames: each factor×factor pixel patch (3·factor² values) projected
    on the first C principal components of the patches it was fitted on, divided by one scale
    so the codes have unit standard deviation. mean: (3·factor²,); components: (3·factor², C)."""

    mean: torch.Tensor
    components: torch.Tensor
    scale: float
    factor: int = 8

    @classmethod
    @torch.no_grad()
    def fit(cls, frames: torch.Tensor, channels: int, factor: int = 8) -> "PatchCode":
        """frames (N, 3, H, W) in [−1, 1], H and W multiples of ``factor`` → the code."""
        patches = _patches(frames, factor)
        mean = patches.mean(0)
        _, _, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        components = vh[:channels].T.contiguous()
        return cls(mean, components, float(((patches - mean) @ components).std()), factor)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, 3, H, W) → codes (N, C, H/factor, W/factor)."""
        n, _, h, w = frames.shape
        code = (_patches(frames, self.factor) - self.mean) @ self.components / self.scale
        return code.view(n, h // self.factor, w // self.factor, -1).permute(0, 3, 1, 2)


def _patches(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, 3, H, W) → (N·H/f·W/f, 3·f²): each f×f patch as one row."""
    p = torch.nn.functional.pixel_unshuffle(frames, factor)
    return p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])
