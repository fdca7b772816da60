"""VIPSeg reader (official preprocessed layout) and the panoptic → component-labels step.

Layout::

    VIPSeg_720P/images/<video>/<frame>.jpg
    VIPSeg_720P/panomasks/<video>/<frame>.png      raw single-channel ids
    VIPSeg_720P/panomasksRGB/<video>/<frame>.png   COCO-panoptic RGB ids (optional)
    VIPSeg_720P/{train,val,test}.txt               one video name per line

Raw mask encoding: 0 = void; 1..124 = stuff category id; a thing segment is
``category × 100 + instance`` (values > 124, e.g. person 61 → 6100, 6101, …); the value 200
is a known glitch and is read as void. RGB masks encode ``id = R + 256·G + 65536·B``.
Frame names are original frame indices, not always contiguous: frames sort numerically.

Component selection for the evaluation protocol: thing segments are components; they are ranked
by mask motion over the clip (moving things first), and at most ``max_components`` (6) are kept
as labels 1..s (0 = background). Stuff joins only when ``include_stuff`` is set.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VOID = 0
GLITCH = 200
NUM_CATEGORIES = 124
THING_BASE = 100
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class VIPSegError(ValueError):
    """The folder does not have the VIPSeg layout, or a video/frame is missing or broken."""


def decode_raw(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """raw: (…) int panomask values → (segment ids, category ids, instance ids), each (…) int32.

    Void (0) and the glitch value 200 → segment 0, category 0, instance −1. Stuff v in 1..124 →
    category v, instance −1. Thing v > 124 → category v // 100, instance v % 100 (6100 → 61, 0).
    Negative values or thing categories above 124 raise.
    """
    raw = np.asarray(raw).astype(np.int64)
    seg = np.where(raw == GLITCH, VOID, raw)
    is_thing = seg > NUM_CATEGORIES
    cat = np.where(is_thing, seg // THING_BASE, seg)
    inst = np.where(is_thing, seg % THING_BASE, -1)
    bad = (seg < 0) | (cat > NUM_CATEGORIES)
    if bad.any():
        raise VIPSegError(f"mask values outside the VIPSeg encoding: {np.unique(raw[bad])[:5].tolist()}")
    return seg.astype(np.int32), cat.astype(np.int32), inst.astype(np.int32)


def is_thing_id(segment_id: int) -> bool:
    """A raw segment id (glitch already mapped to void) is a thing instance iff it is > 124."""
    return segment_id > NUM_CATEGORIES and segment_id != GLITCH


def decode_rgb(rgb: np.ndarray) -> np.ndarray:
    """rgb: (H, W, 3) uint8 COCO-panoptic PNG → (H, W) int64 ids = R + 256·G + 65536·B."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise VIPSegError(f"RGB panoptic mask must be (H, W, 3), got {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _frame_number(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    if not digits:
        raise VIPSegError(f"{path}: frame name has no number")
    return int(digits[-1])


@dataclass
class VIPSegVideo:
    """One video: frame image paths and raw mask paths, matched by frame name, numeric order."""

    name: str
    frames: list[Path]
    masks: list[Path | None]

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, count: int | None = None, size: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """First ``count`` frames → (frames (T,H,W,3) uint8, segments (T,H,W) int32 or None).

        ``size=(W, H)`` resizes to cover and centre-crops (nearest-neighbour for masks, so ids
        stay ids). Segments are raw ids with the glitch value mapped to void.
        """
        from PIL import Image

        n = len(self.frames) if count is None else min(count, len(self.frames))
        if n == 0:
            raise VIPSegError(f"video {self.name}: no frames")
        imgs = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in self.frames[:n]])
        segs = None
        if any(mask is None for mask in self.masks[:n]):
            log.warning("video %s: %d of its first %d frames have no mask", self.name,
                        sum(mask is None for mask in self.masks[:n]), n)
        else:
            segs = np.stack([read_mask(mask) for mask in self.masks[:n]])
            if segs.shape[1:] != imgs.shape[1:3]:
                raise VIPSegError(f"video {self.name}: masks {segs.shape[1:]} vs frames {imgs.shape[1:3]}")
        if size is not None:
            from trackgo_data.video import resize_crop

            imgs = resize_crop(imgs, *size)
            if segs is not None:
                segs = resize_crop_labels(segs, *size)
        return imgs, segs


def read_mask(path: Path) -> np.ndarray:
    """A panomask PNG (raw single channel, or COCO-panoptic RGB) → (H, W) int32 segment ids."""
    from PIL import Image

    img = np.asarray(Image.open(path))
    if img.ndim == 3:
        return decode_rgb(img[..., :3]).astype(np.int32)
    return decode_raw(img)[0]


