"""Sample format v1: one training clip as a set of webdataset members (docs/sample_format.md).

A sample is stored under the key ``<video_id>-<start frame, 6 digits>`` (no dots, so webdataset
splits ``<key>.<member>`` unambiguously) with the members listed in :data:`MEMBERS`.

Shapes (L frames, H×W pixels, N points, s ≤ 6 components)::

    image       (H, W, 3)      uint8   first frame, RGB (image.png, lossless)
    video       (L, H, W, 3)   uint8   the clip (video.mp4, H.264 yuv420p, visually lossless)
    trajectory  (L, H, W, 3)   uint8   rendered P (trajectory.mp4, libx264rgb qp 0, lossless)
    tracks      (L, N, 2)      float32 x, y pixels at H×W, origin at the top-left pixel's centre
    visibility  (L, N)         bool
    components  (N,)           int64   in 0..s-1
    masks       (L, H/8, W/8)  uint8   0 background, j+1 for component j (see downsample_labels)
    meta        dict                   meta.json
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import FORMAT_VERSION
MASK_STRIDE = 8
MEMBERS = (
    "image.png",
    "video.mp4",
    "trajectory.mp4",
    "tracks.npy",
    "visibility.npy",
    "components.npy",
    "masks.npy",
    "meta.json",
)
KEY_RE = re.compile(r"^[A-Za-z0-9_]+-\d{6}$")


class SampleError(ValueError):
    """A sample (in memory or decoded from a shard) breaks the format contract."""


def sanitize_video_id(name: str) -> str:
    """Map a source file stem to ``[A-Za-z0-9_]+`` (anything else becomes ``_``)."""
    vid = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return vid or "video"


def sample_key(video_id: str, start: int) -> str:
    """``<sanitized video_id>-<start:06d>``; raises for a negative or >6-digit start."""
    if not 0 <= int(start) <= 999_999:
        raise SampleError(f"start frame {start} does not fit 6 digits")
    return f"{sanitize_video_id(video_id)}-{int(start):06d}"


def rescale_tracks(tracks: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Point coordinates (..., 2) x, y in pixels of a W0×H0 picture (``from_size`` = (W0, H0)) →
    float32 in pixels of the same picture resized to ``to_size`` = (W, H).

    Pixel-centre convention (integer coordinates are pixel centres; a W0-wide picture spans
    −0.5 … W0 − 0.5), the one every resize here follows (image, video, masks)::

        x' = (x + 0.5) · W / W0 − 0.5,    y' = (y + 0.5) · H / H0 − 0.5
    """
    scale = np.array([to_size[0] / from_size[0], to_size[1] / from_size[1]], np.float32)
    half = np.float32(0.5)
    return (np.asarray(tracks, np.float32) + half) * scale - half


