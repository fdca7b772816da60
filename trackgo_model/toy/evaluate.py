"""Evaluation of the toy reproduction on held-out synthetic clips (seeds never trained on).

The held-out videos went through the same dataset build as the training videos; their samples are
read with the training loader at the training size, so the trajectories P given to the models are
exactly what the pipeline extracted (never the ground truth). Per clip and model, a video is
generated from the first frame (+ P for TrackGo) and scored:

* **ObjMC** (px at the training size): the generated video is re-tracked with the dataset's tracker
  from the same control points; mean distance to the guided tracks over (frame, point) entries the
  real clip's tracks see (``trackgo_model.eval.metrics.objmc.objmc_ours``), pooled over clips.
* **PSNR** (dB) of the generated frames against the real clip, per clip, averaged.
* **Path error** (px): one point per ground-truth object (the centre of the largest inscribed
  circle of its first-frame mask), its true path from the saved object path, re-tracked on the
  generated video; mean distance over frames and objects. This one uses the ground truth.

Reference rows: ``real`` scores the real clip like a generated one (the tracker's own floor) and
``static`` the first frame repeated (what no motion at all scores). Outputs in ``<out>``:
``results.json``, ``results.md`` (laid out like the paper's Table 2), ``objmc_vs_steps.png``,
``side_by_side.mp4`` (real | base | TrackGo, guided tracks drawn) and ``eval/<row>/<key>.mp4``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from trackgo_data.config import atomic_write_json, atomic_write_text

from .config import ToyConfig

log = logging.getLogger(__name__)


def heldout_samples(cfg: ToyConfig, n: int, size: tuple[int, int], num_frames: int) -> list:
    """The first ``n`` accepted held-out samples (by key) at the training size (W, H)."""
    from trackgo_data.loader import make_dataset

    ds = make_dataset(str(cfg.out_path / "data" / "heldout" / "shards"), batch_size=0, num_frames=num_frames,
                      size=size, shuffle=0, resampled=False, split_by_node=False, split_by_worker=False)
    samples = sorted(ds, key=lambda s: s.key)
    if not samples:
        raise RuntimeError("no held-out samples: run the data stage (trackgo toy data)")
    return samples[:n]


def model_rows(cfg: ToyConfig) -> dict[str, tuple[str, str | None]]:
    """{row: (SVD-layout folder, TrackGo checkpoint folder or None)} of the final models."""
    from trackgo_model.train import checkpoint as ckpt

    rows: dict[str, tuple[str, str | None]] = {"base": (str(cfg.out_path / "base-model"), None)}
    for v in cfg.variants:
        latest = ckpt.latest_checkpoint(cfg.out_path / "trackgo" / v)
        if latest is None:
            raise RuntimeError(f"variant {v} has no checkpoint: run the trackgo stage (trackgo toy trackgo)")
        rows[v] = (str(cfg.out_path / "base-model"), str(latest / "trackgo"))
    return rows


def curve_rows(cfg: ToyConfig) -> dict[str, dict[int, str]]:
    """{variant: {step: TrackGo export folder}} of every kept checkpoint (ObjMC against steps)."""
    from trackgo_model.train import checkpoint as ckpt

    return {v: {s: str(p / "trackgo") for s, p in ckpt.list_checkpoints(cfg.out_path / "trackgo" / v)}
            for v in cfg.variants}


def generate_row(cfg: ToyConfig, model_dir: str, trackgo_dir: str | None, folder: str, keys: list[str],
                 size: tuple[int, int], num_frames: int) -> int:
    """Generate the clips ``keys`` with one model into ``folder/<key>.mp4`` (lossless RGB; existing
    files are kept). Runs in a worker process. Returns how many were generated."""
    from trackgo_data.video import encode_lossless_rgb

    from .models import load_toy_pipeline

    e = cfg.eval
    todo = [k for k in keys if not (Path(folder) / f"{k}.mp4").is_file()]
    if not todo:
        return 0
    samples = {s.key: s for s in heldout_samples(cfg, e.num_clips, size, num_frames) if s.key in todo}
    pipe = load_toy_pipeline(model_dir, trackgo_dir)
    for key in todo:
        s, i = samples[key], keys.index(key)  # the seed follows the clip, not the order of work
        gen = pipe(s.image, s.trajectory if trackgo_dir is not None else None, num_frames=num_frames,
                   height=size[1], width=size[0], num_inference_steps=e.num_inference_steps,
                   min_guidance_scale=e.min_guidance_scale, max_guidance_scale=e.max_guidance_scale,
                   noise_aug_strength=e.noise_aug_strength, seed=e.seed + i, fps=int(round(s.meta.get("fps", 7))))
        encode_lossless_rgb(gen, Path(folder) / f"{key}.mp4", fps=float(s.meta.get("fps", 7)))
    return len(todo)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 videos (same shape), from the mean squared error over all pixels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def gt_object_tracks(gt: dict[str, Any], start: int, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Ground truth → (L, S, 2) true paths at the training size (W, H) of one point per object
    visible in frame ``start``: its inscribed-circle centre, moved by the object's path."""
    from trackgo_model.eval.metrics.objmc import inscribed_centres

    labels0 = gt["labels"][start].astype(np.int32)
    paths = gt["paths"][start:start + num_frames].astype(np.float64)  # (L, n, 2) at the source size
    h0, w0 = labels0.shape
    scale = np.array([size[0] / w0, size[1] / h0])
    centres = inscribed_centres(labels0)
    out = [(np.asarray(centres[j]) + paths[:, j - 1] - paths[0, j - 1] + 0.5) * scale - 0.5 for j in sorted(centres)]
    return np.stack(out, axis=1) if out else np.zeros((num_frames, 0, 2))


