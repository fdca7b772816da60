"""Video IO on PyAV (libav/ffmpeg): probe, decode with resize + centre crop.

Frames are RGB uint8 arrays ``(T, H, W, 3)``. What the codec says about a source's bytes raises
:class:`VideoError` whose ``reason`` is machine readable (the same strings the filters and the
manifest use): ``empty_file``, ``undecodable``, ``too_short``, ``too_small``. What the storage
says is not about the bytes: an ``OSError`` whose errno is a storage, resource or network error
(:data:`trackgo_data.faults.STORAGE_ERRNOS`: EIO, ESTALE, ENOSPC, EMFILE, ETIMEDOUT, ENOENT, …),
raised by the file system or by libav (``av.error.OSError`` and kin carry the errno), propagates
as it is — when opening, probing or in the middle of decoding — never as a VideoError and never
as a quietly shorter video.

Decoding resizes inside libswscale while converting each frame to RGB (one pass, no full-size
RGB copy), then crops the centre with a numpy slice. A truncated file that decodes partially
returns what decoded; the caller decides whether that is too short.

Encoding (``encode_mp4``, ``encode_lossless_rgb``) lives in :mod:`trackgo_data.video_encode` and
is re-exported here.
"""
from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .faults import STORAGE_ERRNOS
from .video_encode import encode_lossless_rgb, encode_mp4

__all__ = ["EMPTY_FILE", "LOW_FRAME_RATE", "TOO_SHORT", "TOO_SMALL", "UNDECODABLE", "VIDEO_REASONS", "VideoError", "VideoInfo",
           "cover_size", "decode_mp4", "encode_lossless_rgb", "encode_mp4", "get_decode_threads", "is_storage_error",
           "iter_frames", "probe", "pyav_threads_scaler", "read_frames", "read_windows", "resize_crop",
           "set_decode_threads"]

log = logging.getLogger(__name__)

EMPTY_FILE = "empty_file"
UNDECODABLE = "undecodable"
TOO_SHORT = "too_short"
#: the clip profile asks for a higher frame rate than the source has (frames would repeat)
LOW_FRAME_RATE = "low_frame_rate"
TOO_SMALL = "too_small"
VIDEO_REASONS = (EMPTY_FILE, UNDECODABLE, TOO_SHORT, TOO_SMALL, LOW_FRAME_RATE)

#: threads per stream for FFmpeg's decoder and for libswscale's RGB conversion; 0 lets FFmpeg
#: choose (one per core). Decoded frames do not depend on it. A worker process sharing the cores
#: with others lowers it (:func:`set_decode_threads`).
_DECODE_THREADS = 0


def set_decode_threads(n: int) -> None:
    """Threads FFmpeg may use to decode and convert one stream in this process (0 = FFmpeg's
    choice)."""
    global _DECODE_THREADS
    if int(n) < 0:
        raise ValueError(f"decode threads must be >= 0, got {n}")
    _DECODE_THREADS = int(n)


def get_decode_threads() -> int:
    return _DECODE_THREADS


class VideoError(Exception):
    """A source video cannot be used; ``reason`` is one of :data:`VIDEO_REASONS`."""

    def __init__(self, reason: str, message: str = ""):
        if reason not in VIDEO_REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}")
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    codec: str
    duration: float  # seconds


