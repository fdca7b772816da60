"""Held-out evaluation of the toy reproduction (held-out worlds: seeds never trained on or tuned on).

The held-out videos went through the same dataset build as the training videos; their samples are
read with the training loader at the model's size, so the trajectories P given to the models are
exactly what the pipeline extracted (never the ground truth). Every accepted held-out clip is
generated once per model row (seed ``eval.seed`` + the clip's index) and scored
(``trackgo_model.toy.scoring``) next to three references: ``static`` (first frame repeated),
``vae_roundtrip`` (the real clip through the VAE: the floor) and ``real`` (the real clip itself:
the tracker agreeing with itself). ``trackgo_model.toy.summary`` turns the scores into results.

Outputs in ``<out>``: ``eval/<row>/<key>.mp4`` (every generated clip, lossless, at the model's
size), ``eval/requests/<key>.npz`` (``tracks`` (F, N, 2) x, y px in that video, ``visibility``
(F, N): what each clip was asked to do), ``eval/curve/<variant>/step-XXXXXX/`` (intermediate
checkpoints on the first ``curve_clips`` clips), ``results.json``, ``results.md``,
``gap_closed.png``, ``objmc_vs_steps.png`` and ``side_by_side.mp4``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trackgo_data.config import atomic_write_bytes, atomic_write_json, atomic_write_text

from .config import ToyConfig, build_config
from .summary import FLOOR, REAL, STATIC, summarise
from .workers import process_pool

log = logging.getLogger(__name__)


def heldout_samples(cfg: ToyConfig, size: tuple[int, int], num_frames: int, limit: int = 0) -> list:
    """Accepted held-out samples by key at the model's size (W, H); all of them, or the first ``limit``."""
    from trackgo_data.loader import make_dataset

    ds = make_dataset(str(cfg.out_path / "data" / "heldout" / "shards"), batch_size=0, num_frames=num_frames,
                      size=size, shuffle=0, resampled=False, split_by_node=False, split_by_worker=False)
    samples = sorted(ds, key=lambda s: s.key)
    if not samples:
        raise RuntimeError("no held-out samples: run the data stage (trackgo toy data)")
    return samples[:limit] if limit else samples


@dataclass
class GenerationJob:
    """One model's clips: ``keys`` generated into ``folder/<key>.mp4``. ``transformer_from``: a
    training checkpoint whose whole transformer the model takes, and ``guide``: the clip's tracks
    edit the condition — the Wan toy's ``wan_move`` row."""

    row: str
    model_dir: str
    trackgo_dir: str | None
    folder: str
    keys: list[str]
    transformer_from: str | None = None
    guide: bool = False


def generation_jobs(cfg: ToyConfig, keys: list[str], run_dirs: dict[str, Path] | None = None) -> list[GenerationJob]:
    """The base model and the final checkpoint of every row (``run_dirs``: row → training folder;
    default every TrackGo variant) on every clip, and every earlier checkpoint of each row on the
    first ``eval.curve_clips`` clips (ObjMC against steps)."""
    from trackgo_model.train import checkpoint as ckpt

    out, base_model = cfg.out_path, str(cfg.out_path / "base-model")
    if run_dirs is None:
        run_dirs = {v: out / "trackgo" / v for v in cfg.variants}
    jobs = [GenerationJob("base", base_model, None, str(out / "eval" / "base"), keys)]
    for row, run_dir in run_dirs.items():
        found = ckpt.list_checkpoints(run_dir)
        if not found:
            raise RuntimeError(f"{row} has no checkpoint in {run_dir}: run its training stage first")
        wan_move = bool(json.loads((Path(run_dir) / "config.json").read_text())["model"].get("wan_move"))

        def job(path: Path, folder: Path, clips: list[str]) -> GenerationJob:
            if wan_move:  # the whole transformer trained, guided by the tracks, no adapters
                return GenerationJob(row, base_model, None, str(folder), clips, str(path), True)
            return GenerationJob(row, base_model, str(path / "trackgo"), str(folder), clips)

        jobs.append(job(found[-1][1], out / "eval" / row, keys))
        if cfg.eval.curve_clips:
            for step, path in found[:-1]:
                jobs.append(job(path, out / "eval" / "curve" / row / f"step-{step:06d}", keys[: cfg.eval.curve_clips]))
    return sorted(jobs, key=lambda j: -len(j.keys))


