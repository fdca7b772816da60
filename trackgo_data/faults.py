"""Problems of the machine versus problems of the data.

A problem of the machine or its setup fails the whole batch with nothing recorded, so the
orchestrator's retry (or a rerun after the fix) processes it again; only the codec's verdict on a
source's bytes and a clip's own properties become reject rows. The rules:

- **Storage, resources, network — by errno, not by class.** An ``OSError`` whose ``errno`` is in
  :data:`STORAGE_ERRNOS` (EIO, ESTALE, ENOSPC, EMFILE, ENFILE, ETIMEDOUT, ENOTCONN, EAGAIN, …),
  wherever it is raised (planning, probe, open, decode, write) and whoever raised it (Python, or
  libav through PyAV, whose ``av.error`` exceptions carry the errno of AVERROR(errno)). ENOENT
  and ENOTDIR count too, except where the missing file is a source being opened: that source
  vanished after planning (:class:`SourceGone`) and is reported removed. An ``OSError`` without
  an errno (``OSError("image file is truncated")``) says nothing about storage. ``ConnectionError``
  and ``TimeoutError`` are the network's whatever their errno.
- **Known setup failures**: :class:`InfrastructureError`, ``MemoryError``, ``ImportError``, the
  backends' "unavailable" errors (missing weights or code), the accelerator's errors (CUDA out of
  memory, ``torch.AcceleratorError``, RuntimeErrors naming CUDA/cuDNN/NCCL).
- **Only the explicit cause links errors.** :func:`is_infrastructure_error` looks at the error and
  its ``__cause__`` chain (``raise … from …``), never at the implicit ``__context__``: a data error
  raised while some library was handling an ``OSError`` is still the data's.
- **Loading is setup.** Any exception while a backend loads, whatever its type, is turned into an
  :class:`InfrastructureError` by the caller (:mod:`trackgo_data.backends`).
- **Circuit breaker** (:class:`CircuitBreaker`): the same error (type and message) on
  :data:`BREAKER_CLIPS` consecutive clips in a backend stage is the backend's, not the data's.
"""
from __future__ import annotations

import errno as _errno
import sys
from typing import Iterator

#: errnos of storage, of the process's resources and of the network (never a property of a file's
#: bytes); those this platform lacks are left out
STORAGE_ERRNOS = frozenset(getattr(_errno, name) for name in (
    "EIO", "ESTALE", "ENOSPC", "EDQUOT", "EROFS", "EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "ENOLCK",
    "ETIMEDOUT", "ENOTCONN", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "ENETDOWN", "ENETUNREACH",
    "ENETRESET", "EHOSTDOWN", "EHOSTUNREACH", "ESHUTDOWN", "EPIPE", "EAGAIN", "EWOULDBLOCK", "EINTR", "EBUSY",
    "ETXTBSY", "EDEADLK", "EACCES", "EPERM", "ENXIO", "ENODEV", "ENOMEDIUM", "EREMOTEIO", "ENOLINK", "ECOMM",
    "EPROTO", "EBADF", "ENOENT", "ENOTDIR") if hasattr(_errno, name))

#: errnos that mean "no such file": a source that vanished when it is the one being opened
GONE_ERRNOS = frozenset({_errno.ENOENT, _errno.ENOTDIR})

#: the stages that run a backend (where the circuit breaker watches)
BACKEND_STAGES = ("segment", "track")
#: consecutive clips failing with the same error in one backend stage that fail the batch
BREAKER_CLIPS = 3

#: exceptions backends raise when their package, code or weights cannot be obtained:
#: (module, class name), looked up only when that module is already imported
BACKEND_UNAVAILABLE = (("trackgo_data.segment.deva", "DevaUnavailable"),
                       ("trackgo_data.track.cotracker", "CoTrackerUnavailable"))
#: words of RuntimeError messages that come from the accelerator stack, not from the data
DEVICE_WORDS = ("CUDA", "cuDNN", "CUBLAS", "cuBLAS", "NCCL", "HIP error", "out of memory", "device-side assert")


class InfrastructureError(RuntimeError):
    """A batch cannot be processed on this machine as set up (not a property of its videos).
    Raised instead of recording rejects; the batch is left unrecorded, to be redone."""


class SourceGone(Exception):
    """A source listed by the plan no longer exists when it is opened (deleted or renamed after
    planning). The batch reports it removed; it gets no row."""

    def __init__(self, path: str):
        self.path = str(path)
        super().__init__(f"{self.path}: the source vanished after planning")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its explicit causes (``raise … from …``), oldest last; never the implicit
    ``__context__``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__


def storage_errno(exc: BaseException) -> int | None:
    """The first errno of :data:`STORAGE_ERRNOS` an OSError in ``exc``'s cause chain carries."""
    for e in causes(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return int(e.errno)
    return None


def is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (or an explicit cause) says "no such file" (ENOENT, ENOTDIR)."""
    return any(isinstance(e, OSError) and e.errno in GONE_ERRNOS for e in causes(exc))


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when ``exc`` means the machine or its setup cannot run the batch (module docstring);
    False for problems of a clip's own data."""
    unavailable = tuple(getattr(sys.modules[m], c) for m, c in BACKEND_UNAVAILABLE
                        if m in sys.modules and hasattr(sys.modules[m], c))
    torch = sys.modules.get("torch")
    device_errors = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                      getattr(torch, "AcceleratorError", None)) if isinstance(t, type))
    for e in causes(exc):
        if isinstance(e, (InfrastructureError, MemoryError, ImportError, ConnectionError, TimeoutError)
                      + unavailable + device_errors):
            return True
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and any(w in str(e) for w in DEVICE_WORDS):
            return True
    return False


class CircuitBreaker:
    """Fails a batch when one error repeats on consecutive clips in a backend stage.

    ``failed(stage, exc, backend)`` after a clip's stage raised a data-looking error; ``passed()``
    after a clip went through the backend stages. When the same (stage, type, message) is seen on
    ``clips`` consecutive clips, :class:`InfrastructureError` is raised (from ``exc``): a backend
    that fails on every clip is broken or misconfigured, and its errors must not become rows.
    Errors in other stages and clips rejected before segmentation leave the count alone.
    """

    def __init__(self, clips: int = BREAKER_CLIPS):
        if clips < 2:
            raise ValueError(f"the breaker needs >= 2 clips, got {clips}")
        self.clips = clips
        self._key: tuple[str, str, str] | None = None
        self._count = 0

    def passed(self) -> None:
        self._key, self._count = None, 0

    def failed(self, stage: str, exc: BaseException, backend: str = "") -> None:
        if stage not in BACKEND_STAGES:
            return
        key = (stage, type(exc).__name__, str(exc))
        self._count = self._count + 1 if key == self._key else 1
        self._key = key
        if self._count >= self.clips:
            who = f" ({backend})" if backend else ""
            raise InfrastructureError(
                f"the same error hit {self._count} consecutive clips in stage {stage!r}{who}: "
                f"{type(exc).__name__}: {exc} — the backend fails whatever the clip; check its settings "
                "and its installation") from exc
