"""What the training loop reads and writes besides tensors: models, shards, validation videos.

* :func:`load_components` — the frozen SVD parts (VAE, CLIP image encoder) and the TrackGoUNet,
  from a local SVD folder or from the tiny random model (created on first use); never downloads.
* :func:`shard_urls` / :func:`data_stream` — the training and held-out shard lists and a
  deterministic, resumable batch stream (see "data position" below).
* :func:`write_validation` — generated mp4 + side-by-side (real | generated | P) per held-out sample.

Data position. The stream of batches is cut into segments of ``checkpoint_every`` optimizer
steps. Segment ``s`` (starting at step ``s·checkpoint_every``) reads a fresh webdataset pipeline
seeded from (seed, segment start, rank). Every checkpoint therefore starts a new segment, and a
run resumed at step ``t`` rebuilds the segment that contains ``t`` and skips the
``(t − start)·accumulation`` micro-batches already consumed — at most one segment, never the
whole history — and sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trackgo_data.config import ConfigError

from .config import trackgo_config_for

log = logging.getLogger(__name__)


class MissingShardsError(ConfigError):
    """No training shards where the config points."""


@dataclass
class Components:
    """The TrackGoUNet to train and SVD's frozen parts. Every base's components have ``model``,
    ``vae``, ``source`` and the methods ``place``, ``encode_latents``, ``loss`` and ``generate``
    (Wan's: :class:`~trackgo_model.train.wan.WanComponents`)."""

    model: torch.nn.Module  # TrackGoUNet
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    feature_extractor: Any
    scheduler: Any
    source: Path  # the SVD-layout folder the frozen parts came from

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Frozen parts to ``device`` in ``dtype`` (a VAE that asks for ``force_upcast`` stays float32 under fp16)."""
        upcast = dtype == torch.float16 and self.vae.config.force_upcast
        self.vae.to(device, dtype=torch.float32 if upcast else dtype)
        self.image_encoder.to(device, dtype=dtype)

    def encode_latents(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, L, 3, H, W) in [-1, 1] → latents (B, L, 4, H/8, W/8) (the latent cache's entries)."""
        from trackgo_model.conditioning import encode_video_latents

        return encode_video_latents(self.vae, video.to(next(self.vae.parameters()).dtype))

    def loss(self, model, inputs, cfg, generator: torch.Generator, x0: torch.Tensor | None = None):
        """The EDM objective of :func:`~trackgo_model.train.loss.compute_loss` for one batch."""
        from .loss import compute_loss

        return compute_loss(model, self.model, self.vae, self.image_encoder, self.feature_extractor, inputs,
                            cfg.objective, generator=generator, motion_bucket_id=cfg.data.motion_bucket_id, x0=x0)

    def generate(self, image: np.ndarray, trajectories: np.ndarray, cfg, device: torch.device,
                 guide=None) -> np.ndarray:
        """One validation video: image (H, W, 3) uint8, P (L, H, W, 3) uint8 → (L, H, W, 3) uint8
        (``guide``, the sample's tracks for Wan-Move's condition, is not used on SVD)."""
        from trackgo_model.pipeline import TrackGoPipeline

        v = cfg.validation
        pipe = TrackGoPipeline(self.model, self.vae, self.image_encoder, self.feature_extractor, self.scheduler,
                               device=device)
        return pipe(image, trajectories, num_inference_steps=v.num_inference_steps, seed=v.seed,
                    min_guidance_scale=v.min_guidance_scale, max_guidance_scale=v.max_guidance_scale,
                    fps=int(round(float(cfg.data.fps))), motion_bucket_id=int(cfg.data.motion_bucket_id))


def load_components(cfg, run_dir: Path):
    """The components of ``model.base``: frozen SVD parts + a TrackGoUNet to train (weights: SVD
    folder, or the tiny model), or Wan's (:func:`~trackgo_model.train.wan.load_wan_components`)."""
    if cfg.model.base == "wan":
        from trackgo_model.train.wan import load_wan_components

        return load_wan_components(cfg, run_dir)
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from trackgo_model.model import TrackGoUNet

    tg_cfg = trackgo_config_for(cfg)
    from trackgo_model.tiny import init_tiny

    folder = cfg.weights_folder(run_dir, "tiny-model", "unet", init_tiny)
    kw = {"local_files_only": True}
    unet = UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet", **kw)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae", **kw)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", **kw)
    feature_extractor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor", **kw)
    scheduler = EulerDiscreteScheduler.from_pretrained(folder / "scheduler", **kw)
    # Fresh adapters + encoder, deterministic given the run seed.
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = TrackGoUNet.from_unet(unet, tg_cfg)
    finally:
        torch.random.set_rng_state(state)
    init = folder / "trackgo.safetensors"
    if cfg.model.tiny and init.is_file():
        # The tiny folder's TrackGo weights are small random values (not SVD's zero start), so the
        # trajectories influence the output from step 0 as they would in a trained model.
        from safetensors.torch import load_file

        params = {**model.named_group_parameters(("encoder", "adapter", "temporal_qkv")), **model.gates()}
        state = load_file(str(init))
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(f"{init}: tensors this model does not have: {unknown[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
    vae.requires_grad_(False).eval()
    image_encoder.requires_grad_(False).eval()
    return Components(model, vae, image_encoder, feature_extractor, scheduler, folder)


def expand_shards(spec: str) -> list[str]:
    """``data.shards`` → shard paths/URLs: a folder's ``*.tar`` (sorted), a glob (sorted), a
    brace-expanded webdataset URL, or one file; [] when nothing matches."""
    p = Path(spec)
    if p.is_dir():
        return sorted(str(x) for x in p.glob("*.tar"))
    if any(c in spec for c in "*?["):
        return sorted(glob.glob(spec))
    if "{" in spec:
        import braceexpand

        return list(braceexpand.braceexpand(spec))
    return [spec] if p.is_file() else []


def shard_urls(cfg) -> tuple[list[str], list[str]]:
    """(training shards, held-out validation shards) from ``data.shards``.

    The last ``val_holdout_shards`` shards are held out when more than that many exist; with fewer,
    validation reuses the first training samples (logged).
    """
    urls = expand_shards(cfg.data.shards)
    if not urls:
        raise MissingShardsError(
            f"no training shards at {cfg.data.shards!r}: build them first with `make dataset` "
            f"(writes data/sample/shards/*.tar) or set data.shards=/path/to/shards"
        )
    n = cfg.data.val_holdout_shards
    if n > 0 and len(urls) > n:
        return urls[:-n], urls[-n:]
    if n > 0:
        log.warning("only %d shard(s): validation samples are not held out", len(urls))
    return urls, urls


def segment_seed(seed: int, segment_start: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, segment_start, rank]).generate_state(1)[0])


