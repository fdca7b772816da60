"""Per-source and per-batch processing: one video → candidate clips → encoded samples + rows.

    iter_video(path, cfg, segmenter, tracker) -> yields (members | None, row)   bad input → rows
    process_clip(source, start, frames, clock, breaker) -> (members | None, row)
    process_video(path, cfg, segmenter, tracker) -> (samples, rows)
    process_batch(spec, cfg, out_dir, limit) -> BatchResult                     idempotent

Stages of a clip, each timed under its name in :data:`~trackgo_data.timing.STAGES`: decode,
filter (the frame checks — shot cut, low visual quality, camera motion — run before segmentation,
so a clip they reject never reaches the expensive stages; the track checks after tracking),
segment, points (K-means control points), track, render, encode (sample members) and write (into
shards).

What becomes a reject row and what fails the batch (:mod:`trackgo_data.faults`): the codec's
verdict on a source's bytes (``empty_file``, ``undecodable``, …) and a clip's own properties are
rows; a stage raising on a clip's odd content is a ``processing_error`` row. Backends that cannot
load (any exception), storage errors by errno at any place, out of memory, CUDA errors, and one
error repeating on consecutive clips in a backend stage (the circuit breaker) raise
:class:`InfrastructureError`: nothing is recorded for the batch, and the orchestrator's retry or a
rerun after the fix processes it again. A source that vanished after planning is reported in
``BatchResult.removed`` and gets no row.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import get_models
from .buildconfig import BuildConfig
from .config import config_hash
from .faults import CircuitBreaker, InfrastructureError, SourceGone, is_gone, is_infrastructure_error
from .plan import BatchSpec, fingerprints
from .records import SourceRecord, batch_lock, prepare_output
from .sample import sanitize_video_id
from .timing import StageClock

__all__ = ["PROCESSING_ERROR", "BatchResult", "InfrastructureError", "SourceContext", "SourceGone", "StageClock",
           "batch_lock", "clip_seed", "is_infrastructure_error", "iter_video", "process_batch", "process_clip",
           "process_video"]

log = logging.getLogger(__name__)

PROCESSING_ERROR = "processing_error"  # a stage raised on this clip (message in stats_json)


@dataclass
class BatchResult:
    """What :func:`process_batch` did. ``shards`` are relative to the output folder; ``records``
    holds one per source processed (none for sources a clip cap left unreached, none for the
    ``removed`` ones, which vanished after planning)."""

    batch_id: str
    shards: list[str]
    rows: list[dict[str, Any]]
    seconds: dict[str, float]
    counts: dict[str, int]
    limit: int | None = None
    exhausted: bool = True
    reused: bool = False
    records: list[SourceRecord] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def clip_seed(seed: int, key: str) -> int:
    """Per-clip seed from the config seed and the clip key (independent of batch composition)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


@dataclass
class SourceContext:
    """What every clip of one source shares."""

    path: str
    video_id: str
    cfg: BuildConfig
    segmenter: Any
    tracker: Any
    fps: float
    source_size: tuple[int, int]
    config_hash: str = ""
    backends: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> dict[str, Any]:
        """Manifest columns every row of this source has."""
        c = self.cfg.clip
        return {"num_frames": c.num_frames, "width": c.width, "height": c.height, "fps": self.fps}


