"""Building a dataset in-process: sources → batches → shards + per-batch parts → manifest.

The batch-level API (what ``trackgo data build`` loops over and what an orchestrator calls; the
calls exchange paths and small records only):

    discover_sources(source) -> [Path]                     sorted
    plan_batches(sources, cfg, batch_size) -> [BatchSpec]  ids from file fingerprints + config hash
    plan_summary(source, out_dir, cfg, batch_size) -> dict what a build would do (reads no video
                                                           but a small probed sample)
    get_models(cfg) -> (segmenter, tracker)                loaded once per process
    process_batch(spec, cfg, out_dir) -> BatchResult       idempotent (see below)
    finalize(out_dir) -> summary dict                      parts → manifest.parquet

``process_batch``, ``process_video`` and ``iter_video`` live in :mod:`trackgo_data.process` and
are re-exported here.

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

import contextlib
import glob
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .clips import ClipConfig
from .config import ConfigError, atomic_write_json, config_from_dict, config_hash, config_to_dict
from .filters import FilterConfig
from .process import (PROCESSING_ERROR, STAGES, UNREADABLE, BatchResult, InfrastructureError,  # noqa: F401
                      _Clock, clip_seed, is_infrastructure_error, iter_video, process_batch, process_video)
from .sample import sanitize_video_id
from .shards import ShardSpec

log = logging.getLogger(__name__)

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
        found: list[str] = []
        stack = [str(p)]
        while stack:  # os.scandir: file types come with the listing, no stat per file
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        stack.append(e.path)
                    elif e.is_file():
                        found.append(e.path)
        return [Path(f) for f in sorted(found)]
    if p.is_file() and p.suffix in (".txt", ".lst"):
        lines = [ln.strip() for ln in p.read_text().splitlines()]
        return sorted((p.parent / ln).resolve() for ln in lines if ln and not ln.startswith("#"))
    if p.is_file():
        return [p]
    found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
    if not found:
        raise FileNotFoundError(f"no source files found for {text!r} (folder, glob, list-file or 'samples')")
    return found


#: bytes read from each source to fingerprint it: FINGERPRINT_BLOCKS blocks of FINGERPRINT_BLOCK
#: at the start, the end and evenly in between (the container's header and index live at the ends)
FINGERPRINT_BLOCK = 4096
FINGERPRINT_BLOCKS = 8


def file_fingerprint(path: str | Path, block: int = FINGERPRINT_BLOCK, blocks: int = FINGERPRINT_BLOCKS) -> str:
    """blake2b of a file's size, modification time (ns) and ``blocks`` sampled blocks of
    ``block`` bytes (first, last, evenly spaced between; the whole file when it is smaller):
    reads ≤ 32 KiB whatever the file's size. "missing" when the path is not a readable file.

    A rewritten file changes its mtime; a same-size edit also changes a sampled block unless
    it hits only unsampled bytes *and* keeps the mtime (tools that copy with ``-p``/``rsync -t``
    preserve it: touch the file then, or use a fresh output folder).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "missing"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "missing"
        size = st.st_size
        if hasattr(os, "posix_fadvise"):  # no read-ahead: 8 × 4 KiB, not 8 × 128 KiB, from the disk
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        h = hashlib.blake2b(f"{size}:{st.st_mtime_ns}".encode(), digest_size=20)
        if size <= block * blocks:
            h.update(os.pread(fd, size, 0))
        else:
            last = size - block
            h.update(b"".join(os.pread(fd, block, (i * last + (blocks - 1) // 2) // (blocks - 1))
                              for i in range(blocks)))
    except OSError:
        return "missing"
    finally:
        os.close(fd)
    return h.hexdigest()


#: threads fingerprinting sources at once: the reads are small and, on network storage,
#: latency-bound, so threads overlap them (os.pread and hashlib release the GIL)
HASH_THREADS = 4


def fingerprints(sources: list[Path], threads: int = HASH_THREADS, chunk: int = 512) -> list[str]:
    """:func:`file_fingerprint` of each source, in order; ``threads`` threads, each taking
    ``chunk`` sources at a time (one future per source would cost more than the reads)."""
    from concurrent.futures import ThreadPoolExecutor

    if threads <= 1 or len(sources) <= chunk:
        return [file_fingerprint(p) for p in sources]
    parts = [sources[i:i + chunk] for i in range(0, len(sources), chunk)]
    with ThreadPoolExecutor(min(threads, len(parts)), thread_name_prefix="fingerprint") as pool:
        return [fp for part in pool.map(lambda ps: [file_fingerprint(p) for p in ps], parts) for fp in part]


@dataclass
class BatchSpec:
    batch_id: str
    sources: list[str]
    video_ids: list[str]


def video_ids_for(sources: list[Path]) -> list[str]:
    """Sanitized file stems; a stem shared by several files gets a short hash of its path."""
    from collections import Counter

    stems = [sanitize_video_id((s if isinstance(s, Path) else Path(s)).stem) for s in sources]
    counts = Counter(stems)
    return [s if counts[s] == 1 else f"{s}_{hashlib.sha256(str(p).encode()).hexdigest()[:6]}"
            for s, p in zip(stems, sources)]


def plan_batches(sources: list[Path], cfg: BuildConfig, batch_size: int = 4) -> list[BatchSpec]:
    """Group sources (in order) into batches of ``batch_size``.

    batch_id = ``b`` + sha256(config hash, each source's video_id and fingerprint)[:16]
    (:func:`file_fingerprint`: size, mtime, sampled blocks), so planning reads ≤ 32 KiB per
    source however large the videos are, and a changed file gets its batch redone.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    sources = [s if isinstance(s, Path) else Path(s) for s in sources]
    ids = video_ids_for(sources)
    prints = fingerprints(sources)
    chash = config_hash(cfg)
    out = []
    for i in range(0, len(sources), batch_size):
        srcs, vids = sources[i:i + batch_size], ids[i:i + batch_size]
        h = hashlib.sha256(chash.encode())
        for v, fp in zip(vids, prints[i:i + batch_size]):
            h.update(f"|{v}:{fp}".encode())
        out.append(BatchSpec("b" + h.hexdigest()[:16], [str(s) for s in srcs], vids))
    return out


def done_batches(out_dir: str | Path, specs: list[BatchSpec]) -> list[str]:
    """Ids of the batches in ``specs`` already recorded complete in ``out_dir`` (part file there)."""
    parts = Path(out_dir) / "parts"
    names = set(os.listdir(parts)) if parts.is_dir() else set()
    return [s.batch_id for s in specs if f"{s.batch_id}.parquet" in names]


def probe_indices(n: int, k: int) -> list[int]:
    """Indices of the ≤ ``k`` sources (of ``n``, evenly spread) :func:`plan_summary` probes."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n)).round()}) if n else []


def plan_summary(source: str | Path | list, out_dir: str | Path, cfg: BuildConfig, batch_size: int = 4,
                 probe_sources: int = 32) -> dict[str, Any]:
    """What :func:`build_dataset` would do, without processing (nor writing) anything.

    Returns ``sources``, ``source_bytes``, ``batches``, ``batches_done`` (already recorded in
    ``out_dir``), ``batches_to_run``, ``estimated_clips`` (candidate clips of all sources:
    ``probe_sources`` sources spread over the list are probed for their frame count, and their
    mean number of windows is scaled to the whole list; None when nothing could be probed),
    ``probed`` / ``probed_unusable`` (sources rejected at the source level among them),
    ``config_hash`` and ``output`` (``new``, ``same config`` or ``other config: refused``).
    """
    from .clips import check_source, plan_windows
    from .video import VideoError, probe

    sources = discover_sources(source)
    specs = plan_batches(sources, cfg, batch_size)
    done = done_batches(out_dir, specs)
    pick = probe_indices(len(sources), probe_sources)
    windows, unusable = [], 0
    for i in pick:
        try:
            info = probe(sources[i])
            check_source(info, cfg.clip)
            windows.append(len(plan_windows(info.num_frames, cfg.clip)))
        except (VideoError, OSError):
            unusable += 1
            windows.append(0)
    chash = config_hash(cfg)
    cfg_file = Path(out_dir) / CONFIG_FILE
    if not cfg_file.is_file():
        state = "new"
    else:
        old = json.loads(cfg_file.read_text()).get("config_hash")
        state = "same config" if old == chash else f"other config ({old}): refused"
    sizes = 0
    for p in sources:
        with contextlib.suppress(OSError):
            sizes += p.stat().st_size
    return {
        "sources": len(sources), "source_bytes": sizes, "batch_size": batch_size, "batches": len(specs),
        "batches_done": len(done), "batches_to_run": len(specs) - len(done),
        "estimated_clips": round(float(np.mean(windows)) * len(sources)) if windows else None,
        "probed": len(pick), "probed_unusable": unusable, "config_hash": chash, "output": state,
    }


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