def resize_crop_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """labels (T, H0, W0) int → (T, height, width), nearest-neighbour cover + centre crop (the
    same geometry as ``video.resize_crop``)."""
    import cv2

    from trackgo_data.video import cover_size

    t, h0, w0 = labels.shape
    cw, ch = cover_size(w0, h0, width, height)
    y0, x0 = (ch - height) // 2, (cw - width) // 2
    out = np.empty((t, height, width), np.int32)
    for i in range(t):
        r = cv2.resize(labels[i].astype(np.float32), (cw, ch), interpolation=cv2.INTER_NEAREST)
        out[i] = r[y0:y0 + height, x0:x0 + width].astype(np.int32)
    return out


class VIPSeg:
    """Reader for a ``VIPSeg_720P`` folder. ``masks="raw"`` (panomasks) or ``"rgb"`` (panomasksRGB)."""

    def __init__(self, root: str | Path, masks: str = "raw"):
        self.root = Path(root)
        if masks not in ("raw", "rgb"):
            raise VIPSegError(f"masks must be 'raw' or 'rgb', got {masks!r}")
        self.mask_dir = self.root / ("panomasks" if masks == "raw" else "panomasksRGB")
        if not (self.root / "images").is_dir():
            raise VIPSegError(f"{self.root} is not a VIPSeg_720P folder (no images/ inside)")

    def split(self, name: str) -> list[str]:
        """Video names listed in ``<name>.txt`` (order kept, blanks skipped)."""
        path = self.root / f"{name}.txt"
        if not path.is_file():
            raise VIPSegError(f"{path} is missing: VIPSeg split lists are train.txt, val.txt, test.txt")
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]

    def video(self, name: str) -> VIPSegVideo:
        img_dir = self.root / "images" / name
        if not img_dir.is_dir():
            raise VIPSegError(f"video {name}: {img_dir} is missing")
        frames = sorted((p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_frame_number)
        masks: list[Path | None] = []
        for frame in frames:
            mask = self.mask_dir / name / f"{frame.stem}.png"
            masks.append(mask if mask.is_file() else None)
        return VIPSegVideo(name, frames, masks)


def segment_motion(segments: np.ndarray, sid: int) -> float:
    """Mask motion of segment ``sid`` over the clip: mean over frames t ≥ 1 of the displacement
    of its centroid from frame 0 plus 1 − IoU(mask_t, mask_0) scaled by the mask's equivalent
    radius, in pixels. Frames where the segment is absent count its last known state."""
    m0 = segments[0] == sid
    area0 = m0.sum()
    if area0 == 0:
        return 0.0
    ys, xs = np.nonzero(m0)
    c0 = np.array([xs.mean(), ys.mean()])
    radius = np.sqrt(area0 / np.pi)
    total, last = 0.0, 0.0
    for t in range(1, len(segments)):
        mt = segments[t] == sid
        if mt.any():
            ys, xs = np.nonzero(mt)
            shift = np.linalg.norm(np.array([xs.mean(), ys.mean()]) - c0)
            iou = (mt & m0).sum() / (mt | m0).sum()
            last = shift + (1.0 - iou) * radius
        total += last
    return total / max(1, len(segments) - 1)


def select_components(segments: np.ndarray, max_components: int = 6, include_stuff: bool = False,
                      min_area: float = 0.001) -> tuple[np.ndarray, list[int]]:
    """segments (T, H, W) int raw ids → (labels (T, H, W) int32 with 0 background and 1..s,
    chosen raw ids (s,) in label order).

    Candidates: segments present in frame 0 covering ≥ ``min_area`` of it; things only unless
    ``include_stuff``. Ranked by :func:`segment_motion` (descending; ties by larger frame-0 area,
    then id), so moving things come first; the top ``max_components`` are kept.
    """
    segments = np.asarray(segments)
    if segments.ndim != 3:
        raise VIPSegError(f"segments must be (T, H, W), got {segments.shape}")
    ids, counts = np.unique(segments[0], return_counts=True)
    total = segments[0].size
    cands = []
    for sid, cnt in zip(ids.tolist(), counts.tolist()):
        if sid == VOID or cnt / total < min_area:
            continue
        if not include_stuff and not is_thing_id(sid):
            continue
        cands.append((-segment_motion(segments, sid), -cnt, sid))
    chosen = [sid for _, _, sid in sorted(cands)[:max_components]]
    labels = np.zeros(segments.shape, np.int32)
    for j, sid in enumerate(chosen):
        labels[segments == sid] = j + 1
    return labels, chosen