def is_storage_error(exc: BaseException) -> bool:
    """An OSError whose errno is the storage's, the process's or the network's (not the codec's
    verdict on the bytes): it must propagate, never become a :class:`VideoError`."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def _open(path: str | Path | bytes):
    """(container, name) of a source; raises VideoError for what the codec says about its
    bytes, and the OSError itself for storage errors (ENOENT when the file is gone)."""
    import av

    if isinstance(path, (bytes, bytearray, memoryview)):
        if len(path) == 0:
            raise VideoError(EMPTY_FILE, "zero bytes")
        src = io.BytesIO(bytes(path))
        name = "<bytes>"
    else:
        src = name = str(path)
        st = os.stat(src)                      # storage errors and ENOENT propagate with their errno
        if not stat.S_ISREG(st.st_mode):
            raise VideoError(UNDECODABLE, f"{name} is not a regular file")
        if st.st_size == 0:
            raise VideoError(EMPTY_FILE, f"{name} has zero bytes")
    try:
        container = av.open(src, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if is_storage_error(exc):
            raise
        raise VideoError(UNDECODABLE, f"{name}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(UNDECODABLE, f"{name}: no video stream")
    return container, name


def probe(path: str | Path | bytes) -> VideoInfo:
    """Container/stream facts without decoding pixels.

    ``num_frames`` is the stream's frame count when the container records it, else the number
    of demuxed video packets (exact for ordinary files, cheap: no decoding).
    """
    import av

    container, name = _open(path)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        n = int(stream.frames or 0)
        if n <= 0:
            try:
                n = sum(1 for pkt in container.demux(stream) if pkt.size > 0)
            except av.error.FFmpegError as exc:
                if is_storage_error(exc):
                    raise
                n = 0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        else:
            duration = n / fps if fps else 0.0
        if width <= 0 or height <= 0:
            raise VideoError(UNDECODABLE, f"{name}: stream has no frame size")
        return VideoInfo(width, height, fps, n, cc.name or "unknown", duration)
    finally:
        container.close()


def cover_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """Smallest (w, h) with the source aspect ratio that covers ``width × height``."""
    scale = max(width / src_w, height / src_h)
    return max(width, round(src_w * scale)), max(height, round(src_h * scale))


def _centre_crop(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[-3:-1]
    y0, x0 = (h - height) // 2, (w - width) // 2
    return img[..., y0:y0 + height, x0:x0 + width, :]


def resize_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """frames (T,H0,W0,3) or (H0,W0,3) uint8 → resized to cover W×H (area/bilinear) + centre crop."""
    import cv2

    single = frames.ndim == 3
    seq = frames[None] if single else frames
    h0, w0 = seq.shape[1:3]
    cw, ch = cover_size(w0, h0, width, height)
    interp = cv2.INTER_AREA if cw < w0 else cv2.INTER_LINEAR
    out = np.empty((len(seq), height, width, 3), np.uint8)
    for i, f in enumerate(seq):
        r = f if (cw, ch) == (w0, h0) else cv2.resize(f, (cw, ch), interpolation=interp)
        out[i] = _centre_crop(r, width, height)
    return out[0] if single else out


def _frame_index(frame, stream, fps: float) -> int | None:
    if frame.pts is None or stream.time_base is None or not fps:
        return None
    t0 = stream.start_time or 0
    return int(round(float((frame.pts - t0) * stream.time_base) * fps))


def iter_frames(path: str | Path | bytes, start: int = 0, size: tuple[int, int] | None = None
                ) -> Iterator[np.ndarray]:
    """Yield RGB frames (H,W,3) uint8 from frame index ``start`` on.

    ``size=(W, H)``: scale (libswscale, during the RGB conversion) to cover W×H, then centre
    crop. For ``start > 0`` the demuxer seeks to the key frame before ``start`` and frames are
    numbered from their timestamps, so a late window does not decode the whole file before it.
    Decoding stops quietly at the first corrupt packet after at least one frame came out.
    """
    import av

    container, name = _open(path)
    try:
        stream = _video_stream(container)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        seeked = False
        if start > 0 and fps and stream.time_base is not None:
            target = int(start / fps / stream.time_base) + (stream.start_time or 0)
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                seeked = True
            except av.error.FFmpegError as exc:
                if is_storage_error(exc):
                    raise
                container.seek(0)
        counter = 0
        produced = 0
        to_rgb = _ToRGB(size)
        try:
            for frame in container.decode(stream):
                idx = _frame_index(frame, stream, fps) if seeked else counter
                if idx is None:  # no timestamps: cannot trust the seek, restart counting
                    raise _NoTimestamps
                counter += 1
                if idx < start:
                    continue
                produced += 1
                yield to_rgb(frame)
        except _NoTimestamps:
            container.close()
            for i, img in enumerate(_iter_sequential(path, size)):
                if i >= start:
                    produced += 1
                    yield img
        except (av.error.FFmpegError, ValueError) as exc:
            if is_storage_error(exc):
                raise
            if produced == 0 and start == 0:
                raise VideoError(UNDECODABLE, f"{name}: {exc}") from exc
            log.warning("%s: decoding stopped after %d frames: %s", name, produced, exc)
        if produced == 0 and start == 0:
            raise VideoError(UNDECODABLE, f"{name}: no frame could be decoded")
    finally:
        container.close()


class _NoTimestamps(Exception):
    pass


def _video_stream(container):
    """The first video stream, its decoder threaded as :func:`set_decode_threads` says."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if _DECODE_THREADS:
        stream.thread_count = _DECODE_THREADS
    return stream


