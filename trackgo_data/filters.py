"""Clip filters: statistics of a clip and the named reason it is rejected (or None).

Two groups, checked at two points of the pipeline (:mod:`trackgo_data.process`):

    frame_stats(frames, cfg, source_size) -> dict     before segmentation and tracking (cheap:
    check_frames(stats, cfg) -> reason | None          grey frames at ~256 px, a few full frames)
    track_stats(tracks, visibility, …) -> dict          after tracking
    check_tracks(stats, cfg) -> reason | None

so a clip that spans a shot cut, is of low visual quality or is dominated by camera motion never
reaches the expensive stages. ``clip_stats``/``check_clip`` do both at once.

Reasons are module constants; the video-level ones are shared with :mod:`trackgo_data.video`
so one vocabulary fills the manifest's ``reason`` column.

The thresholds were chosen from the distributions ``benchmarks/filter_thresholds.py`` prints;
the figures behind each one are in ``docs/measurements.md``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from trackgo_data.video import EMPTY_FILE, LOW_FRAME_RATE, TOO_SHORT, TOO_SMALL, UNDECODABLE

TOO_LITTLE_MOTION = "too_little_motion"
TOO_FEW_VISIBLE_POINTS = "too_few_visible_points"
SCENE_CUT = "scene_cut"
CAMERA_MOTION = "camera_motion"
NO_COMPONENTS = "no_components"
LOW_QUALITY_BLUR = "low_quality_blur"
LOW_QUALITY_BLOCKS = "low_quality_blocks"
LOW_QUALITY_LETTERBOX = "low_quality_letterbox"
LOW_QUALITY_STATIC = "low_quality_static"
#: reasons decided on the frames alone, before segmentation and tracking (in check order)
FRAME_REASONS = (LOW_QUALITY_STATIC, SCENE_CUT, LOW_QUALITY_LETTERBOX, LOW_QUALITY_BLUR,
                 LOW_QUALITY_BLOCKS, CAMERA_MOTION)
REASONS = (TOO_LITTLE_MOTION, TOO_FEW_VISIBLE_POINTS, SCENE_CUT, CAMERA_MOTION, TOO_SMALL,
           TOO_SHORT, UNDECODABLE, EMPTY_FILE, NO_COMPONENTS, LOW_QUALITY_BLUR, LOW_QUALITY_BLOCKS,
           LOW_QUALITY_LETTERBOX, LOW_QUALITY_STATIC, LOW_FRAME_RATE)


@dataclass
class FilterConfig:
    """Thresholds; a ``max_*``/``min_*`` of None switches that check off.

    Track checks (pixels of the W×H clip): ``min_median_motion`` median over points of their
    largest visible displacement from frame 0; ``min_visible_ratio`` share of visible (frame,
    point) pairs; ``min_points``.

    Frame checks: ``max_scene_cut`` scene-cut spike ratio (:func:`scene_cut_score`).
    ``max_camera_motion_rel``: the camera's median per-frame motion (:func:`camera_motion`) as a
    share of the clip's longer side (0.008: pans faster than ~0.7 % of the frame per frame, where
    the camera moves most of the pixels, are rejected; static cameras pass).

    Low visual quality: ``min_sharpness`` (:func:`sharpness`, finest-octave energy ratio),
    ``max_blockiness`` (:func:`blockiness`, step at the coding-block grid, grey levels),
    ``max_letterbox`` (:func:`letterbox`, share of a side covered by flat dark bars),
    ``max_static_ratio`` (:func:`static_ratio`, share of near-identical frame pairs).
    """

    min_median_motion: float = 4.0
    min_visible_ratio: float = 0.5
    min_points: int = 1
    max_scene_cut: float | None = 1.8
    max_camera_motion_rel: float | None = 0.008
    min_sharpness: float | None = 0.5      # rejects what is softer than a ×2 up-scale of a sharp source
    max_blockiness: float | None = 0.5     # rejects JPEG-like coding at quality ≤ 30
    max_letterbox: float | None = 0.05     # tolerates a thin dark edge
    max_static_ratio: float | None = 0.4
    analysis_long_side: int = 256  # frames are analysed (cuts, camera, static, bars) at this longer side
    quality_frames: int = 3        # clip-resolution frames (evenly spaced) for sharpness, blockiness


def analysis_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(w, h) of a H×W frame reduced to ``long_side`` (never enlarged; at least 8 px)."""
    s = min(1.0, long_side / max(height, width))
    return max(8, round(width * s)), max(8, round(height * s))


