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
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trackgo_data.config import atomic_write_bytes, atomic_write_json, atomic_write_text, config_to_dict
from trackgo_model.eval.report import (PAPER_TABLE1, comparability, results_markdown, write_per_video_csv,
                                       write_side_by_side)

log = logging.getLogger(__name__)

PAPER_TRACKER = "cotracker3_offline"
OBJMC_PROTOCOLS = ("ours", "draganything")
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
    tracker: str = "auto"            # auto (Co-Tracker 3 offline, else LK + warning) | lk | cotracker3_offline | …
    tracker_options: dict = field(default_factory=dict)  # that backend's options (Co-Tracker: repo, device, …)
    objmc_protocol: str = "ours"     # ours | draganything (the peer's script, as in Table 1)
    objmc_tracker: str = "cotracker2"                     # draganything: the peer's tracker
    objmc_tracker_options: dict = field(default_factory=dict)  # its backend options (repo, device, …)
    objmc_grid_size: int = 100       # draganything: query grid side on frame 0
    objmc_channel_order: str = "bgr"  # draganything: what the tracker sees (the peer hands over BGR)
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
        if self.objmc_protocol not in OBJMC_PROTOCOLS:
            raise ValueError(f"objmc_protocol must be one of {', '.join(OBJMC_PROTOCOLS)}, got {self.objmc_protocol!r}")
        if self.objmc_grid_size < 1:
            raise ValueError("objmc_grid_size must be ≥ 1")
        if self.objmc_channel_order not in ("bgr", "rgb"):
            raise ValueError(f"objmc_channel_order must be bgr or rgb, got {self.objmc_channel_order!r}")


