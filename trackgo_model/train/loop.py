"""``trackgo train``: fine-tune TrackGo (encoder + adapters + temporal attention) on shards.

    trackgo train --config tiny-cpu                      # tiny random model, CPU, minutes
    trackgo train --config svd-xt-paper model.svd_path=/weights/svd-xt data.shards=/data/shards
    trackgo train --config tiny-cpu --resume             # continue from the latest checkpoint
    accelerate launch --config_file infra/train/accelerate-8gpu.yaml -m trackgo_model.train --config svd-xt-paper
    torchrun --nproc_per_node 8 -m trackgo_model.train --config svd-xt-paper     # the same, launched by torch

Several processes (DDP, or FSDP with ``distributed=fsdp``; see :mod:`trackgo_model.train.distributed`)
train one model: the main process writes checkpoints, logs and validation videos.

One optimizer step = ``global_batch_size`` samples = data.batch_size × processes × gradient
accumulation micro-steps (accelerate's ``accumulate``). Outputs under ``run_dir``:
``checkpoints/checkpoint-XXXXXX/`` (see :mod:`trackgo_model.train.checkpoint`), ``tb/`` (TensorBoard),
``val/step-XXXXXX/*.mp4`` (validation videos), ``metrics.jsonl`` and ``config.json``.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from trackgo_data.config import ConfigError, atomic_write_json, config_to_dict

from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import (DTYPES, accelerate_kwargs, clip_gradients, fsdp_version, inference_context,
                          make_accelerator, optimizer_step, prepare_model)
from .memory import make_optimizer
from .state import TrainingState, load_trainable

log = logging.getLogger(__name__)
__all__ = ["DTYPES", "NonFiniteLossError", "accelerate_kwargs", "load_trainable", "prepare_model", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss (or, without a loss scaler, the gradient norm) was NaN/inf for
    ``max_nonfinite_steps`` steps in a row."""


def _progress(cfg: TrainConfig, total: int, initial: int, enabled: bool):
    if cfg.progress == "rich":
        from tqdm.rich import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled or cfg.progress == "none",
                desc="train", unit="step", dynamic_ncols=True)