def small_grey(frames: np.ndarray, long_side: int) -> np.ndarray:
    """frames (L,H,W,3) uint8 → grey (L,h,w) uint8 at ``long_side`` (INTER_AREA)."""
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
    with d_t ≥ ``min_jump`` (0 when there is none). Continuous footage scores ≈ 1 or 0.
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


def camera_motion(grey: np.ndarray, scale: float = 1.0, step: int = 12) -> float:
    """grey (L,h,w) uint8 → median over frame pairs of the camera's motion, px/frame at the clip
    resolution (``scale`` = clip width / analysed width).

    Per pair: a grid of points every ``step`` px is followed into the second frame with
    pyramidal Lucas–Kanade (points in flat patches, whose motion LK cannot see, are dropped);
    a similarity transform (translation, rotation, zoom) is fitted with RANSAC, so the motion of
    most of the *area* decides — the background, usually — and moving things are outliers; the
    camera's motion is the mean displacement the transform gives a 16-px grid over the frame
    (pans, zooms and rotations alike). A pair with fewer than 12 trackable points (a flat frame)
    falls back to the peak of its phase correlation. Where the moving things carry nearly all
    the texture (flat backgrounds), the estimate can follow them.
    """
    import cv2

    if len(grey) < 2:
        return 0.0
    h, w = grey.shape[1:]
    gy, gx = np.mgrid[step // 2:h:step, step // 2:w:step]
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)[:, None]
    gy, gx = np.mgrid[0:h:16, 0:w:16]
    grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    win = None
    mags = []
    for first, second in zip(grey[:-1], grey[1:]):
        model = None
        moved_pts, found, _ = cv2.calcOpticalFlowPyrLK(first, second, pts, None, winSize=(11, 11), maxLevel=2,
                                                       flags=cv2.OPTFLOW_LK_GET_MIN_EIGENVALS, minEigThreshold=1e-3)
        ok = found.ravel() == 1
        if ok.sum() >= 12:
            model, _ = cv2.estimateAffinePartial2D(pts[ok], moved_pts[ok], method=cv2.RANSAC,
                                                   ransacReprojThreshold=1.0)
        if model is not None:
            moved = grid @ model[:, :2].T + model[:, 2] - grid
            mags.append(float(np.linalg.norm(moved, axis=1).mean()))
        else:
            if win is None:
                win = cv2.createHanningWindow((w, h), cv2.CV_32F)
            (dx, dy), _ = cv2.phaseCorrelate(first.astype(np.float32), second.astype(np.float32), win)
            mags.append(float(np.hypot(dx, dy)))
    return float(np.median(mags)) * scale


def static_ratio(grey: np.ndarray, level: float = 6.0, changed: float = 0.002) -> float:
    """grey (L,h,w) uint8 → share of consecutive frame pairs that are near-identical: fewer than
    ``changed`` (0.2 %) of their pixels differ by more than ``level`` grey levels (frozen or
    duplicated frames, stills; coding noise stays below the level)."""
    if len(grey) < 2:
        return 0.0
    g = grey.astype(np.int16)
    moved = (np.abs(g[1:] - g[:-1]) > level).mean(axis=(1, 2))
    return float((moved < changed).mean())


def letterbox(grey: np.ndarray, flat: float = 3.0, dark: float = 48.0) -> float:
    """grey (L,h,w) uint8 → largest share of a dimension covered by bars: the rows (columns) at the
    top + bottom (left + right) that are flat (std over the row's pixels in all frames ≤ ``flat``)
    and dark (mean ≤ ``dark``). 0 for a frame filled with picture."""
    g = grey.astype(np.float32)

    def bars(lines_std: np.ndarray, lines_mean: np.ndarray) -> int:
        bar = (lines_std <= flat) & (lines_mean <= dark)
        n = len(bar)
        head = int(np.argmin(bar)) if not bar.all() else n
        tail = int(np.argmin(bar[::-1])) if not bar.all() else 0
        return head + tail

    rows = bars(g.std(axis=(0, 2)), g.mean(axis=(0, 2)))
    cols = bars(g.std(axis=(0, 1)), g.mean(axis=(0, 1)))
    return float(max(rows / g.shape[1], cols / g.shape[2]))