def score_video(tracker, video: np.ndarray, sample, gt_tracks: np.ndarray) -> dict[str, Any]:
    """One generated (or reference) video against one held-out sample."""
    from trackgo_model.eval.metrics.objmc import objmc_ours, track_from

    tracks = np.asarray(sample.tracks, np.float32)
    acc = objmc_ours(tracks, track_from(tracker, video, tracks[0]), np.asarray(sample.visibility, bool))
    out = {"objmc_sum": acc.total, "objmc_n": acc.count, "psnr": psnr(video, sample.video)}
    if gt_tracks.shape[1]:
        err = np.linalg.norm(track_from(tracker, video, gt_tracks[0]) - gt_tracks, axis=-1)
        out.update(path_sum=float(err.sum()), path_n=int(err.size))
    return out


def pool_scores(per_clip: list[dict[str, Any]]) -> dict[str, float]:
    """Flat means over clips: ObjMC and path error pooled over entries, PSNR averaged per clip."""
    n = sum(c["objmc_n"] for c in per_clip)
    pn = sum(c.get("path_n", 0) for c in per_clip)
    return {"objmc": sum(c["objmc_sum"] for c in per_clip) / n if n else float("nan"),
            "psnr": float(np.mean([c["psnr"] for c in per_clip])),
            "path_error": sum(c.get("path_sum", 0.0) for c in per_clip) / pn if pn else float("nan"),
            "num_clips": len(per_clip)}


def _score_rows(cfg: ToyConfig, folders: dict[str, Path], samples: list, tracker) -> dict[str, list[dict]]:
    """Score every row's generated clips (and the reference rows) → {row: per-clip scores}."""
    from trackgo_data.synthetic import load_ground_truth
    from trackgo_data.video import decode_mp4

    W, H = samples[0].video.shape[2], samples[0].video.shape[1]
    L = samples[0].video.shape[0]
    scores: dict[str, list[dict]] = {r: [] for r in (*folders, "real", "static")}
    for s in samples:
        vid = str(s.meta.get("video_id") or s.key.rsplit("-", 1)[0])
        gt = load_ground_truth(cfg.out_path / "videos" / "heldout" / f"{vid}.npz")
        gtt = gt_object_tracks(gt, int(s.meta.get("start_frame", 0)), L, (W, H))
        real = np.asarray(s.video)
        for row, folder in folders.items():
            rec = score_video(tracker, decode_mp4(folder / f"{s.key}.mp4"), s, gtt)
            scores[row].append({"key": s.key, **rec})
        scores["real"].append({"key": s.key, **score_video(tracker, real, s, gtt)})
        scores["static"].append({"key": s.key, **score_video(tracker, np.repeat(real[:1], L, 0), s, gtt)})
    return scores


