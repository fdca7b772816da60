"""Train a video VAE from scratch on shards: SVD's ``AutoencoderKLTemporalDecoder`` or Wan's
``AutoencoderKLWan`` (``model.family``).

Stable Video Diffusion's VAE encodes frames one by one (×8 down-sampling, 4 latent channels)
and decodes a clip with temporal layers; Wan's is causal in time (×8 in space, ×4 in time:
clips of 4k + 1 frames, 16 latent channels). A model trained from scratch needs its own, since a
random VAE cannot reconstruct anything::

    trackgo toy vae                          # as the first model stage of the toy reproduction
    python -m trackgo_model.train.vae --config toy-vae data.shards=runs/toy/data/train/shards run_dir=runs/vae

Objective: L1 (+ ``mse_weight``·MSE) reconstruction of random ``crop``×``crop`` windows of
``window`` consecutive frames (decoded together, so the temporal decoder trains) +
``chroma_weight``·MSE of the error's chroma — the error minus its mean over the three channels,
which weighs a wrong hue apart from a wrong brightness — + ``kl_weight``·KL of the posterior to
N(0, I) per latent element. ``image_steps``: the first steps code one random frame of each of
``image_batch_size`` clips and decode the posterior mean — Wan's own order (images, then video); the
decoder learns to read the latents before posterior noise is added; on Wan's VAE every causal
convolution then starts as a 2D one (:func:`start_causal_as_2d`). ``teacher_steps`` (image steps
only): the decoder reconstructs the frames from a fixed linear code instead — the principal
components of 8×8 patches of the first ``image_batch_size`` training clips' first frames
(:class:`PatchCode`) — while the posterior mean is pulled to that code (+ its MSE): otherwise the
toy's Wan VAE learns to ignore its uninformative latents and never recovers (docs/wan.md);
``video_teacher_steps``: the same for the first video steps, latent frame k coded from pixel frame 4k.
``init_logvar``: the posterior's log-variance at step 0 (the bias of ``quant_conv``'s variance
half; 0 = diffusers' init), so posterior samples do not drown a code of unit spread.
At the end the latents' statistics over ``scale_samples`` training clips
(posterior mode) go into the model's config, as the released VAEs carry them: SVD's scaling
factor 1/std (its 0.18215), Wan's per-channel ``latents_mean``/``latents_std``; the model is saved
in the diffusers layout under ``<run_dir>/vae``.

Outputs: ``checkpoints/checkpoint-XXXXXX/`` (``vae.safetensors``, ``optimizer.pt``, ``state.json``;
atomic, the newest ``keep_checkpoints`` kept), ``metrics.jsonl``, ``vae/`` and ``result.json``
(reconstruction PSNR on held-out clips, latent statistics). A rerun with ``resume`` continues
from the newest checkpoint (the data order after a resume is re-seeded from the step).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trackgo_data.config import ConfigError, apply_overrides, atomic_write_json, config_from_dict, config_to_dict

from .vae_model import VAE_FAMILIES, PatchCode, VAEModelConfig, identity_time_conv, is_wan, start_causal_as_2d

__all__ = ["VAE_FAMILIES", "VAEModelConfig", "VAETrainConfig", "identity_time_conv", "is_wan", "learning_rate",
           "load_vae_config", "random_windows", "reconstruction_psnr", "PatchCode", "train_vae",
           "vae_loss"]

log = logging.getLogger(__name__)


@dataclass
class VAEDataConfig:
    shards: str = ""        # training shards (folder, glob); the last val_holdout_shards are held out
    width: int = 64
    height: int = 64
    num_frames: int = 8
    shuffle_buffer: int = 64
    val_holdout_shards: int = 1


@dataclass
class VAETrainConfig:
    name: str = "vae"
    run_dir: str = ""            # default runs/<name>
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 2          # clips per step
    window: int = 4              # consecutive frames decoded together
    crop: int = 32               # square crop in pixels (multiple of 8; 0 = whole frame)
    lr: float = 1e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1    # cosine decay to this share of lr
    kl_weight: float = 1e-3
    l1_weight: float = 1.0
    mse_weight: float = 0.0      # squared error pulls the large (colour) errors harder than L1
    chroma_weight: float = 0.0   # MSE of the error's chroma (module docstring)
    image_steps: int = 0         # first steps on single frames, posterior mean decoded (module docstring)
    image_batch_size: int = 8    # clips (one frame each) per image step
    teacher_steps: int = 0       # first image steps decode a fixed linear code (module docstring)
    video_teacher_steps: int = 0  # ... and the first video steps (after image_steps)
    init_logvar: float = 0.0     # the posterior's log-variance at step 0 (module docstring)
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    scale_samples: int = 16      # clips whose latents set the scaling factor
    eval_samples: int = 8        # held-out clips for the reconstruction PSNR
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("max_steps, batch_size and checkpoint_every must be >= 1")
        if not 0 <= self.teacher_steps <= self.image_steps <= self.max_steps or self.image_batch_size < 1 \
                or not 0 <= self.video_teacher_steps <= self.max_steps - self.image_steps:
            raise ValueError("need 0 <= teacher_steps <= image_steps <= max_steps, video_teacher_steps within the "
                             "video steps and image_batch_size >= 1")
        if not 1 <= self.window <= self.data.num_frames:
            raise ValueError(f"window must be in 1..data.num_frames ({self.data.num_frames})")
        if self.crop % 8 or self.crop < 0 or self.crop > min(self.data.width, self.data.height):
            raise ValueError("crop must be a multiple of 8 no larger than the frame (0 = whole frame)")
        if self.model.family == "wan" and ((self.window - 1) % 4 or (self.data.num_frames - 1) % 4):
            raise ValueError("a Wan VAE codes 4k + 1 frames: window and data.num_frames must be 1, 5, 9, …")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")


def load_vae_config(name_or_file: str, overrides: list[str] | None = None) -> VAETrainConfig:
    """A VAE config by name or path (``base`` chains resolved as for training configs)."""
    from trackgo_model.train.config import read_config, resolve_config_path

    data = read_config(resolve_config_path(name_or_file))
    apply_overrides(data, list(overrides or []))
    return config_from_dict(VAETrainConfig, data)


def _shards(cfg: VAETrainConfig) -> tuple[list[str], list[str]]:
    from trackgo_model.train.data import MissingShardsError, expand_shards

    urls = expand_shards(cfg.data.shards)
    if not urls:
        raise MissingShardsError(f"no shards at {cfg.data.shards!r}: build the dataset first (trackgo toy data)")
    n = cfg.data.val_holdout_shards
    return (urls[:-n], urls[-n:]) if 0 < n < len(urls) else (urls, urls)


def _stream(cfg: VAETrainConfig, urls: list[str], seed: int, batch: int, shuffle: bool = True):
    from trackgo_data.loader import make_dataset

    data = cfg.data
    return make_dataset(urls, batch_size=batch, num_frames=data.num_frames, size=(data.width, data.height),
                        shuffle=data.shuffle_buffer if shuffle else 0, resampled=shuffle, seed=seed,
                        partial_batches=not shuffle, split_by_node=False, split_by_worker=False)


def _unit(video: torch.Tensor) -> torch.Tensor:
    return video.float() / 127.5 - 1.0


def learning_rate(cfg: VAETrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``·lr at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def vae_loss(vae, clips: torch.Tensor, kl_weight: float, generator: torch.Generator,
             sample: bool = True, l1_weight: float = 1.0, mse_weight: float = 0.0,
             chroma_weight: float = 0.0, code: PatchCode | None = None) -> tuple[torch.Tensor, dict]:
    """clips: (B, T, 3, h, w) in [−1, 1] → (l1_weight·L1 + mse_weight·MSE + chroma_weight·MSE of
    the error's chroma + kl_weight·KL per latent element, parts). ``sample``: decode a posterior
    sample (else its mean). ``code``: decode the frames' fixed code instead and add the MSE of the
    posterior mean to it (``parts["teacher"]``; on Wan's VAE latent frame k stands for pixel frame
    4k, the last of those it codes)."""
    b, t = clips.shape[:2]
    target = None
    if code is not None and is_wan(vae):  # latent frame k codes pixel frames up to 4k: the code of frame 4k
        last = clips[:, ::vae.config.scale_factor_temporal or 4]
        target = code(last.flatten(0, 1)).unflatten(0, (b, last.shape[1])).transpose(1, 2)
    elif code is not None:
        target = code(clips.flatten(0, 1))
    if is_wan(vae):  # a causal 3D VAE codes the clip as one (B, 3, T, h, w) volume
        x = clips.permute(0, 2, 1, 3, 4)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator) if sample else post.mean
        err = vae.decode(z if target is None else target).sample - x
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()  # per latent element
        x = clips.flatten(0, 1)
        err = err.permute(0, 2, 1, 3, 4).flatten(0, 1)
    else:
        x = clips.flatten(0, 1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator) if sample else post.mean
        rec = vae.decode(z if target is None else target, num_frames=t).sample
        err = rec - x
        kl = post.kl().mean() / post.mean[0].numel()
    l1 = err.abs().mean()
    mse = err.pow(2).mean()
    chroma = (err - err.mean(dim=1, keepdim=True)).pow(2).mean()
    loss = l1_weight * l1 + mse_weight * mse + chroma_weight * chroma + kl_weight * kl
    parts = {"l1": float(l1.detach()), "mse": float(mse.detach()), "chroma": float(chroma.detach()),
             "kl": float(kl.detach())}
    if target is not None:
        teacher = (post.mean - target).pow(2).mean()
        loss = loss + teacher
        parts["teacher"] = float(teacher.detach())
    return loss, parts


def random_windows(video: torch.Tensor, window: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """(B, L, 3, H, W) → (B, window, 3, crop, crop): a random time window and a random crop
    (offsets on the ×8 grid) per clip; ``crop`` 0 keeps the whole frame."""
    b, L, _, H, W = video.shape
    out = []
    for i in range(b):
        t0 = int(torch.randint(0, L - window + 1, (1,), generator=generator))
        v = video[i, t0:t0 + window]
        if crop:
            y = 8 * int(torch.randint(0, (H - crop) // 8 + 1, (1,), generator=generator))
            x = 8 * int(torch.randint(0, (W - crop) // 8 + 1, (1,), generator=generator))
            v = v[..., y:y + crop, x:x + crop]
        out.append(v)
    return torch.stack(out)


def _code(vae, clip: torch.Tensor) -> torch.Tensor:
    """One clip (T, 3, H, W) in [-1, 1] → its posterior-mode latents: (T, C, h, w) for SVD's VAE,
    (1, C, F, h, w) for Wan's."""
    x = clip.permute(1, 0, 2, 3).unsqueeze(0) if is_wan(vae) else clip
    return vae.encode(x).latent_dist.mode()


def _decode(vae, z: torch.Tensor, frames: int) -> torch.Tensor:
    """:func:`_code`'s latents → the clip (T, 3, H, W)."""
    if is_wan(vae):
        return vae.decode(z).sample[0].permute(1, 0, 2, 3)
    return vae.decode(z, num_frames=frames).sample


@torch.no_grad()
def latent_values(vae, urls: list[str], cfg: VAETrainConfig, samples: int) -> torch.Tensor:
    """The posterior-mode latents of the first ``samples`` clips as (values, C)."""
    zs = []
    for batch in _stream(cfg, urls, 0, 1, shuffle=False):
        z = _code(vae, _unit(batch.video[0]))
        zs.append(z.movedim(1, -1).reshape(-1, z.shape[1]))
        if len(zs) >= samples:
            break
    return torch.cat(zs)


def latent_std(vae, urls: list[str], cfg: VAETrainConfig, samples: int) -> float:
    """Standard deviation of all the posterior-mode latents of the first ``samples`` clips."""
    return float(latent_values(vae, urls, cfg, samples).std())


@torch.no_grad()
def reconstruction_psnr(vae, urls: list[str], cfg: VAETrainConfig, samples: int, zero_latents: bool = False) -> float:
    """Mean per-clip PSNR (dB, [0, 255] scale) of decode(encode(clip)) over whole clips;
    ``zero_latents``: of decode(0) instead — a VAE whose decoder ignores its latents scores the same."""
    vals, n = [], 0
    for batch in _stream(cfg, urls, 0, 1, shuffle=False):
        x = _unit(batch.video[0])
        z = _code(vae, x)
        rec = _decode(vae, torch.zeros_like(z) if zero_latents else z, x.shape[0]).clamp(-1, 1)
        mse = float(((rec - x) / 2).pow(2).mean())
        vals.append(10 * math.log10(1.0 / max(mse, 1e-12)))
        n += 1
        if n >= samples:
            break
    return sum(vals) / len(vals)


def teaching(cfg: VAETrainConfig, step: int) -> bool:
    """Whether ``step`` decodes the teacher's code: the first ``teacher_steps`` image steps and the
    first ``video_teacher_steps`` video steps."""
    return step < cfg.teacher_steps or cfg.image_steps <= step < cfg.image_steps + cfg.video_teacher_steps


def teacher_code(cfg: VAETrainConfig, urls: list[str]) -> PatchCode:
    """The teacher's :class:`PatchCode`, fitted on the first frames of the first ``image_batch_size``
    clips in shard order (a resumed run fits the same code)."""
    first = _unit(next(iter(_stream(cfg, urls, 0, cfg.image_batch_size, shuffle=False))).video[:, 0])
    return PatchCode.fit(first, cfg.model.latent_channels)


def _save_checkpoint(run: Path, step: int, vae, opt, keep: int) -> Path:
    from safetensors.torch import save_file

    from . import checkpoint as ckpt

    tmp = ckpt.begin_checkpoint(run, step)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp / "vae.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / ckpt.STATE_FILE, {"step": step})
    return ckpt.finish_checkpoint(tmp, step, keep=keep)


def train_vae(cfg: VAETrainConfig, *, resume: bool = True) -> dict[str, Any]:
    """Train (or continue) the VAE; writes ``<run_dir>/vae`` and ``result.json``; returns the result."""
    from safetensors.torch import load_file

    from . import checkpoint as ckpt

    run = cfg.run_path
    train_urls, val_urls = _shards(cfg)
    latest = ckpt.latest_checkpoint(run)
    if latest is not None and not resume:
        raise ConfigError(f"{run} already holds VAE checkpoints: resume, or choose another run_dir")
    torch.manual_seed(cfg.seed)
    vae = cfg.model.build(max(cfg.data.width, cfg.data.height))
    if cfg.model.family == "svd":
        identity_time_conv(vae)
    elif cfg.image_steps:
        start_causal_as_2d(vae)
    with torch.no_grad():
        vae.quant_conv.bias[cfg.model.latent_channels:] += cfg.init_logvar
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    if latest is not None:
        vae.load_state_dict(load_file(str(latest / "vae.safetensors")))
        opt.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=False))
        step = int(ckpt.load_state(latest)["step"])
        log.info("VAE: resumed from %s at step %d", latest, step)
    atomic_write_json(run / "config.json", config_to_dict(cfg))
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    images = iter(_stream(cfg, train_urls, cfg.seed + step, cfg.image_batch_size)) if step < cfg.image_steps else None
    stream = iter(_stream(cfg, train_urls, cfg.seed + step, cfg.batch_size))
    code = teacher_code(cfg, train_urls) if any(teaching(cfg, at) for at in range(step, cfg.max_steps)) else None
    vae.train()
    t0, first = time.perf_counter(), step
    with open(run / "metrics.jsonl", "a") as metrics:
        while step < cfg.max_steps:
            image_step = step < cfg.image_steps
            video = next(images if image_step else stream).video
            clips = random_windows(_unit(video), 1 if image_step else cfg.window, cfg.crop, gen)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            loss, parts = vae_loss(vae, clips, cfg.kl_weight, gen, sample=not image_step, l1_weight=cfg.l1_weight,
                                   mse_weight=cfg.mse_weight, chroma_weight=cfg.chroma_weight,
                                   code=code if teaching(cfg, step) else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.max_grad_norm)
            opt.step()
            step += 1
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                rate = (step - first) / max(time.perf_counter() - t0, 1e-9)
                metrics.write(json.dumps({"step": step, "loss": float(loss.detach()), **parts,
                                          "lr": learning_rate(cfg, step - 1), "steps_per_s": rate}) + "\n")
                metrics.flush()
                log.info("VAE step %d/%d loss %.4f (l1 %.4f kl %.3f)", step, cfg.max_steps, float(loss.detach()),
                         parts["l1"], parts["kl"])
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                _save_checkpoint(run, step, vae, opt, cfg.keep_checkpoints)
    vae.eval()
    if cfg.model.family == "wan":
        z = latent_values(vae, train_urls, cfg, cfg.scale_samples)  # per channel, as Wan's VAE records them
        mean, spread = z.mean(0), z.std(0)
        vae.register_to_config(latents_mean=[float(v) for v in mean],
                               latents_std=[float(max(v, 1e-6)) for v in spread])
        stats = {"latents_mean": vae.config.latents_mean, "latents_std": vae.config.latents_std}
    else:
        std = latent_std(vae, train_urls, cfg, cfg.scale_samples)
        vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        stats = {"latent_std": std, "scaling_factor": vae.config.scaling_factor}
    from trackgo_model.pipeline import replace_dir

    tmp = run / ".vae-tmp"
    vae.save_pretrained(tmp)
    replace_dir(tmp, run / "vae")
    result = {"step": step, **stats, "family": cfg.model.family,
              "psnr_heldout": reconstruction_psnr(vae, val_urls, cfg, cfg.eval_samples),
              "psnr_heldout_zero_latents": reconstruction_psnr(vae, val_urls, cfg, cfg.eval_samples, zero_latents=True),
              "params": sum(p.numel() for p in vae.parameters())}
    atomic_write_json(run / "result.json", result)
    log.info("VAE: %s", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trackgo_model.train.vae", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="toy-vae", help="config name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = train_vae(load_vae_config(args.config, args.overrides))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
