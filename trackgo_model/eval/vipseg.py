"""The VIPSeg evaluation protocol (paper Table 1): generate, then score FVD / FID / ObjMC.

Per validation video: the first ``num_frames`` (14) frames at ``width × height`` (1024×576),
components from the panoptic masks (moving things first, at most 6), control points with the K
rule, tracks from the conditioning tracker on the real clip, P rendered with the one renderer,
a video generated from the first frame + P. Everything needed for scoring is saved, so
``score`` reruns without generating (``--score-only``)::

    out/eval_config.json          the EvalConfig (generation fields must match on reruns)
    out/tracker.json              the conditioning tracker actually used (and why, after a fallback)
    out/real/<video>.mp4          real clip at eval resolution (lossless RGB)
    out/generated/<video>.mp4     generated clip (lossless RGB)
    out/trajectories/<video>.mp4  P (lossless RGB)
    out/condition/<video>.npz     points, components, tracks, visibility, labels0, segment_ids
    out/objmc_gt|objmc_pred/<video>.json   peer-format trajectories (one point per object)
    out/per_video.csv, out/results.json, out/results.md, out/side_by_side/<video>.mp4

Trackers. ``tracker="auto"`` (default) conditions with the paper's tracker, Co-Tracker 3 offline,
when it loads (code + weights; ``tracker_options`` go to it: ``repo``, ``device``, …); when it
cannot be loaded the run falls back to LK with a warning, records the reason in ``tracker.json``
and ``results.json``, and ``results.md`` opens by saying that its ObjMC is not comparable to the
paper's. A tracker named explicitly, or given ``checkpoint`` / ``random_init``, never falls back:
missing weights are an error.

ObjMC protocols. ``ours`` (default): the peer's definition (one inscribed-circle centre per
object, flat mean, frame 0 included) with those points tracked directly by the conditioning
tracker. ``draganything``: DragAnything's script (``metrics.objmc_draganything``): Co-Tracker2, a
100×100 grid on frame 0, centres snapped to the nearest grid track. Both also report ``objmc_ours``
(all control points, visible entries). A metric whose extractor weights are absent is reported as
missing with the reason (logged as a warning); the rest is still computed.

Where each part lives: the config and the fixed-settings rule in :mod:`.config`, the trackers in
:mod:`.trackers`, scoring in :mod:`.scoring`; generation and :func:`run` here.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from trackgo_data.config import atomic_write_bytes, atomic_write_json
from trackgo_model.eval.config import EvalConfig, check_config_file, resolve_device
from trackgo_model.eval.scoring import score
from trackgo_model.eval.trackers import conditioning_tracker

log = logging.getLogger(__name__)


def prepare_condition(frames: np.ndarray, segments: np.ndarray, cfg: EvalConfig, tracker) -> dict:
    """frames (L,H,W,3) uint8, segments (L,H,W) raw ids → condition dict (see module doc);
    raises ValueError('no_segments') when nothing in frame 0 can be a component."""
    from trackgo_data.points import sample_points
    from trackgo_data.vipseg import select_components

    # RGB ids carry no category: every segment is a candidate, ranked by motion
    stuff = cfg.include_stuff or cfg.masks == "rgb"
    labels, ids = select_components(segments, cfg.max_components, stuff, cfg.min_area)
    if not ids and not stuff:
        labels, ids = select_components(segments, cfg.max_components, True, cfg.min_area)
    if not ids:
        raise ValueError("no_segments")
    points, comps = sample_points(labels[0], seed=cfg.seed)
    tracks, vis = tracker.track(frames, points)
    return {"points": points, "components": comps, "tracks": tracks, "visibility": vis,
            "labels0": labels[0].astype(np.int16), "segment_ids": np.asarray(ids, np.int64)}


def generate(cfg: EvalConfig, pipe=None) -> dict:
    """Prepare conditions and generate every video of the split not generated yet.
    ``pipe``: a loaded TrackGoPipeline (else loaded from cfg). Returns {"generated", "skipped", "rejects"}."""
    from trackgo_data.render import render_trajectories
    from trackgo_data.video import encode_lossless_rgb
    from trackgo_data.vipseg import VIPSeg, VIPSegError

    ds = VIPSeg(cfg.vipseg, masks=cfg.masks)   # a wrong folder fails before anything is written
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_config_file(cfg, out)
    names = ds.split(cfg.split)[: cfg.max_videos]
    tracker, done, skipped, rejects = None, [], [], {}
    for name in names:
        gen_path, cond_path = out / "generated" / f"{name}.mp4", out / "condition" / f"{name}.npz"
        if gen_path.is_file() and cond_path.is_file():
            skipped.append(name)
            continue
        try:
            frames, segs = ds.video(name).read(cfg.num_frames, size=(cfg.width, cfg.height))
        except (VIPSegError, OSError, ValueError) as exc:  # one broken video never stops the run
            rejects[name] = f"unreadable: {exc}"
            continue
        if segs is None:
            rejects[name] = "no_masks"
            continue
        if len(frames) < cfg.num_frames:
            rejects[name] = "too_short"
            continue
        tracker = tracker or conditioning_tracker(cfg, out)[0]
        try:
            cond = prepare_condition(frames, segs, cfg, tracker)
        except ValueError as exc:
            rejects[name] = str(exc)
            continue
        P = render_trajectories(cond["tracks"], cond["visibility"], cond["components"], cfg.height, cfg.width)
        pipe = pipe or load_pipeline(cfg)
        gen = pipe(frames[0], P, num_frames=cfg.num_frames, height=cfg.height, width=cfg.width,
                   num_inference_steps=cfg.num_inference_steps, seed=cfg.seed, fps=cfg.fps,
                   motion_bucket_id=cfg.motion_bucket_id, noise_aug_strength=cfg.noise_aug_strength,
                   min_guidance_scale=cfg.min_guidance_scale, max_guidance_scale=cfg.max_guidance_scale,
                   trajectory_guidance=cfg.trajectory_guidance, decode_chunk_size=cfg.decode_chunk_size)
        encode_lossless_rgb(frames, out / "real" / f"{name}.mp4", fps=cfg.save_fps)
        encode_lossless_rgb(P, out / "trajectories" / f"{name}.mp4", fps=cfg.save_fps)
        buf = io.BytesIO()
        np.savez_compressed(buf, **cond)
        atomic_write_bytes(cond_path, buf.getvalue())
        encode_lossless_rgb(gen, gen_path, fps=cfg.save_fps)  # last: marks the video done
        done.append(name)
        log.info("generated %s (%d components, %d points)", name, len(cond["segment_ids"]), len(cond["points"]))
    if rejects:
        log.warning("skipped %d videos: %s", len(rejects), rejects)
    atomic_write_json(out / "rejects.json", rejects)
    return {"generated": done, "skipped": skipped, "rejects": rejects}


def load_pipeline(cfg: EvalConfig):
    from trackgo_model.pipeline import TrackGoPipeline

    return TrackGoPipeline.from_pretrained(cfg.svd or cfg.checkpoint, cfg.checkpoint,
                                           torch_dtype=cfg.dtype, device=resolve_device(cfg))


def run(cfg: EvalConfig, *, score_only: bool = False, pipe=None, fid_model=None, i3d_model=None) -> dict:
    """Generate (unless ``score_only``) and score; returns the results dict."""
    if not score_only:
        generate(cfg, pipe)
    return score(cfg, fid_model, i3d_model)
