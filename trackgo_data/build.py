"""Building a dataset in-process: sources → batches → shards + per-batch parts → manifest.

The batch-level API (what ``trackgo data build`` loops over and what an orchestrator calls; the
calls exchange paths and small records only):

    discover_sources(source) -> [Path]                     sorted
    plan_batches(sources, cfg, batch_size) -> [BatchSpec]  ids from file contents + config hash
    get_models(cfg) -> (segmenter, tracker)                loaded once per process
    process_batch(spec, cfg, out_dir) -> BatchResult       idempotent (see below)
    finalize(out_dir) -> summary dict                      parts → manifest.parquet

Output folder::

    build_config.json           the BuildConfig (and its hash) the folder was made with
    shards/<batch_id>-%06d.tar  webdataset shards (sample format v1)
    parts/<batch_id>.parquet    completion record of a batch: its manifest rows + timings
    manifest.parquet            every candidate clip, accepted and rejected
    summary.json

A batch is complete when its part file exists; the part is written atomically *after* its
shards, so an interrupted batch is simply redone (its stale shards are removed first).
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clips import ClipConfig
from .config import ConfigError, atomic_write_json, config_from_dict, config_hash, config_to_dict
from .filters import FilterConfig
from .sample import sanitize_video_id
from .shards import ShardSpec

log = logging.getLogger(__name__)

STAGES = ("decode", "segment", "points", "track", "render", "filter", "encode", "write")
CONFIG_FILE = "build_config.json"


@dataclass
class BackendConfig:
    """A registry backend: its name and the keyword options passed to its constructor."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildConfig:
    profile: str = "local"
    clip: ClipConfig = field(default_factory=ClipConfig)
    segmenter: BackendConfig = field(default_factory=lambda: BackendConfig("flow"))
    tracker: BackendConfig = field(default_factory=lambda: BackendConfig("lk"))
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: ShardSpec = field(default_factory=ShardSpec)
    seed: int = 0
    video_crf: int | None = None  # None: the video encoder's visually lossless default


#: Profiles name the backends; everything else keeps the BuildConfig defaults.
PROFILES: dict[str, dict[str, Any]] = {
    "local": {"segmenter": {"name": "flow"}, "tracker": {"name": "lk"}},
    "paper": {"segmenter": {"name": "deva"}, "tracker": {"name": "cotracker3_offline"}},
}


