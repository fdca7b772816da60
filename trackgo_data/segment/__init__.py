"""Segmenters of the main moving components, chosen by name.

Every backend returns labels (L,H,W) int32: 0 background, 1..s component ids stable over time,
s ≤ max_components (6), id 1 the largest (first-frame area) component. Backends expose ``name``
and ``version`` (recorded in every sample) and import their heavy dependencies lazily.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from trackgo_data.registry import load_backend

MAX_COMPONENTS = 6

_BACKENDS = {
    "flow": ("trackgo_data.segment.flow", "FlowSegmenter"),
    "deva": ("trackgo_data.segment.deva", "DevaSegmenter"),
}


class Segmenter(Protocol):
    name: str
    version: str

    def segment(self, frames: np.ndarray) -> np.ndarray: ...


def available_segmenters() -> list[str]:
    return sorted(_BACKENDS)


def get_segmenter(name: str, **cfg) -> Segmenter:
    """Build the segmenter registered as ``name`` with backend options ``cfg``, e.g.
    ``get_segmenter("deva", deva_weights=…, sam_weights=…)`` or ``get_segmenter("deva", random_init=True)``
    (tests and benchmarks only)."""
    return load_backend("segmenter", _BACKENDS, name)(**cfg)


def load_segmenter(name: str, **cfg) -> Segmenter:
    """:func:`get_segmenter`, then the backend's ``load()`` when it has one (code and weights
    now, not at the first clip): a backend that cannot run fails here, before any video."""
    segmenter = get_segmenter(name, **cfg)
    load = getattr(segmenter, "load", None)
    if callable(load):
        load()
    return segmenter


def check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
        raise ValueError(f"frames must be (L≥2,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    return frames


def relabel_by_area(labels: np.ndarray, max_components: int = MAX_COMPONENTS) -> np.ndarray:
    """labels (L,H,W) int with arbitrary positive ids → ids 1..s ordered by first-frame area
    (then total area), keeping the ``max_components`` largest; the rest become background."""
    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    if len(ids) == 0:
        return np.zeros(labels.shape, np.int32)
    first = np.array([(labels[0] == i).sum() for i in ids])
    order = np.lexsort((-counts, -first))[:max_components]
    new_ids = np.zeros(len(ids), np.int32)
    new_ids[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    out = np.zeros(labels.shape, np.int32)
    fg = labels > 0
    out[fg] = new_ids[np.searchsorted(ids, labels[fg])]
    return out
