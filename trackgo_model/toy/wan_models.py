"""The Wan toy's model folders (``make toy BASE=wan``): the from-scratch Wan-layout start, the
exported base model, and the pipelines the evaluation samples with.

``write_init_model`` assembles a diffusers Wan image-to-video folder (``model.wan_path`` of the
base stage): a random ``WanTransformer3DModel`` of the toy's size in Wan2.2's layout (no image
encoder: the first frame reaches the model through the condition latents only), the VAE trained by
the VAE stage (``AutoencoderKLWan``), a small random frozen text encoder (the prompt is fixed and
empty, so its tokens are one constant) and the UniPC flow scheduler. ``export_base_model`` writes
the same folder with the trained transformer (EMA weights) of a training checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from trackgo_data.config import ConfigError, atomic_write_json

from .models import INFO_FILE

__all__ = ["export_base_model", "load_toy_pipeline", "transformer_weights", "vae_roundtrip", "write_init_model"]


def write_init_model(out: str | Path, vae_dir: str | Path, transformer_config: dict[str, Any], seed: int,
                     scheduler: dict[str, Any] | None = None) -> Path:
    """Random transformer (seeded) + trained VAE + random text encoder → Wan folder ``out``."""
    from diffusers import AutoencoderKLWan

    from trackgo_model.wan.model import build_transformer
    from trackgo_model.wan.tiny import tiny_text_encoder, tiny_tokenizer, write_wan_folder

    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"no trained VAE at {vae_dir}: run the VAE stage first (trackgo toy vae)")
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        transformer = build_transformer(dict(transformer_config), device="cpu")
        text_encoder = tiny_text_encoder(int(transformer_config["text_dim"]))
    finally:
        torch.random.set_rng_state(state)
    out = write_wan_folder(out, transformer, AutoencoderKLWan.from_pretrained(vae_dir), text_encoder,
                           tiny_tokenizer(), flow_shift=float((scheduler or {}).get("flow_shift", 3.0)))
    atomic_write_json(Path(out) / INFO_FILE, {
        "transformer": f"random (seed {seed})", "vae": str(vae_dir), "text_encoder": f"random, frozen (seed {seed})",
        "transformer_params": sum(p.numel() for p in transformer.parameters())})
    return out


def transformer_weights(checkpoint: str | Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The ``transformer.*`` tensors of a training checkpoint (EMA when present), keys without the
    prefix; {} when the run did not train the whole transformer."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    name = "ema.safetensors" if use_ema and (checkpoint / "ema.safetensors").is_file() else "trainable.safetensors"
    tensors = load_file(str(checkpoint / name))
    return {k[len("transformer."):]: v for k, v in tensors.items() if k.startswith("transformer.")}


def _load_weights(transformer, weights: dict[str, torch.Tensor], source: Path) -> None:
    own = transformer.state_dict()
    missing, unknown = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unknown:
        raise ConfigError(f"{source} does not hold a whole transformer (missing {missing[:3]}, unknown {unknown[:3]}): "
                          "was it written by a run with model.trainable=[unet]?")
    transformer.load_state_dict({k: weights[k].to(own[k].dtype) for k in own})


def export_base_model(init_dir: str | Path, checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """The init folder with the transformer of a base-stage checkpoint → Wan folder ``out``."""
    from trackgo_model.pipeline import replace_dir
    from trackgo_model.wan.model import load_transformer

    init_dir, out = Path(init_dir), Path(out)
    transformer = load_transformer(init_dir)
    _load_weights(transformer, transformer_weights(checkpoint, use_ema), Path(checkpoint))
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init_dir, tmp, ignore=shutil.ignore_patterns("transformer"))
    transformer.save_pretrained(tmp / "transformer")
    info = json.loads((init_dir / INFO_FILE).read_text()) if (init_dir / INFO_FILE).is_file() else {}
    atomic_write_json(tmp / INFO_FILE, {**info, "transformer": f"trained: {checkpoint}"})
    replace_dir(tmp, out)
    return out


def load_toy_pipeline(model_dir: str | Path, trackgo_dir: str | Path | None = None,
                      transformer_from: str | Path | None = None, device: str = "cpu"):
    """WanTrackGoPipeline over a Wan folder: with the TrackGo checkpoint ``trackgo_dir``, or a fresh
    wrapper never given trajectories (the bare model); ``transformer_from``: a training checkpoint
    whose whole transformer replaces the folder's (the ``wan_move`` row)."""
    from trackgo_model.configs import TrackGoConfig
    from trackgo_model.model import read_trackgo_config
    from trackgo_model.wan.model import TrackGoWan
    from trackgo_model.wan.pipeline import WanTrackGoPipeline, load_wan_folder

    parts = load_wan_folder(model_dir)
    if transformer_from is not None:
        _load_weights(parts.transformer, transformer_weights(transformer_from), Path(transformer_from))
    cfg = TrackGoConfig.from_dict(read_trackgo_config(trackgo_dir)["trackgo"]) if trackgo_dir is not None \
        else TrackGoConfig(alpha_frames=25)
    model = TrackGoWan(parts.transformer, cfg)
    if trackgo_dir is not None:
        model.load_trackgo(trackgo_dir)
    return WanTrackGoPipeline(model.eval(), parts, device=device)


def vae_roundtrip(vae, real) -> Any:
    """The real clip (L, H, W, 3) uint8 through Wan's VAE (posterior mode) and back: the floor."""
    import numpy as np

    from trackgo_model.wan import conditioning as wcond

    video = torch.as_tensor(np.asarray(real)).permute(0, 3, 1, 2).float().unsqueeze(0) / 127.5 - 1.0
    with torch.no_grad():
        decoded = wcond.decode_video(vae, wcond.encode_video(vae, video))
    out = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).numpy()
