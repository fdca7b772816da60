"""Building a dataset in-process: sources → batches → shards + per-batch parts → manifest.

The batch-level API (what ``trackgo data build`` loops over and what an orchestrator calls; the
calls exchange paths and small records only):

    discover_sources(source) -> [Path]                     sorted
    plan_batches(sources, cfg, batch_size) -> [BatchSpec]  ids from file contents + config hash
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

import glob
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clips import ClipConfig
from .config import ConfigError, atomic_write_json, config_from_dict, config_hash, config_to_dict
from .filters import FilterConfig
from .process import (PROCESSING_ERROR, STAGES, UNREADABLE, BatchResult, _Clock, clip_seed,  # noqa: F401
                      iter_video, process_batch, process_video)
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


#: threads reading source files at once while planning (hashlib releases the GIL, so hashing
#: spreads over the cores, and reads from network storage overlap)
HASH_THREADS = 8


def content_hashes(sources: list[Path], threads: int = HASH_THREADS) -> list[str]:
    """sha256 of each source's bytes, in order ("missing" for a path that is not a file)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path: Path) -> str:
        return file_sha256(path) if path.is_file() else "missing"

    if threads <= 1 or len(sources) <= 1:
        return [one(p) for p in sources]
    with ThreadPoolExecutor(min(threads, len(sources)), thread_name_prefix="hash") as pool:
        return list(pool.map(one, sources))


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
    contents = content_hashes(sources)
    chash = config_hash(cfg)
    out = []
    for i in range(0, len(sources), batch_size):
        srcs, vids = sources[i:i + batch_size], ids[i:i + batch_size]
        h = hashlib.sha256(chash.encode())
        for v, content in zip(vids, contents[i:i + batch_size]):
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


