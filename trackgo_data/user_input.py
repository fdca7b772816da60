"""Inference-time motion input: user masks + arrows → point tracks (then rendered by ``render``).

Points inside each mask come from the same K rule and K-means as the training data
(:func:`trackgo_data.points.sample_points`). Each arrow (two points, or a polyline of more) is
split over the L−1 frame steps by arc length into equal per-frame displacements
T = {(Δx_i, Δy_i)}, i = 1..L−1, which move every point of its mask. Camera motion: one mask
covering the whole image and one arrow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from trackgo_data.points import sample_points
from trackgo_data.render import COLOURS


class UserInputError(ValueError):
    """Masks or arrows given by a user do not fit together."""


def load_masks(paths: str | Path | Sequence[str | Path], size: tuple[int, int] | None = None
               ) -> list[np.ndarray]:
    """Masks from images → list of (H,W) bool, ``size = (W, H)`` the image size to check against.

    One path: a label PNG (0 background, 1..s one value per mask, palette or grey; an RGB image is
    read as grey) giving s masks in id order — unless it only holds 0 and one other value, then it
    is one binary mask. Several paths: one binary mask each (non-zero = inside).
    """
    from PIL import Image

    single = isinstance(paths, (str, Path))
    plist = [Path(paths)] if single else [Path(p) for p in paths]
    if not plist:
        raise UserInputError("no mask given")
    arrays = []
    for p in plist:
        if not p.is_file():
            raise UserInputError(f"mask file not found: {p}")
        with Image.open(p) as im:
            if im.mode not in ("P", "L", "1", "I", "I;16"):
                im = im.convert("L")
            arrays.append(np.asarray(im).astype(np.int64))
    for p, a in zip(plist, arrays):
        if size is not None and (a.shape[1], a.shape[0]) != tuple(size):
            raise UserInputError(f"mask {p} is {a.shape[1]}×{a.shape[0]} but the image is {size[0]}×{size[1]}")
    if single:
        ids = [int(i) for i in np.unique(arrays[0]) if i != 0]
        masks = [arrays[0] == i for i in ids]
        if not masks:
            raise UserInputError(f"mask {plist[0]} is empty (no non-zero pixel)")
    else:
        masks = [a != 0 for a in arrays]
        for p, m in zip(plist, masks):
            if not m.any():
                raise UserInputError(f"mask {p} is empty (no non-zero pixel)")
    return masks


def parse_arrow(text: str) -> np.ndarray:
    """"x0,y0,x1,y1" (an arrow) or "x0,y0,x1,y1,x2,y2,…" (a polyline) → (P,2) float64 vertices."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError as exc:
        raise UserInputError(f"arrow {text!r}: not a list of numbers ({exc})") from None
    if len(vals) < 4 or len(vals) % 2:
        raise UserInputError(f"arrow {text!r}: need an even number (≥ 4) of coordinates x0,y0,x1,y1,…")
    pts = np.array(vals, np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise UserInputError(f"arrow {text!r}: coordinates must be finite")
    return pts


def arrow_displacements(arrow: np.ndarray, num_frames: int) -> np.ndarray:
    """arrow (P,2) polyline → cumulative offsets (L,2) from frame 0: frame i sits at arc length
    i/(L−1) of the whole polyline (equal per-frame steps along the path); offsets[0] = 0."""
    arrow = np.asarray(arrow, np.float64)
    seg = np.linalg.norm(np.diff(arrow, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, cum[-1], num_frames)
    if cum[-1] == 0:
        return np.zeros((num_frames, 2))
    # np.interp needs strictly increasing xp: drop zero-length segments
    keep = np.concatenate([[True], seg > 0])
    x = np.interp(s, cum[keep], arrow[keep, 0])
    y = np.interp(s, cum[keep], arrow[keep, 1])
    return np.stack([x, y], 1) - arrow[0]


def arrows_to_tracks(masks: Sequence[np.ndarray], arrows: Sequence[np.ndarray | str], num_frames: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """masks: s × (H,W) bool; arrows: s × (P,2) (or strings) → tracks (L,N,2) float32,
    visibility (L,N) bool (False where a point leaves the image), components (N,) int64.

    Mask j gets component j (its colour ``COLOURS[j]``); overlapping masks: a later mask takes the
    shared pixels. Points: :func:`sample_points` on the combined label map (K rule + K-means).
    """
    masks = [np.asarray(m, bool) for m in masks]
    arrows = [parse_arrow(a) if isinstance(a, str) else np.asarray(a, np.float64) for a in arrows]
    if num_frames < 2:
        raise UserInputError(f"num_frames must be >= 2, got {num_frames}")
    if not masks:
        raise UserInputError("no mask given")
    if len(arrows) != len(masks):
        raise UserInputError(f"{len(arrows)} arrow(s) for {len(masks)} mask(s): give one arrow per mask")
    if len(masks) > len(COLOURS):
        raise UserInputError(f"at most {len(COLOURS)} masks, got {len(masks)}")
    H, W = masks[0].shape
    labels = np.zeros((H, W), np.int32)
    for j, m in enumerate(masks):
        if m.shape != (H, W):
            raise UserInputError(f"mask {j} is {m.shape[1]}×{m.shape[0]}, mask 0 is {W}×{H}: sizes differ")
        if not m.any():
            raise UserInputError(f"mask {j} is empty")
        labels[m] = j + 1
    for j, a in enumerate(arrows):
        if a.ndim != 2 or a.shape[1] != 2 or len(a) < 2:
            raise UserInputError(f"arrow {j} must be (P≥2, 2) vertices, got {a.shape}")
        x0, y0 = a[0]
        if not (0 <= x0 <= W - 1 and 0 <= y0 <= H - 1):
            raise UserInputError(f"arrow {j} starts at ({x0:g}, {y0:g}), outside the {W}×{H} image")
    for j in range(len(masks)):
        if not (labels == j + 1).any():
            raise UserInputError(f"mask {j} is entirely covered by later masks")
    points, components = sample_points(labels, seed)
    offsets = np.stack([arrow_displacements(a, num_frames) for a in arrows])      # (s, L, 2)
    tracks = (points[None, :, :] + offsets[components].transpose(1, 0, 2)).astype(np.float32)
    visibility = (tracks[..., 0] >= 0) & (tracks[..., 0] <= W - 1) \
        & (tracks[..., 1] >= 0) & (tracks[..., 1] <= H - 1)
    return tracks, visibility, components
