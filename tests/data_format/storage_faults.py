"""Storage faults injected where the builder touches storage, raised the way the OS and libav
report them (``OSError`` with the errno; libav's own ``av.error`` exception for AVERROR(errno)).

    with storage_fault("decode", errno.EIO, "/src/b.mp4"):
        ...                      # decoding b.mp4 fails after a few frames, as a dying disk would

Places: ``plan`` (the fingerprint's reads), ``probe`` (the first container open of the source),
``open`` (the container opened for decoding), ``decode`` (mid-stream, after 3 frames), ``write``
(a shard's fsync) and ``record`` (the batch part's fsync). The fault lasts while the block runs.
"""
from __future__ import annotations

import contextlib
import errno
import os

import pytest

PLACES = ("plan", "probe", "open", "decode", "write", "record")
ERRNOS = (errno.EIO, errno.ESTALE, errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ETIMEDOUT, errno.ENOTCONN,
          errno.EAGAIN)


def _oserror(err: int, path: str) -> OSError:
    return OSError(err, os.strerror(err), path)


def _av_error(err: int, path: str) -> Exception:
    """The exception libav's AVERROR(err) becomes in PyAV (e.g. ``av.error.OSError`` for EIO)."""
    import av

    try:
        av.error.err_check(-err, path)
    except Exception as exc:  # noqa: BLE001 - what PyAV raises is the point
        return exc
    raise AssertionError(f"err_check(-{err}) raised nothing")


class _FailingDecode:
    """A container whose ``decode`` yields ``frames`` frames, then raises like a failing read."""

    def __init__(self, container, err: int, path: str, frames: int = 3):
        self._container, self._err, self._path, self._frames = container, err, path, frames

    def __getattr__(self, name):
        return getattr(self._container, name)

    def decode(self, *args, **kwargs):
        for i, frame in enumerate(self._container.decode(*args, **kwargs)):
            if i == self._frames:
                raise _av_error(self._err, self._path)
            yield frame


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@contextlib.contextmanager
def storage_fault(place: str, err: int, target: str):
    """Raise ``err`` at ``place`` (for the source ``target`` where the place concerns a source)."""
    import av

    mp = pytest.MonkeyPatch()
    target = str(target)
    try:
        if place == "plan":
            real_os_open = os.open

            def fake_os_open(path, *args, **kwargs):
                if str(path) == target:
                    raise _oserror(err, target)
                return real_os_open(path, *args, **kwargs)

            mp.setattr(os, "open", fake_os_open)
        elif place in ("probe", "open", "decode"):
            real_av_open = av.open
            opened = {"n": 0}

            def fake_av_open(file, *args, **kwargs):
                if str(file) != target:
                    return real_av_open(file, *args, **kwargs)
                opened["n"] += 1
                if place == "probe" or (place == "open" and opened["n"] >= 2):
                    raise _av_error(err, target)
                container = real_av_open(file, *args, **kwargs)
                return _FailingDecode(container, err, target) if place == "decode" and opened["n"] >= 2 else container

            mp.setattr(av, "open", fake_av_open)
        elif place in ("write", "record"):
            real_fsync = os.fsync

            def fake_fsync(fd):
                path = _fd_path(fd)
                hit = path.endswith(".tar.tmp") if place == "write" else ("/parts/" in path and ".parquet" in path)
                if hit:
                    raise _oserror(err, path)
                return real_fsync(fd)

            mp.setattr(os, "fsync", fake_fsync)
        else:
            raise ValueError(f"unknown place {place!r}")
        yield
    finally:
        mp.undo()
