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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from trackgo_data.config import ConfigError, atomic_write_json, config_to_dict

from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import (clip_gradients, fsdp_version, inference_context, make_accelerator, optimizer_step,
                          prepare_model)
from .memory import make_optimizer, parameter_groups
from .state import TrainingState

log = logging.getLogger(__name__)
__all__ = ["NonFiniteLossError", "train"]


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


@dataclass
class _Run:
    """What one training run holds on one rank, from :func:`_start` to the end of :func:`train`.

    model: ``comp.model`` as accelerate wrapped it (DDP/FSDP); state: the checkpointed
    :class:`TrainingState`; counters: what a checkpoint records besides the weights (step,
    samples consumed, non-finite steps skipped and in a row, corrupt samples skipped).
    """

    cfg: TrainConfig
    accelerator: Any
    accumulation: int
    comp: Any
    model: Any
    optimizer: Any
    scheduler: Any
    state: TrainingState
    counters: dict[str, int]
    train_urls: list[str]
    val_batches: list[Any]
    cache: Any = None
    writer: Any = None


class _Step(NamedTuple):
    """One optimizer step: losses = mean [loss, L_mse, L_attn] over micro-steps and ranks, whether
    they are finite, the gradient norm and the :class:`~trackgo_model.train.distributed.StepOutcome`."""

    losses: torch.Tensor
    loss_finite: bool
    grad_norm: float
    outcome: Any


