"""Objects from one label image a person made (:func:`label_image_masks`): a palette or 16-bit
image holds exact values; a grey or RGB image saved by a drawing program has its edges
anti-aliased into grey levels that are no object. :func:`trackgo_data.user_input.load_masks`
reads the file and reports a :class:`LabelImageError` as its own ``UserInputError``.
"""
from __future__ import annotations

import numpy as np


class LabelImageError(ValueError):
    """A label image whose values cannot be read as objects (the message says what to change)."""


def flat_cores(labels: np.ndarray) -> np.ndarray:
    """labels (H,W) int → (H,W) bool: the pixel is the centre of a 3×3 square of one value."""
    H, W = labels.shape
    core = np.zeros((H, W), bool)
    if H < 3 or W < 3:
        return core
    centre = labels[1:-1, 1:-1]
    uniform = np.ones(centre.shape, bool)
    for dy in range(3):
        for dx in range(3):
            uniform &= labels[dy:dy + H - 2, dx:dx + W - 2] == centre
    core[1:-1, 1:-1] = uniform
    return core


#: how far (pixels) an anti-aliased edge pixel looks for the objects and background it lies between
EDGE_REACH = 2.0


def label_image_masks(labels: np.ndarray, exact: bool, name: str = "mask") -> list[np.ndarray]:
    """A label image (H,W) int (0 = background) → one (H,W) bool mask per object, in value order.

    A single non-zero value is one object, whatever its size. With several, an object is a value
    that fills at least one 3×3 square somewhere (objects smaller than that: give one binary mask
    per object instead).

    * Exact images (``exact=True``: palette, 16-bit): every pixel of an object's value is the
      object's; any other non-zero value is one error that names it.
    * Grey images: anti-aliased edges are expected. An object's pixels are the connected regions
      of its value that hold a 3×3 square; the background's are the zeros. Every other pixel is
      an edge pixel and joins, of the objects and background with pixels within
      :data:`EDGE_REACH` of it (else the closest ones), the one nearest in value (ties to the
      lower value): a smooth white-on-black mask is one object bounded at mid-grey, and the edge
      where two objects meet is split between them. A value above every object's cannot be an
      edge between them: one error that names it.
    """
    from scipy import ndimage

    values = [int(v) for v in np.unique(labels) if v != 0]
    if len(values) <= 1:
        return [labels == v for v in values]
    core = flat_cores(labels)
    objects = sorted({int(v) for v in np.unique(labels[core])} - {0})
    stray = [v for v in values if v not in objects]
    if stray and (exact or not objects or max(stray) > objects[-1]):
        shown = ", ".join(map(str, stray[:8])) + (" …" if len(stray) > 8 else "")
        raise LabelImageError(
            f"{name}: value(s) {shown} fill no 3×3 square, so they are neither objects nor "
            "anti-aliased edges between objects: save the label image with exact values (no "
            "anti-aliasing), or give one binary mask per object")
    if exact:
        return [labels == v for v in objects]
    owned = [labels == 0]
    for v in objects:
        regions, _ = ndimage.label(labels == v)
        owned.append(np.isin(regions, np.unique(regions[core & (labels == v)])))
    edge = ~np.any(owned, axis=0)
    if edge.any():
        levels = np.array([0, *objects])
        distance = np.stack([ndimage.distance_transform_edt(~own) if own.any() else np.full(labels.shape, np.inf)
                             for own in owned])[:, edge]                      # (levels, edge pixels)
        near = distance <= np.maximum(EDGE_REACH, distance.min(0))
        cost = np.where(near, np.abs(labels[edge][None, :] - levels[:, None]), np.inf)
        labels = labels.copy()
        labels[edge] = levels[cost.argmin(0)]
    return [labels == v for v in objects]