class _StopFlag:
    """SIGTERM/SIGINT → finish the current step, write a checkpoint, exit (preemption-safe)."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("signal %d: stopping after this step (a checkpoint will be written)", signum)
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (a resumed run logs those steps again)."""
    if not path.is_file():
        return
    from trackgo_data.config import atomic_write_text

    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def train(cfg: TrainConfig, *, resume: bool = False, stop_at: int | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          components: Any | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns final metrics (on every rank).

    stop_at: stop after this global step (a checkpoint is written) without changing the LR
    schedule, which always spans ``cfg.max_steps`` — a resumed run continues the same curve.
    callback(step, metrics): called on the main process every ``log_every`` steps.
    components: a ready :class:`~trackgo_model.train.data.Components` (tests, benchmarks); by
    default they are loaded from ``model.svd_path`` or the tiny model.
    """
    from diffusers.optimization import get_scheduler

    from .data import data_stream, load_components, shard_urls, validation_batches, write_validation
    from .loss import batch_to_inputs, compute_loss

    run_dir = cfg.run_path
    train_urls, val_urls = shard_urls(cfg)  # clear error before anything heavy
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints (latest {latest.name}): pass --resume to "
                          f"continue that run, or set run_dir=… for a new one")
    acc, accum = make_accelerator(cfg)
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    main = acc.is_main_process

    if components is None:
        with acc.main_process_first():  # the main process creates the tiny model, the others then load it
            components = load_components(cfg, run_dir)
    comp = components
    core = comp.model
    params = prepare_model(comp, cfg, device)

    o = cfg.optim
    optimizer = make_optimizer(params, cfg)  # optim.optimizer: AdamW or 8-bit AdamW
    # Not prepared: accelerate would step it once per process; here it steps once per optimizer step.
    scheduler = get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                              num_training_steps=cfg.max_steps)
    model, optimizer = acc.prepare(core, optimizer)
    # the loss generator (σ, ε, dropout, σ_cond) differs per rank
    ts = TrainingState(acc, model, core, optimizer, scheduler, cfg=cfg, accumulation=accum,
                       loss_seed=cfg.seed * 1_000_003 + rank)
    counters = {"step": 0, "samples_consumed": 0, "nonfinite_skipped": 0, "nonfinite_streak": 0,
                "corrupt_samples": 0}
    if resume and latest is not None:
        st = ts.restore(latest)
        counters.update({k: int(st[k]) for k in counters if k in st})
        log.info("resumed from %s at step %d", latest, counters["step"])
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from step 0", run_dir)

    cache = None
    if cfg.data.latent_cache:
        from .latent_cache import LatentCache

        d = cfg.data
        cache = LatentCache(d.latent_cache, comp.vae, width=d.width, height=d.height, num_frames=d.num_frames)
        cache.build(train_urls, device, rank=rank, world=world)
        acc.wait_for_everyone()
        log.info("latent cache %s: %d samples", d.latent_cache, cache.open(train_urls))
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
        _trim_metrics(run_dir / "metrics.jsonl", counters["step"])
        writer = SummaryWriter(str(run_dir / "tb"))
    val_batches = validation_batches(cfg, val_urls) if main else []

    ce = cfg.checkpoint_every
    step = counters["step"]
    end = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
    seg = (step // ce) * ce
    corrupt_base = counters["corrupt_samples"]
    it = data_stream(cfg, train_urls, rank=rank, world=world, segment_start=seg, skip_batches=(step - seg) * accum)
    corrupt_base -= it.stats.skipped  # the skipped-over batches were counted before the checkpoint
    last: dict[str, float] = {}
    history: list[float] = []
    bar = _progress(cfg, end, step, main)
    t_start = time.perf_counter()
    saved_at = None
    with _StopFlag() as stop:
        while step < end and not _any_rank(acc, stop.set):
            t0 = time.perf_counter()
            sums = torch.zeros(3, device=device)
            for _ in range(accum):
                batch = next(it)
                inputs = batch_to_inputs(batch, device, cfg.data.fps)
                if not cfg.model.trajectories:  # plain image-to-video objective (a base model)
                    inputs.trajectories = None
                x0 = cache.get(list(batch.key), device) if cache is not None else None
                with acc.accumulate(model):
                    with acc.autocast():
                        parts = compute_loss(model, core, comp.vae, comp.image_encoder, comp.feature_extractor,
                                             inputs, cfg.objective, generator=ts.generator,
                                             motion_bucket_id=cfg.data.motion_bucket_id, x0=x0)
                    acc.backward(parts.loss)
                sums += torch.stack([parts.loss.detach().float(), parts.mse.float(), parts.attn.float()])
            sums = acc.reduce(sums, reduction="mean") / accum
            loss_finite = bool(torch.isfinite(sums).all())
            grad_norm = clip_gradients(acc, model, ts.params, o.max_grad_norm)
            outcome = optimizer_step(acc, optimizer, loss_finite=loss_finite, grad_norm=grad_norm)
            step += 1
            counters["samples_consumed"] += cfg.global_batch_size
            if outcome.applied:
                scheduler.step()
                if ts.ema is not None:
                    ts.ema.step(ts.params)
                counters["nonfinite_streak"] = 0
            else:
                counters["nonfinite_skipped"] += 1
                # with the loss scaler an overflowing gradient only lowers the scale; a
                # non-finite loss (or, without the scaler, gradient) counts towards stopping
                if not loss_finite or outcome.loss_scale is None:
                    counters["nonfinite_streak"] += 1
                log.warning("step %d: non-finite loss/grad (loss %s, grad norm %s) — step skipped%s", step,
                            sums[0].item(), grad_norm, "" if outcome.loss_scale is None else
                            f", loss scale now {outcome.loss_scale:g}")
            optimizer.zero_grad(set_to_none=True)
            if counters["nonfinite_streak"] >= cfg.max_nonfinite_steps:
                streak = counters["nonfinite_streak"]
                raise NonFiniteLossError(
                    f"loss/gradients were NaN or inf for {streak} steps in a row (last at step {step}); "
                    f"lower optim.lr, check the data, or resume from the last checkpoint in {run_dir}"
                )
            counters["corrupt_samples"] = corrupt_base + int(it.stats.skipped)
            dt = time.perf_counter() - t0
            last = {"loss": sums[0].item(), "loss_mse": sums[1].item(), "loss_attn": sums[2].item(),
                    "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                    "samples_per_s": cfg.global_batch_size / dt if dt > 0 else 0.0,
                    "nonfinite_skipped": counters["nonfinite_skipped"],
                    "corrupt_samples": counters["corrupt_samples"]}
            if outcome.loss_scale is not None:
                last["loss_scale"] = outcome.loss_scale
            if torch.cuda.is_available():
                last["gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            history.append(last["loss"])
            bar.update(1)
            if main and (step % cfg.log_every == 0 or step == end):
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": step, **last}) + "\n")
                if callback is not None:
                    callback(step, dict(last))
            if cfg.validation.every > 0 and step % cfg.validation.every == 0 and (val_batches or fsdp_version(acc)):
                with ts.ema_weights(), inference_context(acc, model) as runs, acc.autocast():
                    # frozen weights may be half precision, trainable float32: autocast
                    if runs:
                        write_validation(comp, val_batches, cfg, step, run_dir / "val", device)
            if step % ce == 0:
                counters["step"] = step
                saved_at = ts.save(run_dir, step, counters)
                # A new data segment starts at every checkpoint (see train.data): resumable exactly.
                corrupt_base = counters["corrupt_samples"]
                it = data_stream(cfg, train_urls, rank=rank, world=world, segment_start=step)
    bar.close()
    counters["step"] = step
    if step % ce != 0:
        saved_at = ts.save(run_dir, step, counters)
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - t_start
    result = {"step": step, "checkpoint": str(saved_at) if saved_at else None, "wall_s": round(wall, 3),
              **{k: v for k, v in counters.items() if k != "step"}, **last}
    if history:
        tail = history[-min(len(history), 10):]
        result["loss_mean_last10"] = sum(tail) / len(tail)
    return result


def _any_rank(acc, flag: bool) -> bool:
    """True on every rank when ``flag`` is set on any (a signal reaches one process of a node)."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)