def train(cfg: TrainConfig, *, resume: bool = False, stop_at: int | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          components: Any | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns final metrics (on every rank).

    stop_at: stop after this global step (a checkpoint is written) without changing the LR
    schedule, which always spans ``cfg.max_steps`` — a resumed run continues the same curve.
    callback(step, metrics): called on the main process every ``log_every`` steps.
    components: a ready :class:`~trackgo_model.train.data.Components` (tests, benchmarks); by
    default they are loaded for ``model.base`` from its folder or the tiny model.
    """
    from .data import data_stream, write_validation

    run = _start(cfg, resume, components)
    accelerator, counters, every = run.accelerator, run.counters, cfg.checkpoint_every
    step = counters["step"]
    end = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
    # A new data segment starts at every checkpoint (see train.data): a resume is exact. The batches
    # skipped to reach ``step`` inside its segment were counted before that checkpoint.
    segment = (step // every) * every
    batches = data_stream(cfg, run.train_urls, rank=accelerator.process_index, world=accelerator.num_processes,
                          segment_start=segment, skip_batches=(step - segment) * run.accumulation)
    corrupt_before = counters["corrupt_samples"] - batches.stats.skipped
    last: dict[str, float] = {}
    history: list[float] = []
    bar = _progress(cfg, end, step, accelerator.is_main_process)
    t_start = time.perf_counter()
    saved_at = None
    with _StopFlag() as stop:
        while step < end and not _any_rank(accelerator, stop.set):
            t0 = time.perf_counter()
            taken = _optimizer_step(run, batches)
            step += 1
            _count(run, step, taken)
            counters["corrupt_samples"] = corrupt_before + int(batches.stats.skipped)
            last = _metrics(run, taken, time.perf_counter() - t0)
            history.append(last["loss"])
            bar.update(1)
            if accelerator.is_main_process and (step % cfg.log_every == 0 or step == end):
                _record(run, step, last, bar, callback)
            if cfg.validation.every > 0 and step % cfg.validation.every == 0 and (
                    run.val_batches or fsdp_version(accelerator)):
                # frozen weights may be half precision, trainable float32: autocast
                with run.state.ema_weights(), inference_context(accelerator, run.model) as runs, accelerator.autocast():
                    if runs:
                        write_validation(run.comp, run.val_batches, cfg, step, cfg.run_path / "val", accelerator.device)
            if step % every == 0:
                counters["step"] = step
                saved_at = run.state.save(cfg.run_path, step, counters)
                corrupt_before = counters["corrupt_samples"]
                batches = data_stream(cfg, run.train_urls, rank=accelerator.process_index,
                                      world=accelerator.num_processes, segment_start=step)
    bar.close()
    counters["step"] = step
    if step % every != 0:
        saved_at = run.state.save(cfg.run_path, step, counters)
    if run.writer is not None:
        run.writer.close()
    result = {"step": step, "checkpoint": str(saved_at) if saved_at else None,
              "wall_s": round(time.perf_counter() - t_start, 3),
              **{k: v for k, v in counters.items() if k != "step"}, **last}
    if history:
        tail = history[-min(len(history), 10):]
        result["loss_mean_last10"] = sum(tail) / len(tail)
    return result


def _start(cfg: TrainConfig, resume: bool, components: Any | None) -> _Run:
    """Accelerator, model, optimizer, LR schedule and training state (restored with ``resume``),
    the latent cache, and on the main process the run folder's config, metrics and TensorBoard."""
    from diffusers.optimization import get_scheduler

    from .data import load_components, shard_urls, validation_batches

    run_dir = cfg.run_path
    train_urls, val_urls = shard_urls(cfg)  # clear error before anything heavy
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints (latest {latest.name}): pass --resume to "
                          f"continue that run, or set run_dir=… for a new one")
    accelerator, accumulation = make_accelerator(cfg)
    rank, device = accelerator.process_index, accelerator.device
    if components is None:
        with accelerator.main_process_first():  # the main process creates the tiny model, the others then load it
            components = load_components(cfg, run_dir)
    params = prepare_model(components, cfg, device)
    groups = parameter_groups(components.model, components.model.cfg.trainable, cfg.optim.group_lr, cfg.optim.lr)
    optimizer = make_optimizer(groups, cfg)  # optim.optimizer: AdamW or 8-bit AdamW
    # Not prepared: accelerate would step it once per process; here it steps once per optimizer step.
    scheduler = get_scheduler(cfg.optim.scheduler, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                              num_training_steps=cfg.max_steps)
    model, optimizer = accelerator.prepare(components.model, optimizer)
    # the loss generator (σ, ε, dropout, σ_cond) differs per rank
    state = TrainingState(accelerator, model, components.model, optimizer, scheduler, cfg=cfg,
                          accumulation=accumulation, loss_seed=cfg.seed * 1_000_003 + rank)
    counters = {"step": 0, "samples_consumed": 0, "nonfinite_skipped": 0, "nonfinite_streak": 0,
                "corrupt_samples": 0}
    if resume and latest is not None:
        restored = state.restore(latest)
        counters.update({k: int(restored[k]) for k in counters if k in restored})
        log.info("resumed from %s at step %d", latest, counters["step"])
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from step 0", run_dir)
    run = _Run(cfg, accelerator, accumulation, components, model, optimizer, scheduler, state, counters,
               train_urls, val_batches=[])
    if cfg.data.latent_cache:
        from .latent_cache import LatentCache

        data = cfg.data
        run.cache = LatentCache(data.latent_cache, components.vae, width=data.width, height=data.height,
                                num_frames=data.num_frames, encode=components.encode_latents)
        run.cache.build(train_urls, device, rank=rank, world=accelerator.num_processes)
        accelerator.wait_for_everyone()
        log.info("latent cache %s: %d samples", data.latent_cache, run.cache.open(train_urls))
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
        _trim_metrics(run_dir / "metrics.jsonl", counters["step"])
        run.writer = SummaryWriter(str(run_dir / "tb"))
        run.val_batches = validation_batches(cfg, val_urls)
    return run


def _optimizer_step(run: _Run, batches) -> _Step:
    """One optimizer step: ``run.accumulation`` micro-batches of loss and backward, global-norm
    clipping, the step (skipped when not finite)."""
    from .loss import batch_to_inputs

    cfg, accelerator, comp = run.cfg, run.accelerator, run.comp
    sums = torch.zeros(3, device=accelerator.device)
    for _ in range(run.accumulation):
        batch = next(batches)
        inputs = batch_to_inputs(batch, accelerator.device, cfg.data.fps)
        if not cfg.model.trajectories:  # plain image-to-video objective (a base model)
            inputs.trajectories = None
        x0 = run.cache.get(list(batch.key), accelerator.device) if run.cache is not None else None
        with accelerator.accumulate(run.model):
            with accelerator.autocast():
                parts = comp.loss(run.model, inputs, cfg, run.state.generator, x0=x0)
            accelerator.backward(parts.loss)
        sums += torch.stack([parts.loss.detach().float(), parts.mse.float(), parts.attn.float()])
    losses = accelerator.reduce(sums, reduction="mean") / run.accumulation
    loss_finite = bool(torch.isfinite(losses).all())
    grad_norm = clip_gradients(accelerator, run.model, run.state.params, cfg.optim.max_grad_norm)
    outcome = optimizer_step(accelerator, run.optimizer, loss_finite=loss_finite, grad_norm=grad_norm)
    return _Step(losses, loss_finite, grad_norm, outcome)


