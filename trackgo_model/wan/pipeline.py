"""WanTrackGoPipeline: image + trajectory video P → video, on Wan's image-to-video DiT.

Sampling is diffusers' ``WanImageToVideoPipeline`` recipe (the tests compare the two on a tiny
folder): initial noise (1, 16, F, h, w) from the generator (the only random draw), the
condition of :func:`~trackgo_model.wan.conditioning.condition_latents`, the folder's flow
scheduler, text tokens of the prompt and, with ``guidance_scale`` > 1, classifier-free guidance
against the negative prompt. The unconditional branch keeps the image condition and the **same**
P, as the SVD pipeline does: guidance sharpens the prompt, P steers both branches.

Folders: a diffusers Wan image-to-video folder (``transformer/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, and for Wan2.1 ``image_encoder/`` + ``image_processor/``) and a
TrackGo checkpoint folder (``trackgo_config.json``, ``trackgo.safetensors``; written by training
or :meth:`TrackGoWan.save_trackgo`). Wan2.2-I2V-A14B's two experts (``transformer_2/``) need one
TrackGo checkpoint each and are refused for now.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import conditioning as cond
from ..pipeline import MissingWeightsError, resolve_dtype
from . import conditioning as wcond

log = logging.getLogger(__name__)
__all__ = ["WAN_REQUIRED", "WanFolder", "WanTrackGoPipeline", "load_wan_folder", "two_experts", "wan_size_multiple"]

#: the sub-folders every Wan image-to-video folder has (Wan2.1 adds image_encoder/ and image_processor/)
WAN_REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
_HINT = ("supply a local diffusers-format Wan image-to-video folder (e.g. a copy of "
         "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers) or write a random tiny one with "
         "`trackgo model init-tiny --base wan --out DIR`; nothing is downloaded")


@dataclass
class WanFolder:
    """The frozen parts of a Wan folder; ``transformer`` is the bare ``WanTransformer3DModel``.
    Wan2.2-I2V-A14B's folders hold two experts: ``transformer`` denoises the timesteps
    t ≥ ``boundary_ratio``·1000 (high noise), ``transformer_2`` the rest."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    image_encoder: Any
    image_processor: Any
    path: Path
    transformer_2: Any = None
    boundary_ratio: float | None = None


def _check_folder(path: Path) -> dict[str, Any]:
    index = path / "model_index.json"
    missing = [f"{d}/" for d in WAN_REQUIRED if not (path / d).is_dir()]
    if not index.is_file():
        missing.insert(0, "model_index.json")
    if missing:
        raise MissingWeightsError(f"Wan folder {path} is missing {', '.join(missing)}; {_HINT}")
    info = json.loads(index.read_text())
    if two_experts(info) and (not (path / "transformer_2").is_dir() or not info.get("boundary_ratio")):
        raise MissingWeightsError(f"Wan folder {path} names two experts but lacks transformer_2/ or its "
                                  f"boundary_ratio; {_HINT}")
    return info


def two_experts(info: dict[str, Any]) -> bool:
    """Whether a folder's ``model_index.json`` (parsed) names Wan2.2's second expert."""
    return bool(info.get("transformer_2")) and info["transformer_2"][0] is not None


