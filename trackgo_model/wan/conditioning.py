"""Wan image-to-video conditioning and the flow-matching noise path (docs/wan.md, "Training").

The functions compute what diffusers' ``WanImageToVideoPipeline`` feeds its transformer, so a
model trained here samples with that pipeline's conventions (the tests compare them):

* latents are the VAE posterior's mode, normalised per channel: z = (E(x) − μ) / s with μ, s the
  VAE config's ``latents_mean``/``latents_std``;
* the condition is the first-frame mask ⊕ the latents of [first frame, zeros × (L − 1)]:
  mask (B, 4, F, h, w) is 1 on the r = 4 sub-frames of latent frame 0 and 0 elsewhere, so with 16
  latent channels the transformer reads 16 (noisy) + 4 + 16 = 36 channels;
* text tokens: the prompt's encoder states, cut to its length and zero-padded to 512 tokens;
* Wan2.1's image tokens: the CLIP vision model's penultimate hidden states.

Flow matching (rectified flow): x_σ = (1 − σ)·x0 + σ·ε, the network predicts v = ε − x0 at
timestep t = 1000·σ, and σ = s·u / (1 + (s − 1)·u) for u ∈ [0, 1] and the shift s (Wan's
``flow_shift``; s > 1 spends more of training and sampling at high noise).
"""
from __future__ import annotations

import torch

__all__ = ["NUM_TRAIN_TIMESTEPS", "TEXT_TOKENS", "condition_latents", "decode_video", "denormalise", "expert_u_range",
           "encode_prompt", "encode_video", "first_frame_mask", "image_tokens", "normalise", "shift_sigmas"]

#: timestep = NUM_TRAIN_TIMESTEPS · σ, as Wan's schedulers number them
NUM_TRAIN_TIMESTEPS = 1000
#: text tokens Wan's transformer takes (diffusers' Wan attention reads the last 512 context tokens as text)
TEXT_TOKENS = 512


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """σ = s·u / (1 + (s − 1)·u): u (any shape) in [0, 1] → σ (same shape) in [0, 1]."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * u / (1.0 + (shift - 1.0) * u)


def expert_u_range(expert: str | None, boundary_ratio: float | None, shift: float) -> tuple[float, float]:
    """The range of u (σ = shift_sigmas(u)) a Wan2.2 expert trains on: ``high`` σ ≥ boundary (the
    timesteps t ≥ boundary·1000 that diffusers gives ``transformer``), ``low`` σ < boundary
    (``transformer_2``); u_b = σ_b / (s − (s − 1)·σ_b) inverts the shift. None: (0, 1)."""
    if expert is None:
        return 0.0, 1.0
    if expert not in ("high", "low") or boundary_ratio is None or not 0 < boundary_ratio < 1:
        raise ValueError(f"an expert is 'high' or 'low' with a boundary in (0, 1); got {expert!r}, {boundary_ratio}")
    u_b = boundary_ratio / (shift - (shift - 1.0) * boundary_ratio)
    return (u_b, 1.0) if expert == "high" else (0.0, u_b)


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = vae.config
    mean = torch.tensor(c.latents_mean, dtype=torch.float32).view(1, c.z_dim, 1, 1, 1)
    std = torch.tensor(c.latents_std, dtype=torch.float32).view(1, c.z_dim, 1, 1, 1)
    return mean.to(like.device, like.dtype), std.to(like.device, like.dtype)


def normalise(vae, z: torch.Tensor) -> torch.Tensor:
    """VAE latents (B, 16, F, h, w) → (z − μ)/s, what the transformer sees."""
    mean, std = _stats(vae, z)
    return (z - mean) / std


def denormalise(vae, z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise`."""
    mean, std = _stats(vae, z)
    return z * std + mean


def _vae_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype


def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """video (B, L, 3, H, W) in [-1, 1], L = 4(F − 1) + 1 → normalised latents (B, 16, F, H/8, W/8)
    (posterior mode), float32."""
    x = video.permute(0, 2, 1, 3, 4).to(_vae_dtype(vae))
    return normalise(vae, vae.encode(x).latent_dist.mode().float())


def first_frame_mask(batch: int, frames: int, h: int, w: int, ratio: int = 4,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, r, F, h, w): 1 on the r sub-frames of latent frame 0 (the given first frame), 0 elsewhere."""
    mask = torch.zeros(batch, ratio, frames, h, w, device=device)
    mask[:, :, 0] = 1.0
    return mask


def condition_latents(vae, image: torch.Tensor, num_frames: int, ratio: int = 4) -> torch.Tensor:
    """The image condition: image (B, 3, H, W) in [-1, 1] and the clip length L = r(F − 1) + 1 →
    mask ⊕ normalised latents of [image, zeros × (L − 1)]: (B, r + 16, F, H/8, W/8), float32."""
    if (num_frames - 1) % ratio:
        raise ValueError(f"Wan clips have r·(F − 1) + 1 frames (r = {ratio}); got {num_frames}")
    b, _, height, width = image.shape
    video = torch.cat([image.unsqueeze(1), image.new_zeros(b, num_frames - 1, 3, height, width)], dim=1)
    lat = encode_video(vae, video)
    mask = first_frame_mask(b, lat.shape[2], lat.shape[3], lat.shape[4], ratio, lat.device)
    return torch.cat([mask, lat], dim=1)


def decode_video(vae, z: torch.Tensor) -> torch.Tensor:
    """Normalised latents (B, 16, F, h, w) → video (B, L, 3, 8h, 8w) in [-1, 1] (not clamped), float32."""
    x = vae.decode(denormalise(vae, z.float()).to(_vae_dtype(vae))).sample
    return x.float().permute(0, 2, 1, 3, 4)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompt: str | list[str], max_length: int = TEXT_TOKENS) -> torch.Tensor:
    """Prompt(s) → (B, max_length, D) text tokens: the encoder's states over the prompt's tokens,
    zeros after them (Wan's convention), after Wan's text cleaning (ftfy, HTML entities, spaces)."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

    prompts = [prompt_clean(p) for p in ([prompt] if isinstance(prompt, str) else list(prompt))]
    enc = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    states = text_encoder(ids, mask).last_hidden_state
    keep = mask.unsqueeze(-1).to(states.dtype)
    return (states * keep).float()


@torch.no_grad()
def image_tokens(image_encoder, processor, image: torch.Tensor) -> torch.Tensor | None:
    """Wan2.1's CLIP image tokens: image (B, 3, H, W) in [-1, 1] → penultimate hidden states
    (B, T, D), float32; None when the base has no image encoder (Wan2.2)."""
    if image_encoder is None:
        return None
    pixels = ((image.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()
    inputs = processor(images=[p.permute(1, 2, 0).numpy() for p in pixels], return_tensors="pt")
    p = next(image_encoder.parameters())
    out = image_encoder(pixel_values=inputs.pixel_values.to(p.device, p.dtype), output_hidden_states=True)
    return out.hidden_states[-2].float()