def _clip_stages(ctx: SourceContext, key: str, start: int, frames: Any, clock: StageClock,
                 stats: dict[str, Any], breaker: CircuitBreaker) -> tuple[dict | None, dict[str, Any]]:
    """frames (L,H,W,3) uint8 through the stages → (members | None, row); raises what a stage raises."""
    import numpy as np

    from . import filters
    from .points import sample_points
    from .render import render_trajectories
    from .sample import downsample_coarse_labels, encode_sample, make_sample
    from .shards import manifest_row

    src, vid, cfg, base = ctx.path, ctx.video_id, ctx.cfg, ctx.base
    with clock("filter"):  # cheap frame checks first: cuts, quality, camera
        stats.update(filters.frame_stats(frames, cfg.filters, source_size=ctx.source_size))
        reason = filters.check_frames(stats, cfg.filters)
    if reason:
        return None, manifest_row(key, src, vid, start, "rejected", reason, stats, **base)
    with clock("segment"):
        labels = ctx.segmenter.segment(frames)
        # by-products of this call that later stages reuse (the flow segmenter has them)
        seg_coarse = getattr(ctx.segmenter, "last_labels", None)
    with clock("points"):
        points, comps = sample_points(labels[0], seed=clip_seed(cfg.seed, key))
    if len(points) == 0:
        breaker.passed()
        stats.update(filters.track_stats(np.zeros((len(frames), 0, 2)), np.zeros((len(frames), 0), bool),
                                         labels=labels))
        return None, manifest_row(key, src, vid, start, "rejected", filters.NO_COMPONENTS, stats, **base)
    with clock("track"):
        tracks, vis = ctx.tracker.track(frames, points)
    breaker.passed()
    with clock("filter"):
        stats.update(filters.track_stats(tracks, vis, labels=labels, components=comps))
        reason = filters.check_tracks(stats, cfg.filters)
    extra = {**base, "num_components": len(set(comps.tolist())), "num_points": len(points)}
    if reason:
        return None, manifest_row(key, src, vid, start, "rejected", reason, stats, **extra)
    with clock("render"):
        traj = render_trajectories(tracks, vis, comps, frames.shape[1], frames.shape[2])
    with clock("encode"):
        sample = make_sample(video_id=vid, start=start, frames=frames, labels=labels, tracks=tracks,
                             visibility=vis, components=comps, trajectory=traj, source=src, fps=ctx.fps or 25.0,
                             config_hash=ctx.config_hash, backends=ctx.backends, stats=stats, profile=cfg.profile,
                             masks=downsample_coarse_labels(seg_coarse, *labels.shape[1:]))
        members = encode_sample(sample, crf=cfg.video_crf)
    size = sum(len(v) for k, v in members.items() if not k.startswith("__"))
    return members, manifest_row(key, src, vid, start, "accepted", None, stats, sample_bytes=size, **extra)