def _count(run: _Run, step: int, taken: _Step) -> None:
    """After optimizer step ``step``: the schedule and EMA move on if it was applied; a skipped
    step is counted, and ``max_nonfinite_steps`` of them in a row stop the run."""
    counters, outcome = run.counters, taken.outcome
    counters["samples_consumed"] += run.cfg.global_batch_size
    if outcome.applied:
        run.scheduler.step()
        if run.state.ema is not None:
            run.state.ema.step(run.state.params)
        counters["nonfinite_streak"] = 0
    else:
        counters["nonfinite_skipped"] += 1
        # with the loss scaler an overflowing gradient only lowers the scale; a non-finite loss
        # (or, without the scaler, gradient) counts towards stopping
        if not taken.loss_finite or outcome.loss_scale is None:
            counters["nonfinite_streak"] += 1
        log.warning("step %d: non-finite loss/grad (loss %s, grad norm %s) — step skipped%s", step,
                    taken.losses[0].item(), taken.grad_norm, "" if outcome.loss_scale is None else
                    f", loss scale now {outcome.loss_scale:g}")
    run.optimizer.zero_grad(set_to_none=True)
    if counters["nonfinite_streak"] >= run.cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"loss/gradients were NaN or inf for {counters['nonfinite_streak']} steps in a row (last at step "
            f"{step}); lower optim.lr, check the data, or resume from the last checkpoint in {run.cfg.run_path}")


def _metrics(run: _Run, taken: _Step, seconds: float) -> dict[str, float]:
    """The figures logged for one optimizer step that took ``seconds``."""
    cfg, counters, losses = run.cfg, run.counters, taken.losses
    metrics = {"loss": losses[0].item(), "loss_mse": losses[1].item(), "loss_attn": losses[2].item(),
               "lr": run.scheduler.get_last_lr()[0], "grad_norm": taken.grad_norm,
               "samples_per_s": cfg.global_batch_size / seconds if seconds > 0 else 0.0,
               "nonfinite_skipped": counters["nonfinite_skipped"], "corrupt_samples": counters["corrupt_samples"]}
    if taken.outcome.loss_scale is not None:
        metrics["loss_scale"] = taken.outcome.loss_scale
    metrics.update(adapter_metrics(run.comp.model))
    if torch.cuda.is_available():
        metrics["gpu_mem_gib"] = torch.cuda.max_memory_allocated(run.accelerator.device) / 2**30
    return metrics


def adapter_metrics(core) -> dict[str, float]:
    """Per temporal layer i (model order): ``mask_hits/i``, the fraction of A′ entries ≥ α in the
    step's last forward (0 when the mask never acts, and then the ablation without the mask is
    the same function), and in gated mode ``gate/i``, the mean of its per-head gates."""
    hits = core.mask_hits()
    out = {f"mask_hits/{i}": hits[path] for i, path in enumerate(core.adapters) if path in hits}
    if core.cfg.mode == "gated" and hits:
        out.update({f"gate/{i}": float(a.gate.detach().float().mean()) for i, a in enumerate(core.adapters.values())})
    return out


def _record(run: _Run, step: int, metrics: dict[str, float], bar, callback) -> None:
    """TensorBoard, the progress bar, ``metrics.jsonl`` and ``callback`` (main process)."""
    for key, value in metrics.items():
        run.writer.add_scalar(f"train/{key}", value, step)
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
    with open(run.cfg.run_path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, **metrics}) + "\n")
    if callback is not None:
        callback(step, dict(metrics))


def _any_rank(accelerator, flag: bool) -> bool:
    """True on every rank when ``flag`` is set on any (a signal reaches one process of a node)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)
