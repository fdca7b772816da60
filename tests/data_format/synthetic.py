"""Synthetic format-v1 samples for the data_format tests (tiny sizes, real encoders)."""
from __future__ import annotations

import numpy as np

from trackgo_data.render import render_trajectories
from trackgo_data.sample import make_sample

L, H, W = 6, 96, 128  # libx264 is not deterministic on frames of 4×3 macroblocks (64×48)


def synthetic_sample(video_id: str = "clip", start: int = 0, seed: int = 0, n: int = 7):
    """A moving textured square (component 0) and a still bar (component 1) with tracks on them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    phase = rng.uniform(0, 6.28) + np.array([0.0, 0.3, 0.6])  # mostly luminance, mild colour
    base = np.stack([100 + 60 * np.sin(xx / 9.0 + yy / 13.0 + p) for p in phase], -1).astype(np.uint8)
    frames = np.repeat(base[None], L, axis=0).copy()
    labels = np.zeros((L, H, W), np.int32)
    for t in range(L):
        x0 = 8 + 2 * t
        frames[t, 16:32, x0:x0 + 16] = 240
        labels[t, 16:32, x0:x0 + 16] = 1
        labels[t, 40:48, 0:24] = 2
    pts = np.concatenate([rng.uniform([10, 18], [20, 30], (n, 2)), rng.uniform([2, 41], [20, 46], (3, 2))])
    comps = np.array([0] * n + [1] * 3, np.int64)
    shift = np.stack([2.0 * (comps == 0), np.zeros(len(comps))], axis=1)  # (N,2) px per frame
    tracks = np.stack([pts + t * shift for t in range(L)])
    tracks = tracks.astype(np.float32)
    vis = np.ones((L, len(pts)), bool)
    vis[3, 0] = False
    traj = render_trajectories(tracks, vis, comps, H, W)
    return make_sample(video_id=video_id, start=start, frames=frames, labels=labels, tracks=tracks,
                       visibility=vis, components=comps, trajectory=traj, source=f"/src/{video_id}.mp4",
                       fps=25.0, config_hash="abc123", backends={"segmenter": {"name": "t", "version": "0"},
                                                                  "tracker": {"name": "t", "version": "0"}},
                       stats={"median_motion_px": 10.0, "visible_ratio": 0.98})