def downsample_labels(labels: np.ndarray, stride: int = MASK_STRIDE) -> np.ndarray:
    """Per-block plurality vote of a label map.

    labels: (L, H, W) int, 0 background, 1..s components; H and W divisible by ``stride``.
    Returns (L, H/stride, W/stride) uint8: the most frequent label in each stride×stride block,
    ties going to the smaller label (so an even split with background stays background).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise SampleError(f"labels must be (L,H,W), got shape {labels.shape}")
    L, H, W = labels.shape
    if H % stride or W % stride:
        raise SampleError(f"frame size {W}x{H} is not divisible by the mask stride {stride}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise SampleError("labels must lie in 0..255")
    lab8 = labels.astype(np.uint8)
    n = int(lab8.max()) + 1 if lab8.size else 1
    counts = []  # per label: (L·H/stride, W/stride) pixel counts per block (≤ 64 fits uint8 for stride 8)
    acc = np.uint8 if stride * stride < 256 else np.int32
    for c in range(n):
        rows = (lab8 == c).view(np.uint8).reshape(L * H // stride, stride, W).sum(1, dtype=acc)
        counts.append(rows.reshape(L * H // stride, W // stride, stride).sum(-1, dtype=acc))
    return np.stack(counts).argmax(0).astype(np.uint8).reshape(L, H // stride, W // stride)


def downsample_coarse_labels(coarse: np.ndarray | None, height: int, width: int,
                             stride: int = MASK_STRIDE) -> np.ndarray | None:
    """Masks of H×W labels that are the nearest-neighbour upscale of ``coarse``, without building them.

    coarse: (L, h, w) int with H = f·h and W = f·w for an integer f dividing ``stride``. Each
    stride×stride block then covers whole coarse pixels, each repeated f² times, so the vote of
    :func:`downsample_labels` equals the vote over (stride/f)² coarse pixels (counts scale by f²,
    ties stay ties). Returns (L, H/stride, W/stride) uint8, or None when the sizes do not fit
    (the caller then votes on the full-resolution labels).
    """
    if coarse is None:
        return None
    coarse = np.asarray(coarse)
    if coarse.ndim != 3 or height % stride or width % stride:
        return None
    h, w = coarse.shape[1:]
    if height % h or width % w or height // h != width // w or stride % (height // h):
        return None
    return downsample_labels(coarse, stride // (height // h))


@dataclass
class Sample:
    """One clip in format v1 (shapes in the module docstring)."""

    key: str
    image: np.ndarray
    video: np.ndarray
    trajectory: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray
    components: np.ndarray
    masks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    def validate(self) -> None:
        """Raise :class:`SampleError` naming the first broken rule."""
        problems = validate_arrays(self)
        if problems:
            raise SampleError(f"sample {self.key}: " + "; ".join(problems))


def validate_arrays(s: Sample) -> list[str]:
    """All format violations of a sample (empty list when valid)."""
    out: list[str] = []
    if not KEY_RE.match(s.key):
        out.append(f"key {s.key!r} is not <[A-Za-z0-9_]+>-<6 digits>")
    v = np.asarray(s.video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8:
        return out + [f"video must be (L,H,W,3) uint8, got {v.shape} {v.dtype}"]
    L, H, W, _ = v.shape
    checks = [
        ("image", s.image, (H, W, 3), np.uint8),
        ("trajectory", s.trajectory, (L, H, W, 3), np.uint8),
        ("masks", s.masks, (L, H // MASK_STRIDE, W // MASK_STRIDE), np.uint8),
    ]
    for name, arr, shape, dtype in checks:
        arr = np.asarray(arr)
        if arr.shape != shape or arr.dtype != dtype:
            out.append(f"{name} must be {shape} {np.dtype(dtype).name}, got {arr.shape} {arr.dtype}")
    tr, vis, comp = np.asarray(s.tracks), np.asarray(s.visibility), np.asarray(s.components)
    if tr.ndim != 3 or tr.shape[0] != L or tr.shape[2] != 2 or tr.dtype != np.float32:
        out.append(f"tracks must be (L={L},N,2) float32, got {tr.shape} {tr.dtype}")
        return out
    N = tr.shape[1]
    if vis.shape != (L, N) or vis.dtype != np.bool_:
        out.append(f"visibility must be ({L},{N}) bool, got {vis.shape} {vis.dtype}")
    if comp.shape != (N,) or not np.issubdtype(comp.dtype, np.integer):
        out.append(f"components must be ({N},) int, got {comp.shape} {comp.dtype}")
    elif N and (comp.min() < 0 or comp.max() > 5):
        out.append("components must lie in 0..5")
    return out


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_png(image: np.ndarray) -> bytes:
    """image (H,W,3) uint8 RGB → PNG bytes (lossless, deterministic).

    Written by OpenCV's libpng with one fixed row filter (Paeth) and zlib level 1 with the RLE
    strategy: about half the time of an adaptive-filter encode at a smaller size on video frames.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise SampleError(f"image must be (H,W,3) uint8, got {image.shape} {image.dtype}")
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise SampleError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def encode_videos(video: np.ndarray, trajectory: np.ndarray, fps: float, crf: int | None = None
                  ) -> tuple[bytes, bytes]:
    """(video.mp4 bytes, trajectory.mp4 bytes) through :mod:`trackgo_data.video`'s encoders:
    H.264 yuv420p (``crf``: the encoder's visually lossless default when None) and lossless
    libx264rgb qp 0."""
    from . import video as vio

    kw = {} if crf is None else {"crf": int(crf)}
    return vio.encode_mp4(video, fps=fps, **kw), vio.encode_lossless_rgb(trajectory, fps=fps)


