"""Clip filters: statistics of a processed clip and the named reason it is rejected (or None).

Reasons are module constants; the video-level ones are shared with :mod:`trackgo_data.video`
so one vocabulary fills the manifest's ``reason`` column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackgo_data.video import EMPTY_FILE, TOO_SHORT, TOO_SMALL, UNDECODABLE

TOO_LITTLE_MOTION = "too_little_motion"
TOO_FEW_VISIBLE_POINTS = "too_few_visible_points"
SCENE_CUT = "scene_cut"
CAMERA_MOTION = "camera_motion"
NO_COMPONENTS = "no_components"
REASONS = (TOO_LITTLE_MOTION, TOO_FEW_VISIBLE_POINTS, SCENE_CUT, CAMERA_MOTION, TOO_SMALL,
           TOO_SHORT, UNDECODABLE, EMPTY_FILE, NO_COMPONENTS)


@dataclass
class FilterConfig:
    """Thresholds. Motion values are in pixels of the clip (W×H) unless said otherwise.

    ``min_median_motion``: median over points of their largest visible displacement from frame 0.
    ``min_visible_ratio``: share of (frame, point) pairs visible. ``max_scene_cut``: scene-cut
    score (see :func:`scene_cut_score`, a spike ratio) above which the clip spans a cut. ``max_camera_motion``:
    median per-frame background translation in px/frame; None disables the camera filter.
    """

    min_median_motion: float = 4.0
    min_visible_ratio: float = 0.5
    min_points: int = 1
    max_scene_cut: float = 1.8
    max_camera_motion: float | None = None
    analysis_long_side: int = 256  # frames are analysed (cuts, camera) at this longer side


def analysis_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(w, h) of a H×W frame reduced to ``long_side`` (never enlarged; at least 8 px)."""
    s = min(1.0, long_side / max(height, width))
    return max(8, round(width * s)), max(8, round(height * s))


def _small_grey(frames: np.ndarray, long_side: int) -> np.ndarray:
    import cv2

    H, W = frames.shape[1:3]
    size = analysis_size(H, W, long_side)
    out = []
    for f in frames:
        g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        out.append(g if size == (W, H) else cv2.resize(g, size, interpolation=cv2.INTER_AREA))
    return np.stack(out)


def scene_cut_score(grey: np.ndarray, min_jump: float = 10.0, floor: float = 2.0) -> tuple[float, int]:
    """grey (L,h,w) uint8 → (score, frame index t of the strongest cut between t−1 and t).

    d_t = mean |grey_t − grey_{t−1}| (grey levels). A cut is a one-frame spike: its change is
    much larger than the changes just before and after it, whereas fast motion or a pan changes
    neighbouring frame pairs alike. score = max_t d_t / max(d_{t−1}, d_{t+1}, floor) over pairs
    with d_t ≥ ``min_jump`` (0 when there is none). Continuous footage scores ≈ 1 or 0; the cuts
    of the bundled bikes clip score 2.3–14.
    """
    L = len(grey)
    if L < 2:
        return 0.0, 0
    g = grey.astype(np.float32)
    d = np.abs(g[1:] - g[:-1]).mean(axis=(1, 2))
    prev = np.concatenate([[0.0], d[:-1]])
    nxt = np.concatenate([d[1:], [0.0]])
    ratio = d / np.maximum(np.maximum(prev, nxt), floor)
    ratio[d < min_jump] = 0.0
    t = int(np.argmax(ratio))
    return float(ratio[t]), t + 1


def camera_motion(grey: np.ndarray, scale: float = 1.0) -> float:
    """grey (L,h,w) uint8 → median over frame pairs of the global translation magnitude,
    px/frame at the clip resolution (``scale`` = clip width / analysed width).

    The translation of a pair is the peak of their phase correlation (Hann-windowed), which
    follows the dominant, usually background, motion.
    """
    import cv2

    if len(grey) < 2:
        return 0.0
    g = grey.astype(np.float32)
    win = cv2.createHanningWindow((g.shape[2], g.shape[1]), cv2.CV_32F)
    mags = []
    for a, b in zip(g[:-1], g[1:]):
        (dx, dy), _ = cv2.phaseCorrelate(a, b, win)
        mags.append(float(np.hypot(dx, dy)))
    return float(np.median(mags)) * scale


