"""TrackGoPipeline: image + trajectory video P → video, on Stable Video Diffusion.

Sampling follows SVD's image-to-video recipe (``shared/spec/svd.md``): CLIP image token,
noise-augmented conditioning latents, ``added_time_ids``, the EulerDiscrete scheduler from the
folder (Karras sigmas, v-prediction) and frame-wise classifier-free guidance, linear from
``min_guidance_scale`` (first frame) to ``max_guidance_scale`` (last frame).

Classifier-free guidance: the unconditional half gets a zero CLIP embedding and zero image latents
(as in SVD) but the **same** trajectory video P as the conditional half. The motion condition is
thus shared by both branches and guidance amplifies the image condition only; the trajectories
steer both predictions through the TrackAdapters.

Trajectory guidance (``trajectory_guidance`` = g > 1, off at 1): a third branch keeps the image but
replaces P by the empty trajectory video (all black: nothing tracked anywhere), and the step's
prediction becomes ε = ε_cfg + (g − 1)·(ε(I, P) − ε(I, ∅)), where ε_cfg is the prediction above.
It amplifies what P changes in the prediction, as image guidance amplifies the image; it costs one
more UNet pass per step.

Memory options: ``decode_chunk_size`` (frames per VAE decode call), ``torch_dtype`` (fp16/bf16;
a VAE whose config asks for ``force_upcast`` stays float32 under fp16) and
``enable_model_cpu_offload()`` (modules live on the CPU and visit the accelerator only while used).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trackgo_data.config import atomic_write_json
from trackgo_model import conditioning as cond
from trackgo_model.configs import size_multiple
from trackgo_model.model import EncodedTrajectories

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


# sub-folder → (library, class, config file, weight file stem or None)
SVD_SUBFOLDERS = {
    "unet": ("diffusers", "UNetSpatioTemporalConditionModel", "config.json", "diffusion_pytorch_model"),
    "vae": ("diffusers", "AutoencoderKLTemporalDecoder", "config.json", "diffusion_pytorch_model"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection", "config.json", "model"),
    "feature_extractor": ("transformers", "CLIPImageProcessor", "preprocessor_config.json", None),
    "scheduler": ("diffusers", "EulerDiscreteScheduler", "scheduler_config.json", None),
}
TRACKGO_FILES = ("trackgo_config.json", "trackgo.safetensors")
_HINT = ("supply a local diffusers Stable Video Diffusion folder (unet/, vae/, image_encoder/, "
         "feature_extractor/, scheduler/; e.g. a copy of stable-video-diffusion-img2vid-xt) and a "
         "TrackGo checkpoint folder (trackgo_config.json, trackgo.safetensors), or write a random "
         "tiny one with `trackgo model init-tiny --out DIR`")


class MissingWeightsError(FileNotFoundError):
    """A model folder lacks a sub-folder or file; the message lists everything that is missing."""


def check_svd_folder(path: Path, variant: str | None = None) -> None:
    """Raise one MissingWeightsError naming every missing sub-folder/config/weight file."""
    missing = []
    if not path.is_dir():
        raise MissingWeightsError(f"SVD folder {path} does not exist; {_HINT}")
    for sub, (_, _, config, stem) in SVD_SUBFOLDERS.items():
        folder = path / sub
        if not folder.is_dir():
            missing.append(f"{sub}/")
            continue
        if not (folder / config).is_file():
            missing.append(f"{sub}/{config}")
        if stem is not None:
            base = f"{stem}.{variant}" if variant else stem
            names = [f"{base}.{ext}" for ext in ("safetensors", "bin", "safetensors.index.json", "bin.index.json")]
            if not any((folder / n).is_file() for n in names):
                missing.append(f"{sub}/{names[0]}")
    if missing:
        raise MissingWeightsError(f"SVD folder {path} is missing {', '.join(missing)}; {_HINT}")


def find_trackgo_checkpoint(svd_path: Path, checkpoint: str | Path | None) -> Path:
    """The folder holding the TrackGo files: ``checkpoint``, or ``svd_path`` when None."""
    ckpt = Path(checkpoint) if checkpoint is not None else svd_path
    missing = [n for n in TRACKGO_FILES if not (ckpt / n).is_file()]
    if missing:
        raise MissingWeightsError(f"TrackGo checkpoint folder {ckpt} is missing {', '.join(missing)}; {_HINT}")
    return ckpt


def write_model_index(path: Path) -> None:
    """model_index.json so that diffusers' own StableVideoDiffusionPipeline can load the folder too."""
    import diffusers

    index = {"_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": diffusers.__version__}
    index.update({sub: [lib, cls] for sub, (lib, cls, _, _) in SVD_SUBFOLDERS.items()})
    atomic_write_json(path / "model_index.json", index)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class TrackGoPipeline:
    """Holds ``unet`` (a TrackGoUNet), ``vae``, ``image_encoder``, ``feature_extractor``, ``scheduler``."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, image_encoder: torch.nn.Module,
                 feature_extractor: Any, scheduler: Any, *, device: str | torch.device = "cpu"):
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.scheduler = scheduler
        self.device = torch.device(device)
        self._offload = False
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, svd_path: str | Path, trackgo_checkpoint: str | Path | None = None, *,
                        torch_dtype: str | torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", variant: str | None = None,
                        enable_model_cpu_offload: bool = False) -> "TrackGoPipeline":
        """Load SVD from a local diffusers folder and the TrackGo weights from a checkpoint folder.

        ``svd_path`` must hold unet/ vae/ image_encoder/ feature_extractor/ scheduler/ (diffusers
        layout, e.g. a local copy of stable-video-diffusion-img2vid-xt). ``trackgo_checkpoint``
        holds ``trackgo_config.json`` + ``trackgo.safetensors``; when None, ``svd_path`` itself is
        used (the layout ``trackgo model init-tiny`` and :meth:`save_pretrained` write). Nothing is
        downloaded; anything missing raises one :class:`MissingWeightsError`.
        """
        from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
        from diffusers import UNetSpatioTemporalConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from trackgo_model.model import load_trackgo

        svd_path = Path(svd_path)
        check_svd_folder(svd_path, variant=variant)
        ckpt = find_trackgo_checkpoint(svd_path, trackgo_checkpoint)
        dtype = resolve_dtype(torch_dtype)
        kw = {"local_files_only": True, "variant": variant}
        vae_config = AutoencoderKLTemporalDecoder.load_config(svd_path / "vae", local_files_only=True)
        upcast = dtype == torch.float16 and vae_config.get("force_upcast", True)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_path / "unet", torch_dtype=dtype, **kw)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            svd_path / "vae", torch_dtype=torch.float32 if upcast else dtype, **kw)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            svd_path / "image_encoder", local_files_only=True, variant=variant).to(dtype)
        feature_extractor = CLIPImageProcessor.from_pretrained(svd_path / "feature_extractor",
                                                               local_files_only=True)
        scheduler = EulerDiscreteScheduler.from_pretrained(svd_path / "scheduler", local_files_only=True)
        trackgo = load_trackgo(unet, ckpt).eval()
        log.info("loaded SVD from %s and TrackGo weights from %s (%s)", svd_path, ckpt, dtype)
        image_encoder.eval()
        vae.eval()
        pipe = cls(trackgo, vae, image_encoder, feature_extractor, scheduler, device=device)
        if enable_model_cpu_offload:
            pipe.enable_model_cpu_offload(device)
        else:
            pipe.to(device)
        return pipe

    def to(self, device: str | torch.device) -> "TrackGoPipeline":
        self.device = torch.device(device)
        self._offload = False
        for m in self._modules():
            m.to(self.device)
        return self

    def enable_model_cpu_offload(self, device: str | torch.device | None = None) -> "TrackGoPipeline":
        """Keep every module on the CPU and move each to ``device`` only while it runs."""
        if device is not None:
            self.device = torch.device(device)
        self._offload = True
        for m in self._modules():
            m.to("cpu")
        return self

    def _modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.image_encoder]

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module):
        if not self._offload:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the SVD folder layout + TrackGo files; the folder is replaced as a whole."""
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        tmp.chmod(0o755)  # mkdtemp creates 0700; the saved model is an ordinary folder
        try:
            with self.unet.without_adapters() as bare:
                bare.save_pretrained(tmp / "unet")
            self.vae.save_pretrained(tmp / "vae")
            self.image_encoder.save_pretrained(tmp / "image_encoder")
            self.feature_extractor.save_pretrained(tmp / "feature_extractor")
            self.scheduler.save_pretrained(tmp / "scheduler")
            self.unet.save_trackgo(tmp)
            write_model_index(tmp)
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir

    # ------------------------------------------------------------------ inputs
    @property
    def size_multiple(self) -> int:
        """Output height and width must be multiples of this (VAE and UNet down-samplings)."""
        return size_multiple(self.unet.unet.config, self.vae.config)

    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError unless this model can generate height × width."""
        mult = self.size_multiple
        if height % mult or width % mult:
            down = len(self.unet.unet.config.block_out_channels) - 1
            raise ValueError(f"height and width must be multiples of {mult} for this model "
                             f"(VAE /{self.vae_scale_factor}, {down} UNet down-samplings); "
                             f"got {width}x{height}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, image: Any, trajectories: Any = None, *, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 25,
                 min_guidance_scale: float = 1.0, max_guidance_scale: float = 3.0, fps: int = 7,
                 motion_bucket_id: int = 127, noise_aug_strength: float = 0.02,
                 decode_chunk_size: int | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, tau: float | None = None, motion: float = 1.0,
                 trajectory_guidance: float = 1.0,
                 mode: str | None = None, output_type: str = "np", latents: torch.Tensor | None = None,
                 progress: bool = False, callback: Callable[[int, int], None] | None = None):
        """Generate one video.

        image: PIL image or uint8 (H0, W0, 3); resized to (height, width) when they differ.
        trajectories: rendered P uint8 (L, H, W, 3), or ``(tracks (L,N,2), visibility (L,N),
        components (N,))`` in input-image pixels, or None (no motion condition).
        height/width: default to P's size, else the image's. num_frames: defaults to L, else the
        UNet's ``num_frames``. tau / motion / mode: the TrackAdapter inference knobs
        (``TrackGoUNet.set_inference``). trajectory_guidance: g ≥ 1, see the module docstring
        (needs trajectories when > 1). output_type: "np" → uint8 (L, H, W, 3); "pt" → float
        (1, L, 3, H, W) in [-1, 1]; "latent" → (1, L, 4, H/8, W/8).
        callback: called as ``callback(done, total)`` after each denoising step (progress bars).

        Random draws, in this order: the noise of the conditioning latents, then the initial noise
        (unless ``latents`` are given); ``generator`` defaults to one seeded with ``seed`` (0).
        """
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        if trajectory_guidance < 1.0:
            raise ValueError(f"trajectory_guidance must be >= 1 (1 = off), got {trajectory_guidance}")
        img, P, num_frames = self._inputs(image, trajectories, num_frames, height, width)
        if trajectory_guidance > 1.0 and P is None:
            raise ValueError("trajectory_guidance > 1 amplifies the trajectories' effect; give trajectories")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        do_cfg = max_guidance_scale > 1.0
        conditions = self._conditions(img, P, num_frames, fps, motion_bucket_id, noise_aug_strength, generator,
                                      do_cfg, trajectory_guidance)
        # every call sets all knobs, so nothing leaks from an earlier call (mode None → checkpoint's)
        self.unet.set_inference(tau=tau, motion=motion, mode=mode or self.unet.cfg.mode)
        latents = self._denoise(conditions, img.shape[-2:], num_frames, num_inference_steps, latents, generator,
                                guidance=(min_guidance_scale, max_guidance_scale), progress=progress,
                                callback=callback)
        if output_type == "latent":
            return latents
        with self._on_device(self.vae):
            frames = cond.decode_latents(self.vae, latents, num_frames, decode_chunk_size or num_frames)
        if output_type == "pt":
            return frames.clamp(-1, 1)
        out = ((frames[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).cpu().numpy()

    def _inputs(self, image: Any, trajectories: Any, num_frames: int | None, height: int | None,
                width: int | None) -> tuple[torch.Tensor, np.ndarray | None, int]:
        """(image (1, 3, H, W) in [-1, 1] at the output size, P uint8 (L, H, W, 3) or None, frames):
        the output size defaults to P's, else the image's; frames to L, else the UNet's."""
        img = cond.image_to_tensor(image)
        if isinstance(trajectories, np.ndarray) and trajectories.ndim == 4 and height is None and width is None:
            height, width = trajectories.shape[1:3]
        height = int(height or img.shape[-2])
        width = int(width or img.shape[-1])
        self.check_size(height, width)
        P = cond.trajectory_video(trajectories, (img.shape[-1], img.shape[-2]), height, width)
        if num_frames is None:
            num_frames = len(P) if P is not None else int(self.unet.unet.config.num_frames)
        if P is not None and len(P) != num_frames:
            raise ValueError(f"trajectory video has {len(P)} frames but num_frames={num_frames}")
        if img.shape[-2:] != (height, width):
            img = torch.nn.functional.interpolate(img, size=(height, width), mode="bicubic",
                                                  align_corners=False, antialias=True).clamp(-1, 1)
        return img, P, num_frames

    def _conditions(self, img: torch.Tensor, P: np.ndarray | None, num_frames: int, fps: int,
                    motion_bucket_id: int, noise_aug_strength: float, generator: torch.Generator,
                    guidance: bool, trajectory_guidance: float = 1.0) -> cond.GuidanceBranches:
        """CLIP token (no randomness), noise-augmented image latents (the first random draw), added
        time ids and the encoded P, one batch row per branch in the order ``GuidanceBranches`` states
        (the unconditional one: zero CLIP token and image latents, the same P)."""
        dtype, device = next(self.unet.parameters()).dtype, self.device
        with self._on_device(self.image_encoder):
            emb = cond.encode_image_clip(self.image_encoder, self.feature_extractor, img.to(device))
        with self._on_device(self.vae):
            img_lat = cond.encode_condition_latents(self.vae, img.to(device), noise_aug_strength, generator)
        emb, img_lat = emb.to(device, dtype), img_lat.to(device, dtype)
        img_lat = img_lat.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
        time_ids = cond.make_added_time_ids(fps, motion_bucket_id, noise_aug_strength, 1, dtype, device)
        branches = ([(False, True)] if guidance else []) + [(True, True)]  # (with the image, with P)
        if trajectory_guidance > 1.0:
            branches.append((True, False))
        traj = None
        if P is not None:  # the encoder trunk runs once per distinct P; every step reuses it
            with self._on_device(self.unet):
                trunks = {keep: self.unet.encode(cond.trajectory_to_tensor(P if keep else np.zeros_like(P))
                                                 .to(device, dtype)).trunk for keep in {k for _, k in branches}}
            traj = EncodedTrajectories(torch.cat([trunks[k] for _, k in branches]), len(branches), num_frames)
        emb = torch.cat([emb if with_image else torch.zeros_like(emb) for with_image, _ in branches])
        img_lat = torch.cat([img_lat if with_image else torch.zeros_like(img_lat) for with_image, _ in branches])
        return cond.GuidanceBranches(emb, img_lat, torch.cat([time_ids] * len(branches)), traj, guidance,
                                     float(trajectory_guidance))

    def _denoise(self, conditions: cond.GuidanceBranches, size: tuple[int, int], num_frames: int, steps: int,
                 latents: torch.Tensor | None, generator: torch.Generator, *, guidance: tuple[float, float],
                 progress: bool, callback: Callable[[int, int], None] | None) -> torch.Tensor:
        """The scheduler's steps from the initial noise (the second random draw, unless ``latents``
        are given) with frame-wise guidance from ``guidance[0]`` (first frame) to ``guidance[1]``
        (last): latents (1, F, 4, H/8, W/8)."""
        from tqdm.auto import tqdm

        dtype, device = next(self.unet.parameters()).dtype, self.device
        self.scheduler.set_timesteps(steps, device=device)
        h, w = size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor
        shape = (1, num_frames, self.unet.unet.config.in_channels // 2, h, w)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        scales = cond.guidance_scales(guidance[0], guidance[1], num_frames)
        scales = scales.to(device, dtype).view(1, num_frames, 1, 1, 1)
        timesteps = self.scheduler.timesteps
        with self._on_device(self.unet):
            for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="denoise")):
                x = torch.cat([latents] * conditions.branches)
                x = torch.cat([self.scheduler.scale_model_input(x, t), conditions.image_latents], dim=2)
                pred = self.unet(x, t, encoder_hidden_states=conditions.clip, added_time_ids=conditions.time_ids,
                                 trajectories=conditions.trajectories)
                pred = conditions.combine(pred, scales)
                latents = self.scheduler.step(pred, t, latents).prev_sample
                if callback is not None:
                    callback(i + 1, len(timesteps))
        return latents


def folder_size_multiple(svd_path: str | Path) -> int:
    """:func:`~trackgo_model.configs.size_multiple` of an SVD folder's ``unet/`` and ``vae/``
    configs, without loading any weights."""
    import json

    paths = [Path(svd_path) / sub / "config.json" for sub in ("unet", "vae")]
    missing = [f"{p.parent.name}/config.json" for p in paths if not p.is_file()]
    if missing:
        raise MissingWeightsError(f"SVD folder {svd_path} is missing {', '.join(missing)}; {_HINT}")
    return size_multiple(*(json.loads(p.read_text()) for p in paths))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an existing ``dst`` as a whole."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


__all__ = ["TrackGoPipeline", "MissingWeightsError", "SVD_SUBFOLDERS", "check_svd_folder",
           "find_trackgo_checkpoint", "folder_size_multiple", "resolve_dtype", "replace_dir", "write_model_index"]
