"""The stages of the toy reproduction, each idempotent and resumable.

    videos     synthetic training and held-out worlds → <out>/videos/{train,heldout}/*.mp4 (+ ground truth)
    data       the build-dataset stages (profile ``local``) → <out>/data/{train,heldout}/shards
    vae        a video VAE from scratch (trackgo_model.train.vae) → <out>/vae/vae
    base       a plain image-to-video UNet from scratch with SVD's objective (the real trainer,
               trainable group ``unet``, no trajectories) → <out>/base-model (SVD layout)
    calibrate  λ of the attention loss, measured at the base model (trackgo_model.train.calibrate)
    trackgo    TrackGo fine-tuning of the base model, one run per variant (the real trainer,
               ``toy-trackgo`` + the calibrated λ + the variant's overrides) → <out>/trackgo/<variant>
    eval       held-out generation and scoring → <out>/results.json, results.md, … (trackgo_model.toy.evaluate)

A finished stage leaves ``<out>/stages/<stage>.json`` holding the hash of everything it was made
from (its config and the stages before it), its wall and CPU seconds (this process and its
children) and what it produced; a rerun skips it. A stage that was interrupted has no record and
runs again: videos and dataset batches already written are reused, trainings resume from their
newest checkpoint. A stage whose inputs changed since it started is refused with a message
naming what to delete, never silently mixed.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from trackgo_data.config import ConfigError, atomic_write_json, atomic_write_text, config_hash, config_to_dict

from .config import ToyConfig, build_config
from .workers import process_pool

log = logging.getLogger(__name__)

STAGES = ("videos", "data", "vae", "base", "calibrate", "trackgo", "eval")


class StageMismatch(ConfigError):
    """A stage folder was made from other inputs than the current config's."""


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def record_path(cfg: ToyConfig, stage: str) -> Path:
    return cfg.out_path / "stages" / f"{stage}.json"


def read_record(cfg: ToyConfig, stage: str) -> dict[str, Any] | None:
    path = record_path(cfg, stage)
    return json.loads(path.read_text()) if path.is_file() else None


def need(cfg: ToyConfig, stage: str) -> str:
    """The hash of a finished earlier stage; a clear error when it has not run."""
    record = read_record(cfg, stage)
    if record is None:
        raise RuntimeError(f"stage '{stage}' has not finished in {cfg.out}: run `trackgo toy {stage.split('-')[0]}` "
                           "(or `trackgo toy all`) first")
    return record["hash"]


