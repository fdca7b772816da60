"""The one renderer of the trajectory video P (training data, inference and evaluation alike).

Pixel set of one point: with ``square = s`` and the point at (x, y), the square covers columns
``round(x) − s//2 … round(x) − s//2 + s − 1`` and rows ``round(y) − s//2 … round(y) − s//2 + s − 1``
(for the default s = 4: x−2 … x+1, i.e. a 4×4 block whose centre is the corner at round(x), round(y)),
clipped to the image. ``round`` is numpy's round-half-to-even. Invisible points draw nothing.
Where squares of different points overlap, the point with the larger index wins.
"""
from __future__ import annotations

import numpy as np

# Fixed, bright and mutually distinct colours, index = component (0-based). Saturated primaries
# and secondaries first (far apart in RGB and under yuv/lossless coding), then mixed tones.
COLOURS = np.array(
    [
        [255, 0, 0],      # 0 red
        [0, 255, 0],      # 1 green
        [0, 0, 255],      # 2 blue
        [255, 255, 0],    # 3 yellow
        [255, 0, 255],    # 4 magenta
        [0, 255, 255],    # 5 cyan
        [255, 128, 0],    # 6 orange
        [128, 0, 255],    # 7 violet
        [255, 255, 255],  # 8 white
    ],
    dtype=np.uint8,
)
COLOURS.setflags(write=False)


def colour_of(component: int) -> tuple[int, int, int]:
    if not 0 <= component < len(COLOURS):
        raise ValueError(f"component {component} has no colour (0..{len(COLOURS) - 1})")
    return tuple(int(c) for c in COLOURS[component])


def _square_pixels(tracks: np.ndarray, square: int) -> tuple[np.ndarray, np.ndarray]:
    """tracks (..., 2) → integer columns/rows (..., s*s) of each point's square (unclipped)."""
    off = np.arange(square) - square // 2
    cx = np.round(tracks[..., 0]).astype(np.int64)
    cy = np.round(tracks[..., 1]).astype(np.int64)
    dx, dy = np.meshgrid(off, off, indexing="xy")
    xs = cx[..., None] + dx.reshape(-1)
    ys = cy[..., None] + dy.reshape(-1)
    return xs, ys


def _check(tracks, visibility, components):
    tracks = np.asarray(tracks, np.float32)
    visibility = np.asarray(visibility, bool)
    components = np.asarray(components, np.int64)
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be (L,N,2), got {tracks.shape}")
    if visibility.shape != tracks.shape[:2]:
        raise ValueError(f"visibility {visibility.shape} does not match tracks {tracks.shape[:2]}")
    if components.shape != (tracks.shape[1],):
        raise ValueError(f"components {components.shape} must be (N,) with N={tracks.shape[1]}")
    if len(components) and (components.min() < 0 or components.max() >= len(COLOURS)):
        raise ValueError(f"component indices must be in 0..{len(COLOURS) - 1}")
    return tracks, visibility, components


def render_trajectories(tracks: np.ndarray, visibility: np.ndarray, components: np.ndarray,
                        height: int, width: int, square: int = 4) -> np.ndarray:
    """tracks (L,N,2) float x,y px; visibility (L,N) bool; components (N,) int → P (L,H,W,3) uint8.

    Vectorised: all squares of all frames are written with one fancy-indexed assignment.
    Non-finite coordinates count as invisible.
    """
    tracks, visibility, components = _check(tracks, visibility, components)
    L, N = visibility.shape
    out = np.zeros((L, height, width, 3), np.uint8)
    if N == 0:
        return out
    vis = visibility & np.isfinite(tracks).all(-1)
    safe = np.where(vis[..., None], tracks, -1e6)
    xs, ys = _square_pixels(safe, square)                      # (L, N, s*s)
    ts = np.broadcast_to(np.arange(L)[:, None, None], xs.shape)
    cols = np.broadcast_to(COLOURS[components][None, :, None, :], xs.shape + (3,))
    keep = vis[..., None] & (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    # numpy assigns repeated indices in order: later points (larger index) overwrite earlier ones
    out[ts[keep], ys[keep], xs[keep]] = cols[keep]
    return out


def overlay_tracks(image: np.ndarray, tracks: np.ndarray, visibility: np.ndarray,
                   components: np.ndarray, tail: int | None = None, thickness: int = 1) -> np.ndarray:
    """Preview: image (H,W,3) uint8 with each track drawn as a polyline in its component colour
    (visible segments only, last ``tail`` frames when given) and a dot at its last visible place."""
    import cv2

    tracks, visibility, components = _check(tracks, visibility, components)
    out = np.ascontiguousarray(np.asarray(image, np.uint8).copy())
    L = len(tracks)
    t0 = 0 if tail is None else max(0, L - tail)
    for n, comp in enumerate(components):
        colour = tuple(int(c) for c in COLOURS[comp])
        last = None
        for t in range(t0, L):
            if not visibility[t, n]:
                last = None
                continue
            p = (int(round(float(tracks[t, n, 0]))), int(round(float(tracks[t, n, 1]))))
            if last is not None:
                cv2.line(out, last, p, colour, thickness, cv2.LINE_AA)
            last = p
        vis_t = np.nonzero(visibility[:, n])[0]
        if len(vis_t):
            x, y = tracks[vis_t[-1], n]
            cv2.circle(out, (int(round(float(x))), int(round(float(y)))), 2, colour, -1)
    return out


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Preview: blend component colours of labels (H,W) int (0 = background) over image (H,W,3)."""
    out = np.asarray(image, np.float32).copy()
    labels = np.asarray(labels)
    fg = labels > 0
    if fg.any():
        idx = np.clip(labels[fg] - 1, 0, len(COLOURS) - 1)
        out[fg] = (1 - alpha) * out[fg] + alpha * COLOURS[idx].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)
