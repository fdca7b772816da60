"""A tiny random-weight TrackGo in the real on-disk layout, for CPU tests and demos.

``init_tiny(out_dir, seed)`` writes the same folder layout as a Stable Video Diffusion checkpoint
plus the TrackGo files, so every loading path (``TrackGoPipeline.from_pretrained``,
``trackgo generate``) runs end-to-end with no downloads::

    model_index.json
    unet/               UNetSpatioTemporalConditionModel, UNET_PRESETS["tiny"] (4 temporal attn1)
    vae/                AutoencoderKLTemporalDecoder, 4 blocks of 32 channels → ×8 down-sampling
    image_encoder/      CLIPVisionModelWithProjection, 224 px input, projection = cross_attention_dim
    feature_extractor/  CLIPImageProcessor (224, OpenAI CLIP statistics)
    scheduler/          EulerDiscreteScheduler (v-prediction, Karras sigmas 0.002…700, continuous)
    trackgo_config.json, trackgo.safetensors   encoder + adapters

The weights are random (deterministic given ``seed``). A freshly wrapped UNet starts exactly at
SVD's behaviour (zero-initialised output layers and gates), which would make the trajectory input
a no-op; the tiny model instead gets small random values there, so that its output depends on P
like a trained model's would.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# The VAE must down-sample ×8 like SVD's: 2**(len(block_out_channels) - 1) = 8. GroupNorm with 32
# groups inside the diffusers blocks needs every width to be a multiple of 32.
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "num_channels": 3,
}

# Stable Video Diffusion's sampling scheduler (see shared/spec/svd.md).
SVD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}

CLIP_PROCESSOR = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "do_rescale": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
}


def vae_downsampling(vae_config: dict[str, Any]) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def build_tiny_components(seed: int = 0, trackgo_overrides: dict[str, Any] | None = None,
                          randomise_zero_init: bool = True) -> dict[str, Any]:
    """Random tiny components, deterministic given ``seed``.

    Returns {"unet": TrackGoUNet, "vae", "image_encoder", "feature_extractor", "scheduler"}.
    ``randomise_zero_init`` fills the TrackGo parameters that start at zero (output layers,
    gates) with small random values so that P affects the output.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from trackgo_model.configs import TrackGoConfig, unet_config
    from trackgo_model.model import TrackGoUNet, build_unet

    if vae_downsampling(TINY_VAE) != 8:
        raise AssertionError("the tiny VAE must down-sample by 8 like SVD's")
    ucfg = unet_config("tiny")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = build_unet(ucfg, device="cpu")
        cfg = TrackGoConfig.from_dict(trackgo_overrides or {})
        trackgo = TrackGoUNet.from_unet(unet, cfg)
        if randomise_zero_init:
            randomise_zero_params(trackgo, seed)
        vae = AutoencoderKLTemporalDecoder(**TINY_VAE)
        clip_cfg = CLIPVisionConfig(projection_dim=int(ucfg["cross_attention_dim"]), **TINY_CLIP)
        image_encoder = CLIPVisionModelWithProjection(clip_cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    feature_extractor = CLIPImageProcessor(**CLIP_PROCESSOR)
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    for m in (trackgo, vae, image_encoder):
        m.eval()
    return {"unet": trackgo, "vae": vae, "image_encoder": image_encoder,
            "feature_extractor": feature_extractor, "scheduler": scheduler}


def randomise_zero_params(trackgo: torch.nn.Module, seed: int) -> None:
    """Give every all-zero TrackGo parameter (encoder outputs, gates) small random values."""
    g = torch.Generator().manual_seed(seed + 1)
    named = trackgo.named_group_parameters(("encoder", "adapter"))
    with torch.no_grad():
        for name in sorted(named):
            p = named[name]
            if p.numel() and not p.detach().any():
                # 0.5: large enough that A' is peaked where P has points, so both the τ rule and
                # the unspecified-region rule of the adapter are exercised
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def init_tiny(out_dir: str | Path, seed: int = 0, trackgo_overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny random TrackGo folder (SVD layout + TrackGo files) to ``out_dir``.

    Deterministic given ``seed``; the folder is assembled aside and renamed into place, so a rerun
    replaces it as a whole. Returns ``out_dir``.
    """
    from trackgo_model.pipeline import TrackGoPipeline

    parts = build_tiny_components(seed, trackgo_overrides)
    pipe = TrackGoPipeline(parts["unet"], parts["vae"], parts["image_encoder"],
                           parts["feature_extractor"], parts["scheduler"])
    out = pipe.save_pretrained(out_dir)
    log.info("wrote tiny random TrackGo (seed %d) to %s", seed, out)
    return out
