"""WebDataset shards (byte-reproducible, atomically published) and the parquet manifest.

Shards are written by ``webdataset.ShardWriter`` into ``<name>.tmp`` files and renamed to their
final ``<prefix>-%06d.tar`` name only once complete, so a reader never sees a half-written shard.
webdataset 1.0.2's ``TarWriter`` stamps each member with ``time.time()`` unless ``mtime`` is
given; it already fixes mode (0o444), user/group names and member order (sorted), and tarfile
leaves uid/gid at 0, so passing a fixed ``mtime`` makes two writes of the same samples
byte-identical.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

#: 2024-01-01T00:00:00Z, stamped on every tar member.
FIXED_MTIME = 1704067200.0
TMP_SUFFIX = ".tmp"


@dataclass
class ShardSpec:
    """Shard size limits (``ShardWriter`` opens a new shard when either is reached)."""

    maxcount: int = 1000
    maxsize: int = 1_000_000_000

    def __post_init__(self) -> None:
        if int(self.maxcount) < 1 or int(self.maxsize) < 1:
            raise ValueError("ShardSpec.maxcount and maxsize must be >= 1")


def remove_partials(out_dir: str | Path, prefix: str) -> list[Path]:
    """Delete ``<prefix>-000000.tar``, ``-000001.tar``, … and their temp files (a batch about to be
    rewritten). Shards are numbered from 0 without gaps, so this stops at the first number with
    neither file: a few stat calls, not a listing of a folder that may hold every shard of a corpus."""
    out_dir = Path(out_dir)
    gone = []
    for i in range(1 << 20):
        found = [p for p in (out_dir / f"{prefix}-{i:06d}.tar", out_dir / f"{prefix}-{i:06d}.tar{TMP_SUFFIX}")
                 if p.exists()]
        if not found:
            break
        for p in found:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


class _Publisher:
    """``ShardWriter``'s opener and post hooks: a shard is written to ``<name>.tmp``, and when it
    is complete fsynced and renamed to its name; while ``failed`` it is discarded instead."""

    def __init__(self):
        self.handles: dict[str, Any] = {}
        self.written: list[Path] = []
        self.failed = False

    def open(self, fname: str):
        fh = open(fname + TMP_SUFFIX, "wb")
        self.handles[fname] = fh
        return fh

    def post(self, fname: str) -> None:
        fh = self.handles.pop(fname)
        tmp = Path(fname + TMP_SUFFIX)
        try:
            if not self.failed:
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        if self.failed:  # an exception is unwinding: never publish a partial shard
            tmp.unlink(missing_ok=True)
            return
        os.replace(tmp, fname)
        self.written.append(Path(fname))

    def discard(self) -> None:
        """Remove what is open and what was published: a batch's shards are all there or none."""
        for fname, fh in list(self.handles.items()):
            fh.close()
            Path(fname + TMP_SUFFIX).unlink(missing_ok=True)
        for p in self.written:
            p.unlink(missing_ok=True)


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | Path,
    prefix: str,
    spec: ShardSpec | None = None,
    *,
    mtime: float = FIXED_MTIME,
    index: dict[str, str] | None = None,
) -> list[Path]:
    """Write encoded samples (``encode_sample`` dicts: ``__key__`` + bytes members) to
    ``out_dir/<prefix>-000000.tar, …``. Returns the final paths; none when there are no samples.
    ``index``, when given, is filled with ``key -> shard file name``.

    Existing shards of the same prefix are removed first, so a rerun never leaves a stale
    ``-000003.tar`` of a longer earlier write. Each shard is fsynced and renamed when complete;
    when anything fails (the samples' generator, a write, an fsync) no shard of the prefix is left.
    """
    import webdataset as wds

    spec = spec or ShardSpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir, prefix)
    it = iter(samples)
    first = next(it, None)
    if first is None:
        return []
    files = _Publisher()
    sink = wds.ShardWriter(str(out_dir / f"{prefix}-%06d.tar"), maxcount=int(spec.maxcount),
                           maxsize=int(spec.maxsize), opener=files.open, post=files.post, verbose=0, mtime=mtime,
                           encoder=False)
    try:
        for sample in _chain(first, it):
            sink.write(sample)
            if index is not None:
                index[sample["__key__"]] = Path(sink.fname).name
        sink.close()  # publishes the last shard
    except BaseException:
        files.failed = True
        with contextlib.suppress(Exception):
            sink.close()
        files.discard()
        raise
    log.debug("wrote %d shard(s) with prefix %s", len(files.written), prefix)
    return files.written


def _chain(first, rest):
    yield first
    yield from rest


# ----------------------------------------------------------------------------------------- manifest

