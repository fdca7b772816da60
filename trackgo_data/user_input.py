"""Inference-time motion input: user masks + arrows → point tracks → P (drawn by ``render``).

Points inside each mask come from the same K rule and K-means as the training data
(:func:`trackgo_data.points.sample_points`). Each arrow (two points, or a polyline of more) is
split over the L−1 frame steps by arc length into equal per-frame displacements
T = {(Δx_i, Δy_i)}, i = 1..L−1, which move every point of its mask. Camera motion: one mask
covering the whole image and one arrow.

Colours follow the training data: segmenters number a clip's components by first-frame area,
largest first (:func:`trackgo_data.segment.relabel_by_area`), and component j is drawn in
``COLOURS[j]``. User objects are numbered by the same function, so the largest mask is red
whatever order the masks were given in (equal areas keep the given order). Training samples hold
at most :data:`MAX_OBJECTS` components; more objects are refused.

All checks of user input live here (:func:`check_input`), for ``trackgo generate`` and the studio
alike: no mask, an empty mask, a mask of another size, an arrow that starts outside its mask,
an arrow that ends (or bends) off the image, more objects than the model was trained with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from trackgo_data.label_image import LabelImageError, label_image_masks
from trackgo_data.points import sample_points
from trackgo_data.render import COLOURS, overlay_labels, overlay_tracks, render_trajectories
from trackgo_data.sample import rescale_tracks
from trackgo_data.segment import MAX_COMPONENTS, relabel_by_area

MAX_OBJECTS = MAX_COMPONENTS  # the most components a training sample ever holds


class UserInputError(ValueError):
    """Masks or arrows given by a user do not fit together (the message says what to change)."""


def checkpoint_max_objects(checkpoint: str | Path | None) -> int:
    """The most objects a TrackGo checkpoint accepts: ``max_components`` of its
    ``trackgo_config.json`` when the checkpoint records one, else :data:`MAX_OBJECTS`."""
    if checkpoint is None:
        return MAX_OBJECTS
    path = Path(checkpoint) / "trackgo_config.json"
    if not path.is_file():
        return MAX_OBJECTS
    value = json.loads(path.read_text()).get("max_components", MAX_OBJECTS)
    if not isinstance(value, int) or not 1 <= value <= len(COLOURS):
        raise ValueError(f"{path}: max_components must be an integer in 1..{len(COLOURS)}, got {value!r}")
    return value


def load_image(path: str | Path) -> np.ndarray:
    """Any image file → (H,W,3) uint8 RGB."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"image not found: {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


#: image modes whose values are exact labels (palette indices, integers); other modes are read as grey
EXACT_LABEL_MODES = ("P", "I", "I;16")


def load_masks(paths: str | Path | Sequence[str | Path], size: tuple[int, int] | None = None
               ) -> list[np.ndarray]:
    """Masks from images → list of (H,W) bool, ``size = (W, H)`` the image size to check against.

    Several paths: one binary mask each (non-zero = inside). One path: a label image, read by
    :func:`trackgo_data.label_image.label_image_masks` (one binary mask when it holds a single
    non-zero value; a palette or 16-bit image holds exact labels; any other image is read as
    grey levels, anti-aliased edges included).
    """
    from PIL import Image

    single = isinstance(paths, (str, Path))
    plist = [Path(paths)] if single else [Path(p) for p in paths]
    if not plist:
        raise UserInputError("no mask given: give one mask per object (camera motion: one "
                             "mask covering the whole image)")
    arrays, exact = [], []
    for path in plist:
        if not path.is_file():
            raise UserInputError(f"mask file not found: {path}")
        with Image.open(path) as im:
            exact.append(im.mode in EXACT_LABEL_MODES)
            if im.mode not in (*EXACT_LABEL_MODES, "L", "1"):
                im = im.convert("L")
            arrays.append(np.asarray(im).astype(np.int64))
    which = [f"mask {p.name}" if single else f"object {j + 1}: mask {p.name}" for j, p in enumerate(plist)]
    for name, array in zip(which, arrays):
        if size is not None and (array.shape[1], array.shape[0]) != tuple(size):
            raise UserInputError(f"{name} is {array.shape[1]}×{array.shape[0]} but the image is "
                                 f"{size[0]}×{size[1]}: draw the masks on this image")
    if single:
        try:
            masks = label_image_masks(arrays[0], exact=exact[0], name=which[0])
        except LabelImageError as exc:
            raise UserInputError(str(exc)) from None
        if not masks:
            raise UserInputError(f"{which[0]} is empty (no non-zero pixel)")
        return masks
    masks = [array != 0 for array in arrays]
    for name, mask in zip(which, masks):
        if not mask.any():
            raise UserInputError(f"{name} is empty (no non-zero pixel): paint at least one pixel of the object")
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


def split_arrows(text: str) -> list[str]:
    """"x0,y0,x1,y1; x0,y0,x1,y1,x2,y2" → one arrow string per object (``;`` separates objects)."""
    parts = [p.strip() for p in (text or "").split(";")]
    while parts and not parts[-1]:
        parts.pop()
    return parts


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


def _pixel(v: float) -> int:
    return int(np.floor(v + 0.5))


def check_input(masks: Sequence[np.ndarray], arrows: Sequence[np.ndarray | str],
                image_size: tuple[int, int] | None = None, max_objects: int = MAX_OBJECTS
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate s masks (H,W) + s arrows against each other, the image (``image_size`` = (W, H))
    and the model (``max_objects``) → (masks as bool, arrows as (P,2) float64). Objects are
    numbered from 1 in messages. Raises one :class:`UserInputError` naming what to change."""
    masks = [np.asarray(m) for m in masks]
    if not masks:
        raise UserInputError("no mask given: give one mask per object (camera motion: one mask "
                             "covering the whole image)")
    n = len(masks)
    if n > max_objects:
        raise UserInputError(f"{n} objects, but the model was trained with at most {max_objects}: "
                             f"remove or merge {n - max_objects} object(s)")
    if len(arrows) != n:
        raise UserInputError(f"{len(arrows)} arrow(s) for {n} mask(s): give one arrow per mask, "
                             "in the same order")
    if image_size is None:
        image_size = (masks[0].shape[-1], masks[0].shape[0]) if masks[0].ndim == 2 else (0, 0)
    W, H = int(image_size[0]), int(image_size[1])
    out_masks = []
    for j, mask in enumerate(masks):
        if mask.ndim != 2 or mask.shape != (H, W):
            got = f"{mask.shape[1]}×{mask.shape[0]}" if mask.ndim == 2 else f"of shape {mask.shape}"
            raise UserInputError(f"object {j + 1}: mask is {got} but the image is {W}×{H}: "
                                 "draw the masks on this image (sizes differ)")
        mask = mask.astype(bool)
        if not mask.any():
            raise UserInputError(f"object {j + 1}: mask is empty: paint at least one pixel of the object")
        out_masks.append(mask)
    out_arrows = []
    for j, arrow in enumerate(arrows):
        if isinstance(arrow, str):
            if not arrow.strip():
                raise UserInputError(f"object {j + 1}: no arrow: give its start on the object and its end")
            try:
                arrow = parse_arrow(arrow)
            except UserInputError as exc:
                raise UserInputError(f"object {j + 1}: {exc}") from None
        arrow = np.asarray(arrow, np.float64)
        if arrow.ndim != 2 or arrow.shape[1] != 2 or len(arrow) < 2:
            raise UserInputError(f"object {j + 1}: an arrow needs ≥ 2 points (x,y), got shape {arrow.shape}")
        if not np.isfinite(arrow).all():
            raise UserInputError(f"object {j + 1}: arrow coordinates must be finite")
        x0, y0 = arrow[0]
        if not (0 <= _pixel(x0) <= W - 1 and 0 <= _pixel(y0) <= H - 1):
            raise UserInputError(f"object {j + 1}: arrow starts at ({x0:g}, {y0:g}), outside the "
                                 f"{W}×{H} image: start it on the object")
        mask = out_masks[j]
        if not mask[_pixel(y0), _pixel(x0)]:
            ys, xs = np.nonzero(mask)
            raise UserInputError(f"object {j + 1}: arrow starts at ({x0:g}, {y0:g}), outside its mask "
                                 f"(which spans x {xs.min()}–{xs.max()}, y {ys.min()}–{ys.max()}): "
                                 "start the arrow on the object")
        for i, (x, y) in enumerate(arrow[1:], start=1):
            if not (0 <= _pixel(x) <= W - 1 and 0 <= _pixel(y) <= H - 1):
                where = "ends" if i == len(arrow) - 1 else "bends"
                raise UserInputError(f"object {j + 1}: arrow {where} at ({x:g}, {y:g}), off the {W}×{H} "
                                     f"image: keep it within x 0–{W - 1}, y 0–{H - 1}")
        out_arrows.append(arrow)
    return out_masks, out_arrows


@dataclass
class UserMotion:
    """The motion condition of one request, in input-image pixels.

    tracks (L,N,2) float32 x,y; visibility (L,N) bool (False where a point leaves the image);
    components (N,) int64 (colour index, training order); labels (H,W) int32 (0 background,
    component + 1); object_components: object j (given order) → its component.
    """

    tracks: np.ndarray
    visibility: np.ndarray
    components: np.ndarray
    labels: np.ndarray
    object_components: list[int]


def object_labels(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """s masks (H,W) bool (a later mask takes shared pixels) → (labels (H,W) int32 numbered like
    training data: 1 = largest area, …; object j → component index). Raises when a mask is hidden
    entirely by later masks."""
    H, W = masks[0].shape
    given = np.zeros((H, W), np.int32)
    for j, mask in enumerate(masks):
        given[mask] = j + 1
    comps = []
    for j in range(len(masks)):
        if not (given == j + 1).any():
            raise UserInputError(f"object {j + 1}: mask is entirely covered by later masks")
    labels = relabel_by_area(given[None], max_components=len(masks))[0]
    for j in range(len(masks)):
        ys, xs = np.nonzero(given == j + 1)
        comps.append(int(labels[ys[0], xs[0]]) - 1)
    return labels, comps


def build_motion(masks: Sequence[np.ndarray], arrows: Sequence[np.ndarray | str], num_frames: int,
                 seed: int = 0, max_objects: int = MAX_OBJECTS,
                 image_size: tuple[int, int] | None = None) -> UserMotion:
    """masks: s × (H,W); arrows: s × (P,2) (or strings), same order → :class:`UserMotion`."""
    if num_frames < 2:
        raise UserInputError(f"num_frames must be >= 2, got {num_frames}")
    masks, arrows = check_input(masks, arrows, image_size, max_objects)
    labels, obj_comp = object_labels(masks)
    points, components = sample_points(labels, seed)
    offsets = np.zeros((len(masks), num_frames, 2))
    for j, arrow in enumerate(arrows):
        offsets[obj_comp[j]] = arrow_displacements(arrow, num_frames)
    tracks = (points[None, :, :] + offsets[components].transpose(1, 0, 2)).astype(np.float32)
    H, W = labels.shape
    return UserMotion(tracks, in_image(tracks, W, H), components, labels, obj_comp)


def arrows_to_tracks(masks: Sequence[np.ndarray], arrows: Sequence[np.ndarray | str], num_frames: int,
                     seed: int = 0, max_objects: int = MAX_OBJECTS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """masks: s × (H,W) bool; arrows: s × (P,2) (or strings) → tracks (L,N,2) float32,
    visibility (L,N) bool, components (N,) int64 (see :func:`build_motion`)."""
    motion = build_motion(masks, arrows, num_frames, seed, max_objects)
    return motion.tracks, motion.visibility, motion.components


def in_image(tracks: np.ndarray, width: int, height: int) -> np.ndarray:
    """tracks (L,N,2) → (L,N) bool: inside the width × height image."""
    return (tracks[..., 0] >= 0) & (tracks[..., 0] <= width - 1) \
        & (tracks[..., 1] >= 0) & (tracks[..., 1] <= height - 1)


#: the longest output side chosen by default (SVD-xt's training width)
MAX_SIDE = 1024


def fit_size(width: int, height: int, multiple: int, max_side: int) -> tuple[int, int]:
    """Output size for a width × height image: scaled down so its longer side is ≤ ``max_side``,
    each side rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    s = min(1.0, max_side / max(width, height))
    return tuple(max(multiple, int(round(v * s / multiple)) * multiple) for v in (width, height))


def output_size(image_size: tuple[int, int], width: int | None, height: int | None, multiple: int,
                max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The (width, height) to generate for an image of ``image_size`` = (W, H): the sides given,
    the others from :func:`fit_size`. Raises :class:`UserInputError` unless both are multiples
    of ``multiple`` (what the model takes)."""
    fit_w, fit_h = fit_size(int(image_size[0]), int(image_size[1]), multiple, max_side)
    width = fit_w if width is None else int(width)
    height = fit_h if height is None else int(height)
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise UserInputError(f"height and width must be multiples of {multiple} for this model; got "
                             f"{width}x{height} (the default for this image: {fit_w}x{fit_h})")
    return width, height


@dataclass
class Prepared:
    """One request at the output size: image (H,W,3) uint8, tracks (L,N,2) float32 in output
    pixels, visibility (L,N), P (L,H,W,3) uint8, and the motion in input pixels."""

    image: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray
    P: np.ndarray
    motion: UserMotion

    @property
    def components(self) -> np.ndarray:
        return self.motion.components


def prepare(image_path: str | Path, mask_paths: Sequence[str | Path], arrows: Sequence[np.ndarray | str],
            num_frames: int, height: int | None = None, width: int | None = None, seed: int = 0,
            max_objects: int = MAX_OBJECTS) -> Prepared:
    """Image file + mask files (several binary masks, or one label PNG) + arrows → :class:`Prepared`.
    The output size defaults to the image's; the image is resized to it and the tracks are
    rescaled with the pixel-centre convention of training data
    (:func:`trackgo_data.sample.rescale_tracks`) before P is rendered."""
    from PIL import Image

    image = load_image(image_path)
    h0, w0 = image.shape[:2]
    mask_paths = list(mask_paths)
    masks = load_masks(mask_paths[0] if len(mask_paths) == 1 else mask_paths, size=(w0, h0))
    motion = build_motion(masks, arrows, num_frames, seed, max_objects, image_size=(w0, h0))
    height, width = int(height or h0), int(width or w0)
    tracks, visibility = motion.tracks, motion.visibility
    if (width, height) != (w0, h0):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
        tracks = rescale_tracks(tracks, (w0, h0), (width, height))
        visibility = visibility & in_image(tracks, width, height)
    P = render_trajectories(tracks, visibility, motion.components, height, width)
    return Prepared(image, tracks, visibility, P, motion)


def preview_image(image: np.ndarray, tracks: np.ndarray, visibility: np.ndarray, components: np.ndarray,
                  labels: np.ndarray | None = None, alpha: float = 0.35) -> np.ndarray:
    """image (H,W,3) uint8 → the masks tinted in their component colours (``labels`` (h,w), any
    size: resized nearest), each track drawn as a line and the control points of frame 0 as the
    squares P holds (the one renderer)."""
    image = np.asarray(image, np.uint8)
    H, W = image.shape[:2]
    out = image
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (H, W):
            ys = np.minimum((np.arange(H) + 0.5) * labels.shape[0] / H, labels.shape[0] - 1).astype(int)
            xs = np.minimum((np.arange(W) + 0.5) * labels.shape[1] / W, labels.shape[1] - 1).astype(int)
            labels = labels[ys][:, xs]
        out = overlay_labels(out, labels, alpha)
    out = overlay_tracks(out, tracks, visibility, components)
    p0 = render_trajectories(tracks[:1], visibility[:1], components, H, W)[0]
    drawn = p0.any(-1)
    out[drawn] = p0[drawn]
    return out
