"""MoveBench's protocol (Wan-Move, NeurIPS 2025) for TrackGo on Wan: generate every clip from its
first frame, caption and point tracks, then score PSNR, SSIM, FID, FVD and EPE.

Layout read (MoveBench as Wan-Move's ``generate.py`` reads it), ``<root>/<language>/``::

    <mode>_track.txt                     "<video file>,<caption>" per line, split at the first comma
    first_frame/<id>.jpg                 the first frame, at the evaluated size (480×832)
    track/<mode>/<id>_tracks.npy         (L, N, 2) x, y pixels of that frame (a leading 1 is dropped)
    track/<mode>/<id>_visibility.npy     (L, N) bool
    <gt_dir>/<video file>                the real clip (``gt_dir``: Wan-Move's public code does not name
                                         this folder, so it is a setting, default ``video``)

TrackGo's condition: P rendered from the tracks with one colour per object. ``single`` mode: every
track belongs to the one object. ``multi``: ``track/multi/<id>_components.npy`` (N,) when present,
else each track is its own object (at most ``max_objects``; more is an error naming that file).

Metrics, over the clips (``results.json``; ``per_clip.csv``): PSNR and SSIM per frame against the
real clip (scikit-image, 8-bit range, SSIM over RGB; an identical frame's PSNR counts 100 dB), mean
over frames then clips; FID over all
frames and FVD over clips (the VIPSeg evaluation's extractors: missing weights → the metric is
reported missing with the reason); EPE: the generated clip re-tracked from the tracks' frame-0
points by ``tracker``, mean L2 distance in pixels to the given tracks over the (frame, point)
entries visible in them, frame 0 excluded. Outputs: ``generated/<id>.mp4``, ``real/<id>.mp4``
(lossless, at the evaluated size and length), ``condition/<id>.npz``, ``per_clip.csv``,
``results.json``; ``score_only`` rescores what is saved.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trackgo_data.config import ConfigError, atomic_write_bytes, atomic_write_json, atomic_write_text, config_to_dict

log = logging.getLogger(__name__)
__all__ = ["MoveBenchClip", "MoveBenchConfig", "epe", "psnr_ssim", "read_movebench", "run"]


@dataclass
class MoveBenchConfig:
    movebench: str = ""          # MoveBench root (holds en/ and zh/)
    language: str = "en"
    mode: str = "single"         # single | multi
    gt_dir: str = "video"
    wan: str = ""                # Wan image-to-video folder (diffusers layout)
    checkpoint: str = ""         # TrackGo checkpoint trained with model.base=wan
    out: str = "runs/eval-movebench"
    max_videos: int = 0          # 0: every clip of the list
    num_inference_steps: int = 40
    guidance_scale: float = 5.0  # against the negative prompt, as Wan-Move evaluates
    negative_prompt: str = ""
    seed: int = 0                # clip i uses seed + i
    max_objects: int = 6
    tracker: str = "cotracker3_offline"   # EPE's re-tracker; "lk" offline
    tracker_options: dict = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    fid_weights: str | None = None
    i3d_path: str | None = None

    def __post_init__(self) -> None:
        if self.language not in ("en", "zh") or self.mode not in ("single", "multi"):
            raise ValueError(f"language must be en|zh and mode single|multi, got {self.language!r}, {self.mode!r}")
        if self.max_videos < 0 or self.num_inference_steps < 1 or self.max_objects < 1:
            raise ValueError("max_videos must be >= 0, num_inference_steps and max_objects >= 1")


@dataclass
class MoveBenchClip:
    """One entry: image (H, W, 3) uint8, tracks (L, N, 2) float32, visibility (L, N) bool,
    components (N,) int64, real: path of the real clip."""

    video_id: str
    caption: str
    image: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray
    components: np.ndarray
    real: Path


def _components(folder: Path, video_id: str, mode: str, n: int, max_objects: int) -> np.ndarray:
    if mode == "single":
        return np.zeros(n, np.int64)
    path = folder / f"{video_id}_components.npy"
    if path.is_file():
        comps = np.load(path).astype(np.int64).reshape(-1)
        if len(comps) != n:
            raise ConfigError(f"{path}: {len(comps)} labels for {n} tracks")
        return comps
    if n > max_objects:
        raise ConfigError(f"{video_id}: {n} tracks in multi mode and no {path.name} saying which object each "
                          f"belongs to (each track its own object allows at most {max_objects})")
    return np.arange(n, dtype=np.int64)


def read_movebench(cfg: MoveBenchConfig) -> list[MoveBenchClip]:
    """The clips of ``cfg.language``/``cfg.mode`` in list order (the first ``max_videos``); one
    :class:`~trackgo_data.config.ConfigError` naming the first missing file."""
    from PIL import Image

    root = Path(cfg.movebench) / cfg.language
    listing = root / f"{cfg.mode}_track.txt"
    if not listing.is_file():
        raise ConfigError(f"no MoveBench list at {listing}: point --movebench at the folder that holds "
                          f"{cfg.language}/{cfg.mode}_track.txt (huggingface.co/Ruihang/MoveBench)")
    clips = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "," not in line:
            raise ConfigError(f"{listing}: line without a comma: {line!r}")
        video, caption = (s.strip() for s in line.split(",", 1))
        video_id = Path(video).stem
        tracks_dir = root / "track" / cfg.mode
        paths = [root / "first_frame" / f"{video_id}.jpg", tracks_dir / f"{video_id}_tracks.npy",
                 tracks_dir / f"{video_id}_visibility.npy", root / cfg.gt_dir / video]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(f"MoveBench clip {video_id}: missing {', '.join(missing)}")
        tracks, visibility = np.load(paths[1]).astype(np.float32), np.load(paths[2]).astype(bool)
        tracks = tracks[0] if tracks.ndim == 4 else tracks
        visibility = visibility[0] if visibility.ndim == 3 else visibility
        if tracks.ndim != 3 or tracks.shape[-1] != 2 or visibility.shape != tracks.shape[:2]:
            raise ConfigError(f"{paths[1]}: tracks {tracks.shape} and visibility {visibility.shape} are not "
                              "(L, N, 2) and (L, N)")
        image = np.array(Image.open(paths[0]).convert("RGB"))
        comps = _components(tracks_dir, video_id, cfg.mode, tracks.shape[1], cfg.max_objects)
        clips.append(MoveBenchClip(video_id, caption, image, tracks, visibility, comps, paths[3]))
        if cfg.max_videos and len(clips) >= cfg.max_videos:
            break
    return clips


#: PSNR of a frame identical to the real one (its true value is infinite; JSON has no infinity)
PSNR_IDENTICAL = 100.0


def psnr_ssim(real: np.ndarray, gen: np.ndarray) -> tuple[float, float]:
    """Mean over frames of PSNR (dB; an identical frame counts :data:`PSNR_IDENTICAL`) and SSIM:
    real, gen (L, H, W, 3) uint8 of the same shape."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if real.shape != gen.shape:
        raise ValueError(f"real {real.shape} and generated {gen.shape} clips differ in shape")
    psnr = [PSNR_IDENTICAL if np.array_equal(r, g) else peak_signal_noise_ratio(r, g, data_range=255)
            for r, g in zip(real, gen)]
    ssim = [structural_similarity(r, g, data_range=255, channel_axis=-1) for r, g in zip(real, gen)]
    return float(np.mean(psnr)), float(np.mean(ssim))


