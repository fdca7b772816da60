"""``trackgo train``: fine-tune TrackGo (encoder + adapters + temporal attention) on shards.

    trackgo train --config tiny-cpu                      # tiny random model, CPU, minutes
    trackgo train --config svd-xt-paper model.svd_path=/weights/svd-xt data.shards=/data/shards
    trackgo train --config tiny-cpu --resume             # continue from the latest checkpoint
    accelerate launch --config_file infra/train/accelerate-8gpu.yaml -m trackgo_model.train --config svd-xt-paper

One optimizer step = ``global_batch_size`` samples = data.batch_size × processes × gradient
accumulation micro-steps (accelerate's ``accumulate``). Outputs under ``run_dir``:
``checkpoints/checkpoint-XXXXXX/`` (see :mod:`trackgo_model.train.checkpoint`), ``tb/`` (TensorBoard),
``val/step-XXXXXX/*.mp4`` (validation videos), ``metrics.jsonl`` and ``config.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from trackgo_data.config import ConfigError, atomic_write_json, config_hash, config_to_dict

from . import checkpoint as ckpt
from .config import TrainConfig, load_train_config

log = logging.getLogger(__name__)
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm was NaN/inf for ``max_nonfinite_steps`` steps in a row."""


def accelerate_kwargs(cfg: TrainConfig, accumulation: int) -> dict[str, Any]:
    """Accelerator(...) arguments for the configured precision and distributed strategy."""
    kw: dict[str, Any] = {"mixed_precision": cfg.mixed_precision, "gradient_accumulation_steps": accumulation}
    if cfg.distributed == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        # use_orig_params: only some parameters of the UNet train; SHARD_GRAD_OP ≈ ZeRO-2.
        kw["fsdp_plugin"] = FullyShardedDataParallelPlugin(sharding_strategy="SHARD_GRAD_OP",
                                                           use_orig_params=True)
    elif cfg.distributed == "deepspeed_zero2":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("distributed=deepspeed_zero2 needs the deepspeed package: pip install deepspeed")
        from accelerate.utils import DeepSpeedPlugin

        kw["deepspeed_plugin"] = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=accumulation,
                                                 gradient_clipping=cfg.optim.max_grad_norm or None)
    return kw


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


