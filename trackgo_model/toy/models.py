"""The toy's model folders: the from-scratch SVD-layout start and the exported base model.

``write_init_model`` assembles the folder the base stage trains from, in the diffusers layout that
``model.svd_path`` reads (``unet/ vae/ image_encoder/ feature_extractor/ scheduler/``): a random
UNet of the toy's size, the VAE trained by the VAE stage, and a small random CLIP image encoder.
The CLIP encoder stays frozen and random throughout (random features of the first frame; no
pretrained CLIP is used anywhere in the toy) — an explicit ``image_encoder_random_init`` choice,
logged as a warning and recorded in ``toy_model.json``. ``export_base_model`` writes the same
folder with the trained UNet (EMA weights) of a base-stage checkpoint.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from trackgo_data.config import ConfigError, atomic_write_json

log = logging.getLogger(__name__)

INFO_FILE = "toy_model.json"


def clip_processor(size: int):
    """CLIPImageProcessor resizing to ``size`` (the toy encoder's input), OpenAI CLIP statistics."""
    from transformers import CLIPImageProcessor

    from trackgo_model.tiny import CLIP_PROCESSOR

    return CLIPImageProcessor(**{**CLIP_PROCESSOR, "size": {"shortest_edge": size},
                                 "crop_size": {"height": size, "width": size}})


def _save_folder(out: Path, parts: dict[str, Any], info: dict[str, Any]) -> Path:
    from trackgo_model.pipeline import replace_dir, write_model_index

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        for name, module in parts.items():
            module.save_pretrained(tmp / name)
        write_model_index(tmp)
        atomic_write_json(tmp / INFO_FILE, info)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_init_model(out: str | Path, vae_dir: str | Path, unet_config: dict[str, Any],
                     image_encoder: dict[str, Any], seed: int, random_init: bool,
                     scheduler: dict[str, Any] | None = None) -> Path:
    """Random UNet (``unet_config``, seeded) + trained VAE + random CLIP + SVD's Euler scheduler
    (with ``scheduler`` overrides, e.g. ``sigma_max``) → SVD-layout folder."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from trackgo_model.tiny import SVD_SCHEDULER

    if not random_init:
        raise ConfigError("the toy has no pretrained CLIP image encoder: set image_encoder_random_init=true "
                          "(a frozen random encoder) to build its model")
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"no trained VAE at {vae_dir}: run the VAE stage first (trackgo toy vae)")
    clip_cfg = dict(image_encoder)
    size = int(clip_cfg.get("image_size", 64))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(**unet_config)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            projection_dim=int(unet_config["cross_attention_dim"]), **clip_cfg))
    finally:
        torch.random.set_rng_state(state)
    log.warning("toy model: the CLIP image encoder is random and stays frozen (image_encoder_random_init=true)")
    parts = {"unet": unet, "vae": AutoencoderKLTemporalDecoder.from_pretrained(vae_dir, local_files_only=True),
             "image_encoder": clip, "feature_extractor": clip_processor(size),
             "scheduler": EulerDiscreteScheduler(**{**SVD_SCHEDULER, **(scheduler or {})})}
    info = {"unet": "random (seed %d)" % seed, "vae": str(vae_dir), "image_encoder": "random, frozen (seed %d)" % seed,
            "image_encoder_random_init": True, "unet_params": sum(p.numel() for p in unet.parameters())}
    return _save_folder(Path(out), parts, info)


def export_base_model(init_dir: str | Path, checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """The init folder with the UNet weights of a base-stage checkpoint (``unet.*`` keys of its EMA
    or trainable tensors) → SVD-layout folder ``out``."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    init_dir, checkpoint = Path(init_dir), Path(checkpoint)
    name = "ema.safetensors" if use_ema and (checkpoint / "ema.safetensors").is_file() else "trainable.safetensors"
    tensors = load_file(str(checkpoint / name))
    kw = {"local_files_only": True}
    unet = UNetSpatioTemporalConditionModel.from_pretrained(init_dir / "unet", **kw)
    own = unet.state_dict()
    weights = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    missing, unknown = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unknown:
        raise ConfigError(f"{checkpoint / name} does not hold a whole UNet (missing {missing[:3]}, "
                          f"unknown {unknown[:3]}): was it written by the base stage (model.trainable=[unet])?")
    unet.load_state_dict({k: weights[k].to(own[k].dtype) for k in own})
    parts = {"unet": unet, "vae": AutoencoderKLTemporalDecoder.from_pretrained(init_dir / "vae", **kw),
             "image_encoder": CLIPVisionModelWithProjection.from_pretrained(init_dir / "image_encoder", **kw),
             "feature_extractor": CLIPImageProcessor.from_pretrained(init_dir / "feature_extractor", **kw),
             "scheduler": EulerDiscreteScheduler.from_pretrained(init_dir / "scheduler", **kw)}
    import json

    info = json.loads((init_dir / INFO_FILE).read_text()) if (init_dir / INFO_FILE).is_file() else {}
    info.update({"unet": f"trained: {checkpoint} ({name})"})
    return _save_folder(Path(out), parts, info)


def load_toy_pipeline(model_dir: str | Path, trackgo_dir: str | Path | None = None, device: str = "cpu"):
    """TrackGoPipeline over an SVD-layout folder: with the TrackGo checkpoint ``trackgo_dir``, or —
    for the base model — a fresh TrackGo wrapper that is never given trajectories (the pipeline
    then runs the bare UNet, exactly)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from trackgo_model.model import TrackGoUNet, load_trackgo
    from trackgo_model.pipeline import TrackGoPipeline

    model_dir = Path(model_dir)
    kw = {"local_files_only": True}
    unet = UNetSpatioTemporalConditionModel.from_pretrained(model_dir / "unet", **kw)
    core = load_trackgo(unet, trackgo_dir) if trackgo_dir is not None else TrackGoUNet(unet)
    pipe = TrackGoPipeline(core.eval(), AutoencoderKLTemporalDecoder.from_pretrained(model_dir / "vae", **kw).eval(),
                           CLIPVisionModelWithProjection.from_pretrained(model_dir / "image_encoder", **kw).eval(),
                           CLIPImageProcessor.from_pretrained(model_dir / "feature_extractor", **kw),
                           EulerDiscreteScheduler.from_pretrained(model_dir / "scheduler", **kw), device=device)
    return pipe