def sharpness(grey: np.ndarray) -> float:
    """grey (H,W) uint8 at the clip resolution → energy of its finest octave ÷ energy of the next:
    E[(f − G₁f)²] / E[(G₁f − G₂f)²] with G_σ a Gaussian of σ px. Natural images have nearly
    scale-invariant spectra, so a frame that is sharp at the clip resolution keeps a ratio near
    1–2 whatever its content and contrast, while blur, defocus or an up-scaled source empties
    the finest octave first (ratio → 0). A flat frame scores 0."""
    import cv2

    f = grey.astype(np.float32)
    b1 = cv2.GaussianBlur(f, (0, 0), 1.0)
    b2 = cv2.GaussianBlur(b1, (0, 0), np.sqrt(3.0))  # G₁ then G_√3 = G₂
    fine = float(np.mean((f - b1) ** 2))
    coarse = float(np.mean((b1 - b2) ** 2))
    return fine / coarse if coarse > 1e-3 else 0.0


@functools.lru_cache(maxsize=16)
def _fourier_basis(n: int, period: float) -> np.ndarray:
    """(1 + m, n) complex: row 0 the frequency 1/period, then m nearby frequencies (0.6–1.4 ×,
    outside the main lobe of the peak) — the rows :func:`blockiness` evaluates."""
    f0 = 1.0 / period
    near = f0 * np.linspace(0.6, 1.4, 41)
    near = near[np.abs(near - f0) > 2.0 / n]
    freqs = np.concatenate([[f0], near])
    return np.exp(-2j * np.pi * freqs[:, None] * np.arange(n)[None, :])


def blockiness(grey: np.ndarray, period: float = 8.0, min_peak: float = 3.0) -> float:
    """grey (H,W) uint8 → the extra step, in grey levels, at the edges of a coding-block grid of
    ``period`` px (8 × the scale from source to clip pixels); max over both axes.

    The mean absolute difference between neighbouring columns (rows), averaged over rows
    (columns), is a profile d. Block edges add a comb of period p to it; its height is
    e ≈ p·(|D(1/p)| − floor)/n, with D the profile's Fourier sum at 1/p and floor the median
    magnitude at nearby frequencies (0.6–1.4 × 1/p outside the peak's main lobe). The grid
    counts only when it is a clear peak, |D(1/p)| ≥ ``min_peak`` × floor (else 0: natural
    content has no comb, and a faint one is invisible). 0 as well when the period is below
    4 px: blocks shrunk by down-scaling no longer show at the clip resolution.
    """
    if period < 4.0:
        return 0.0
    f = grey.astype(np.float32)
    steps = [0.0]
    for axis in (1, 0):
        prof = np.abs(np.diff(f, axis=axis)).mean(axis=1 - axis)
        n = len(prof)
        if n < 4 * period:
            continue
        mags = np.abs(_fourier_basis(n, round(float(period), 6)) @ (prof - prof.mean()))
        floor = float(np.median(mags[1:]))
        if mags[0] >= min_peak * max(floor, 1e-6):
            steps.append(period * (float(mags[0]) - floor) / n)
    return float(max(steps))


def frame_stats(frames: np.ndarray, cfg: FilterConfig | None = None,
                source_size: tuple[int, int] | None = None, grey: np.ndarray | None = None) -> dict:
    """frames (L,H,W,3) uint8 → the statistics :func:`check_frames` decides on (JSON-friendly).

    ``source_size`` (w, h) of the source video sets the coding-block period in clip pixels
    (None: the clip is taken as the source's own pixels). ``grey`` (L,h,w) uint8: the frames
    already reduced at ``cfg.analysis_long_side``, used when its shape fits.

    Keys: ``scene_cut`` (score), ``scene_cut_frame``, ``camera_motion`` (px/frame at the clip
    resolution), ``camera_motion_rel`` (÷ the clip's longer side), ``static_ratio``,
    ``letterbox``, ``sharpness``, ``blockiness`` (medians over ``cfg.quality_frames`` frames).
    """
    import cv2

    cfg = cfg or FilterConfig()
    frames = np.asarray(frames)
    n_frames, H, W = frames.shape[:3]
    w, h = analysis_size(H, W, cfg.analysis_long_side)
    if grey is None or np.shape(grey) != (n_frames, h, w) or np.asarray(grey).dtype != np.uint8:
        grey = small_grey(frames, cfg.analysis_long_side)
    score, t = scene_cut_score(grey)
    cam = camera_motion(grey, W / grey.shape[2])
    stats = {"scene_cut": score, "scene_cut_frame": t, "camera_motion": cam,
             "camera_motion_rel": cam / max(H, W), "static_ratio": static_ratio(grey),
             "letterbox": letterbox(grey)}
    scale = 1.0
    if source_size is not None:
        from trackgo_data.video import cover_size

        scale = cover_size(source_size[0], source_size[1], W, H)[0] / source_size[0]
    picks = np.unique(np.linspace(0, n_frames - 1, max(1, cfg.quality_frames)).round().astype(int))
    full = [cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY) for i in picks]
    stats["sharpness"] = float(np.median([sharpness(g) for g in full]))
    stats["blockiness"] = float(np.median([blockiness(g, 8.0 * scale) for g in full]))
    return stats