def epe(tracks: np.ndarray, visibility: np.ndarray, tracked: np.ndarray) -> tuple[float, int]:
    """(sum of L2 distances, count) over entries t ≥ 1 visible in the given tracks: tracks, tracked
    (L, N, 2), visibility (L, N)."""
    keep = np.asarray(visibility, bool).copy()
    keep[0] = False
    dist = np.linalg.norm(np.asarray(tracked, np.float64) - np.asarray(tracks, np.float64), axis=-1)
    return float(dist[keep].sum()), int(keep.sum())


def _generate(cfg: MoveBenchConfig, clips: list[MoveBenchClip], out: Path) -> None:
    from trackgo_data.render import render_trajectories
    from trackgo_data.video import encode_lossless_rgb
    from trackgo_model.eval.config import resolve_device
    from trackgo_model.eval.metrics import read_video
    from trackgo_model.wan.pipeline import WanTrackGoPipeline

    pipe = WanTrackGoPipeline.from_pretrained(cfg.wan, cfg.checkpoint, torch_dtype=cfg.dtype,
                                              device=resolve_device(cfg))
    for i, clip in enumerate(clips):
        target = out / "generated" / f"{clip.video_id}.mp4"
        if target.is_file():
            continue
        length, (h, w) = len(clip.tracks), clip.image.shape[:2]
        P = render_trajectories(clip.tracks, clip.visibility, clip.components, h, w)
        frames = pipe(clip.image, P, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                      prompt=clip.caption, negative_prompt=cfg.negative_prompt, seed=cfg.seed + i)
        real = read_video(clip.real, count=length)
        if real.shape[1:3] != (h, w):
            from trackgo_data.video import resize_crop

            real = resize_crop(real, w, h)
        buf = io.BytesIO()
        np.savez(buf, tracks=clip.tracks, visibility=clip.visibility, components=clip.components)
        atomic_write_bytes(out / "condition" / f"{clip.video_id}.npz", buf.getvalue())
        encode_lossless_rgb(real, out / "real" / f"{clip.video_id}.mp4", fps=16)
        encode_lossless_rgb(frames, target, fps=16)  # last: its presence means the clip is done
        log.info("MoveBench %d/%d: %s", i + 1, len(clips), clip.video_id)