def make_config(profile: str = "local", overrides: dict[str, Any] | None = None) -> BuildConfig:
    """BuildConfig of a profile, with a nested dict of overrides (unknown keys rejected)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    data: dict[str, Any] = json.loads(json.dumps(PROFILES[profile]))
    data["profile"] = profile
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(BuildConfig, data)


# ------------------------------------------------------------------------------------------ sources

def discover_sources(source: str | Path | list[str | Path]) -> list[Path]:
    """Candidate source files, sorted.

    ``source`` is ``"samples"`` (the bundled clips), a folder (every non-hidden file below it:
    non-videos become rejected manifest rows), a list-file (``.txt``/``.lst``, one path per line,
    relative to the list-file, ``#`` comments), a glob pattern, a single file, or a list of paths.
    """
    if isinstance(source, (list, tuple)):
        return sorted(Path(p) for p in source)
    text = str(source)
    if text == "samples":
        from .samples import sample_video_paths

        return sorted(sample_video_paths().values())
    p = Path(text)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file()
                      and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if p.is_file() and p.suffix in (".txt", ".lst"):
        lines = [ln.strip() for ln in p.read_text().splitlines()]
        return sorted((p.parent / ln).resolve() for ln in lines if ln and not ln.startswith("#"))
    if p.is_file():
        return [p]
    found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
    if not found:
        raise FileNotFoundError(f"no source files found for {text!r} (folder, glob, list-file or 'samples')")
    return found


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed; cached per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    ck = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if ck not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
        _HASH_CACHE[ck] = h.hexdigest()
    return _HASH_CACHE[ck]


@dataclass
class BatchSpec:
    batch_id: str
    sources: list[str]
    video_ids: list[str]


def video_ids_for(sources: list[Path]) -> list[str]:
    """Sanitized file stems; a stem shared by several files gets a short hash of its path."""
    stems = [sanitize_video_id(Path(s).stem) for s in sources]
    dup = {s for s in stems if stems.count(s) > 1}
    return [s if s not in dup else f"{s}_{hashlib.sha256(str(p).encode()).hexdigest()[:6]}"
            for s, p in zip(stems, sources)]


def plan_batches(sources: list[Path], cfg: BuildConfig, batch_size: int = 4) -> list[BatchSpec]:
    """Group sources (in order) into batches of ``batch_size``.

    batch_id = ``b`` + sha256(config hash, each source's video_id and content sha256)[:16], so
    the same files under the same config map to the same batch wherever they live.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    sources = [Path(s) for s in sources]
    ids = video_ids_for(sources)
    chash = config_hash(cfg)
    out = []
    for i in range(0, len(sources), batch_size):
        srcs, vids = sources[i:i + batch_size], ids[i:i + batch_size]
        h = hashlib.sha256(chash.encode())
        for s, v in zip(srcs, vids):
            content = file_sha256(s) if s.is_file() else "missing"
            h.update(f"|{v}:{content}".encode())
        out.append(BatchSpec("b" + h.hexdigest()[:16], [str(s) for s in srcs], vids))
    return out


# ------------------------------------------------------------------------------------------- models

_MODELS: dict[str, tuple[Any, Any]] = {}


def get_models(cfg: BuildConfig) -> tuple[Any, Any]:
    """(segmenter, tracker) for ``cfg``, built once per process and backend configuration."""
    from .segment import get_segmenter
    from .track import get_tracker

    ck = json.dumps([config_to_dict(cfg.segmenter), config_to_dict(cfg.tracker)], sort_keys=True)
    if ck not in _MODELS:
        _MODELS[ck] = (get_segmenter(cfg.segmenter.name, **cfg.segmenter.options),
                       get_tracker(cfg.tracker.name, **cfg.tracker.options))
    return _MODELS[ck]


# --------------------------------------------------------------------------------------- processing

UNREADABLE = "unreadable"              # the source path cannot be opened (missing, permissions)
PROCESSING_ERROR = "processing_error"  # a stage raised on this clip (message in stats_json)


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
    from . import filters
    from .clips import iter_clips
    from .points import sample_points
    from .render import render_trajectories
    from .sample import encode_sample, make_sample, sample_key
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
            with clock("segment"):
                labels = segmenter.segment(frames)
            with clock("points"):
                points, comps = sample_points(labels[0], seed=clip_seed(cfg.seed, key))
            if len(points) == 0:
                yield None, manifest_row(key, src, vid, start, "rejected", filters.NO_COMPONENTS, None, **base)
                continue
            with clock("track"):
                tracks, vis = tracker.track(frames, points)
            with clock("filter"):
                stats = dict(filters.clip_stats(tracks, vis, frames, labels=labels, components=comps,
                                                cfg=cfg.filters))
                reason = filters.check_clip(stats, cfg.filters)
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
                                     backends=backends, stats=stats)
                members = encode_sample(sample, crf=cfg.video_crf)
        except Exception as exc:  # one bad clip must not stop the build: record it
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


def process_batch(spec: BatchSpec, cfg: BuildConfig, out_dir: str | Path, limit: int | None = None
                  ) -> BatchResult:
    """Process one batch into ``shards/<batch_id>-%06d.tar`` + ``parts/<batch_id>.parquet``.

    Idempotent: a complete batch (its part file exists, written atomically after its shards) is
    returned as recorded without recomputing. Otherwise stale shards/temps of this batch are
    removed and everything is rewritten. ``limit`` caps its accepted clips (see build_dataset).
    """
    from .shards import read_part, write_part, write_shards

    out = prepare_output(out_dir, cfg)
    part = out / "parts" / f"{spec.batch_id}.parquet"
    if part.is_file():
        rows, info = read_part(part)
        if _reusable(info, limit) and all((out / sh).is_file() for sh in info["shards"]):
            return BatchResult(spec.batch_id, info["shards"], rows, info["seconds"], info["counts"],
                               info.get("limit"), info.get("exhausted", True), reused=True)
    import webdataset  # noqa: F401  (imports torch: seconds, kept out of the "write" stage)

    segmenter, tracker = get_models(cfg)
    clock = _Clock()
    rows: list[dict[str, Any]] = []
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
    info = {"batch_id": spec.batch_id, "shards": shards, "seconds": clock.seconds, "counts": counts,
            "limit": limit, "exhausted": exhausted, "sources": spec.sources}
    write_part(part, rows, info)
    return BatchResult(spec.batch_id, shards, rows, clock.seconds, counts, limit, exhausted)


# -------------------------------------------------------------------------------------- out folder

def prepare_output(out_dir: str | Path, cfg: BuildConfig) -> Path:
    """Create the output folder and record the config; refuse a folder built with another one."""
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    cfg_file = out / CONFIG_FILE
    if cfg_file.is_file():
        old = json.loads(cfg_file.read_text()).get("config_hash")
        if old != chash:
            raise ConfigError(f"{out} was built with another config (hash {old}, now {chash}); "
                              "use a fresh --out folder")
    else:
        atomic_write_json(cfg_file, {"config_hash": chash, "config": config_to_dict(cfg)})
    return out


def build_dataset(source: str | Path | list, out_dir: str | Path, cfg: BuildConfig | None = None,
                  max_clips: int | None = None, batch_size: int = 4, progress: bool = True) -> dict:
    """Run every batch in this process, then :func:`finalize`; returns the summary.

    ``max_clips`` caps the number of accepted clips exactly: batches run in source order and each
    may accept at most what is left; the remaining batches are skipped (their sources get no rows).
    Rerunning on the same folder reuses complete batches, so nothing is added twice.
    """
    from tqdm.auto import tqdm

    cfg = cfg or make_config("local")
    out = prepare_output(out_dir, cfg)
    batches = plan_batches(discover_sources(source), cfg, batch_size)
    used: list[str] = []
    accepted = 0
    bar = tqdm(batches, desc="batches", unit="batch", disable=not progress)
    for spec in bar:
        limit = None if max_clips is None else max_clips - accepted
        if limit is not None and limit <= 0:
            break
        res = process_batch(spec, cfg, out, limit=limit)
        used.append(spec.batch_id)
        accepted += res.counts.get("accepted", 0)
        bar.set_postfix(accepted=accepted)
    return finalize(out, batch_ids=used)


def finalize(out_dir: str | Path, batch_ids: list[str] | None = None) -> dict:
    """Merge the batch parts (all, or those in ``batch_ids``) into ``manifest.parquet``
    atomically; returns the summary (see :func:`trackgo_data.shards.merge_parts`)."""
    from .shards import merge_parts

    return merge_parts(out_dir, batch_ids)


