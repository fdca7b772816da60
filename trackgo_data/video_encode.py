"""Encoding frames to mp4 on PyAV (libav/ffmpeg): H.264 for videos, lossless RGB for trajectories.

    encode_mp4(frames (T,H,W,3) uint8, path=None, fps, crf=17) -> bytes      H.264 yuv420p
    encode_lossless_rgb(frames (T,H,W,3) uint8, path=None, fps) -> bytes    libx264rgb qp 0

Encodes are byte-reproducible: the same frames give the same bytes in any process on a machine
(x264 runs without its AVX-512 code, see :func:`x264_asm_without_avx512`). A ``path`` is written
atomically (temp file, then rename).
"""
from __future__ import annotations

import functools
import io
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _libx264_path() -> str | None:
    """File of the libx264 that libavcodec loaded: from the process's memory map (Linux), else
    the copy bundled in the PyAV wheel (``av.libs`` / ``av/.dylibs``); None when not found."""
    import av  # loads libavcodec and with it libx264

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and Path(parts[5].strip()).name.startswith("libx264"):
                    return parts[5].strip()
    except OSError:
        pass
    pkg = Path(av.__file__).resolve().parent
    for folder in (pkg.parent / "av.libs", pkg / ".dylibs"):
        found = sorted(folder.glob("libx264*")) if folder.is_dir() else []
        if found:
            return str(found[0])
    return None


@functools.lru_cache(maxsize=None)
def x264_asm_without_avx512() -> str | None:
    """x264's ``asm`` option for this machine: every CPU feature x264 detects except AVX-512.

    x264's AVX-512 ``mbtree_propagate_list`` handles eight macroblocks per step and does not mask
    the tail of a row: for frames whose width is not a multiple of 128 px, the last lookahead row
    adds costs read from uninitialised memory into the MB-tree, so the same frames can encode to
    different bytes in one process (libx264 build 164/165). The AVX2 path stops at the row's end
    and is as fast. None when x264 uses no AVX-512 here (nothing to change) or its library cannot
    be inspected (logged).
    """
    import ctypes

    class _CpuName(ctypes.Structure):  # x264_cpu_name_t
        _fields_ = [("name", ctypes.c_char_p), ("flags", ctypes.c_uint32)]

    path = _libx264_path()
    try:
        if path is None:
            raise OSError("library not found")
        lib = ctypes.CDLL(path)
        lib.x264_cpu_detect.restype = ctypes.c_uint32
        table = ctypes.cast(ctypes.addressof(_CpuName.in_dll(lib, "x264_cpu_names")),
                            ctypes.POINTER(_CpuName))
    except (OSError, AttributeError, ValueError) as exc:
        log.warning("cannot inspect libx264 (%s): H.264 encodes keep x264's own CPU choice and may "
                    "differ between runs on AVX-512 machines", exc)
        return None
    flags, i = {}, 0
    while table[i].flags:
        flags[table[i].name.decode()] = table[i].flags
        i += 1
    avx512 = flags.get("AVX512", 0) & ~flags.get("AVX2", 0)
    detected = lib.x264_cpu_detect()
    if not detected & avx512:
        return None
    return str(detected & ~avx512)


def _encode(frames: np.ndarray, fps: float, codec: str, pix_fmt: str, options: dict[str, str],
            in_format: str) -> bytes:
    """frames (T,H,W,3) uint8 → mp4 bytes. x264 runs without its AVX-512 code
    (:func:`x264_asm_without_avx512`), so identical frames always give identical bytes."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("cannot encode zero frames")
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"yuv420p needs even width and height, got {w}×{h}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=_fps_fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        options = dict(options)
        asm = x264_asm_without_avx512() if codec.startswith("libx264") else None
        if asm is not None:
            extra = options.get("x264-params")
            options["x264-params"] = f"{extra}:asm={asm}" if extra else f"asm={asm}"
        stream.options = options
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=in_format)
            for pkt in stream.encode(frame):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)
    return buf.getvalue()


def _maybe_write(data: bytes, path: str | Path | None) -> bytes:
    if path is not None:
        from trackgo_data.config import atomic_write_bytes

        atomic_write_bytes(path, data)
    return data


def encode_mp4(frames: np.ndarray, path: str | Path | None = None, fps: float = 25.0, crf: int = 17,
               preset: str = "veryfast") -> bytes:
    """frames (T,H,W,3) uint8 → H.264 yuv420p mp4 (visually lossless at crf 17).

    Returns the file bytes; also writes them atomically to ``path`` when given. H and W must be even.
    """
    opts = {"crf": str(crf), "preset": preset, "threads": "1"}
    return _maybe_write(_encode(frames, fps, "libx264", "yuv420p", opts, "rgb24"), path)


def encode_lossless_rgb(frames: np.ndarray, path: str | Path | None = None, fps: float = 25.0,
                        preset: str = "ultrafast") -> bytes:
    """frames (T,H,W,3) uint8 → libx264rgb qp 0 mp4 whose decode equals ``frames`` bit for bit.

    Mostly-black trajectory renders compress very well even with the fastest preset.
    """
    opts = {"qp": "0", "preset": preset, "threads": "1"}
    return _maybe_write(_encode(frames, fps, "libx264rgb", "rgb24", opts, "rgb24"), path)