def process_clip(ctx: SourceContext, start: int, frames: Any, clock: StageClock, breaker: CircuitBreaker
                 ) -> tuple[dict | None, dict[str, Any]]:
    """One candidate clip (frames (L,H,W,3) uint8 from frame ``start``) → (members | None, row).

    A stage raising on the clip's content gives a ``processing_error`` row; machine problems and a
    tripped circuit breaker raise :class:`InfrastructureError`."""
    from .sample import sample_key
    from .shards import manifest_row

    key = sample_key(ctx.video_id, start)
    stats: dict[str, Any] = {}
    try:
        return _clip_stages(ctx, key, start, frames, clock, stats, breaker)
    except Exception as exc:
        if is_infrastructure_error(exc):  # not this clip's fault: fail the batch, record nothing
            raise InfrastructureError(f"{ctx.path}: clip {key}, stage {clock.stage!r}: "
                                      f"{type(exc).__name__}: {exc}") from exc
        backend = {"segment": ctx.segmenter, "track": ctx.tracker}.get(clock.stage)
        breaker.failed(clock.stage, exc, getattr(backend, "name", ""))
        log.warning("%s: clip %s failed: %s", ctx.path, key, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return None, manifest_row(key, ctx.path, ctx.video_id, start, "rejected", PROCESSING_ERROR,
                                  {**stats, "error": f"{type(exc).__name__}: {exc}"}, **ctx.base)


def iter_video(path: str | Path, cfg: BuildConfig, segmenter: Any, tracker: Any, *,
               video_id: str | None = None, clock: StageClock | None = None, limit: int | None = None,
               breaker: CircuitBreaker | None = None):
    """Yield ``(members | None, row)`` per candidate clip of one source.

    ``members`` are the encoded webdataset members of an accepted clip (None for a reject). A
    source that yields no clip gets one row keyed ``<video_id>-000000`` with the codec's or the
    clip checks' reason. Stops after ``limit`` accepted clips (the generator's return value is
    False then, True when exhausted). Raises :class:`SourceGone` when the file no longer exists,
    storage errors (by errno) as they are, and :class:`InfrastructureError` (module docstring).
    """
    from .clips import iter_clips
    from .sample import sample_key
    from .shards import manifest_row
    from .video import VideoError, probe

    clock = clock or StageClock()
    breaker = breaker or CircuitBreaker()
    src = str(path)
    vid = video_id or sanitize_video_id(Path(path).stem)
    try:
        with clock("decode"):
            info = probe(path)
            clips = iter_clips(path, cfg.clip, info)
    except VideoError as exc:
        yield None, manifest_row(sample_key(vid, 0), src, vid, 0, "rejected", exc.reason)
        return True
    except OSError as exc:
        if is_gone(exc):
            raise SourceGone(src) from exc
        raise
    ctx = SourceContext(src, vid, cfg, segmenter, tracker, cfg.clip.fps or info.fps, (info.width, info.height),
                        config_hash(cfg),
                        {"segmenter": {"name": segmenter.name, "version": str(segmenter.version)},
                         "tracker": {"name": tracker.name, "version": str(tracker.version)}})
    n_rows = n_acc = 0
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
                yield None, manifest_row(sample_key(vid, 0), src, vid, 0, "rejected", exc.reason, **ctx.base)
            else:
                log.warning("%s: stopped after %d clips: %s", src, n_rows, exc)
            return True
        n_rows += 1
        members, row = process_clip(ctx, start, frames, clock, breaker)
        n_acc += members is not None
        yield members, row


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


def _recorded(out: Path, part: Path, batch_id: str, limit: int | None) -> BatchResult | None:
    """The batch as recorded by its part file, when that can be reused for ``limit``."""
    from .shards import read_part

    if not part.is_file():
        return None
    rows, info = read_part(part)
    if _reusable(info, limit) and all((out / sh).is_file() for sh in info["shards"]):
        records = [SourceRecord(batch_id=batch_id, **r) for r in info.get("records", [])]
        return BatchResult(batch_id, info["shards"], rows, info["seconds"], info["counts"], info.get("limit"),
                           info.get("exhausted", True), reused=True, records=records,
                           removed=info.get("removed", []))
    return None


def process_batch(spec: BatchSpec, cfg: BuildConfig, out_dir: str | Path, limit: int | None = None
                  ) -> BatchResult:
    """Process one batch into ``shards/<batch_id>-%06d.tar`` + ``parts/<batch_id>.parquet``.

    Idempotent: a complete batch (its part file exists, written atomically after its shards) is
    returned as recorded without recomputing. Otherwise the backends are loaded (once per
    process) before any source is opened, stale shards/temps of this batch are removed and
    everything is rewritten, under :func:`batch_lock`. ``limit`` caps its accepted clips (see
    build_dataset). Raises :class:`InfrastructureError` or a storage ``OSError`` (recording
    nothing) when the machine cannot run it.
    """
    out = prepare_output(out_dir, cfg)
    part = out / "parts" / f"{spec.batch_id}.parquet"
    done = _recorded(out, part, spec.batch_id, limit)
    if done is not None:
        return done
    segmenter, tracker = get_models(cfg)
    import webdataset  # noqa: F401  (imports torch: seconds, kept out of the "write" stage)

    with batch_lock(out, spec.batch_id):
        done = _recorded(out, part, spec.batch_id, limit)  # finished while we waited for the lock
        if done is not None:
            return done
        return _run_batch(spec, cfg, out, part, limit, segmenter, tracker)


class _BatchRun:
    """The samples of one batch, source after source, and what it recorded meanwhile."""

    def __init__(self, spec: BatchSpec, cfg: BuildConfig, limit: int | None, segmenter: Any, tracker: Any):
        self.spec, self.cfg, self.limit = spec, cfg, limit
        self.segmenter, self.tracker = segmenter, tracker
        self.clock, self.breaker = StageClock(), CircuitBreaker()
        self.rows: list[dict[str, Any]] = []
        self.records: list[SourceRecord] = []
        self.removed: list[str] = []
        self.backends: list[dict] = []
        self.exhausted = True
        self.gen_seconds = 0.0

    def samples(self):
        spec = self.spec
        prints = spec.fingerprints or fingerprints([Path(s) for s in spec.sources])
        for src, vid, fp in zip(spec.sources, spec.video_ids, prints):
            accepted = sum(r["status"] == "accepted" for r in self.rows)
            left = None if self.limit is None else self.limit - accepted
            if left is not None and left <= 0:
                self.exhausted = False
                return
            first = len(self.rows)
            try:
                complete = yield from self._source(src, vid, left)
            except SourceGone:
                log.warning("%s vanished after planning: reported removed, no row", src)
                self.removed.append(src)
                continue
            got = sum(r["status"] == "accepted" for r in self.rows[first:])
            self.records.append(SourceRecord(src, vid, fp, spec.batch_id, got, complete, left))
            self.exhausted = self.exhausted and complete

    def _source(self, src: str, vid: str, left: int | None):
        it = iter_video(src, self.cfg, self.segmenter, self.tracker, video_id=vid, clock=self.clock, limit=left,
                        breaker=self.breaker)
        while True:
            t0 = time.perf_counter()
            try:
                members, row = next(it)
            except StopIteration as stop:
                self.gen_seconds += time.perf_counter() - t0
                return stop.value is not False
            self.gen_seconds += time.perf_counter() - t0
            self.rows.append(row)
            if members is not None:
                used = json.loads(members["meta.json"]).get("backends")
                if used not in self.backends:
                    self.backends.append(used)
                yield members


def _run_batch(spec: BatchSpec, cfg: BuildConfig, out: Path, part: Path, limit: int | None,
               segmenter: Any, tracker: Any) -> BatchResult:
    """The batch's clips → shards (published by rename) → its part file (written last). When the
    part cannot be written, the shards just published are removed again."""
    from .records import PART_FORMAT
    from .shards import write_part, write_shards

    run = _BatchRun(spec, cfg, limit, segmenter, tracker)
    t0 = time.perf_counter()
    index: dict[str, str] = {}
    paths = write_shards(run.samples(), out / "shards", spec.batch_id, cfg.shards, index=index)
    run.clock.seconds["write"] += time.perf_counter() - t0 - run.gen_seconds
    for r in run.rows:
        if r["status"] == "accepted":
            r["shard"] = f"shards/{index[r['key']]}"
        r["batch_id"] = spec.batch_id
    counts = {"accepted": sum(r["status"] == "accepted" for r in run.rows)}
    counts["rejected"] = len(run.rows) - counts["accepted"]
    shards = [f"shards/{p.name}" for p in paths]
    backends = run.backends or [{"segmenter": {"name": segmenter.name, "version": str(segmenter.version)},
                                 "tracker": {"name": tracker.name, "version": str(tracker.version)}}]
    info = {"format": PART_FORMAT, "batch_id": spec.batch_id, "shards": shards, "seconds": run.clock.seconds,
            "counts": counts, "limit": limit, "exhausted": run.exhausted, "sources": spec.sources,
            "backends": backends, "records": [r.to_json() for r in run.records], "removed": run.removed}
    try:
        write_part(part, run.rows, info)
    except BaseException:
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    return BatchResult(spec.batch_id, shards, run.rows, run.clock.seconds, counts, limit, run.exhausted,
                       records=run.records, removed=run.removed)
