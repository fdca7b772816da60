"""Offline point tracker: OpenCV pyramidal Lucas–Kanade chained frame to frame.

Visibility comes from a forward–backward check: a point tracked t−1 → t and back must land
within ``fb_threshold`` px of where it started, LK must report success, and it must be inside
the image. A point that fails keeps its last position and is invisible in that frame; it is
tried again from that position in the next frame (re-acquisition after short occlusions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackgo_data.track import check_inputs


@dataclass
class LKConfig:
    win_size: int = 21
    max_level: int = 3
    fb_threshold: float = 1.0  # px, forward–backward round-trip error allowed
    max_iter: int = 30
    eps: float = 0.01
    min_eig_threshold: float = 1e-4


class LKTracker:
    name = "lk"

    def __init__(self, **cfg) -> None:
        from trackgo_data.config import config_from_dict
        import cv2

        self.cfg = config_from_dict(LKConfig, cfg)
        self.version = f"opencv-{cv2.__version__}"

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames (L,H,W,3) uint8, points (N,2) float32 → tracks (L,N,2) float32, visibility (L,N) bool."""
        import cv2

        frames, points = check_inputs(frames, points)
        L, H, W = frames.shape[:3]
        N = len(points)
        tracks = np.zeros((L, N, 2), np.float32)
        vis = np.zeros((L, N), bool)
        tracks[0] = points

        def inside(pts):
            return (pts[:, 0] >= 0) & (pts[:, 0] <= W - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= H - 1)

        vis[0] = inside(points)
        if N == 0 or L == 1:
            return tracks, vis
        cfg = self.cfg
        params = dict(
            winSize=(cfg.win_size, cfg.win_size),
            maxLevel=cfg.max_level,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, cfg.max_iter, cfg.eps),
            minEigThreshold=cfg.min_eig_threshold,
        )
        prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
        for t in range(1, L):
            cur = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
            p0 = tracks[t - 1].reshape(-1, 1, 2).astype(np.float32)
            p1, found, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **params)
            p0r, found_back, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **params)
            p1 = p1.reshape(-1, 2)
            fb = np.linalg.norm(p0r.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
            ok = (found.ravel() == 1) & (found_back.ravel() == 1) & np.isfinite(p1).all(1) \
                & (fb <= cfg.fb_threshold) & inside(p1)
            tracks[t] = np.where(ok[:, None], p1, tracks[t - 1])
            vis[t] = ok
            prev = cur
        return tracks, vis