#: corrupt samples in a row after which the stream gives up (every shard broken, wrong folder …)
MAX_CORRUPT_IN_A_ROW = 200


def _guarded_stats():
    """LoaderStats whose handler stops the stream after MAX_CORRUPT_IN_A_ROW errors in a row."""
    from trackgo_data.loader import LoaderStats

    class GuardedStats(LoaderStats):
        in_a_row: int = 0

        def handler(self, exn: Exception) -> bool:
            super().handler(exn)
            self.in_a_row += 1
            if self.in_a_row >= MAX_CORRUPT_IN_A_ROW:
                raise MissingShardsError(
                    f"{self.in_a_row} corrupt samples in a row (last: {exn}); the shards look broken — "
                    f"rebuild them with `make dataset`") from exn
            return True

    return GuardedStats()


class DataStream:
    """Endless batches of ``data.batch_size`` for one rank and one data segment.

    With ``resampled`` shards the webdataset pipeline never ends; otherwise a new pass (epoch) is
    started, seeded from (segment seed, epoch), whenever one is exhausted. ``skip_batches`` are
    read and discarded first (resuming inside a segment). ``stats.skipped`` counts corrupt samples
    skipped by the loader over all passes.
    """

    def __init__(self, cfg, urls: list[str], *, seed: int, resampled: bool, shuffle: int,
                 skip_batches: int = 0) -> None:
        self.cfg, self.urls, self.seed = cfg, urls, seed
        self.resampled, self.shuffle = resampled, shuffle
        self.stats = _guarded_stats()
        self.epoch = 0
        self._it = self._open()
        for _ in range(skip_batches):
            next(self)

    def _open(self):
        from trackgo_data.loader import make_dataset

        data = self.cfg.data
        ds = make_dataset(
            self.urls,
            batch_size=data.batch_size,
            num_frames=data.num_frames,
            size=(data.width, data.height),
            shuffle=self.shuffle,
            shardshuffle=len(self.urls) if self.shuffle else False,
            resampled=self.resampled,
            seed=self.seed + self.epoch,
            partial_batches=False,
            stats=self.stats,
        )
        if data.num_workers > 0:
            return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=data.num_workers))
        return iter(ds)

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self):
        for _ in range(2):
            try:
                batch = next(self._it)
                self.stats.in_a_row = 0
                return batch
            except StopIteration:
                self.epoch += 1
                self._it = self._open()
        raise MissingShardsError(f"the shards {self.urls[:3]}… yield no complete batch of "
                                 f"{self.cfg.data.batch_size} valid samples")


