"""The VIPSeg evaluation protocol (paper Table 1): generate, then score FVD / FID / ObjMC.

Per validation video: the first ``num_frames`` (14) frames at ``width × height`` (1024×576),
components from the panoptic masks (moving things first, at most 6), control points with the K
rule, tracks from the configured tracker on the real clip, P rendered with the one renderer,
a video generated from the first frame + P. Everything needed for scoring is saved, so
``score`` reruns without generating (``--score-only``)::

    out/eval_config.json          the EvalConfig (generation fields must match on reruns)
    out/real/<video>.mp4          real clip at eval resolution (lossless RGB)
    out/generated/<video>.mp4     generated clip (lossless RGB)
    out/trajectories/<video>.mp4  P (lossless RGB)
    out/condition/<video>.npz     points, components, tracks, visibility, labels0, segment_ids
    out/objmc_gt|objmc_pred/<video>.json   peer-format trajectories (one point per object)
    out/per_video.csv, out/results.json, out/results.md, out/side_by_side/<video>.mp4

A metric whose extractor weights are absent is reported as missing with the reason (logged as
a warning); the rest is still computed.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trackgo_data.config import atomic_write_bytes, atomic_write_json, atomic_write_text, config_to_dict

log = logging.getLogger(__name__)

PAPER_TABLE1 = {  # (FVD, FID, ObjMC) on VIPSeg, TrackGo paper Table 1
    "DragNUWA": (321.31, 30.15, 298.98),
    "DragAnything": (294.91, 28.16, 236.02),
    "TrackGo": (248.27, 25.60, 191.15),
}
GENERATION_FIELDS = ("split", "masks", "num_frames", "width", "height", "max_components", "include_stuff",
                     "min_area", "tracker", "tracker_options", "seed", "num_inference_steps", "fps",
                     "motion_bucket_id", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale")


@dataclass
class EvalConfig:
    vipseg: str = ""                 # VIPSeg_720P folder
    checkpoint: str = ""             # TrackGo checkpoint folder
    svd: str | None = None           # SVD diffusers folder; None: the checkpoint folder holds it
    out: str = "runs/eval-vipseg"
    split: str = "val"
    masks: str = "raw"               # raw panomasks/ or rgb panomasksRGB/ (no thing/stuff split)
    max_videos: int | None = None
    num_frames: int = 14
    width: int = 1024
    height: int = 576
    max_components: int = 6
    include_stuff: bool = False      # stuff is used anyway when a video has no thing in frame 0
    min_area: float = 0.001          # smallest component, share of the frame
    tracker: str = "lk"              # the paper tracks with Co-Tracker: cotracker3_offline
    tracker_options: dict = field(default_factory=dict)
    seed: int = 0
    num_inference_steps: int = 25
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    fid_weights: str | None = None   # else $TRACKGO_FID_WEIGHTS
    i3d_path: str | None = None      # else $TRACKGO_I3D_PATH
    metrics_batch_size: int = 16
    num_side_by_side: int = 4
    save_fps: int = 7

    def __post_init__(self):
        if self.num_frames < 2 or self.width < 16 or self.height < 16:
            raise ValueError("num_frames must be ≥ 2 and width/height ≥ 16")
        if not 1 <= self.max_components <= 6:
            raise ValueError("max_components must be in 1..6 (one colour per component)")


def _device(cfg: EvalConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_config_file(cfg: EvalConfig, out: Path, write: bool = True) -> None:
    """Reruns (and scoring) in the same folder must use the same generation settings."""
    import json

    path = out / "eval_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        new = config_to_dict(cfg)
        diff = [k for k in GENERATION_FIELDS if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"{out} holds results made with different {', '.join(diff)}; "
                             "use the same settings, another --out, or delete it")
    if write:
        atomic_write_json(path, config_to_dict(cfg))


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
    from trackgo_data.track import get_tracker
    from trackgo_data.video import encode_lossless_rgb
    from trackgo_data.vipseg import VIPSeg, VIPSegError

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config_file(cfg, out)
    ds = VIPSeg(cfg.vipseg, masks=cfg.masks)
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
        tracker = tracker or get_tracker(cfg.tracker, **cfg.tracker_options)
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
                   decode_chunk_size=cfg.decode_chunk_size)
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
                                           torch_dtype=cfg.dtype, device=_device(cfg))


def _load_extractor(kind: str, cfg: EvalConfig, given):
    """(model, None) or (None, reason) for 'fid' / 'fvd'."""
    from trackgo_model.eval.metrics import MetricUnavailable

    if given is not None:
        return given, None
    try:
        if kind == "fid":
            from trackgo_model.eval.metrics.fid import load_fid_inception

            return load_fid_inception(cfg.fid_weights, _device(cfg)), None
        from trackgo_model.eval.metrics.fvd import load_i3d

        return load_i3d(cfg.i3d_path, _device(cfg)), None
    except MetricUnavailable as exc:
        log.warning("!!! %s NOT COMPUTED: %s", kind.upper(), exc)
        return None, str(exc)


def score(cfg: EvalConfig, fid_model=None, i3d_model=None) -> dict:
    """Score everything under cfg.out (needs only the saved files). Writes per_video.csv,
    results.json, results.md, side-by-side mp4s; returns the results dict.

    Videos are read one at a time and only their features are kept (memory stays flat over the
    343 val videos). ``fid_model`` / ``i3d_model``: extractors to use instead of loading the
    configured weights (tests pass random-weight ones)."""
    import json

    from trackgo_data.track import get_tracker
    from trackgo_data.video import decode_mp4
    from trackgo_model.eval.metrics.fid import inception_features
    from trackgo_model.eval.metrics.frechet import FrechetError, frechet_distance_from_features
    from trackgo_model.eval.metrics.fvd import i3d_features
    from trackgo_model.eval.metrics.objmc import (ErrorSum, objmc_ours, objmc_peer_files, peer_tracks,
                                             track_from, tracks_to_peer, write_peer_tracks)

    out = Path(cfg.out)
    _check_config_file(cfg, out, write=False)
    names = sorted(p.stem for p in (out / "generated").glob("*.mp4")
                   if (out / "condition" / f"{p.stem}.npz").is_file())
    if not names:
        raise FileNotFoundError(f"{out} holds no generated videos with conditions; run the generation first")
    tracker = get_tracker(cfg.tracker, **cfg.tracker_options)
    fid_m, fid_why = _load_extractor("fid", cfg, fid_model)
    i3d_m, fvd_why = _load_extractor("fvd", cfg, i3d_model)
    i3d_dev = next((p.device for p in i3d_m.parameters()), "cpu") if i3d_m is not None else "cpu"
    feats = {"fid_real": [], "fid_gen": [], "fvd_real": [], "fvd_gen": []}
    rows, ours = [], ErrorSum()
    for name in names:
        r, g = decode_mp4(out / "real" / f"{name}.mp4"), decode_mp4(out / "generated" / f"{name}.mp4")
        if r.shape != g.shape:
            raise ValueError(f"{name}: real {r.shape} and generated {g.shape} clips differ")
        with np.load(out / "condition" / f"{name}.npz") as z:
            cond = {k: z[k] for k in z.files}
        acc = objmc_ours(cond["tracks"], track_from(tracker, g, cond["tracks"][0]), cond["visibility"])
        ours.total += acc.total
        ours.count += acc.count
        sids = [int(s) for s in cond["segment_ids"]]
        labels0 = cond["labels0"].astype(np.int32)
        idx, gt_t = peer_tracks(tracker, r, labels0)
        _, pr_t = peer_tracks(tracker, g, labels0)
        keys = [sids[i - 1] for i in idx]
        write_peer_tracks(out / "objmc_gt" / f"{name}.json", tracks_to_peer(gt_t, keys))
        write_peer_tracks(out / "objmc_pred" / f"{name}.json", tracks_to_peer(pr_t, keys))
        rows.append({"video": name, "components": len(sids), "points": len(cond["points"]),
                     "objmc_ours": round(acc.mean, 4),
                     "objmc_peer": round(objmc_ours(gt_t, pr_t).mean, 4) if len(idx) else "",
                     "segment_ids": " ".join(map(str, sids))})
        if fid_m is not None:
            feats["fid_real"].append(inception_features(fid_m, r, cfg.metrics_batch_size))
            feats["fid_gen"].append(inception_features(fid_m, g, cfg.metrics_batch_size))
        if i3d_m is not None:
            f = i3d_features(i3d_m, [r, g], cfg.metrics_batch_size, i3d_dev)
            feats["fvd_real"].append(f[0])
            feats["fvd_gen"].append(f[1])
    peer = objmc_peer_files(out / "objmc_gt", out / "objmc_pred")
    metrics = {
        "objmc": {"value": peer["objmc"], "status": "ok", "definition": "peer: one inscribed-circle "
                  "point per object, flat mean over videos, objects, frames (frame 0 included)"},
        "objmc_ours": {"value": ours.mean, "status": "ok",
                       "definition": "all control points, entries visible in the real clip"},
    }
    for key, why, stack in (("fid", fid_why, np.concatenate), ("fvd", fvd_why, np.stack)):
        if why is None:
            try:
                value = frechet_distance_from_features(stack(feats[f"{key}_real"]), stack(feats[f"{key}_gen"]))
                metrics[key] = {"value": value, "status": "ok"}
            except FrechetError as exc:  # e.g. one video: no covariance
                log.warning("!!! %s NOT COMPUTED: %s", key.upper(), exc)
                metrics[key] = {"value": None, "status": "missing", "reason": str(exc)}
        else:
            metrics[key] = {"value": None, "status": "missing", "reason": why}
    rejects_path = out / "rejects.json"
    results = {
        "num_videos": len(names), "metrics": metrics, "paper_table1": PAPER_TABLE1,
        "rejects": json.loads(rejects_path.read_text()) if rejects_path.is_file() else {},
        "config": config_to_dict(cfg),
    }
    _write_csv(out / "per_video.csv", rows)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    write_side_by_side(out, names[: cfg.num_side_by_side], cfg.save_fps)
    return results


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["video", "components", "points", "objmc_ours", "objmc_peer", "segment_ids"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(m: dict) -> str:
    return f"{m['value']:.2f}" if m.get("value") is not None else "n/a"


def results_markdown(results: dict) -> str:
    """Table 1 layout (FVD ↓, FID ↓, ObjMC ↓) with the paper's rows beside ours."""
    m, c = results["metrics"], results["config"]
    lines = ["# VIPSeg evaluation", "",
             "| Method | FVD ↓ | FID ↓ | ObjMC ↓ | ObjMC, all control points ↓ |", "|---|---|---|---|---|"]
    for name, (fvd, fid, objmc) in results["paper_table1"].items():
        lines.append(f"| {name} (paper) | {fvd:.2f} | {fid:.2f} | {objmc:.2f} | – |")
    lines.append(f"| **ours** ({Path(c['checkpoint']).name or c['checkpoint']}) | {_fmt(m['fvd'])} | "
                 f"{_fmt(m['fid'])} | {_fmt(m['objmc'])} | {_fmt(m['objmc_ours'])} |")
    lines += ["", f"{results['num_videos']} videos of split `{c['split']}`, first {c['num_frames']} frames at "
              f"{c['width']}×{c['height']}, tracker `{c['tracker']}`, {c['num_inference_steps']} sampling steps, "
              f"seed {c['seed']}. ObjMC in pixels at that resolution (peer definition: one point per object at "
              "the centre of its first-frame mask's largest inscribed circle; flat mean, frame 0 included). "
              "The paper's rows are copied from its Table 1, not recomputed."]
    missing = {k: v["reason"] for k, v in m.items() if v.get("status") == "missing"}
    if missing:
        lines += ["", "**Missing metrics**", ""] + [f"- {k.upper()}: {r}" for k, r in missing.items()]
    if results.get("rejects"):
        lines += ["", "**Videos left out**: " + ", ".join(f"{k} ({v})" for k, v in results["rejects"].items())]
    return "\n".join(lines) + "\n"


def write_side_by_side(out: Path, names: list[str], fps: float) -> list[Path]:
    """real | generated | trajectories, one mp4 per video."""
    from trackgo_data.video import decode_mp4, encode_mp4

    paths = []
    for name in names:
        clips = [decode_mp4(out / sub / f"{name}.mp4") for sub in ("real", "generated", "trajectories")]
        paths.append(out / "side_by_side" / f"{name}.mp4")
        encode_mp4(np.concatenate(clips, axis=2), paths[-1], fps=fps)
    return paths


def run(cfg: EvalConfig, *, score_only: bool = False, pipe=None, fid_model=None, i3d_model=None) -> dict:
    """Generate (unless ``score_only``) and score; returns the results dict."""
    if not score_only:
        generate(cfg, pipe)
    return score(cfg, fid_model, i3d_model)