def run_eval(cfg: ToyConfig, train_size: tuple[int, int], num_frames: int) -> dict[str, Any]:
    """Generate (in ``cfg.processes`` workers) and score every row and curve point; write the reports."""
    from trackgo_data.track import get_tracker

    from . import report
    from .common import build_config, process_pool

    e, out = cfg.eval, cfg.out_path
    samples = heldout_samples(cfg, e.num_clips, train_size, num_frames)
    keys = [s.key for s in samples]
    rows = model_rows(cfg)
    curve = curve_rows(cfg) if e.curve_clips else {}
    jobs = [(m, t, str(out / "eval" / row), keys) for row, (m, t) in rows.items()]
    final_step = {v: max(c) for v, c in curve.items() if c}
    for v, steps in curve.items():
        for step, tdir in steps.items():
            if step != final_step[v]:  # the final checkpoint is the variant's row
                jobs.append((rows["base"][0], tdir, str(out / "eval" / "curve" / v / f"step-{step:06d}"),
                             keys[: e.curve_clips]))
    jobs.sort(key=lambda j: -len(j[3]))
    if cfg.processes > 1 and len(jobs) > 1:
        with process_pool(cfg.processes) as pool:
            futs = [pool.submit(generate_row, cfg, *j, train_size, num_frames) for j in jobs]
            made = sum(f.result() for f in futs)
    else:
        made = sum(generate_row(cfg, *j, train_size, num_frames) for j in jobs)
    log.info("toy eval: %d clips generated (%d jobs)", made, len(jobs))

    bcfg = build_config(cfg)
    tracker = get_tracker(bcfg.tracker.name, **bcfg.tracker.options)
    scores = _score_rows(cfg, {r: out / "eval" / r for r in rows}, samples, tracker)
    table = {r: pool_scores(scores[r]) for r in rows}
    reference = {r: pool_scores(scores[r]) for r in ("real", "static")}
    steps_objmc: dict[str, list[list[float]]] = {}
    for v, steps in curve.items():
        pts = []
        sub = samples[: e.curve_clips]
        for step in sorted(steps):
            folder = out / "eval" / v if step == final_step[v] else out / "eval" / "curve" / v / f"step-{step:06d}"
            pts.append([step, pool_scores(_score_rows(cfg, {v: folder}, sub, tracker)[v])["objmc"]])
        base_sub = pool_scores(scores["base"][: e.curve_clips])["objmc"]
        steps_objmc[v] = [[0, base_sub]] + pts
    ratio = table["trackgo"]["objmc"] / table["base"]["objmc"] if table["base"]["objmc"] else float("nan")
    results = {"rows": table, "reference": reference, "objmc_vs_steps": steps_objmc,
               "curve_clips": min(e.curve_clips, len(samples)),
               "target": {"objmc_ratio_trackgo_to_base": ratio, "goal": 0.5, "met": bool(ratio <= 0.5)},
               "per_clip": scores, "train_size": list(train_size), "num_frames": num_frames}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", report.results_markdown(results, cfg))
    if steps_objmc:
        report.plot_curve(steps_objmc, table["base"]["objmc"], out / "objmc_vs_steps.png")
    report.side_by_side(out, samples[: e.side_by_side_clips], e.side_by_side_scale)
    return {k: v for k, v in results.items() if k != "per_clip"}
