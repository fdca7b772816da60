"""The stages of the toy reproduction, each idempotent and resumable.

    videos   synthetic training and held-out worlds → <out>/videos/{train,heldout}/*.mp4 (+ ground truth)
    data     the build-dataset stages (profile ``local``) → <out>/data/{train,heldout}/shards
    vae      a video VAE from scratch (trackgo_model.train.vae) → <out>/vae/vae
    base     a plain image-to-video UNet from scratch with SVD's objective (the real trainer,
             trainable group ``unet``, no trajectories) → <out>/base-model (SVD layout)
    trackgo  TrackGo fine-tuning of the base model, one run per variant (the real trainer,
             ``toy-trackgo`` + the variant's overrides), side by side → <out>/trackgo/<variant>
    eval     held-out generation and scoring → <out>/results.json, results.md, … (trackgo_model.toy.evaluate)

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

from trackgo_data.config import ConfigError, atomic_write_json, config_hash, config_to_dict

from .common import build_config, process_pool
from .config import ToyConfig

log = logging.getLogger(__name__)

STAGES = ("videos", "data", "vae", "base", "trackgo", "eval")


class StageMismatch(ConfigError):
    """A stage folder was made from other inputs than the current config's."""


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _record_path(cfg: ToyConfig, stage: str) -> Path:
    return cfg.out_path / "stages" / f"{stage}.json"


def read_record(cfg: ToyConfig, stage: str) -> dict[str, Any] | None:
    p = _record_path(cfg, stage)
    return json.loads(p.read_text()) if p.is_file() else None


def need(cfg: ToyConfig, stage: str) -> str:
    """The hash of a finished earlier stage; a clear error when it has not run."""
    rec = read_record(cfg, stage)
    if rec is None:
        raise RuntimeError(f"stage '{stage}' has not finished in {cfg.out}: run `trackgo toy {stage.split('-')[0]}` "
                           "(or `trackgo toy all`) first")
    return rec["hash"]