def clip_stats(tracks: np.ndarray, visibility: np.ndarray, frames: np.ndarray | None = None,
               labels: np.ndarray | None = None, components: np.ndarray | None = None,
               cfg: FilterConfig | None = None, grey: np.ndarray | None = None) -> dict:
    """tracks (L,N,2) float px, visibility (L,N) bool, frames (L,H,W,3) uint8, labels (L,H,W) int
    → JSON-friendly dict of floats/ints.

    ``grey`` (L,h,w) uint8: the frames already reduced to grey at ``cfg.analysis_long_side`` (the
    flow segmenter's ``last_grey``), reused instead of reducing them again; ignored when its
    shape is not the one the analysis would produce.

    Keys: ``num_points``, ``num_components`` (from ``components`` or labels), ``visible_ratio``,
    ``median_motion`` (median over points of the largest visible displacement from frame 0, px),
    ``mean_motion`` (mean over points of the same), ``camera_motion`` (px/frame, −1 without frames),
    ``scene_cut`` (score, −1 without frames), ``scene_cut_frame``, ``moving_area`` (first-frame
    share of labelled pixels, −1 without labels).
    """
    cfg = cfg or FilterConfig()
    tracks = np.asarray(tracks, np.float32)
    visibility = np.asarray(visibility, bool)
    L, N = visibility.shape
    stats: dict = {"num_points": int(N)}
    if components is not None:
        stats["num_components"] = int(len(np.unique(components)))
    elif labels is not None:
        stats["num_components"] = int(len([i for i in np.unique(labels[0]) if i > 0]))
    else:
        stats["num_components"] = 0
    stats["visible_ratio"] = float(visibility.mean()) if N else 0.0
    if N:
        disp = np.linalg.norm(tracks - tracks[:1], axis=-1)
        disp = np.where(visibility & visibility[:1], disp, 0.0)
        per_point = disp.max(0)
        stats["median_motion"] = float(np.median(per_point))
        stats["mean_motion"] = float(per_point.mean())
    else:
        stats["median_motion"] = stats["mean_motion"] = 0.0
    if frames is not None:
        frames = np.asarray(frames)
        n_frames, H, W = frames.shape[:3]
        w, h = analysis_size(H, W, cfg.analysis_long_side)
        if grey is None or np.shape(grey) != (n_frames, h, w) or np.asarray(grey).dtype != np.uint8:
            grey = _small_grey(frames, cfg.analysis_long_side)
        score, t = scene_cut_score(grey)
        stats["scene_cut"] = score
        stats["scene_cut_frame"] = t
        stats["camera_motion"] = camera_motion(grey, frames.shape[2] / grey.shape[2])
    else:
        stats["scene_cut"] = stats["camera_motion"] = -1.0
        stats["scene_cut_frame"] = -1
    stats["moving_area"] = float((np.asarray(labels[0]) > 0).mean()) if labels is not None else -1.0
    return stats


def check_clip(stats: dict, cfg: FilterConfig | None = None) -> str | None:
    """The first failing reason in this order, or None when the clip is kept:
    scene_cut, no_components, too_few_visible_points, too_little_motion, camera_motion."""
    cfg = cfg or FilterConfig()
    if stats.get("scene_cut", -1.0) > cfg.max_scene_cut:
        return SCENE_CUT
    if stats.get("num_components", 0) == 0 or stats.get("num_points", 0) == 0:
        return NO_COMPONENTS
    if stats["num_points"] < cfg.min_points or stats["visible_ratio"] < cfg.min_visible_ratio:
        return TOO_FEW_VISIBLE_POINTS
    if stats["median_motion"] < cfg.min_median_motion:
        return TOO_LITTLE_MOTION
    if cfg.max_camera_motion is not None and stats.get("camera_motion", -1.0) > cfg.max_camera_motion:
        return CAMERA_MOTION
    return None