class _ToRGB:
    """Frame → RGB uint8 array (H, W, 3); with ``size=(W, H)`` scaled with AREA to cover W×H
    (during the conversion), then centre-cropped.

    One libswscale context serves every frame of a stream. ``VideoFrame.to_ndarray(width=…)``
    builds a new context per frame, and since PyAV 17 each context starts its own thread pool
    (one thread per core): two threads created and joined per frame, and a worker limited to
    one core by :func:`set_decode_threads` would still spread onto the others. Here the pool
    follows that setting (PyAV < 17 converts on the calling thread and takes no ``threads``).
    """

    def __init__(self, size: tuple[int, int] | None = None) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()
        self._kw = {"format": "rgb24"}
        if pyav_threads_scaler(av.__version__):
            self._kw["threads"] = _DECODE_THREADS
        self._size = size
        self._scaled = False

    def __call__(self, frame) -> np.ndarray:
        if self._size is not None and not self._scaled:  # the stream's size, from its first frame
            width, height = cover_size(frame.width, frame.height, *self._size)
            self._kw.update(width=width, height=height, interpolation="AREA")
            self._scaled = True
        img = self._reformatter.reformat(frame, **self._kw).to_ndarray()
        if self._size is None:
            return img
        return np.ascontiguousarray(_centre_crop(img, *self._size))


def pyav_threads_scaler(version: str) -> bool:
    """Whether this PyAV version threads libswscale (and takes ``threads=``): 17 and newer."""
    return int(version.split(".")[0]) >= 17


def _iter_sequential(path, size):
    import av

    container, _ = _open(path)
    try:
        stream = _video_stream(container)
        to_rgb = _ToRGB(size)
        try:
            for frame in container.decode(stream):
                yield to_rgb(frame)
        except (av.error.FFmpegError, ValueError) as exc:
            if is_storage_error(exc):
                raise
            return
    finally:
        container.close()


def read_frames(path: str | Path | bytes, start: int = 0, count: int | None = None,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``count`` frames (all when None) from ``start`` → (T,H,W,3) uint8.

    ``size=(W, H)`` resizes to cover and centre-crops. Fewer frames come back when the file ends
    early (the caller checks the length). Raises VideoError(empty_file|undecodable).
    """
    out = []
    for img in iter_frames(path, start=start, size=size):
        out.append(img)
        if count is not None and len(out) >= count:
            break
    if not out:
        if start > 0:
            return np.zeros((0, size[1], size[0], 3) if size else (0, 0, 0, 3), np.uint8)
        raise VideoError(UNDECODABLE, f"{path if not isinstance(path, bytes) else '<bytes>'}: no frames")
    return np.stack(out)


def read_windows(path: str | Path | bytes, starts: Sequence[int], count: int,
                 size: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the file once and yield ``(start, frames (count,H,W,3))`` for each requested window.

    Windows may overlap; only frames inside some window are converted to RGB. Windows the file
    is too short to fill are not yielded (check ``start`` in the results).
    """
    starts = sorted(set(int(s) for s in starts))
    if not starts:
        return
    buf: dict[int, np.ndarray] = {}
    pending = list(starts)
    last = starts[-1] + count
    for idx, img in enumerate(iter_frames(path, start=starts[0], size=size), start=starts[0]):
        if any(s <= idx < s + count for s in pending):
            buf[idx] = img
        while pending and pending[0] + count - 1 <= idx:
            s = pending.pop(0)
            yield s, np.stack([buf[i] for i in range(s, s + count)])
            keep = pending[0] if pending else last
            for i in [i for i in buf if i < keep]:
                del buf[i]
        if idx + 1 >= last:
            break


def decode_mp4(path_or_bytes: str | Path | bytes) -> np.ndarray:
    """Decode a whole mp4 (path or bytes) → (T,H,W,3) uint8 RGB."""
    return read_frames(path_or_bytes)

