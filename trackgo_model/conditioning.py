"""Stable Video Diffusion conditioning, shared by training and inference.

SVD is conditioned on the first frame in three ways (see ``shared/spec/svd.md``):

* a CLIP image embedding (one token) fed as ``encoder_hidden_states``;
* the first frame, with a little Gaussian pixel noise (``noise_aug_strength``), VAE-encoded and
  **not** multiplied by the VAE scaling factor, repeated over frames and concatenated with the
  noisy latents on the channel axis (UNet ``in_channels`` = 4 + 4);
* ``added_time_ids`` = ``[fps - 1, motion_bucket_id, noise_aug_strength]``.

TrackGo adds the rendered trajectory video ``P`` as a fourth condition
(:func:`trajectory_to_tensor`). Everything here is plain torch; images are float tensors in
``[-1, 1]`` laid out ``(B, 3, H, W)`` and videos ``(B, F, 3, H, W)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# OpenAI CLIP pixel statistics; used when no CLIPImageProcessor is given.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def svd_resize(images: torch.Tensor, size: tuple[int, int] = (CLIP_SIZE, CLIP_SIZE)) -> torch.Tensor:
    """Stable Video Diffusion's antialiased resize (what its pipeline applies before CLIP).

    images: (B, C, H, W) float. A separable Gaussian blur with σ = max((H/h − 1)/2, 0.001) along y
    and likewise along x (a scale factor of 1 or below gives σ = 0.001, i.e. no blur), kernel size
    int(max(4σ, 3)) made odd, reflect padding, horizontal pass first — then bicubic interpolation
    to ``size`` = (h, w) with ``align_corners=True``. Returns (B, C, h, w) in the input dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    b, c, height, width = images.shape
    x = images.reshape(b * c, 1, height, width)
    for horizontal, n, target in ((True, width, size[1]), (False, height, size[0])):
        sigma = torch.tensor(max((n / target - 1.0) / 2.0, 0.001), dtype=x.dtype)
        k = int(max(4.0 * float(sigma), 3))
        k += 1 - k % 2
        offsets = torch.arange(k, dtype=x.dtype) - k // 2
        kernel = torch.exp(-offsets.pow(2) / (2 * sigma.pow(2)))
        kernel = (kernel / kernel.sum()).to(x.device)
        lo, hi = (k - 1) // 2, k - 1 - (k - 1) // 2
        if horizontal:
            x = F.conv2d(F.pad(x, (lo, hi, 0, 0), mode="reflect"), kernel.view(1, 1, 1, k))
        else:
            x = F.conv2d(F.pad(x, (0, 0, lo, hi), mode="reflect"), kernel.view(1, 1, k, 1))
    x = x.reshape(b, c, height, width)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_preprocess(images: torch.Tensor, feature_extractor: Any | None = None) -> torch.Tensor:
    """The CLIP input of Stable Video Diffusion's pipeline, in torch: the one function training and
    inference use.

    images: (B, 3, H, W) float in [-1, 1] (the first frame at any size). As diffusers' SVD pipeline:
    :func:`svd_resize` of the image in [-1, 1] to S×S, then (x + 1)/2 **without clamping** (the
    bicubic overshoot is kept), then the processor's normalisation (``image_mean``/``image_std``;
    OpenAI CLIP statistics when ``feature_extractor`` is None) with no further resize, crop or
    rescale. S is the processor's crop size (224 for SVD). Returns (B, 3, S, S) float32.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    size = CLIP_SIZE
    mean, std = CLIP_MEAN, CLIP_STD
    if feature_extractor is not None:
        mean = tuple(feature_extractor.image_mean)
        std = tuple(feature_extractor.image_std)
        crop = getattr(feature_extractor, "crop_size", None)
        # a dict, or transformers' SizeDict (attributes; not a dict subclass in transformers 5)
        height = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
        if height:
            size = int(height)
    x = svd_resize(images.float(), (size, size))
    x = (x + 1.0) / 2.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def encode_image_clip(image_encoder: torch.nn.Module, feature_extractor: Any | None,
                      images: torch.Tensor) -> torch.Tensor:
    """CLIP image token for the cross-attention.

    image_encoder: a ``CLIPVisionModelWithProjection``; images: (B, 3, H, W) float in [-1, 1].
    Returns (B, 1, D) in the encoder's dtype, D = its ``projection_dim``.
    """
    pixels = clip_preprocess(images, feature_extractor)
    pixels = pixels.to(device=_module_device(image_encoder), dtype=_module_dtype(image_encoder))
    embeds = image_encoder(pixel_values=pixels).image_embeds
    return embeds.unsqueeze(1)


def encode_condition_latents(vae: torch.nn.Module, images: torch.Tensor, noise_aug_strength: float,
                             generator: torch.Generator | None = None, *,
                             sample_posterior: bool = False) -> torch.Tensor:
    """Latents of the (noise-augmented) first frame, the UNet's extra 4 input channels.

    images: (B, 3, H, W) float in [-1, 1]. Adds ``noise_aug_strength * N(0, 1)`` pixel noise drawn
    from ``generator``, VAE-encodes and takes the posterior mode (``sample_posterior=True`` draws
    from it instead). Returns (B, 4, H/8, W/8), **not** scaled by ``vae.config.scaling_factor``.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    noise = randn_tensor(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    x = images + float(noise_aug_strength) * noise
    x = x.to(device=_module_device(vae), dtype=_module_dtype(vae))
    dist = vae.encode(x).latent_dist
    return dist.sample(generator) if sample_posterior else dist.mode()


def encode_video_latents(vae: torch.nn.Module, video: torch.Tensor, chunk: int = 8, *,
                         sample_posterior: bool = False,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Diffusion-space latents of a video (the training target x0).

    video: (B, F, 3, H, W) float in [-1, 1]. Encodes ``chunk`` frames at a time (memory), takes the
    posterior mode (or a sample) and multiplies by ``vae.config.scaling_factor``.
    Returns (B, F, 4, H/8, W/8).
    """
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be (B, F, 3, H, W), got {tuple(video.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    b, f = video.shape[:2]
    flat = video.flatten(0, 1).to(device=_module_device(vae), dtype=_module_dtype(vae))
    parts = []
    for i in range(0, flat.shape[0], chunk):
        dist = vae.encode(flat[i:i + chunk]).latent_dist
        parts.append(dist.sample(generator) if sample_posterior else dist.mode())
    latents = torch.cat(parts) * vae.config.scaling_factor
    return latents.reshape(b, f, *latents.shape[1:])


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, num_frames: int,
                   decode_chunk_size: int = 14) -> torch.Tensor:
    """Decode diffusion-space latents back to frames.

    latents: (B, F, 4, h, w) scaled by ``vae.config.scaling_factor`` (F == num_frames). The
    temporal decoder mixes frames inside one call, so chunks never straddle two videos.
    Returns (B, F, 3, 8h, 8w) float32, nominally in [-1, 1] (not clamped).
    """
    if latents.ndim != 5 or latents.shape[1] != num_frames:
        raise ValueError(f"latents must be (B, {num_frames}, C, h, w), got {tuple(latents.shape)}")
    if decode_chunk_size < 1:
        raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
    device, dtype = _module_device(vae), _module_dtype(vae)
    scaled = latents / vae.config.scaling_factor
    videos = []
    for video in scaled:
        frames = []
        for i in range(0, num_frames, decode_chunk_size):
            z = video[i:i + decode_chunk_size].to(device=device, dtype=dtype)
            frames.append(vae.decode(z, num_frames=z.shape[0]).sample.float())
        videos.append(torch.cat(frames))
    return torch.stack(videos)


def make_added_time_ids(fps: float, motion_bucket_id: float, noise_aug_strength: float, batch: int,
                        dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """SVD's micro-conditioning: (batch, 3) rows ``[fps - 1, motion_bucket_id, noise_aug_strength]``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    row = torch.tensor([float(fps) - 1.0, float(motion_bucket_id), float(noise_aug_strength)],
                       dtype=dtype, device=device)
    return row.unsqueeze(0).repeat(batch, 1)


def guidance_scales(min_guidance_scale: float, max_guidance_scale: float, num_frames: int) -> torch.Tensor:
    """Frame-wise classifier-free guidance weights: (num_frames,) linear from min (frame 0) to max."""
    return torch.linspace(float(min_guidance_scale), float(max_guidance_scale), int(num_frames))


def image_to_tensor(image: Any) -> torch.Tensor:
    """PIL image or uint8 (H, W, 3) array → (1, 3, H, W) float32 in [-1, 1]."""
    arr = np.array(image.convert("RGB")) if hasattr(image, "convert") else np.array(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got dtype {arr.dtype} shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    return (t / 127.5 - 1.0).unsqueeze(0)


def trajectory_video(trajectories: Any, image_size: tuple[int, int], height: int, width: int) -> np.ndarray | None:
    """P uint8 (L, height, width, 3) from a rendered P or from ``(tracks, visibility, components)``
    (None stays None).

    Tracks are in pixels of the input image (``image_size`` = (W, H)) and are rescaled to the
    output size before rendering with the one renderer of P.
    """
    if trajectories is None:
        return None
    if isinstance(trajectories, (tuple, list)) and len(trajectories) == 3:
        from trackgo_data.render import render_trajectories

        tracks, visibility, components = (np.asarray(a) for a in trajectories)
        tracks = tracks.astype(np.float32) * np.array(
            [width / image_size[0], height / image_size[1]], np.float32)
        return render_trajectories(tracks, visibility, components, height, width)
    P = np.asarray(trajectories.detach().cpu() if isinstance(trajectories, torch.Tensor) else trajectories)
    if P.ndim != 4 or P.shape[-1] != 3 or P.dtype != np.uint8:
        raise ValueError("trajectories must be a rendered P uint8 (L, H, W, 3) or a "
                         f"(tracks, visibility, components) tuple; got {P.dtype} {P.shape}")
    if P.shape[1:3] != (height, width):
        raise ValueError(f"trajectory video is {P.shape[2]}x{P.shape[1]} but the output is "
                         f"{width}x{height}; render P at the output size")
    return P


def trajectory_to_tensor(P: Any) -> torch.Tensor:
    """Rendered trajectory video P: uint8 (L, H, W, 3) → (1, L, 3, H, W) float32 in [-1, 1]."""
    if isinstance(P, torch.Tensor):
        P = P.detach().cpu().numpy()
    P = np.asarray(P)
    if P.ndim != 4 or P.shape[-1] != 3 or P.dtype != np.uint8:
        raise ValueError(f"trajectories P must be uint8 (L, H, W, 3), got dtype {P.dtype} shape {P.shape}")
    t = torch.from_numpy(np.ascontiguousarray(P)).permute(0, 3, 1, 2).float()
    return (t / 127.5 - 1.0).unsqueeze(0)


@dataclass
class GuidanceBranches:
    """What every denoising step of ``TrackGoPipeline`` is conditioned on, one batch row per
    branch: [unconditional (with ``guidance``)], conditional, [conditional with the empty P
    (``trajectory_guidance`` > 1)]. clip (B, 1, D), image_latents (B, F, 4, h, w), time_ids (B, 3),
    trajectories (``EncodedTrajectories`` of batch B, or None)."""

    clip: torch.Tensor
    image_latents: torch.Tensor
    time_ids: torch.Tensor
    trajectories: Any
    guidance: bool
    trajectory_guidance: float = 1.0

    @property
    def branches(self) -> int:
        return int(self.clip.shape[0])

    def combine(self, pred: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """The branches' predictions (B, F, 4, h, w) → one (1, F, 4, h, w):
        ε_u + s·(ε_c − ε_u) with frame-wise scales s (1, F, 1, 1, 1), plus (g − 1)·(ε_c − ε_∅)."""
        parts = list(pred.chunk(self.branches))
        uncond = parts.pop(0) if self.guidance else None
        cond_pred = parts.pop(0)
        out = cond_pred if uncond is None else uncond + scales * (cond_pred - uncond)
        if parts:
            out = out + (self.trajectory_guidance - 1.0) * (cond_pred - parts.pop(0))
        return out
