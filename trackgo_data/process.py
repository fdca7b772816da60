"""Per-source and per-batch processing: one video → candidate clips → encoded samples + rows.

    iter_video(path, cfg, segmenter, tracker) -> yields (members | None, row)   never raises for bad input
    process_video(path, cfg, segmenter, tracker) -> (samples, rows)
    process_batch(spec, cfg, out_dir, limit) -> BatchResult                     idempotent

Stages of a clip, each timed under its name in :data:`STAGES`: decode, filter (the frame checks
— shot cut, low visual quality, camera motion — run before segmentation, so a clip they reject
never reaches the expensive stages; the track checks after tracking), segment, points (K-means
control points), track, render, encode (sample members) and write (into shards).
:mod:`trackgo_data.build` re-exports these names.

What becomes a reject row and what fails the batch: a problem of the clip's own data (a stage
raises ValueError on odd content, a codec error) is a ``processing_error`` row and the build
goes on. A problem of the machine or its setup — a backend that cannot load (missing weights or
package, unreachable hub), CUDA errors, out of memory, storage or network errors — raises
:class:`InfrastructureError`: nothing is recorded for the batch, so a rerun after the fix (or
the orchestrator's retry) processes it again (:func:`is_infrastructure_error`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import config_hash
from .sample import sanitize_video_id

if TYPE_CHECKING:
    from .build import BatchSpec, BuildConfig

log = logging.getLogger(__name__)

STAGES = ("decode", "segment", "points", "track", "render", "filter", "encode", "write")

UNREADABLE = "unreadable"              # the source path cannot be opened (missing, permissions)
PROCESSING_ERROR = "processing_error"  # a stage raised on this clip (message in stats_json)


class InfrastructureError(RuntimeError):
    """A batch cannot be processed on this machine as set up (not a property of its videos).
    Raised instead of recording rejects; the batch is left unrecorded, to be redone."""


#: exceptions backends raise when their package, code or weights cannot be obtained:
#: (module, class name), looked up only when that module is already imported
BACKEND_UNAVAILABLE = (("trackgo_data.segment.deva", "DevaUnavailable"),
                       ("trackgo_data.track.cotracker", "CoTrackerUnavailable"))
#: words of RuntimeError messages that come from the accelerator stack, not from the data
_DEVICE_WORDS = ("CUDA", "cuDNN", "CUBLAS", "cuBLAS", "NCCL", "HIP error", "out of memory", "device-side assert")


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a machine/setup problem.

    Yes: :class:`InfrastructureError`; a backend's "unavailable" error (:data:`BACKEND_UNAVAILABLE`);
    MemoryError, ImportError, ConnectionError, TimeoutError; any other OSError (storage, network)
    except the codec's own errors; torch's OutOfMemoryError / AcceleratorError; a RuntimeError whose
    message names the accelerator stack (CUDA, cuDNN, NCCL, out of memory). Everything else is
    taken to be about the clip's data.
    """
    unavailable = tuple(getattr(sys.modules[m], c) for m, c in BACKEND_UNAVAILABLE
                        if m in sys.modules and hasattr(sys.modules[m], c))
    av_error = getattr(sys.modules.get("av.error"), "FFmpegError", ())
    torch = sys.modules.get("torch")
    device_errors = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                      getattr(torch, "AcceleratorError", None)) if isinstance(t, type))
    for e in _chain(exc):
        if isinstance(e, (InfrastructureError, MemoryError, ImportError) + unavailable + device_errors):
            return True
        if av_error and isinstance(e, av_error):
            continue  # the codec's complaint about this clip's data
        if isinstance(e, OSError):  # includes ConnectionError, TimeoutError, URLError
            return True
        if isinstance(e, RuntimeError) and any(w in str(e) for w in _DEVICE_WORDS):
            return True
    return False