def data_stream(cfg, urls: list[str], *, rank: int, world: int, segment_start: int,
                skip_batches: int = 0) -> DataStream:
    """The training stream of ``rank`` for the segment starting at ``segment_start``.

    Each rank draws from its own seed; with ``data.resampled`` (default) every rank samples shards
    with replacement, otherwise webdataset splits the shards by node and by worker.
    """
    return DataStream(cfg, urls, seed=segment_seed(cfg.seed, segment_start, rank),
                      resampled=cfg.data.resampled, shuffle=cfg.data.shuffle_buffer,
                      skip_batches=skip_batches)


def validation_batches(cfg, urls: list[str]) -> list[Any]:
    """The first ``validation.num_samples`` samples of the held-out shards, batch size 1, in order."""
    if cfg.validation.every <= 0 or cfg.validation.num_samples <= 0:
        return []
    from trackgo_data.loader import make_dataset

    data = cfg.data
    ds = make_dataset(urls, batch_size=1, num_frames=data.num_frames, size=(data.width, data.height),
                      shuffle=0, resampled=False, split_by_node=False, split_by_worker=False)
    out = []
    for batch in ds:
        out.append(batch)
        if len(out) >= cfg.validation.num_samples:
            break
    return out


def _uint8_frames(x) -> np.ndarray:
    """(L, 3, H, W) uint8 tensor/array → (L, H, W, 3) uint8."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@torch.no_grad()
def write_validation(comp, batches: list[Any], cfg, step: int, out_dir: Path,
                     device: torch.device) -> list[Path]:
    """Generate one video per held-out batch with a fixed seed; write ``<key>.mp4`` and
    ``<key>-sbs.mp4`` (real | generated | trajectories) under ``out_dir/step-XXXXXX``."""
    from trackgo_data.video import encode_mp4

    target = out_dir / f"step-{step:06d}"
    written = []
    ctx = comp.model.context
    saved = (ctx.tau, ctx.motion, ctx.mode)
    was_training = comp.model.training
    comp.model.eval()
    try:
        for i, batch in enumerate(batches):
            key = str(batch.key[0]) if hasattr(batch, "key") else f"sample{i}"
            image = _uint8_frames(torch.as_tensor(batch.image)[:1])[0]
            real = _uint8_frames(torch.as_tensor(batch.video)[0])
            traj = _uint8_frames(torch.as_tensor(batch.trajectory)[0])
            fps = float(cfg.data.fps)
            guide = None
            if getattr(batch, "tracks", None) is not None:
                guide = (np.asarray(batch.tracks[0]), np.asarray(batch.visibility[0]))
            gen = comp.generate(image, traj, cfg, device, guide=guide)
            sbs = np.concatenate([real, gen, traj], axis=2)
            for name, frames in ((f"{key}.mp4", gen), (f"{key}-sbs.mp4", sbs)):
                encode_mp4(frames, target / name, fps=fps)  # atomic write
                written.append(target / name)
    finally:  # back to the training settings of the adapters
        ctx.tau, ctx.motion, ctx.mode = saved
        comp.model.train(was_training)
    return written
