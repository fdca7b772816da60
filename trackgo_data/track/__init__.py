"""Point trackers chosen by name. Each backend lives in its own module and imports its heavy
dependency lazily; all share the Co-Tracker output contract:

    track(frames (L,H,W,3) uint8, points (N,2) float32 x,y at frame 0)
        -> tracks (L,N,2) float32 x,y pixels, visibility (L,N) bool

``tracks[0] == points`` and ``visibility[0]`` is True for every point inside the image.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from trackgo_data.registry import load_backend

# name -> (module, class); cotracker variants share one module
_BACKENDS = {
    "lk": ("trackgo_data.track.lk", "LKTracker"),
    "cotracker3_offline": ("trackgo_data.track.cotracker", "CoTracker"),
    "cotracker3_online": ("trackgo_data.track.cotracker", "CoTracker"),
    "cotracker2": ("trackgo_data.track.cotracker", "CoTracker"),
}


class Tracker(Protocol):
    name: str
    version: str

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def available_trackers() -> list[str]:
    return sorted(_BACKENDS)


def get_tracker(name: str, **cfg) -> Tracker:
    """Build the tracker registered as ``name`` with backend options ``cfg``, e.g.
    ``get_tracker("cotracker2", repo="/path/to/co-tracker", random_init=True)`` (Co-Tracker options:
    ``repo``, ``checkpoint``, ``random_init``, ``device``, ``model_resolution``)."""
    klass = load_backend("tracker", _BACKENDS, name)
    if _BACKENDS[name][0].endswith("cotracker"):  # one class serves the three hub variants
        return klass(variant=name, **cfg)
    return klass(**cfg)


def load_tracker(name: str, **cfg) -> Tracker:
    """:func:`get_tracker`, then the backend's ``load()`` when it has one (code and weights now,
    not at the first clip): a backend that cannot run fails here, before any video."""
    tracker = get_tracker(name, **cfg)
    load = getattr(tracker, "load", None)
    if callable(load):
        load()
    return tracker


def check_inputs(frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    points = np.asarray(points, np.float32).reshape(-1, 2) if np.size(points) else np.zeros((0, 2), np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (L,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) < 1:
        raise ValueError("no frames to track over")
    return frames, points