def _device(cfg: EvalConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_config_file(cfg: EvalConfig, out: Path, write: bool = True) -> None:
    """Reruns (and scoring) in the same folder must use the same generation settings."""
    path = out / "eval_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        new = config_to_dict(cfg)
        diff = [k for k in GENERATION_FIELDS if old.get(k) != new.get(k)]
        if diff:
            was = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            raise ValueError(f"{out} holds results made with different {', '.join(diff)} ({was}); "
                             "use the same settings, another --out, or delete it")
    if write:
        atomic_write_json(path, config_to_dict(cfg))


def _load_now(tracker) -> None:
    """Load a Co-Tracker's code and weights now, so a missing piece shows before any work."""
    if str(getattr(tracker, "name", "")).startswith("cotracker"):
        tracker.load()


def choose_tracker(cfg: EvalConfig):
    """The conditioning tracker → (tracker, record for tracker.json). See the module doc."""
    from trackgo_data.track import get_tracker
    from trackgo_data.track.cotracker import CoTrackerUnavailable

    name = PAPER_TRACKER if cfg.tracker == "auto" else cfg.tracker
    record = {"requested": cfg.tracker, "name": name, "options": dict(cfg.tracker_options), "fallback_reason": None}
    tracker = get_tracker(name, **cfg.tracker_options)
    try:
        _load_now(tracker)
    except CoTrackerUnavailable as exc:
        if cfg.tracker != "auto" or {"checkpoint", "random_init"} & set(cfg.tracker_options):
            raise  # named tracker or weights: no fallback
        log.warning("!!! the paper's tracker (%s) is unavailable, falling back to LK: ObjMC will NOT be "
                    "comparable to the paper's. %s", name, exc)
        tracker = get_tracker("lk")
        record.update(name="lk", options={}, fallback_reason=str(exc))
    record["version"] = tracker.version
    return tracker, record


def conditioning_tracker(cfg: EvalConfig, out: Path):
    """The tracker this output folder's conditions were (or are to be) made with: the one recorded
    in ``tracker.json``, else :func:`choose_tracker`'s (recorded now) → (tracker, record)."""
    from trackgo_data.track import get_tracker

    path = out / "tracker.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("fallback_reason"):
            log.warning("%s: conditions were made with LK after a fallback (%s); evaluate into a new --out "
                        "to use Co-Tracker", out, record["fallback_reason"])
        tracker = get_tracker(record["name"], **record["options"])
        _load_now(tracker)
        return tracker, record
    tracker, record = choose_tracker(cfg)
    atomic_write_json(path, record)
    return tracker, record


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
    _check_config_file(cfg, out)
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


def objmc_protocol(cfg: EvalConfig, tracker, record: dict):
    """The ObjMC protocol's tracker and record → (tracker, record for results.json)."""
    from trackgo_data.track import get_tracker

    if cfg.objmc_protocol == "ours":
        return tracker, {"protocol": "ours", "tracker": record["name"], "version": record["version"]}
    trk = get_tracker(cfg.objmc_tracker, **cfg.objmc_tracker_options)
    _load_now(trk)
    return trk, {"protocol": "draganything", "tracker": cfg.objmc_tracker, "version": trk.version,
                 "options": dict(cfg.objmc_tracker_options), "grid_size": cfg.objmc_grid_size,
                 "channel_order": cfg.objmc_channel_order}


OBJMC_DEFINITIONS = {
    "ours": "one inscribed-circle point per object tracked directly, flat mean over videos, objects, frames "
            "(frame 0 included)",
    "draganything": "DragAnything's script: Co-Tracker2 on a grid on frame 0, each object's distance-transform "
                    "maximum snapped to the nearest grid track, integer pixels, flat mean over videos, objects, "
                    "frames (frame 0 included)",
}


def score(cfg: EvalConfig, fid_model=None, i3d_model=None) -> dict:
    """Score everything under cfg.out (needs only the saved files). Writes per_video.csv,
    results.json, results.md, side-by-side mp4s; returns the results dict.

    Videos are read one at a time and only their features are kept (memory stays flat over the
    343 val videos). ``fid_model`` / ``i3d_model``: extractors to use instead of loading the
    configured weights (tests pass random-weight ones)."""
    from trackgo_data.video import decode_mp4
    from trackgo_model.eval.metrics import objmc_draganything as DA
    from trackgo_model.eval.metrics.fid import inception_features
    from trackgo_model.eval.metrics.frechet import FrechetError, frechet_distance_from_features
    from trackgo_model.eval.metrics.fvd import i3d_features
    from trackgo_model.eval.metrics.objmc import (ErrorSum, objmc_ours, peer_tracks, track_from, tracks_to_peer,
                                                  write_peer_tracks)

    out = Path(cfg.out)
    _check_config_file(cfg, out, write=False)
    names = sorted(p.stem for p in (out / "generated").glob("*.mp4")
                   if (out / "condition" / f"{p.stem}.npz").is_file())
    if not names:
        raise FileNotFoundError(f"{out} holds no generated videos with conditions; run the generation first")
    tracker, trk_record = conditioning_tracker(cfg, out)
    objmc_trk, objmc_record = objmc_protocol(cfg, tracker, trk_record)
    fid_m, fid_why = _load_extractor("fid", cfg, fid_model)
    i3d_m, fvd_why = _load_extractor("fvd", cfg, i3d_model)
    i3d_dev = next((p.device for p in i3d_m.parameters()), "cpu") if i3d_m is not None else "cpu"
    feats = {"fid_real": [], "fid_gen": [], "fvd_real": [], "fvd_gen": []}
    rows, ours, peer = [], ErrorSum(), ErrorSum()
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
        if cfg.objmc_protocol == "draganything":
            idx, gt_t, pr_t = DA.pair_trajectories(objmc_trk, r, g, labels0, cfg.objmc_grid_size,
                                                   cfg.objmc_channel_order)
        else:
            idx, gt_t = peer_tracks(tracker, r, labels0)
            _, pr_t = peer_tracks(tracker, g, labels0)
        keys = [sids[i - 1] for i in idx]
        write_peer_tracks(out / "objmc_gt" / f"{name}.json", tracks_to_peer(gt_t, keys))
        write_peer_tracks(out / "objmc_pred" / f"{name}.json", tracks_to_peer(pr_t, keys))
        vid = ErrorSum()
        vid.add(DA.pair_errors(gt_t, pr_t, name))
        peer.total += vid.total
        peer.count += vid.count
        rows.append({"video": name, "components": len(sids), "points": len(cond["points"]),
                     "objmc_ours": round(acc.mean, 4), "objmc_peer": round(vid.mean, 4) if len(idx) else "",
                     "segment_ids": " ".join(map(str, sids))})
        if fid_m is not None:
            feats["fid_real"].append(inception_features(fid_m, r, cfg.metrics_batch_size))
            feats["fid_gen"].append(inception_features(fid_m, g, cfg.metrics_batch_size))
        if i3d_m is not None:
            f = i3d_features(i3d_m, [r, g], cfg.metrics_batch_size, i3d_dev)
            feats["fvd_real"].append(f[0])
            feats["fvd_gen"].append(f[1])
    metrics = {
        "objmc": {"value": peer.mean, "status": "ok", "definition": OBJMC_DEFINITIONS[cfg.objmc_protocol]},
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
    cfg_dict = config_to_dict(cfg)
    notes = comparability(cfg_dict, trk_record, objmc_record)
    if notes:
        log.warning("!!! ObjMC not comparable to the paper's Table 1: %s", "; ".join(notes))
    results = {
        "num_videos": len(names), "metrics": metrics, "paper_table1": PAPER_TABLE1,
        "tracker": trk_record, "objmc_protocol": objmc_record,
        "comparable_to_paper": not notes, "not_comparable_because": notes,
        "rejects": json.loads(rejects_path.read_text()) if rejects_path.is_file() else {},
        "config": cfg_dict,
    }
    write_per_video_csv(out / "per_video.csv", rows)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    write_side_by_side(out, names[: cfg.num_side_by_side], cfg.save_fps)
    return results


def run(cfg: EvalConfig, *, score_only: bool = False, pipe=None, fid_model=None, i3d_model=None) -> dict:
    """Generate (unless ``score_only``) and score; returns the results dict."""
    if not score_only:
        generate(cfg, pipe)
    return score(cfg, fid_model, i3d_model)
