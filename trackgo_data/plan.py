"""Planning a build: which sources exist, which are done, which to run, in which batches.

    discover_sources(source) -> [Path]                      sorted
    file_fingerprint(path) -> str                           ≤ 32 KiB read; "missing" when gone
    plan_build(source, out_dir, cfg, batch_size) -> BuildPlan
    plan_batches(sources, cfg, batch_size) -> [BatchSpec]   every given source, no record consulted
    plan_summary(source, out_dir, cfg, batch_size) -> dict  what a build would do; writes nothing

The source is the unit of record (:mod:`trackgo_data.records`), the batch only a unit of work: a
plan compares each source's fingerprint with the records in the output folder and groups only
the sources without a current record into batches, in source order. Adding or changing k of N
sources therefore runs exactly those k, whatever their names sort to; a recorded source that is no
longer listed is *removed* (its rows leave the manifest at finalize; ``trackgo data compact``
rewrites the shards holding them); a listed path that does not exist is *missing* (no row).

A batch id hashes the config and its sources' video ids and fingerprints
(:func:`~trackgo_data.records.batch_id_for`), so a batch that failed is planned again with the
same id and its leftovers are replaced. Video ids are stable once recorded: a source keeps the id
its record has; a new source gets its file stem, or the stem plus a short hash of its path when
the stem is taken.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import config_hash
from .faults import GONE_ERRNOS
from .records import SourceRecord, batch_id_for, current_record, output_state, read_records
from .sample import sanitize_video_id

#: fingerprint of a listed path that is not (or no longer) a regular file
MISSING = "missing"


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
    reads ≤ 32 KiB whatever the file's size. :data:`MISSING` when there is no such file (ENOENT,
    ENOTDIR) or it is not a regular file; any other OSError (EIO, ESTALE, EMFILE, …) propagates.

    A rewritten file changes its mtime; a same-size edit also changes a sampled block unless
    it hits only unsampled bytes *and* keeps the mtime (tools that copy with ``-p``/``rsync -t``
    preserve it: touch the file then, or use a fresh output folder).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return MISSING
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return MISSING
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
    """A unit of work: sources (paths), their video ids and their fingerprints at planning time
    (None: computed when the batch runs)."""

    batch_id: str
    sources: list[str]
    video_ids: list[str]
    fingerprints: list[str] | None = None


def video_ids_for(sources: list[Path]) -> list[str]:
    """Sanitized file stems; a stem shared by several files gets a short hash of its path."""
    return assign_video_ids([str(s) for s in sources], {})


def assign_video_ids(sources: list[str], recorded: dict[str, str]) -> list[str]:
    """Video ids of ``sources``: the recorded one where a source has one; else its sanitized
    stem, with ``_`` + 6 hex of sha256(path) when another source (new or recorded) has it too."""
    stems = {s: sanitize_video_id(Path(s).stem) for s in sources if s not in recorded}
    taken = Counter(stems.values())
    taken.update(recorded[s] for s in sources if s in recorded)
    return [recorded[s] if s in recorded else
            stems[s] if taken[stems[s]] == 1 else f"{stems[s]}_{hashlib.sha256(s.encode()).hexdigest()[:6]}"
            for s in sources]


def make_batches(sources: list[str], video_ids: list[str], prints: list[str], chash: str,
                 batch_size: int) -> list[BatchSpec]:
    """Consecutive groups of ``batch_size`` sources, with their ids (:func:`batch_id_for`)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out = []
    for i in range(0, len(sources), batch_size):
        srcs, vids, fps = sources[i:i + batch_size], video_ids[i:i + batch_size], prints[i:i + batch_size]
        out.append(BatchSpec(batch_id_for(chash, vids, fps), list(srcs), list(vids), list(fps)))
    return out


def plan_batches(sources: list[Path], cfg: Any, batch_size: int = 4) -> list[BatchSpec]:
    """Every given source, in order, in batches of ``batch_size`` (no output folder consulted;
    :func:`plan_build` plans only what a folder still needs)."""
    srcs = [str(s) for s in sources]
    return make_batches(srcs, video_ids_for(sources), fingerprints([Path(s) for s in srcs]), config_hash(cfg),
                        batch_size)