def load_wan_folder(path: str | Path, dtype: str | torch.dtype = torch.float32,
                    transformer_from: str | Path | None = None, transformer_2_from: str | Path | None = None,
                    expert: str | None = None) -> WanFolder:
    """Every frozen part of a Wan image-to-video folder, in ``dtype`` (the VAE and the text encoder
    stay float32, as Wan runs them); one :class:`MissingWeightsError` naming what is missing.
    transformer_from / transformer_2_from: diffusers transformer folders used instead of the
    folder's ``transformer/`` / ``transformer_2/``. expert (two-expert folders only): ``high`` or
    ``low`` loads that expert alone, as ``transformer`` (what an expert's training run needs)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.schedulers import UniPCMultistepScheduler
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    path = Path(path)
    info = _check_folder(path)
    dtype = resolve_dtype(dtype)
    pair = two_experts(info)
    if expert is not None and (not pair or expert not in ("high", "low")):
        raise ValueError(f"expert {expert!r}: 'high' or 'low' of a two-expert (Wan2.2) folder; {path} has "
                         f"{'two experts' if pair else 'one transformer'}")
    first = (transformer_2_from or path / "transformer_2") if expert == "low" else (transformer_from or path / "transformer")
    transformer = WanTransformer3DModel.from_pretrained(str(first), torch_dtype=dtype)
    second = None
    if pair and expert is None:
        second = WanTransformer3DModel.from_pretrained(str(transformer_2_from or path / "transformer_2"),
                                                       torch_dtype=dtype)
    image_encoder = processor = None
    if transformer.config.image_dim:
        if not (path / "image_encoder").is_dir() or not (path / "image_processor").is_dir():
            raise MissingWeightsError(f"{path}: the transformer takes CLIP image tokens (image_dim "
                                      f"{transformer.config.image_dim}) but image_encoder/ or image_processor/ "
                                      f"is missing; {_HINT}")
        image_encoder = CLIPVisionModel.from_pretrained(path / "image_encoder", torch_dtype=dtype).eval()
        processor = CLIPImageProcessor.from_pretrained(path / "image_processor")
    scheduler_cls = UniPCMultistepScheduler
    if info.get("scheduler") and info["scheduler"][1] != scheduler_cls.__name__:
        import diffusers

        scheduler_cls = getattr(diffusers, info["scheduler"][1])
    return WanFolder(
        transformer=transformer,
        vae=AutoencoderKLWan.from_pretrained(str(path), subfolder="vae", torch_dtype=torch.float32).eval(),
        text_encoder=UMT5EncoderModel.from_pretrained(path / "text_encoder", torch_dtype=torch.float32).eval(),
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        scheduler=scheduler_cls.from_pretrained(str(path), subfolder="scheduler"),
        image_encoder=image_encoder, image_processor=processor, path=path, transformer_2=second,
        boundary_ratio=float(info["boundary_ratio"]) if pair else None)


def _checkpoint_meta(checkpoint: str | Path, expert: str | None) -> dict[str, Any]:
    """A Wan checkpoint's ``trackgo_config.json``; one clear error when it is for the other base, for
    the other expert, or a Wan-Move run without its transformer."""
    from ..model import read_trackgo_config

    meta = read_trackgo_config(checkpoint)  # one clear error when the files are missing
    if meta.get("base", "svd") != "wan":
        raise ValueError(f"{checkpoint}: a TrackGo checkpoint for the {meta.get('base', 'svd')!r} base, not for Wan")
    if meta.get("expert") != expert:
        raise ValueError(f"{checkpoint} was trained for expert {meta.get('expert')!r}, here {expert!r} is needed "
                         "(Wan2.2: --checkpoint the high-noise expert's, --checkpoint-2 the low-noise one's)")
    if meta.get("wan_move") and not (Path(checkpoint) / "transformer" / "config.json").is_file():
        raise MissingWeightsError(f"{checkpoint} was trained with model.wan_move (the whole transformer "
                                  f"fine-tuned) but holds no transformer/: export it from a newer training run")
    return meta


def _trackgo_wan(transformer, meta: dict[str, Any], checkpoint, parts: WanFolder):
    from ..configs import TrackGoConfig
    from .model import TrackGoWan

    model = TrackGoWan(transformer, TrackGoConfig.from_dict(meta["trackgo"]),
                       temporal_ratio=parts.vae.config.scale_factor_temporal or 4)
    return model.load_trackgo(checkpoint).eval()


def wan_size_multiple(path_or_config: str | Path | dict) -> int:
    """Output sides must be multiples of 8 (VAE) × the transformer's spatial patch: 16 for every Wan
    image-to-video model. Reads ``transformer/config.json`` of a folder (no weights)."""
    if isinstance(path_or_config, dict):
        config = path_or_config
    else:
        file = Path(path_or_config) / "transformer" / "config.json"
        if not file.is_file():
            raise MissingWeightsError(f"Wan folder {path_or_config} is missing transformer/config.json; {_HINT}")
        config = json.loads(file.read_text())
    return 8 * int(config["patch_size"][1])


class WanTrackGoPipeline:
    """Holds ``model`` (a :class:`~trackgo_model.wan.TrackGoWan`) and the frozen parts of its folder.
    ``wan_move``: the model was trained with Wan-Move's condition (its checkpoint's transformer/
    replaces the folder's): it is steered by ``guide`` (the tracks), not by P. ``model_2``: the
    TrackGoWan of a two-expert folder's ``transformer_2`` (low noise), with its own checkpoint."""

    base = "wan"

    def __init__(self, model, parts: WanFolder, *, device: str | torch.device = "cpu", wan_move: bool = False,
                 model_2=None) -> None:
        if (model_2 is None) != (parts.transformer_2 is None):
            raise ValueError("a two-expert folder needs model_2 (the low-noise expert's TrackGoWan), and only it")
        self.model, self.model_2, self.parts, self.wan_move = model, model_2, parts, wan_move
        self.device = torch.device(device)
        self.to(self.device)

    @classmethod
    def from_pretrained(cls, wan_path: str | Path, trackgo_checkpoint: str | Path, *,
                        trackgo_checkpoint_2: str | Path | None = None, torch_dtype: str | torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "WanTrackGoPipeline":
        """The Wan folder's parts and a TrackGoWan with the checkpoint's weights (module docstring);
        a two-expert (Wan2.2) folder takes the high-noise expert's checkpoint and, as
        ``trackgo_checkpoint_2``, the low-noise expert's."""
        pair = two_experts(_check_folder(Path(wan_path)))
        if pair != (trackgo_checkpoint_2 is not None):
            raise MissingWeightsError(
                f"{wan_path} has two experts: give the low-noise expert's checkpoint too (--checkpoint-2)" if pair
                else f"{wan_path} has one transformer: a second checkpoint has nothing to steer")
        metas = [_checkpoint_meta(c, "high" if pair else None) for c in (trackgo_checkpoint,)] + \
            ([_checkpoint_meta(trackgo_checkpoint_2, "low")] if pair else [])
        own = [Path(c) / "transformer" for c in (trackgo_checkpoint, trackgo_checkpoint_2) if c is not None]
        parts = load_wan_folder(wan_path, torch_dtype, *[o if o.is_dir() else None for o in own])
        models = [_trackgo_wan(t, m, c, parts) for t, m, c in
                  zip((parts.transformer, parts.transformer_2), metas, (trackgo_checkpoint, trackgo_checkpoint_2))]
        wan_move = bool(metas[0].get("wan_move"))
        if any(bool(m.get("wan_move")) != wan_move for m in metas):
            raise ValueError("the two experts' checkpoints must both be, or both not be, Wan-Move runs")
        log.info("loaded Wan from %s and TrackGo weights from %s%s", wan_path, trackgo_checkpoint,
                 " (its own transformer, Wan-Move's condition)" if wan_move else "")
        return cls(models[0], parts, device=device, wan_move=wan_move, model_2=models[1] if pair else None)

    def to(self, device: str | torch.device) -> "WanTrackGoPipeline":
        self.device = torch.device(device)
        for m in (self.model, self.model_2, self.parts.vae, self.parts.text_encoder, self.parts.image_encoder):
            if m is not None:
                m.to(self.device)
        return self

    @property
    def size_multiple(self) -> int:
        return wan_size_multiple(dict(self.model.config))

    @property
    def temporal_ratio(self) -> int:
        return self.model.temporal_ratio

    def check_inputs(self, height: int, width: int, num_frames: int) -> None:
        """ValueError unless this model can generate ``num_frames`` frames of height × width."""
        mult, r = self.size_multiple, self.temporal_ratio
        if height % mult or width % mult:
            raise ValueError(f"height and width must be multiples of {mult} for Wan (VAE /8, 2×2 patches); "
                             f"got {width}x{height}")
        if num_frames < 1 or (num_frames - 1) % r:
            raise ValueError(f"Wan generates {r}k + 1 frames (5, 9, …, 81); got {num_frames}")

    @torch.no_grad()
    def __call__(self, image: Any, trajectories: Any = None, *, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 40,
                 guidance_scale: float = 1.0, guidance_scale_2: float | None = None, prompt: str = "",
                 negative_prompt: str = "",
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 guide: tuple[Any, Any] | None = None, generator: torch.Generator | None = None, seed: int | None = None, tau: float | None = None,
                 motion: float = 1.0, mode: str | None = None, output_type: str = "np",
                 latents: torch.Tensor | None = None, progress: bool = False,
                 callback: Callable[[int, int], None] | None = None):
        """Generate one video.

        image: PIL image or uint8 (H0, W0, 3), resized to (height, width) when they differ.
        trajectories: rendered P uint8 (L, H, W, 3), ``(tracks (L,N,2), visibility (L,N),
        components (N,))`` in input-image pixels, or None (the base model's sampling).
        num_frames: defaults to L; must be 4k + 1. prompt_embeds / negative_prompt_embeds: (1, 512, D)
        text tokens used instead of encoding ``prompt`` / ``negative_prompt``. guide: (tracks (L, N, 2)
        pixels of the output size, visibility (L, N)) → Wan-Move's condition edit along them (written in
        the given order; the guidance's unconditional branch keeps the unedited condition), for a
        model trained with ``model.wan_move``. tau / motion / mode: the adapters' inference knobs.
        guidance_scale_2: the low-noise expert's guidance scale (two-expert folders; default
        ``guidance_scale``), as diffusers' pipeline takes it. output_type: "np" → uint8 (L, H, W, 3); "pt" → float (1, L, 3, H, W) in [-1, 1];
        "latent" → (1, 16, F, H/8, W/8) normalised latents.
        """
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        img = cond.image_to_tensor(image)
        if isinstance(trajectories, np.ndarray) and trajectories.ndim == 4 and height is None and width is None:
            height, width = trajectories.shape[1:3]
        height, width = int(height or img.shape[-2]), int(width or img.shape[-1])
        P = cond.trajectory_video(trajectories, (img.shape[-1], img.shape[-2]), height, width)
        num_frames = int(num_frames or (len(P) if P is not None else 81))
        self.check_inputs(height, width, num_frames)
        if P is not None and len(P) != num_frames:
            raise ValueError(f"trajectory video has {len(P)} frames but num_frames={num_frames}")
        if img.shape[-2:] != (height, width):
            img = torch.nn.functional.interpolate(img, size=(height, width), mode="bicubic", align_corners=False,
                                                  antialias=True).clamp(-1, 1)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        for model in self.experts:
            model.set_inference(tau=tau, motion=motion, mode=mode or model.cfg.mode)
        text = self._text(prompt, prompt_embeds)
        scales = (guidance_scale, guidance_scale if guidance_scale_2 is None else guidance_scale_2)
        negative = self._text(negative_prompt, negative_prompt_embeds) if max(scales) > 1.0 else None
        z = self._denoise(img.to(self.device), P, num_frames, num_inference_steps, scales, text, negative,
                          generator, latents, progress, callback, guide)
        if output_type == "latent":
            return z
        frames = wcond.decode_video(self.parts.vae, z).clamp(-1, 1)
        if output_type == "pt":
            return frames
        out = ((frames[0] + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).cpu().numpy()

    @property
    def experts(self) -> list:
        """The TrackGoWan of each expert: [model] or, for a two-expert folder, [model, model_2]."""
        return [self.model] if self.model_2 is None else [self.model, self.model_2]

    def _text(self, prompt: str, embeds: torch.Tensor | None) -> torch.Tensor:
        """(1, 512, D) text tokens: ``embeds``, else ``prompt`` through the folder's text encoder."""
        if embeds is not None:
            return embeds.to(self.device)
        if self.parts.text_encoder is None:
            raise ValueError("this pipeline has no text encoder: pass prompt_embeds")
        return wcond.encode_prompt(self.parts.tokenizer, self.parts.text_encoder, prompt)

    def _denoise(self, img: torch.Tensor, P: np.ndarray | None, num_frames: int, steps: int, scales: tuple[float, float],
                 text: torch.Tensor, negative: torch.Tensor | None, generator: torch.Generator,
                 latents: torch.Tensor | None, progress: bool,
                 callback: Callable[[int, int], None] | None, guide: tuple[Any, Any] | None = None) -> torch.Tensor:
        """Flow sampling from the initial noise: (1, 16, F, h, w) normalised latents, float32."""
        from diffusers.utils.torch_utils import randn_tensor
        from tqdm.auto import tqdm

        parts, device = self.parts, self.device
        dtype = next(self.model.parameters()).dtype
        r, f = self.temporal_ratio, (num_frames - 1) // self.temporal_ratio + 1
        shape = (1, parts.vae.config.z_dim, f, img.shape[-2] // 8, img.shape[-1] // 8)
        z = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32) if latents is None \
            else latents.to(device, torch.float32)
        condition = wcond.condition_latents(parts.vae, img, num_frames, r)
        plain = condition.to(dtype)
        if guide is not None:
            from .wan_move import guide_condition, track_cells

            tracks, visible = (torch.as_tensor(np.asarray(a)) for a in guide)
            cells = track_cells(tracks[None].float(), visible[None].bool(), tuple(img.shape[-2:]), temporal_ratio=r)
            condition = torch.cat([condition[:, :r], guide_condition(condition[:, r:], cells.to(device))], dim=1)
        condition = condition.to(dtype)
        text = text.to(dtype)
        negative = None if negative is None else negative.to(dtype)
        tokens = wcond.image_tokens(parts.image_encoder, parts.image_processor, img)
        tokens = None if tokens is None else tokens.to(dtype)
        encs = [None] * len(self.experts)
        if P is not None:  # each expert's encoder trunk runs once; every step reuses it
            encs = [m.encode(cond.trajectory_to_tensor(P).to(device, dtype)) for m in self.experts]
        parts.scheduler.set_timesteps(steps, device=device)
        timesteps = parts.scheduler.timesteps
        boundary = None if self.model_2 is None else parts.boundary_ratio * parts.scheduler.config.num_train_timesteps
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="denoise")):
            k = 0 if boundary is None or t >= boundary else 1  # diffusers' rule for the two experts
            model, enc = self.experts[k], encs[k]
            x = torch.cat([z.to(dtype), condition], dim=1)
            step_t = t.expand(1)
            pred = model(x, step_t, text, tokens, trajectories=enc)
            if negative is not None and scales[k] != 1.0:
                x_plain = torch.cat([z.to(dtype), plain], dim=1)
                uncond = model(x_plain, step_t, negative, tokens, trajectories=enc)
                pred = uncond + scales[k] * (pred - uncond)
            z = parts.scheduler.step(pred.float(), t, z, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, len(timesteps))
        return z