def generate_all(cfg: ToyConfig, jobs: list[GenerationJob], size: tuple[int, int], num_frames: int) -> int:
    """Run the jobs in ``cfg.processes`` workers; returns how many clips were generated."""
    with process_pool(cfg.processes) as pool:
        made = sum(pool.map(generate, [cfg] * len(jobs), jobs, [size] * len(jobs), [num_frames] * len(jobs)))
    log.info("toy eval: %d clips generated in %d jobs", made, len(jobs))
    return made


def generate(cfg: ToyConfig, job: GenerationJob, size: tuple[int, int], num_frames: int) -> int:
    """Generate the job's clips that are not on disk yet (runs in a worker); returns how many."""
    from trackgo_data.video import encode_lossless_rgb

    from .models import load_toy_pipeline

    todo = [k for k in job.keys if not (Path(job.folder) / f"{k}.mp4").is_file()]
    if not todo:
        return 0
    ev = cfg.eval
    every = heldout_samples(cfg, size, num_frames)  # decoded once: clip order and the clips to make
    order = {s.key: i for i, s in enumerate(every)}
    samples = {s.key: s for s in every if s.key in todo}
    if cfg.base == "wan":
        from .wan_models import load_toy_pipeline as load_wan_pipeline

        pipe = load_wan_pipeline(job.model_dir, job.trackgo_dir, job.transformer_from)
    else:
        pipe = load_toy_pipeline(job.model_dir, job.trackgo_dir)
    for key in todo:
        sample = samples[key]
        if cfg.base == "wan":
            guide = (np.asarray(sample.tracks), np.asarray(sample.visibility)) if job.guide else None
            frames = pipe(sample.image, sample.trajectory if job.trackgo_dir is not None else None,
                          num_frames=num_frames, height=size[1], width=size[0], num_inference_steps=ev.num_inference_steps,
                          seed=ev.seed + order[key], guide=guide)
            encode_lossless_rgb(frames, Path(job.folder) / f"{key}.mp4", fps=float(sample.meta.get("fps", 16)))
            continue
        frames = pipe(sample.image, sample.trajectory if job.trackgo_dir is not None else None,
                      num_frames=num_frames, height=size[1], width=size[0],
                      num_inference_steps=ev.num_inference_steps, min_guidance_scale=ev.min_guidance_scale,
                      max_guidance_scale=ev.max_guidance_scale, noise_aug_strength=ev.noise_aug_strength,
                      trajectory_guidance=ev.trajectory_guidance if job.trackgo_dir is not None else 1.0,
                      seed=ev.seed + order[key], fps=int(round(sample.meta.get("fps", 7))))
        encode_lossless_rgb(frames, Path(job.folder) / f"{key}.mp4", fps=float(sample.meta.get("fps", 7)))
    return len(todo)


def write_requests(folder: Path, samples: list) -> None:
    """``<folder>/<key>.npz`` with the tracks and visibility each clip was generated from."""
    import io

    for sample in samples:
        buf = io.BytesIO()
        np.savez(buf, tracks=np.asarray(sample.tracks, np.float32), visibility=np.asarray(sample.visibility, bool))
        atomic_write_bytes(folder / f"{sample.key}.npz", buf.getvalue())


def score_rows(cfg: ToyConfig, folders: dict[str, Path], samples: list, tracker, vae=None) -> dict[str, list[dict]]:
    """{row: per-clip records} for the generated ``folders`` and, when ``vae`` is given, the references."""
    from trackgo_data.synthetic import load_ground_truth
    from trackgo_data.video import decode_mp4

    from . import scoring, wan_models
    from .scoring import gt_object_tracks, score_clip, static_video

    vae_roundtrip = wan_models.vae_roundtrip if cfg.base == "wan" else scoring.vae_roundtrip

    rows = [*folders, *((STATIC, FLOOR, REAL) if vae is not None else ())]
    scores: dict[str, list[dict]] = {row: [] for row in rows}
    for sample in samples:
        real = np.asarray(sample.video)
        video_id = str(sample.meta.get("video_id") or sample.key.rsplit("-", 1)[0])
        truth = load_ground_truth(cfg.out_path / "videos" / "heldout" / f"{video_id}.npz")
        gt = gt_object_tracks(truth, int(sample.meta.get("start_frame", 0)), real.shape[0],
                              (real.shape[2], real.shape[1]))
        videos = {row: decode_mp4(folder / f"{sample.key}.mp4") for row, folder in folders.items()}
        if vae is not None:
            videos.update({STATIC: static_video(real), FLOOR: vae_roundtrip(vae, real), REAL: real})
        for row, video in videos.items():
            record = score_clip(tracker, video, sample.tracks, sample.visibility, real, gt)
            scores[row].append({"key": sample.key, **record})
    return scores