def run_stage(cfg: ToyConfig, stage: str, inputs: Any, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` unless ``stage`` finished with the same ``inputs``; returns the stage record.

    ``inputs`` (anything JSON-serialisable) is hashed; ``fn`` returns what the stage produced (a
    ``cpu_s`` entry in it replaces the measured CPU seconds: trainings run in child processes)."""
    digest = config_hash({"stage": stage, "inputs": inputs})
    done = read_record(cfg, stage)
    started_path = cfg.out_path / "stages" / f"{stage}.started.json"
    started = json.loads(started_path.read_text()) if started_path.is_file() else None
    for record in (done, started):
        if record is not None and record["hash"] != digest:
            raise StageMismatch(
                f"{cfg.out}: stage '{stage}' was made from other inputs (hash {record['hash']}, now {digest}); delete "
                f"{cfg.out}/stages/{stage}*.json and the stage's folder (and the later stages'), or use another out")
    if done is not None:
        log.info("toy: stage %s already done (%.0f s wall, %.0f s CPU) — skipped", stage, done["wall_s"], done["cpu_s"])
        return {**done, "skipped": True}
    atomic_write_json(started_path, {"hash": digest, "inputs": inputs})
    log.info("toy: stage %s …", stage)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    product = fn(*args)
    own_cpu = product.get("cpu_s") if isinstance(product, dict) else None
    record = {"stage": stage, "hash": digest, "wall_s": round(time.perf_counter() - wall0, 2),
              "cpu_s": round(own_cpu if own_cpu is not None else cpu_seconds() - cpu0, 2),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "product": product}
    atomic_write_json(record_path(cfg, stage), record)
    started_path.unlink(missing_ok=True)
    log.info("toy: stage %s done in %.0f s wall, %.0f s CPU", stage, record["wall_s"], record["cpu_s"])
    return record


# ------------------------------------------------------------------------------------- videos
def make_videos(cfg: ToyConfig) -> dict[str, Any]:
    from trackgo_data.synthetic import generate_videos, prepare_folder, video_paths

    out = {}
    workers = cfg.build_processes
    for split, world in (("train", cfg.train_videos), ("heldout", cfg.heldout_videos)):
        folder = cfg.out_path / "videos" / split
        prepare_folder(folder, world)
        chunks = [list(range(i, world.num_videos, workers)) for i in range(workers)]
        with process_pool(workers) as pool:
            list(pool.map(generate_videos, [folder] * len(chunks), [world] * len(chunks), chunks))
        out[split] = {"folder": str(folder), "videos": len(video_paths(folder, world))}
        log.info("toy: %d %s videos in %s", out[split]["videos"], split, folder)
    return out


def videos(cfg: ToyConfig) -> dict[str, Any]:
    inputs = [config_to_dict(cfg.train_videos), config_to_dict(cfg.heldout_videos)]
    return run_stage(cfg, "videos", inputs, make_videos, cfg)


# --------------------------------------------------------------------------------------- data
def build_data(cfg: ToyConfig, bcfg) -> dict[str, Any]:
    from trackgo_data.build import discover_sources, finalize, plan_batches, prepare_output, process_batch

    out = {}
    for split in ("train", "heldout"):
        folder = cfg.out_path / "data" / split
        prepare_output(folder, bcfg)
        specs = plan_batches(discover_sources(str(cfg.out_path / "videos" / split / "*.mp4")), bcfg)
        with process_pool(cfg.build_processes) as pool:
            list(pool.map(process_batch, specs, [bcfg] * len(specs), [folder] * len(specs)))
        summary = finalize(folder, batch_ids=[s.batch_id for s in specs])
        if not summary.get("accepted"):
            raise RuntimeError(f"the {split} build accepted no clip: see {folder}/manifest.parquet")
        out[split] = {"folder": str(folder), "accepted": summary["accepted"],
                      "rejected_by_reason": summary.get("rejected_by_reason", {})}
    return out


def data(cfg: ToyConfig) -> dict[str, Any]:
    bcfg = build_config(cfg)
    return run_stage(cfg, "data", [need(cfg, "videos"), config_to_dict(bcfg)], build_data, cfg, bcfg)


def shards(cfg: ToyConfig, split: str = "train") -> str:
    return str(cfg.out_path / "data" / split / "shards")


# ---------------------------------------------------------------------------------------- vae
def vae_config(cfg: ToyConfig):
    from trackgo_model.train.vae import load_vae_config

    return load_vae_config(cfg.vae_config, [f"data.shards={shards(cfg)}", f"run_dir={cfg.out_path / 'vae'}",
                                            *cfg.vae_overrides])


def train_vae_model(cfg: ToyConfig, vcfg) -> dict[str, Any]:
    import torch

    from trackgo_model.train.vae import train_vae

    torch.set_num_threads(cfg.threads)
    return train_vae(vcfg, resume=True)


def vae(cfg: ToyConfig) -> dict[str, Any]:
    vcfg = vae_config(cfg)
    return run_stage(cfg, "vae", [need(cfg, "data"), config_to_dict(vcfg)], train_vae_model, cfg, vcfg)


# -------------------------------------------------------------------------------------- training
def train_config(cfg: ToyConfig, stage: str, variant: str | None = None, attn_loss_weight: float | None = None):
    """The TrainConfig of the base stage, or of one TrackGo variant (with the calibrated λ)."""
    from trackgo_model.train.config import load_train_config

    if stage == "base":
        return load_train_config(cfg.base_config, [
            f"data.shards={shards(cfg)}", f"data.latent_cache={cfg.out_path / 'latents'}",
            f"{model_path_key(cfg)}={cfg.out_path / 'init-model'}", f"run_dir={cfg.out_path / 'base'}",
            *cfg.base_overrides])
    return finetune_config(cfg, variant, cfg.variants[variant], cfg.out_path / "trackgo" / variant, attn_loss_weight)


def model_path_key(cfg: ToyConfig) -> str:
    """The training config key that names the model folder: SVD's or Wan's."""
    return "model.wan_path" if cfg.base == "wan" else "model.svd_path"


def finetune_config(cfg: ToyConfig, name: str, overrides: list[str], run_dir: Path,
                    attn_loss_weight: float | None = None):
    """``toy-trackgo`` on the base model + the calibrated λ + ``overrides``, training in ``run_dir``."""
    from trackgo_model.train.config import load_train_config

    lam = [] if attn_loss_weight is None else [f"objective.attn_loss_weight={attn_loss_weight}"]
    return load_train_config(cfg.trackgo_config, [
        f"data.shards={shards(cfg)}", f"data.latent_cache={cfg.out_path / 'latents'}",
        f"{model_path_key(cfg)}={cfg.out_path / 'base-model'}", f"run_dir={run_dir}", f"name=toy-{name}",
        *cfg.trackgo_overrides, *lam, *overrides])


def run_training(cfg: ToyConfig, tcfg, name: str, threads: int) -> float:
    """Train ``tcfg`` (resuming from its newest checkpoint); returns the CPU seconds it took.

    With ``cfg.subprocesses`` the run is ``python -m trackgo_model.train --config <resolved YAML>
    --resume`` in a child process with ``threads`` intra-op threads (log: ``<run_dir>/train.log``),
    otherwise it runs in this process."""
    if not cfg.subprocesses:
        import torch

        from trackgo_model.train.loop import train

        torch.set_num_threads(threads)
        cpu0 = cpu_seconds()
        train(tcfg, resume=True)
        check_finished(tcfg, name)
        return cpu_seconds() - cpu0
    path = write_yaml(tcfg, cfg.out_path / "configs" / f"{name}.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_file = tcfg.run_path / "train.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "trackgo_model.train", "--config", path, "--resume"]
    with open(log_file, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()  # the child checkpoints on SIGTERM
            proc.wait()
            raise
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"training {name} failed (exit {code}): see {log_file}")
    check_finished(tcfg, name)
    return usage.ru_utime + usage.ru_stime


def check_finished(tcfg, name: str) -> None:
    """A run stopped early (SIGTERM/SIGINT checkpoint and exit 0) is not a finished stage."""
    from trackgo_model.train import checkpoint as ckpt

    found = ckpt.list_checkpoints(tcfg.run_path)
    step = found[-1][0] if found else 0
    if step < tcfg.max_steps:
        raise RuntimeError(f"training {name} stopped at step {step} of {tcfg.max_steps} "
                           f"(interrupted?): rerun to resume it from {tcfg.run_path}")


def write_yaml(tcfg, path: Path) -> str:
    """Write a resolved TrainConfig as YAML (what the subprocess trains from); returns the path."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(config_to_dict(tcfg), sort_keys=True))
    return str(path)


def train_base(cfg: ToyConfig, tcfg) -> dict[str, Any]:
    from trackgo_model.train import checkpoint as ckpt

    from .models import export_base_model, write_init_model

    init = cfg.out_path / "init-model"
    # rewritten on every run of the stage (seeded, so a resumed run gets the same start)
    if cfg.base == "wan":
        from . import wan_models

        wan_models.write_init_model(init, cfg.out_path / "vae" / "vae", cfg.transformer, cfg.model_seed, cfg.scheduler)
    else:
        write_init_model(init, cfg.out_path / "vae" / "vae", cfg.unet, cfg.image_encoder, cfg.model_seed,
                         cfg.image_encoder_random_init, cfg.scheduler)
    run_training(cfg, tcfg, "base", cfg.threads)
    latest = ckpt.latest_checkpoint(tcfg.run_path)
    if latest is None:
        raise RuntimeError(f"the base training left no checkpoint in {tcfg.run_path}")
    export = wan_models.export_base_model if cfg.base == "wan" else export_base_model
    export(init, latest, cfg.out_path / "base-model", use_ema=tcfg.ema.enabled)
    return {"checkpoint": str(latest), "model": str(cfg.out_path / "base-model")}


def base(cfg: ToyConfig) -> dict[str, Any]:
    tcfg = train_config(cfg, "base")
    model = cfg.transformer if cfg.base == "wan" else cfg.unet
    inputs = [need(cfg, "vae"), model, cfg.image_encoder, cfg.model_seed, cfg.scheduler, config_to_dict(tcfg)]
    return run_stage(cfg, "base", inputs, train_base, cfg, tcfg)


def measure_lambda(cfg: ToyConfig, tcfg) -> dict[str, Any]:
    import torch

    from trackgo_model.train.calibrate import calibrate_attention_weight

    torch.set_num_threads(cfg.threads)
    return calibrate_attention_weight(tcfg, batches=cfg.calibrate_batches, ratio=cfg.calibrate_ratio)


def calibrate(cfg: ToyConfig) -> dict[str, Any]:
    tcfg = train_config(cfg, "trackgo", "trackgo", attn_loss_weight=1.0)
    inputs = [need(cfg, "base"), cfg.calibrate_batches, cfg.calibrate_ratio, config_to_dict(tcfg)]
    return run_stage(cfg, "calibrate", inputs, measure_lambda, cfg, tcfg)


def calibrated_lambda(cfg: ToyConfig) -> float:
    need(cfg, "calibrate")
    return float(read_record(cfg, "calibrate")["product"]["weight"])


def train_variant(cfg: ToyConfig, name: str, tcfg) -> dict[str, Any]:
    threads = cfg.threads_per_process if cfg.processes > 1 else cfg.threads
    cpu = run_training(cfg, tcfg, name, threads)
    return {"run_dir": str(tcfg.run_path), "cpu_s": round(cpu, 2)}


def variant_stage(cfg: ToyConfig, name: str, tcfg, upstream: str) -> dict[str, Any]:
    """One fine-tuning as a stage of its own (``name`` = ``trackgo-<variant>``, ``compare-<row>``):
    finished ones are kept when their group's stage is rerun."""
    return run_stage(cfg, name, [upstream, config_to_dict(tcfg)], train_variant, cfg, name, tcfg)


def train_variants(cfg: ToyConfig, cfgs: dict[str, Any], upstream: str, prefix: str = "trackgo") -> dict[str, Any]:
    """Every config of ``cfgs`` (row → TrainConfig) trained as stage ``<prefix>-<row>``,
    ``cfg.processes`` at a time."""
    names = [f"{prefix}-{v}" for v in cfgs]
    with ThreadPoolExecutor(cfg.processes if cfg.subprocesses else 1) as pool:
        records = dict(zip(cfgs, pool.map(variant_stage, [cfg] * len(cfgs), names, list(cfgs.values()),
                                          [upstream] * len(cfgs))))
    return {v: {"run_dir": str(cfgs[v].run_path), "wall_s": r["wall_s"], "cpu_s": r["product"].get("cpu_s", r["cpu_s"])}
            for v, r in records.items()}


def trackgo(cfg: ToyConfig) -> dict[str, Any]:
    upstream = config_hash([need(cfg, "base"), need(cfg, "calibrate")])
    lam = calibrated_lambda(cfg)
    cfgs = {v: train_config(cfg, "trackgo", v, attn_loss_weight=lam) for v in cfg.variants}
    inputs = [upstream, {v: config_to_dict(c) for v, c in cfgs.items()}]
    return run_stage(cfg, "trackgo", inputs, train_variants, cfg, cfgs, upstream)


# --------------------------------------------------------------------------------------- eval
def model_size(cfg: ToyConfig) -> tuple[tuple[int, int], int]:
    """((W, H), frames) the TrackGo models train and generate at."""
    d = train_config(cfg, "trackgo", "trackgo").data
    return (d.width, d.height), d.num_frames


def end_to_end_seconds(cfg: ToyConfig) -> float:
    """Wall seconds of every finished stage before the evaluation."""
    return sum(read_record(cfg, s)["wall_s"] for s in STAGES[:-1] if read_record(cfg, s) is not None)


def evaluate(cfg: ToyConfig) -> dict[str, Any]:
    import torch

    from .evaluate import run_eval, write_outputs

    wall0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    size, frames = model_size(cfg)
    results = run_eval(cfg, size, frames)
    results["seconds"] = round(end_to_end_seconds(cfg) + time.perf_counter() - wall0, 1)
    write_outputs(cfg, results, size, frames)
    return {"rows": results["rows"], "target": results["target"], "results": str(cfg.out_path / "results.json")}


def evaluation(cfg: ToyConfig) -> dict[str, Any]:
    from trackgo_data.config import config_to_dict as to_dict

    need(cfg, "trackgo")
    size, frames = model_size(cfg)
    inputs = [need(cfg, "data"), need(cfg, "base"), *(need(cfg, f"trackgo-{v}") for v in cfg.variants),
              to_dict(cfg.eval), [*size, frames]]
    return run_stage(cfg, "eval", inputs, evaluate, cfg)