def check_frames(stats: dict, cfg: FilterConfig | None = None) -> str | None:
    """The first failing frame-level reason in :data:`FRAME_REASONS` order, or None. Frozen
    frames come first: duplicated frames also look like a run of one-frame cuts."""
    cfg = cfg or FilterConfig()

    def above(key: str, limit: float | None) -> bool:
        return limit is not None and stats.get(key, -1.0) > limit

    failing = {
        LOW_QUALITY_STATIC: above("static_ratio", cfg.max_static_ratio),
        SCENE_CUT: above("scene_cut", cfg.max_scene_cut),
        LOW_QUALITY_LETTERBOX: above("letterbox", cfg.max_letterbox),
        LOW_QUALITY_BLUR: cfg.min_sharpness is not None and stats.get("sharpness", np.inf) < cfg.min_sharpness,
        LOW_QUALITY_BLOCKS: above("blockiness", cfg.max_blockiness),
        CAMERA_MOTION: above("camera_motion_rel", cfg.max_camera_motion_rel),
    }
    return next((reason for reason in FRAME_REASONS if failing[reason]), None)


def track_stats(tracks: np.ndarray, visibility: np.ndarray, labels: np.ndarray | None = None,
                components: np.ndarray | None = None) -> dict:
    """tracks (L,N,2) float px, visibility (L,N) bool, labels (L,H,W) int, components (N,) int
    → ``num_points``, ``num_components`` (from ``components`` or labels), ``visible_ratio``,
    ``median_motion`` (median over points of the largest visible displacement from frame 0, px),
    ``mean_motion`` (mean over points of the same), ``moving_area`` (first-frame share of
    labelled pixels, −1 without labels)."""
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
    stats["moving_area"] = float((np.asarray(labels[0]) > 0).mean()) if labels is not None else -1.0
    return stats


def check_tracks(stats: dict, cfg: FilterConfig | None = None) -> str | None:
    """no_components, too_few_visible_points, too_little_motion (first failing), or None."""
    cfg = cfg or FilterConfig()
    if stats.get("num_components", 0) == 0 or stats.get("num_points", 0) == 0:
        return NO_COMPONENTS
    if stats["num_points"] < cfg.min_points or stats["visible_ratio"] < cfg.min_visible_ratio:
        return TOO_FEW_VISIBLE_POINTS
    if stats["median_motion"] < cfg.min_median_motion:
        return TOO_LITTLE_MOTION
    return None


def clip_stats(tracks: np.ndarray, visibility: np.ndarray, frames: np.ndarray | None = None,
               labels: np.ndarray | None = None, components: np.ndarray | None = None,
               cfg: FilterConfig | None = None, grey: np.ndarray | None = None,
               source_size: tuple[int, int] | None = None) -> dict:
    """:func:`track_stats` plus, with ``frames``, :func:`frame_stats` (without frames the
    frame statistics are −1)."""
    stats = track_stats(tracks, visibility, labels, components)
    if frames is not None:
        stats.update(frame_stats(frames, cfg, source_size, grey))
    else:
        stats.update(scene_cut=-1.0, scene_cut_frame=-1, camera_motion=-1.0, camera_motion_rel=-1.0)
    return stats


def check_clip(stats: dict, cfg: FilterConfig | None = None) -> str | None:
    """Frame-level reasons first (:data:`FRAME_REASONS` order), then no_components,
    too_few_visible_points, too_little_motion; None when the clip is kept."""
    return check_frames(stats, cfg) or check_tracks(stats, cfg)