def load_trainable(core, path: str | Path, name: str = "trainable.safetensors") -> list[str]:
    """Copy a checkpoint's trainable (or ``ema.safetensors``) weights into ``core``; returns the keys."""
    weights = ckpt.load_tensors(path, name)
    if weights is None:
        raise FileNotFoundError(f"{Path(path) / name} does not exist")
    params = core.named_group_parameters()
    if sorted(weights) != sorted(params):
        raise ConfigError(f"{path}: its trainable parameters differ from this config's model.trainable")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    return sorted(params)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (a resumed run logs those steps again)."""
    if not path.is_file():
        return
    from trackgo_data.config import atomic_write_text

    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def prepare_model(comp, cfg: TrainConfig, device: torch.device) -> list[torch.nn.Parameter]:
    """Freeze all but ``model.trainable``, move to ``device``, frozen weights to the mixed-precision
    dtype (trainable ones stay float32); returns the trainable parameters in a fixed order."""
    weight_dtype = DTYPES[cfg.mixed_precision]
    core = comp.model
    params = core.freeze_for_training()
    if cfg.model.gradient_checkpointing:
        core.enable_gradient_checkpointing()
    vae_dtype = torch.float32 if (weight_dtype == torch.float16 and comp.vae.config.force_upcast) else weight_dtype
    comp.vae.to(device, dtype=vae_dtype)
    comp.image_encoder.to(device, dtype=weight_dtype)
    core.to(device)
    if weight_dtype != torch.float32 and cfg.distributed != "fsdp":
        with torch.no_grad():
            for p in core.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(weight_dtype)
    core.train()
    return params


def train(cfg: TrainConfig, *, resume: bool = False, stop_at: int | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          components: Any | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns final metrics.

    stop_at: stop after this global step (a checkpoint is written) without changing the LR
    schedule, which always spans ``cfg.max_steps`` — a resumed run continues the same curve.
    callback(step, metrics): called on the main process every ``log_every`` steps.
    components: a ready :class:`~trackgo_model.train.data.Components` (tests, benchmarks); by
    default they are loaded from ``model.svd_path`` or the tiny model.
    """
    from accelerate import Accelerator, PartialState
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from .data import data_stream, load_components, shard_urls, validation_batches, write_validation
    from .loss import batch_to_inputs, compute_loss

    run_dir = cfg.run_path
    train_urls, val_urls = shard_urls(cfg)  # clear error before anything heavy
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints (latest {latest.name}): pass --resume to "
                          f"continue that run, or set run_dir=… for a new one")
    state = PartialState()
    accum = cfg.gradient_accumulation(state.num_processes)
    acc = Accelerator(**accelerate_kwargs(cfg, accum))
    rank, world, device = acc.process_index, acc.num_processes, acc.device

    if components is None:
        with acc.main_process_first():
            components = load_components(cfg, run_dir)
    comp = components
    core = comp.model
    params = prepare_model(comp, cfg, device)
    names = list(core.named_group_parameters().keys())

    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    # Not prepared: accelerate would step it once per process; here it steps once per optimizer step.
    scheduler = get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                              num_training_steps=cfg.max_steps)
    model, optimizer = acc.prepare(core, optimizer)
    ema = EMAModel(params, decay=cfg.ema.decay) if cfg.ema.enabled else None
    loss_seed = cfg.seed * 1_000_003 + rank  # the loss generator: σ, ε, dropout, σ_cond per rank
    generator = torch.Generator().manual_seed(loss_seed)
    counters = {"step": 0, "samples_consumed": 0, "nonfinite_skipped": 0, "nonfinite_streak": 0,
                "corrupt_samples": 0}

    if resume and latest is not None:
        st = ckpt.load_state(latest)
        load_trainable(core, latest)
        optimizer.load_state_dict(ckpt.load_torch(latest, "optimizer.pt"))
        scheduler.load_state_dict(ckpt.load_torch(latest, "scheduler.pt"))
        if ema is not None:
            shadow = ckpt.load_tensors(latest, "ema.safetensors")
            if shadow is None:
                raise ConfigError(f"{latest} has no EMA weights but ema.enabled is true")
            ema.shadow_params = [shadow[n].to(device) for n in names]
            ema.optimization_step = int(st.get("ema_optimization_step", 0))
        ckpt.restore_rng(ckpt.load_rank_rng(latest, rank), generator)
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
    if acc.is_main_process:
        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
        _trim_metrics(run_dir / "metrics.jsonl", counters["step"])
    val_batches = validation_batches(cfg, val_urls) if acc.is_main_process else []
    writer = None
    if acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))

    def save(step: int) -> Path | None:
        tmp = ckpt.tmp_checkpoint_dir(run_dir, step)
        if acc.is_main_process:
            ckpt.begin_checkpoint(run_dir, step)
        acc.wait_for_everyone()
        ckpt.save_rank_rng(tmp, rank, generator)
        final = None
        if acc.is_main_process:
            st = {**counters, "step": step, "world_size": world, "accumulation": accum,
                  "ema_optimization_step": ema.optimization_step if ema else 0,
                  "config_hash": config_hash(cfg), "git_revision": ckpt.git_revision(),
                  "loss_seed": loss_seed}
            ckpt.write_payload(tmp, trainable=dict(zip(names, params)),
                               ema=dict(zip(names, ema.shadow_params)) if ema else None,
                               optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                               state=st, config=config_to_dict(cfg))
            if ema is not None and cfg.ema.export_ema:
                ema.store(params)
                ema.copy_to(params)
            try:
                core.save_trackgo(tmp / "trackgo")
            finally:
                if ema is not None and cfg.ema.export_ema:
                    ema.restore(params)
        acc.wait_for_everyone()
        if acc.is_main_process:
            final = ckpt.finish_checkpoint(tmp, step, keep=cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    ce = cfg.checkpoint_every
    step = counters["step"]
    end = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
    seg = (step // ce) * ce
    corrupt_base = counters["corrupt_samples"]
    it = data_stream(cfg, train_urls, rank=rank, world=world, segment_start=seg, skip_batches=(step - seg) * accum)
    corrupt_base -= it.stats.skipped  # the skipped-over batches were counted before the checkpoint
    last: dict[str, float] = {}
    history: list[float] = []
    bar = _progress(cfg, end, step, acc.is_main_process)
    t_start = time.perf_counter()
    saved_at = None
    with _StopFlag() as stop:
        while step < end and not stop.set:
            t0 = time.perf_counter()
            sums = torch.zeros(3, device=device)
            for _ in range(accum):
                batch = next(it)
                inputs = batch_to_inputs(batch, device, cfg.data.fps)
                x0 = cache.get(list(batch.key), device) if cache is not None else None
                with acc.accumulate(model):
                    with acc.autocast():
                        parts = compute_loss(model, core, comp.vae, comp.image_encoder, comp.feature_extractor,
                                             inputs, cfg.objective, generator=generator,
                                             motion_bucket_id=cfg.data.motion_bucket_id, x0=x0)
                    acc.backward(parts.loss)
                sums += torch.stack([parts.loss.detach().float(), parts.mse.float(), parts.attn.float()])
            sums = acc.reduce(sums, reduction="mean") / accum
            max_norm = o.max_grad_norm if o.max_grad_norm > 0 else float("inf")
            grad_norm = acc.clip_grad_norm_(params, max_norm)
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            finite = bool(torch.isfinite(sums).all()) and (cfg.mixed_precision == "fp16" or math.isfinite(grad_norm))
            step += 1
            counters["samples_consumed"] += cfg.global_batch_size
            if finite:
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.step(params)
                counters["nonfinite_streak"] = 0
            else:
                counters["nonfinite_skipped"] += 1
                counters["nonfinite_streak"] += 1
                streak = counters["nonfinite_streak"]
                log.warning("step %d: non-finite loss/grad (loss %s, grad norm %s) — step skipped (%d in a row)",
                            step, sums[0].item(), grad_norm, streak)
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
            if torch.cuda.is_available():
                last["gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            history.append(last["loss"])
            bar.update(1)
            if acc.is_main_process and (step % cfg.log_every == 0 or step == end):
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": step, **last}) + "\n")
                if callback is not None:
                    callback(step, dict(last))
            if cfg.validation.every > 0 and step % cfg.validation.every == 0 and acc.is_main_process and val_batches:
                if ema is not None:
                    ema.store(params)
                    ema.copy_to(params)
                try:
                    with acc.autocast():  # frozen weights may be half precision, trainable float32
                        write_validation(comp, val_batches, cfg, step, run_dir / "val", device)
                finally:
                    if ema is not None:
                        ema.restore(params)
            if step % ce == 0:
                counters["step"] = step
                saved_at = save(step)
                # A new data segment starts at every checkpoint (see train_io): resumable exactly.
                corrupt_base = counters["corrupt_samples"]
                it = data_stream(cfg, train_urls, rank=rank, world=world, segment_start=step)
    bar.close()
    counters["step"] = step
    if step % ce != 0:
        saved_at = save(step)
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - t_start
    result = {"step": step, "checkpoint": str(saved_at) if saved_at else None, "wall_s": round(wall, 3),
              **{k: v for k, v in counters.items() if k != "step"}, **last}
    if history:
        tail = history[-min(len(history), 10):]
        result["loss_mean_last10"] = sum(tail) / len(tail)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny-cpu", help="config name (tiny-cpu, svd-xt-paper) or a YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of run_dir")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this global step (checkpointed); the LR schedule still spans max_steps")


def _run(args: argparse.Namespace) -> int:
    from .data import MissingShardsError

    try:
        cfg = load_train_config(args.config, args.overrides)
        if not cfg.model.tiny:
            cfg.resolved_svd_path()  # one clear error before anything heavy
        result = train(cfg, resume=args.resume, stop_at=args.max_steps)
    except (ConfigError, MissingShardsError, NonFiniteLossError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps(result, sort_keys=True))  # the command's product: final metrics as one JSON line
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train TrackGo on webdataset shards (accelerate; resumable)",
                              description=__doc__.split("\n")[0])
    add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m trackgo_model.train …`` (what ``accelerate launch -m`` runs)."""
    parser = argparse.ArgumentParser(prog="trackgo train")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _run(args)


if __name__ == "__main__":
    raise SystemExit(main())