def objmc_curve(cfg: ToyConfig, jobs: list[GenerationJob], samples: list, tracker,
                final: dict[str, list[dict]]) -> dict[str, list[list[float]]]:
    """{variant: [[step, ObjMC], …]} on the curve clips; step 0 is the base model."""
    from trackgo_model.eval.bootstrap import pooled
    from trackgo_model.train import checkpoint as ckpt

    sub = samples[: cfg.eval.curve_clips]

    def objmc(records: list[dict]) -> float:
        return pooled(np.array([r["objmc_sum"] for r in records]), np.array([r["objmc_n"] for r in records]))

    curve: dict[str, list[list[float]]] = {}
    for variant in cfg.variants:
        points = [[0, objmc(final["base"][: len(sub)])]]
        for job in (j for j in jobs if j.row == variant and Path(j.folder).parent.parent.name == "curve"):
            step = int(Path(job.folder).name.split("-")[1])
            points.append([step, objmc(score_rows(cfg, {variant: Path(job.folder)}, sub, tracker)[variant])])
        last = ckpt.list_checkpoints(cfg.out_path / "trackgo" / variant)[-1][0]
        points.append([last, objmc(final[variant][: len(sub)])])
        curve[variant] = sorted(points)
    return curve


def scoring_tools(cfg: ToyConfig):
    """(the dataset's tracker, the model's VAE) that every score uses."""
    from diffusers import AutoencoderKLTemporalDecoder

    from trackgo_data.track import get_tracker

    bcfg = build_config(cfg)
    from diffusers import AutoencoderKLWan

    vae_class = AutoencoderKLWan if cfg.base == "wan" else AutoencoderKLTemporalDecoder
    vae = vae_class.from_pretrained(cfg.out_path / "base-model" / "vae", local_files_only=True)
    return get_tracker(bcfg.tracker.name, **bcfg.tracker.options), vae.eval()


def run_eval(cfg: ToyConfig, size: tuple[int, int], num_frames: int) -> dict[str, Any]:
    """Generate (in ``cfg.processes`` workers) and score every row, reference and curve point;
    returns results.json's content."""
    from . import report

    out = cfg.out_path
    samples = heldout_samples(cfg, size, num_frames, cfg.eval.num_clips)
    write_requests(out / "eval" / "requests", samples)
    jobs = generation_jobs(cfg, [s.key for s in samples])
    generate_all(cfg, jobs, size, num_frames)
    tracker, vae = scoring_tools(cfg)
    rows = ["base", *cfg.variants]
    scores = score_rows(cfg, {row: out / "eval" / row for row in rows}, samples, tracker, vae)
    results = summarise(scores, rows, replicates=cfg.eval.bootstrap_replicates, seed=cfg.eval.bootstrap_seed)
    curve = objmc_curve(cfg, jobs, samples, tracker, scores) if cfg.eval.curve_clips else {}
    results.update({"objmc_vs_steps": curve, "curve_clips": min(cfg.eval.curve_clips, len(samples)),
                    "target": report.target(results, cfg.base), "model_size": list(size), "num_frames": num_frames,
                    "per_clip": scores})
    return results


def write_outputs(cfg: ToyConfig, results: dict[str, Any], size: tuple[int, int], num_frames: int) -> None:
    """results.json, results.md and the figures and video of ``report``."""
    from . import report

    out = cfg.out_path
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", report.results_markdown(results, cfg))
    report.plot_gap_closed(results, out / "gap_closed.png")
    if results["objmc_vs_steps"]:
        report.plot_curve(results["objmc_vs_steps"], results["rows"]["base"]["objmc"], out / "objmc_vs_steps.png")
    samples = heldout_samples(cfg, size, num_frames, cfg.eval.side_by_side_clips)
    report.side_by_side(out, samples, cfg.eval.side_by_side_scale)