def encode_sample(sample: Sample, *, crf: int | None = None, videos: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    """Sample → webdataset members ``{"__key__": key, "image.png": bytes, …}`` (all bytes).

    ``videos`` may carry already-encoded (video.mp4, trajectory.mp4) bytes.
    """
    sample.validate()
    fps = float(sample.meta.get("fps", 25.0))
    vbytes, tbytes = videos if videos is not None else encode_videos(sample.video, sample.trajectory, fps, crf)
    meta = dict(sample.meta)
    meta.setdefault("key", sample.key)
    meta.setdefault("format_version", FORMAT_VERSION)
    return {
        "__key__": sample.key,
        "image.png": encode_png(sample.image),
        "video.mp4": vbytes,
        "trajectory.mp4": tbytes,
        "tracks.npy": _npy(np.asarray(sample.tracks, np.float32)),
        "visibility.npy": _npy(np.asarray(sample.visibility, np.bool_)),
        "components.npy": _npy(np.asarray(sample.components, np.int64)),
        "masks.npy": _npy(np.asarray(sample.masks, np.uint8)),
        "meta.json": (json.dumps(meta, sort_keys=True, separators=(",", ":")) + "\n").encode(),
    }


def decode_sample(members: dict[str, Any], *, decode_video: bool = True,
                  decode_trajectory: bool | None = None) -> Sample:
    """Webdataset members (raw bytes, as read from a shard) → :class:`Sample`.

    Raises :class:`SampleError` when a member is missing. With ``decode_video=False`` the two
    mp4 members are left undecoded (``video``/``trajectory`` are empty arrays) — for quick checks.
    ``decode_trajectory`` (default: as ``decode_video``) decides for trajectory.mp4 alone.
    """
    missing = [m for m in MEMBERS if m not in members]
    key = members.get("__key__", "?")
    if missing:
        raise SampleError(f"sample {key}: missing member(s) {', '.join(missing)}")
    image = decode_png(members["image.png"])
    from . import video as vio

    if decode_trajectory is None:
        decode_trajectory = decode_video
    empty = np.zeros((0,), np.uint8)
    video = vio.decode_mp4(bytes(members["video.mp4"])) if decode_video else empty
    trajectory = vio.decode_mp4(bytes(members["trajectory.mp4"])) if decode_trajectory else empty
    return Sample(
        key=str(key),
        image=image,
        video=video,
        trajectory=trajectory,
        tracks=_load_npy(members["tracks.npy"]),
        visibility=_load_npy(members["visibility.npy"]),
        components=_load_npy(members["components.npy"]),
        masks=_load_npy(members["masks.npy"]),
        meta=json.loads(bytes(members["meta.json"]).decode()),
    )


def make_sample(
    *,
    video_id: str,
    start: int,
    frames: np.ndarray,
    labels: np.ndarray,
    tracks: np.ndarray,
    visibility: np.ndarray,
    components: np.ndarray,
    trajectory: np.ndarray,
    source: str,
    fps: float,
    config_hash: str,
    backends: dict[str, dict[str, str]],
    stats: dict[str, Any],
    masks: np.ndarray | None = None,
    profile: str = "",
) -> Sample:
    """Assemble a format-v1 :class:`Sample` (and its meta.json) from one processed clip.

    frames (L,H,W,3) uint8; labels (L,H,W) int (0 bg, j+1 component j); tracks (L,N,2) float32;
    visibility (L,N) bool; components (N,) int; trajectory (L,H,W,3) uint8 (rendered P);
    masks (L,H/8,W/8) uint8: ``downsample_labels(labels)`` when None, else already computed from
    the same labels (e.g. by :func:`downsample_coarse_labels`). profile: the build profile that made it
    (``local``, ``paper``, ``wan``), recorded in meta.json.
    """
    from .render import COLOURS

    L, H, W, _ = frames.shape
    components = np.asarray(components, np.int64)
    first = np.asarray(labels[0])
    comp_meta = []
    for j in sorted(set(int(c) for c in components)):
        comp_meta.append({
            "index": j,
            "area_ratio": float((first == j + 1).mean()),
            "num_points": int((components == j).sum()),
            "colour": [int(c) for c in COLOURS[j]],
        })
    key = sample_key(video_id, start)
    meta = {
        "key": key,
        "video_id": sanitize_video_id(video_id),
        "source": str(source),
        "start_frame": int(start),
        "num_frames": int(L),
        "fps": float(fps),
        "width": int(W),
        "height": int(H),
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash,
        "backends": backends,
        "profile": profile,
        "mask_stride": MASK_STRIDE,
        "mask_operator": "plurality",
        "components": comp_meta,
        "stats": {k: _jsonable(v) for k, v in sorted(stats.items())},
    }
    sample = Sample(
        key=key,
        image=np.ascontiguousarray(frames[0]),
        video=frames,
        trajectory=trajectory,
        tracks=np.asarray(tracks, np.float32),
        visibility=np.asarray(visibility, np.bool_),
        components=components,
        masks=downsample_labels(labels) if masks is None else np.asarray(masks),
        meta=meta,
    )
    sample.validate()
    return sample


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