def manifest_schema():
    """Typed columns of ``manifest.parquet`` (stats columns are null where a clip never got there)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("source", pa.string()),
            ("video_id", pa.string()),
            ("start_frame", pa.int64()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("shard", pa.string()),
            ("batch_id", pa.string()),
            ("num_frames", pa.int64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("fps", pa.float64()),
            ("num_components", pa.int64()),
            ("num_points", pa.int64()),
            ("median_motion_px", pa.float64()),
            ("visible_ratio", pa.float64()),
            ("scene_cut", pa.float64()),
            ("camera_motion_px", pa.float64()),
            ("stats_json", pa.string()),
            ("sample_bytes", pa.int64()),
        ]
    )


MANIFEST_COLUMNS = tuple(f.name for f in manifest_schema())


def manifest_table(rows: list[dict[str, Any]]):
    """Rows (dicts; missing columns → null, unknown columns → error) → pyarrow Table."""
    import pyarrow as pa

    schema = manifest_schema()
    for r in rows:
        extra = set(r) - set(MANIFEST_COLUMNS)
        if extra:
            raise ValueError(f"unknown manifest column(s): {sorted(extra)}")
        if r.get("status") not in ("accepted", "rejected"):
            raise ValueError(f"manifest row {r.get('key')}: status must be accepted|rejected")
    cols = {name: [r.get(name) for r in rows] for name in MANIFEST_COLUMNS}
    return pa.table(cols, schema=schema)


def manifest_row(key: str, source: str, video_id: str, start: int | None, status: str, reason: str | None,
                 stats: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One manifest row; typed stats columns are picked from a ``filters.clip_stats`` dict, the
    whole dict is kept as JSON in ``stats_json``. ``extra``: other manifest columns."""
    import json

    row = {"key": key, "source": source, "video_id": video_id, "start_frame": start,
           "status": status, "reason": reason, **extra}
    if stats:
        pick = {"median_motion_px": ("median_motion_px", "median_motion"),
                "visible_ratio": ("visible_ratio",), "scene_cut": ("scene_cut",),
                "camera_motion_px": ("camera_motion",)}
        for col, names in pick.items():
            row[col] = next((float(stats[n]) for n in names if stats.get(n) is not None), None)
        row["stats_json"] = json.dumps(stats, sort_keys=True, default=str)
    return row


def write_manifest(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as parquet atomically (temp file + rename)."""
    import pyarrow.parquet as pq

    from .config import atomic_write_bytes
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    pq.write_table(manifest_table(rows), sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest (or batch part) file as dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# -------------------------------------------------------------------------------- batch parts

PART_META_KEY = b"trackgo_batch"


def write_part(path: str | Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """A batch's completion record: its manifest rows, with ``info`` (shards, per-stage seconds,
    counts, limit, …) as JSON in the parquet schema metadata. Atomic."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .config import atomic_write_bytes

    table = manifest_table(rows)
    table = table.replace_schema_metadata({PART_META_KEY: json.dumps(info, sort_keys=True).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_part(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, info) of a part file written by :func:`write_part`."""
    import json

    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read(use_threads=False)  # a small file: no dataset machinery, no thread pool
    meta = (table.schema.metadata or {}).get(PART_META_KEY)
    if meta is None:
        raise ValueError(f"{path} is not a batch part file (no {PART_META_KEY.decode()} metadata)")
    return table.to_pylist(), json.loads(meta)


def merge_parts(out_dir: str | Path, batch_ids: list[str] | None = None,
                selection: dict[str, str] | None = None) -> dict[str, Any]:
    """Merge batch parts into ``out_dir/manifest.parquet``: with ``selection`` ({source: batch_id})
    the rows of each selected source from the part that batch wrote, and nothing else (the rows
    of removed sources and of earlier versions of a source stay out); else every row of the parts
    ``batch_ids`` (all parts when None).

    Raises when a key appears twice. Returns the summary (also written as summary.json):
    accepted/rejected counts, rejects by reason, clips, seconds per stage, the shards holding the
    accepted samples and their bytes per sample, the backends recorded by the batches. Then writes
    the dataset card (``README.md``, :mod:`trackgo_data.card`).
    """
    from .card import write_card
    from .config import atomic_write_json

    out = Path(out_dir)
    parts = sorted((out / "parts").glob("*.parquet"))
    wanted = set(selection.values()) if selection is not None else None if batch_ids is None else set(batch_ids)
    if wanted is not None:
        parts = [p for p in parts if p.stem in wanted]
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    backends: list[dict[str, Any]] = []
    for p in parts:
        prow, info = read_part(p)
        if selection is not None:
            prow = [r for r in prow if selection.get(r["source"]) == p.stem]
        rows.extend(prow)
        backends += [b for b in info.get("backends", []) if b not in backends]
        for k, v in info.get("seconds", {}).items():
            seconds[k] = seconds.get(k, 0.0) + float(v)
    shards = sorted({r["shard"] for r in rows if r["status"] == "accepted" and r.get("shard")})
    seen: set[str] = set()
    dups = sorted({r["key"] for r in rows if r["key"] in seen or seen.add(r["key"])})
    if dups:
        raise RuntimeError(f"duplicated manifest key(s) {dups[:5]} in {out}")
    rows.sort(key=lambda r: (r["source"], r["key"]))
    write_manifest(rows, out / "manifest.parquet")
    n_acc = sum(r["status"] == "accepted" for r in rows)
    by_reason: dict[str, int] = {}
    for r in rows:
        if r["status"] == "rejected":
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    sizes = {s: (out / s).stat().st_size for s in sorted(shards) if (out / s).is_file()}
    shard_bytes = sum(sizes.values())
    summary = {
        "out_dir": str(out),
        "batches": len(parts),
        "sources": len({r["source"] for r in rows}),
        "clips": len(rows),
        "accepted": n_acc,
        "rejected": len(rows) - n_acc,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "shards": shards,
        "shard_bytes": shard_bytes,
        "shard_bytes_per_sample": shard_bytes / n_acc if n_acc else 0.0,
        "seconds": {k: round(v, 4) for k, v in sorted(seconds.items())},
        "backends": backends,
    }
    atomic_write_json(out / "summary.json", summary)
    write_card(out, {**summary, "shard_sizes": sizes}, rows)
    return summary