def score(cfg: MoveBenchConfig, ids: list[str], out: Path, tracker=None, fid_model=None, fvd_model=None) -> dict:
    """Score the saved clips ``ids`` (module docstring) → the ``results.json`` dict (also written)."""
    from trackgo_data.track import get_tracker
    from trackgo_data.video import decode_mp4
    from trackgo_model.eval.scoring import load_extractor

    tracker = tracker or get_tracker(cfg.tracker, **cfg.tracker_options)
    rows, reals, gens = [], [], []
    epe_sum, epe_count = 0.0, 0
    for vid in ids:
        real, gen = decode_mp4(out / "real" / f"{vid}.mp4"), decode_mp4(out / "generated" / f"{vid}.mp4")
        with np.load(out / "condition" / f"{vid}.npz") as cond:
            tracks, visibility = cond["tracks"], cond["visibility"]
        psnr, ssim = psnr_ssim(real, gen)
        tracked, _ = tracker.track(gen, tracks[0].astype(np.float32))
        s, n = epe(tracks, visibility, tracked)
        epe_sum, epe_count = epe_sum + s, epe_count + n
        rows.append({"video": vid, "psnr": round(psnr, 4), "ssim": round(ssim, 4),
                     "epe": round(s / n, 4) if n else "", "points": int(tracks.shape[1])})
        reals.append(real)
        gens.append(gen)
    metrics = {"psnr": _value(np.mean([r["psnr"] for r in rows])), "ssim": _value(np.mean([r["ssim"] for r in rows])),
               "epe": _value(epe_sum / epe_count) if epe_count else _missing("no visible track entries after frame 0")}
    for kind, given in (("fid", fid_model), ("fvd", fvd_model)):
        model, reason = load_extractor(kind, cfg, given)
        if model is None:
            metrics[kind] = _missing(reason)
        elif kind == "fid":
            from trackgo_model.eval.metrics.fid import fid_from_videos

            metrics[kind] = _value(fid_from_videos(model, reals, gens))
        else:
            from trackgo_model.eval.config import resolve_device
            from trackgo_model.eval.metrics.fvd import fvd_from_videos

            metrics[kind] = _value(fvd_from_videos(model, reals, gens, device=resolve_device(cfg)))
    results = {"protocol": "movebench", "language": cfg.language, "mode": cfg.mode, "num_videos": len(ids),
               "metrics": metrics, "tracker": {"name": tracker.name, "version": str(tracker.version)},
               "config": config_to_dict(cfg)}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["video", "psnr", "ssim", "epe", "points"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "per_clip.csv", buf.getvalue())
    atomic_write_json(out / "results.json", results)
    return results


def _value(x: float) -> dict:
    return {"status": "ok", "value": float(x), "reason": None}


def _missing(reason: str) -> dict:
    return {"status": "missing", "value": None, "reason": reason}


def run(cfg: MoveBenchConfig, score_only: bool = False, tracker=None, fid_model=None, fvd_model=None) -> dict:
    """Generate what ``out`` does not hold yet (unless ``score_only``), then score every listed clip
    (``tracker``, ``fid_model``, ``fvd_model``: ready ones instead of the config's)."""
    out = Path(cfg.out)
    clips = read_movebench(cfg)
    if not clips:
        raise ConfigError(f"the MoveBench list {cfg.language}/{cfg.mode}_track.txt has no clips")
    recorded = out / "movebench_config.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != config_to_dict(cfg) and not score_only:
        raise ConfigError(f"{out} holds clips generated with another config ({recorded}): use another --out")
    if not score_only:
        if not cfg.wan or not cfg.checkpoint:
            raise ConfigError("MoveBench generation needs --wan (a Wan image-to-video folder) and --checkpoint")
        atomic_write_json(recorded, config_to_dict(cfg))
        _generate(cfg, clips, out)
    ids = [c.video_id for c in clips if (out / "generated" / f"{c.video_id}.mp4").is_file()]
    if len(ids) != len(clips):
        raise ConfigError(f"{out}: {len(clips) - len(ids)} of {len(clips)} clips have no generated video yet")
    return score(cfg, ids, out, tracker, fid_model, fvd_model)