@dataclass
class BuildPlan:
    """What a build of ``sources`` into an output folder has to do (see the module docstring)."""

    sources: list[str]                          # existing sources, in order
    video_ids: list[str]
    fingerprints: list[str]
    records: dict[str, list[SourceRecord]]      # everything the folder records, by source
    done: dict[str, SourceRecord]               # source -> complete record of its current version
    batches: list[BatchSpec]                    # the other sources, in order, in batches
    removed: list[str] = field(default_factory=list)   # recorded, no longer listed
    missing: list[str] = field(default_factory=list)   # listed, no such file
    batch_size: int = 4
    config_hash: str = ""
    _prints: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def sources_to_run(self) -> int:
        return sum(len(b.sources) for b in self.batches)

    def fingerprint_of(self, source: str) -> str | None:
        """The planning-time fingerprint of a listed source (None for any other path)."""
        if len(self._prints) != len(self.sources):
            self._prints = dict(zip(self.sources, self.fingerprints))
        return self._prints.get(str(source))


def plan_build(source: str | Path | list, out_dir: str | Path, cfg: Any, batch_size: int = 4) -> BuildPlan:
    """Plan a build of ``source`` into ``out_dir`` (reads fingerprints and the folder's records;
    writes nothing)."""
    listed = discover_sources(source)
    prints = fingerprints(listed)
    present = [(str(s), fp) for s, fp in zip(listed, prints) if fp != MISSING]
    missing = [str(s) for s, fp in zip(listed, prints) if fp == MISSING]
    current = dict(present)
    chash = config_hash(cfg)
    records = read_records(out_dir, chash, lambda s: current.get(s)) if Path(out_dir).is_dir() else {}
    recorded_ids = {s: recs[0].video_id for s, recs in records.items() if s in current}
    srcs = [s for s, _ in present]
    vids = assign_video_ids(srcs, recorded_ids)
    done = {s: rec for s, fp in present if (rec := current_record(records.get(s, []), fp)) is not None}
    todo = [i for i, s in enumerate(srcs) if s not in done]
    batches = make_batches([srcs[i] for i in todo], [vids[i] for i in todo], [present[i][1] for i in todo],
                           chash, batch_size)
    return BuildPlan(srcs, vids, [fp for _, fp in present], records, done, batches,
                     removed=sorted(s for s in records if s not in current), missing=missing,
                     batch_size=batch_size, config_hash=chash)


def probe_indices(n: int, k: int) -> list[int]:
    """Indices of the ≤ ``k`` sources (of ``n``, evenly spread) :func:`plan_summary` probes."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n)).round()}) if n else []


def plan_summary(source: str | Path | list, out_dir: str | Path, cfg: Any, batch_size: int = 4,
                 probe_sources: int = 32) -> dict[str, Any]:
    """What a build would do, without processing (nor writing) anything.

    Returns ``sources`` (existing), ``source_bytes``, ``sources_done`` (a current record in
    ``out_dir``), ``sources_to_run``, ``sources_removed`` (recorded, no longer listed: their rows
    leave the manifest), ``sources_missing`` (listed, no such file), ``batch_size``,
    ``batches_to_run``, ``estimated_clips`` (candidate clips of all sources: ``probe_sources``
    sources spread over the list are probed for their frame count, and their mean number of
    windows is scaled to the whole list; None when nothing could be probed), ``probed`` /
    ``probed_unusable`` (sources rejected at the source level among them), ``config_hash`` and
    ``output`` (``new``, ``same config`` or ``other config: refused``).
    """
    from .clips import check_source, plan_windows
    from .video import VideoError, probe

    plan = plan_build(source, out_dir, cfg, batch_size)
    pick = probe_indices(len(plan.sources), probe_sources)
    windows, unusable = [], 0
    for i in pick:
        try:
            info = probe(plan.sources[i])
            windows.append(len(plan_windows(len(check_source(info, cfg.clip)), cfg.clip)))
        except VideoError:
            unusable += 1
            windows.append(0)
    sizes = 0
    for p in plan.sources:
        with contextlib.suppress(FileNotFoundError):
            sizes += os.stat(p).st_size
    return {
        "sources": len(plan.sources), "source_bytes": sizes, "sources_done": len(plan.done),
        "sources_to_run": plan.sources_to_run, "sources_removed": len(plan.removed),
        "sources_missing": len(plan.missing), "batch_size": batch_size, "batches_to_run": len(plan.batches),
        "estimated_clips": round(float(np.mean(windows)) * len(plan.sources)) if windows else None,
        "probed": len(pick), "probed_unusable": unusable, "config_hash": config_hash(cfg),
        "output": output_state(out_dir, config_hash(cfg)),
    }