@dataclass
class BatchResult:
    """What :func:`process_batch` did. ``shards`` are relative to the output folder."""

    batch_id: str
    shards: list[str]
    rows: list[dict[str, Any]]
    seconds: dict[str, float]
    counts: dict[str, int]
    limit: int | None = None
    exhausted: bool = True
    reused: bool = False


class _Clock:
    """Accumulates per-stage seconds: ``with clock("track"): …``."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = seconds if seconds is not None else {s: 0.0 for s in STAGES}
        self._stage = ""

    def __call__(self, stage: str) -> "_Clock":
        self._stage = stage
        return self

    @property
    def stage(self) -> str:
        """The stage entered last (the one running when an exception escaped)."""
        return self._stage

    def __enter__(self) -> "_Clock":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._t0


def clip_seed(seed: int, key: str) -> int:
    """Per-clip seed from the config seed and the clip key (independent of batch composition)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


def iter_video(path: str | Path, cfg: BuildConfig, segmenter: Any, tracker: Any, *,
               video_id: str | None = None, clock: _Clock | None = None, limit: int | None = None):
    """Yield ``(members | None, row)`` per candidate clip of one source; never raises for bad input.

    ``members`` are the encoded webdataset members of an accepted clip (None for a reject). A
    source that yields no clip gets one row keyed ``<video_id>-000000``. Stops after ``limit``
    accepted clips (the generator's return value is False then, True when exhausted).
    """
    import numpy as np

    from . import filters
    from .clips import iter_clips
    from .points import sample_points
    from .render import render_trajectories
    from .sample import downsample_coarse_labels, encode_sample, make_sample, sample_key
    from .shards import manifest_row
    from .video import VideoError, probe

    clock = clock or _Clock()
    src = str(path)
    vid = video_id or sanitize_video_id(Path(path).stem)
    chash = config_hash(cfg)
    backends = {"segmenter": {"name": segmenter.name, "version": str(segmenter.version)},
                "tracker": {"name": tracker.name, "version": str(tracker.version)}}
    n_rows = n_acc = 0
    try:
        with clock("decode"):
            info = probe(path)
            clips = iter_clips(path, cfg.clip, info)
    except VideoError as exc:
        yield None, manifest_row(sample_key(vid, 0), src, vid, 0, "rejected", exc.reason)
        return True
    except OSError as exc:
        log.warning("%s: %s", src, exc)
        yield None, manifest_row(sample_key(vid, 0), src, vid, 0, "rejected", UNREADABLE)
        return True
    base = {"num_frames": cfg.clip.num_frames, "width": cfg.clip.width, "height": cfg.clip.height,
            "fps": info.fps}
    while True:
        if limit is not None and n_acc >= limit:
            return False
        try:
            with clock("decode"):
                start, frames = next(clips)
        except StopIteration:
            return True
        except VideoError as exc:
            if n_rows == 0:
                yield None, manifest_row(sample_key(vid, 0), src, vid, 0, "rejected", exc.reason, **base)
            else:
                log.warning("%s: stopped after %d clips: %s", src, n_rows, exc)
            return True
        key = sample_key(vid, start)
        n_rows += 1
        stats: dict[str, Any] = {}
        try:
            with clock("filter"):  # cheap frame checks first: cuts, quality, camera
                stats = filters.frame_stats(frames, cfg.filters, source_size=(info.width, info.height))
                reason = filters.check_frames(stats, cfg.filters)
            if reason:
                yield None, manifest_row(key, src, vid, start, "rejected", reason, stats, **base)
                continue
            with clock("segment"):
                labels = segmenter.segment(frames)
                # by-products of this call that later stages reuse (the flow segmenter has them)
                seg_coarse = getattr(segmenter, "last_labels", None)
            with clock("points"):
                points, comps = sample_points(labels[0], seed=clip_seed(cfg.seed, key))
            if len(points) == 0:
                stats.update(filters.track_stats(np.zeros((len(frames), 0, 2)), np.zeros((len(frames), 0), bool),
                                                 labels=labels))
                yield None, manifest_row(key, src, vid, start, "rejected", filters.NO_COMPONENTS, stats, **base)
                continue
            with clock("track"):
                tracks, vis = tracker.track(frames, points)
            with clock("filter"):
                stats.update(filters.track_stats(tracks, vis, labels=labels, components=comps))
                reason = filters.check_tracks(stats, cfg.filters)
            extra = {**base, "num_components": len(set(comps.tolist())), "num_points": len(points)}
            if reason:
                yield None, manifest_row(key, src, vid, start, "rejected", reason, stats, **extra)
                continue
            with clock("render"):
                traj = render_trajectories(tracks, vis, comps, frames.shape[1], frames.shape[2])
            with clock("encode"):
                sample = make_sample(video_id=vid, start=start, frames=frames, labels=labels,
                                     tracks=tracks, visibility=vis, components=comps, trajectory=traj,
                                     source=src, fps=info.fps or 25.0, config_hash=chash,
                                     backends=backends, stats=stats,
                                     masks=downsample_coarse_labels(seg_coarse, *labels.shape[1:]))
                members = encode_sample(sample, crf=cfg.video_crf)
        except Exception as exc:
            if is_infrastructure_error(exc):  # not this clip's fault: fail the batch, record nothing
                raise InfrastructureError(f"{src}: clip {key}, stage {clock.stage!r}: "
                                          f"{type(exc).__name__}: {exc}") from exc
            # one bad clip must not stop the build: record it
            log.warning("%s: clip %s failed: %s", src, key, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            yield None, manifest_row(key, src, vid, start, "rejected", PROCESSING_ERROR,
                             {**stats, "error": f"{type(exc).__name__}: {exc}"}, **base)
            continue
        n_acc += 1
        size = sum(len(v) for k, v in members.items() if not k.startswith("__"))
        yield members, manifest_row(key, src, vid, start, "accepted", None, stats, sample_bytes=size, **extra)


def process_video(path: str | Path, cfg: BuildConfig, segmenter: Any, tracker: Any,
                  video_id: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(encoded samples of the accepted clips, manifest rows of all candidate clips) of one source."""
    samples, rows = [], []
    for members, row in iter_video(path, cfg, segmenter, tracker, video_id=video_id):
        rows.append(row)
        if members is not None:
            samples.append(members)
    return samples, rows


def _reusable(info: dict[str, Any], limit: int | None) -> bool:
    if info.get("limit") == limit:
        return True
    return bool(info.get("exhausted")) and (limit is None or info["counts"]["accepted"] <= limit)


@contextlib.contextmanager
def batch_lock(out: Path, batch_id: str):
    """Hold ``parts/.<batch_id>.lock`` exclusively (``fcntl.flock``; blocks while another process
    holds it). A task whose flow run died can still be running on a worker when a rerun hands
    the same batch to another one; the lock makes the second wait and then find the batch
    done, instead of both writing the same shard names. The kernel drops the lock of a killed
    process. The file is removed on release (a waiter that then holds a removed file retries).
    Works on local file systems and NFS (flock is emulated with POSIX locks there)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process exclusion
        yield
        return
    path = out / "parts" / f".{batch_id}.lock"
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("batch %s is being processed by another process; waiting", batch_id)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file after we opened it: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _recorded(out: Path, part: Path, batch_id: str, limit: int | None) -> BatchResult | None:
    """The batch as recorded by its part file, when that can be reused for ``limit``."""
    from .shards import read_part

    if not part.is_file():
        return None
    rows, info = read_part(part)
    if _reusable(info, limit) and all((out / sh).is_file() for sh in info["shards"]):
        return BatchResult(batch_id, info["shards"], rows, info["seconds"], info["counts"],
                           info.get("limit"), info.get("exhausted", True), reused=True)
    return None


def process_batch(spec: BatchSpec, cfg: BuildConfig, out_dir: str | Path, limit: int | None = None
                  ) -> BatchResult:
    """Process one batch into ``shards/<batch_id>-%06d.tar`` + ``parts/<batch_id>.parquet``.

    Idempotent: a complete batch (its part file exists, written atomically after its shards) is
    returned as recorded without recomputing. Otherwise stale shards/temps of this batch are
    removed and everything is rewritten, under :func:`batch_lock`. ``limit`` caps its accepted
    clips (see build_dataset). Raises :class:`InfrastructureError` (recording nothing) when the
    backends cannot load or run on this machine.
    """
    from .build import get_models, prepare_output

    out = prepare_output(out_dir, cfg)
    part = out / "parts" / f"{spec.batch_id}.parquet"
    done = _recorded(out, part, spec.batch_id, limit)
    if done is not None:
        return done
    import webdataset  # noqa: F401  (imports torch: seconds, kept out of the "write" stage)

    try:
        segmenter, tracker = get_models(cfg)
    except Exception as exc:
        if is_infrastructure_error(exc):
            raise InfrastructureError(f"batch {spec.batch_id}: the backends cannot load: "
                                      f"{type(exc).__name__}: {exc}") from exc
        raise
    with batch_lock(out, spec.batch_id):
        done = _recorded(out, part, spec.batch_id, limit)  # finished while we waited for the lock
        if done is not None:
            return done
        return _run_batch(spec, cfg, out, part, limit, segmenter, tracker)


def _run_batch(spec: BatchSpec, cfg: BuildConfig, out: Path, part: Path, limit: int | None,
               segmenter: Any, tracker: Any) -> BatchResult:
    """The batch's clips → shards (published by rename) → its part file (written last)."""
    from .shards import write_part, write_shards

    clock = _Clock()
    rows: list[dict[str, Any]] = []
    backends: list[dict] = []
    exhausted = True
    gen_seconds = 0.0

    def samples():
        nonlocal exhausted, gen_seconds
        for src, vid in zip(spec.sources, spec.video_ids):
            left = None if limit is None else limit - sum(r["status"] == "accepted" for r in rows)
            if left is not None and left <= 0:
                exhausted = False
                return
            it = iter_video(src, cfg, segmenter, tracker, video_id=vid, clock=clock, limit=left)
            while True:
                t0 = time.perf_counter()
                try:
                    members, row = next(it)
                except StopIteration as stop:
                    gen_seconds += time.perf_counter() - t0
                    exhausted = exhausted and stop.value is not False
                    break
                gen_seconds += time.perf_counter() - t0
                rows.append(row)
                if members is not None:
                    used = json.loads(members["meta.json"]).get("backends")
                    if used not in backends:
                        backends.append(used)
                    yield members

    t0 = time.perf_counter()
    index: dict[str, str] = {}
    paths = write_shards(samples(), out / "shards", spec.batch_id, cfg.shards, index=index)
    clock.seconds["write"] += time.perf_counter() - t0 - gen_seconds
    for r in rows:
        if r["status"] == "accepted":
            r["shard"] = f"shards/{index[r['key']]}"
        r["batch_id"] = spec.batch_id
    counts = {"accepted": sum(r["status"] == "accepted" for r in rows)}
    counts["rejected"] = len(rows) - counts["accepted"]
    shards = [f"shards/{p.name}" for p in paths]
    if not backends:  # nothing accepted: the backends' own names and versions
        backends = [{"segmenter": {"name": segmenter.name, "version": str(segmenter.version)},
                     "tracker": {"name": tracker.name, "version": str(tracker.version)}}]
    info = {"batch_id": spec.batch_id, "shards": shards, "seconds": clock.seconds, "counts": counts,
            "limit": limit, "exhausted": exhausted, "sources": spec.sources, "backends": backends}
    write_part(part, rows, info)
    return BatchResult(spec.batch_id, shards, rows, clock.seconds, counts, limit, exhausted)