def run_stage(cfg: ToyConfig, stage: str, inputs: Any, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` unless ``stage`` finished with the same ``inputs``; returns the stage record.

    ``inputs`` (anything JSON-serialisable) is hashed; ``fn`` returns what the stage produced."""
    h = config_hash({"stage": stage, "inputs": inputs})
    done = read_record(cfg, stage)
    started = cfg.out_path / "stages" / f"{stage}.started.json"
    for rec in (done, json.loads(started.read_text()) if started.is_file() else None):
        if rec is not None and rec["hash"] != h:
            raise StageMismatch(
                f"{cfg.out}: stage '{stage}' was made from other inputs (hash {rec['hash']}, now {h}); delete "
                f"{cfg.out}/stages/{stage}*.json and the stage's folder (and the later stages'), or use another out")
    if done is not None:
        log.info("toy: stage %s already done (%.0f s wall, %.0f s CPU) — skipped", stage, done["wall_s"], done["cpu_s"])
        return {**done, "skipped": True}
    atomic_write_json(started, {"hash": h, "inputs": inputs})
    log.info("toy: stage %s …", stage)
    t0, c0 = time.perf_counter(), cpu_seconds()
    product = fn()
    own_cpu = product.get("cpu_s") if isinstance(product, dict) else None  # a child's own account
    rec = {"stage": stage, "hash": h, "wall_s": round(time.perf_counter() - t0, 2),
           "cpu_s": round(own_cpu if own_cpu is not None else cpu_seconds() - c0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "product": product}
    atomic_write_json(_record_path(cfg, stage), rec)
    started.unlink(missing_ok=True)
    log.info("toy: stage %s done in %.0f s wall, %.0f s CPU", stage, rec["wall_s"], rec["cpu_s"])
    return rec


# ------------------------------------------------------------------------------------- videos
def videos(cfg: ToyConfig) -> dict[str, Any]:
    from trackgo_data.synthetic import generate_videos, video_paths

    def make() -> dict[str, Any]:
        out = {}
        for split, world in (("train", cfg.train_videos), ("heldout", cfg.heldout_videos)):
            folder = cfg.out_path / "videos" / split
            generate_videos(folder, world, indices=[])  # records / checks the world's config
            chunks = [list(range(i, world.num_videos, cfg.build_processes)) for i in range(cfg.build_processes)]
            if cfg.build_processes > 1 and world.num_videos > 1:
                with process_pool(cfg.build_processes) as pool:
                    list(pool.map(generate_videos, [folder] * len(chunks), [world] * len(chunks), chunks))
            else:
                generate_videos(folder, world)
            out[split] = {"folder": str(folder), "videos": len(video_paths(folder, world))}
        return out

    return run_stage(cfg, "videos", [config_to_dict(cfg.train_videos), config_to_dict(cfg.heldout_videos)], make)


# --------------------------------------------------------------------------------------- data
def data(cfg: ToyConfig) -> dict[str, Any]:
    from trackgo_data.build import discover_sources, finalize, plan_batches, prepare_output, process_batch

    bcfg = build_config(cfg)

    def make() -> dict[str, Any]:
        out = {}
        for split in ("train", "heldout"):
            folder = cfg.out_path / "data" / split
            prepare_output(folder, bcfg)
            specs = plan_batches(discover_sources(str(cfg.out_path / "videos" / split / "*.mp4")), bcfg)
            if cfg.build_processes > 1 and len(specs) > 1:
                with process_pool(cfg.build_processes) as pool:
                    list(pool.map(process_batch, specs, [bcfg] * len(specs), [folder] * len(specs)))
            else:
                for spec in specs:
                    process_batch(spec, bcfg, folder)
            summary = finalize(folder, batch_ids=[s.batch_id for s in specs])
            if not summary.get("accepted"):
                raise RuntimeError(f"the {split} build accepted no clip: see {folder}/manifest.parquet")
            out[split] = {"folder": str(folder), "accepted": summary["accepted"],
                          "rejected_by_reason": summary.get("rejected_by_reason", {})}
        return out

    return run_stage(cfg, "data", [need(cfg, "videos"), config_to_dict(bcfg)], make)


def shards(cfg: ToyConfig, split: str = "train") -> str:
    return str(cfg.out_path / "data" / split / "shards")


# ---------------------------------------------------------------------------------------- vae
def vae_config(cfg: ToyConfig):
    from trackgo_model.train.vae import load_vae_config

    return load_vae_config(cfg.vae_config, [f"data.shards={shards(cfg)}", f"run_dir={cfg.out_path / 'vae'}",
                                            *cfg.vae_overrides])


def vae(cfg: ToyConfig) -> dict[str, Any]:
    from trackgo_model.train.vae import train_vae

    vcfg = vae_config(cfg)

    def make() -> dict[str, Any]:
        import torch

        torch.set_num_threads(cfg.threads)
        return train_vae(vcfg, resume=True)

    return run_stage(cfg, "vae", [need(cfg, "data"), config_to_dict(vcfg)], make)


# -------------------------------------------------------------------------------------- training
def train_config(cfg: ToyConfig, stage: str, variant: str | None = None):
    """The TrainConfig of the base stage or of one TrackGo variant."""
    from trackgo_model.train.config import load_train_config

    common = [f"data.shards={shards(cfg)}", f"data.latent_cache={cfg.out_path / 'latents'}"]
    if stage == "base":
        return load_train_config(cfg.base_config, [*common, f"model.svd_path={cfg.out_path / 'init-model'}",
                                                   f"run_dir={cfg.out_path / 'base'}", *cfg.base_overrides])
    return load_train_config(cfg.trackgo_config, [
        *common, f"model.svd_path={cfg.out_path / 'base-model'}", f"run_dir={cfg.out_path / 'trackgo' / variant}",
        f"name=toy-{variant}", *cfg.trackgo_overrides, *cfg.variants[variant]])


def _train(cfg: ToyConfig, tcfg, name: str, threads: int) -> float:
    """Train ``tcfg`` (resuming from its newest checkpoint); returns the CPU seconds it took.

    With ``cfg.subprocesses`` the run is ``python -m trackgo_model.train --config <resolved YAML>
    --resume`` in a child process with ``threads`` intra-op threads (log: ``<run_dir>/train.log``),
    otherwise it runs in this process."""
    if not cfg.subprocesses:
        import torch

        from trackgo_model.train.loop import train

        torch.set_num_threads(threads)
        c0 = cpu_seconds()
        train(tcfg, resume=True)
        _check_finished(tcfg, name)
        return cpu_seconds() - c0
    path = _yaml_of(tcfg, cfg.out_path / "configs" / f"{name}.yaml")
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
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed (exit {proc.returncode}): see {log_file}")
    _check_finished(tcfg, name)
    return usage.ru_utime + usage.ru_stime


def _check_finished(tcfg, name: str) -> None:
    """A run stopped early (SIGTERM/SIGINT checkpoint and exit 0) is not a finished stage."""
    from trackgo_model.train import checkpoint as ckpt

    found = ckpt.list_checkpoints(tcfg.run_path)
    step = found[-1][0] if found else 0
    if step < tcfg.max_steps:
        raise RuntimeError(f"training {name} stopped at step {step} of {tcfg.max_steps} "
                           f"(interrupted?): rerun to resume it from {tcfg.run_path}")


def _yaml_of(tcfg, path: Path) -> str:
    """Write a resolved TrainConfig as YAML (what the subprocess trains from); returns the path."""
    import yaml

    from trackgo_data.config import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(tcfg), sort_keys=True))
    return str(path)


def base(cfg: ToyConfig, unet: dict, image_encoder: dict, seed: int, random_init: bool) -> dict[str, Any]:
    from trackgo_model.train import checkpoint as ckpt

    from .models import export_base_model, write_init_model

    tcfg = train_config(cfg, "base")

    def make() -> dict[str, Any]:
        init = cfg.out_path / "init-model"
        if not (init / "unet").is_dir():
            write_init_model(init, cfg.out_path / "vae" / "vae", unet, image_encoder, seed, random_init)
        run = tcfg.run_path
        _train(cfg, tcfg, "base", cfg.threads)
        latest = ckpt.latest_checkpoint(run)
        if latest is None:
            raise RuntimeError(f"the base training left no checkpoint in {run}")
        export_base_model(init, latest, cfg.out_path / "base-model", use_ema=tcfg.ema.enabled)
        return {"checkpoint": str(latest), "model": str(cfg.out_path / "base-model")}

    inputs = [need(cfg, "vae"), unet, image_encoder, seed, config_to_dict(tcfg)]
    return run_stage(cfg, "base", inputs, make)


def trackgo(cfg: ToyConfig) -> dict[str, Any]:
    """Every variant's TrackGo fine-tuning, ``cfg.processes`` at a time; each variant is a stage
    of its own (``trackgo-<variant>``), so finished variants are kept when the stage is rerun."""
    base_hash = need(cfg, "base")
    cfgs = {v: train_config(cfg, "trackgo", v) for v in cfg.variants}

    def one(variant: str) -> dict[str, Any]:
        tcfg = cfgs[variant]

        def make() -> dict[str, Any]:
            cpu = _train(cfg, tcfg, f"trackgo-{variant}", cfg.threads_per_process if cfg.processes > 1 else cfg.threads)
            return {"run_dir": str(tcfg.run_path), "cpu_s": round(cpu, 2)}

        return run_stage(cfg, f"trackgo-{variant}", [base_hash, config_to_dict(tcfg)], make)

    def make_all() -> dict[str, Any]:
        with ThreadPoolExecutor(cfg.processes if cfg.subprocesses else 1) as pool:
            recs = dict(zip(cfgs, pool.map(one, list(cfgs))))
        return {v: {"run_dir": str(cfgs[v].run_path), "wall_s": r["wall_s"],
                    "cpu_s": r["product"].get("cpu_s", r["cpu_s"])} for v, r in recs.items()}

    return run_stage(cfg, "trackgo", [base_hash, {v: config_to_dict(c) for v, c in cfgs.items()}], make_all)


# --------------------------------------------------------------------------------------- eval
def evaluation(cfg: ToyConfig) -> dict[str, Any]:
    from trackgo_data.config import config_to_dict as to_dict

    from .evaluate import run_eval

    need(cfg, "trackgo")
    d = train_config(cfg, "trackgo", "trackgo").data
    inputs = [need(cfg, "data"), need(cfg, "base"), *(need(cfg, f"trackgo-{v}") for v in cfg.variants),
              to_dict(cfg.eval), [d.width, d.height, d.num_frames]]

    def make() -> dict[str, Any]:
        import torch

        torch.set_num_threads(cfg.threads)
        res = run_eval(cfg, (d.width, d.height), d.num_frames)
        return {"rows": res["rows"], "target": res["target"], "results": str(cfg.out_path / "results.json")}

    return run_stage(cfg, "eval", inputs, make)
