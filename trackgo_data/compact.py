"""``trackgo data compact``: drop from the shards the samples the manifest no longer lists.

    compact(out_dir) -> {"samples_dropped", "shards_rewritten", "shards_deleted", "parts_rewritten",
                         "parts_deleted", "bytes_freed"}

A build leaves the samples of removed (or changed) sources in their shards — rewriting other
sources' shards is the expensive thing incremental builds avoid — and the manifest, which the
loader follows, no longer lists them. Compacting makes the files agree with the manifest:

1. each batch part keeps only the rows and records of the sources the manifest takes from it (a
   part with none left is deleted), written atomically, so a source whose samples are about to
   go is no longer recorded as done;
2. each shard holding samples the manifest does not list is rewritten with the listed ones only
   (same name, same byte layout as the builder writes: temp file, fsync, rename); shards that no
   part references any more, and leftover temp files, are deleted;
3. the manifest, summary and dataset card are written again from the parts.

An interruption between the steps leaves shards with extra samples (still ignored, removed by
the next compact), never a record of samples that are gone. Compacting refuses to run while a
build holds a batch lock in the folder.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _building(out: Path) -> str | None:
    """The batch id whose lock some process holds in ``out/parts``, if any."""
    import fcntl

    for lock in sorted((out / "parts").glob(".*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.name[1:-len(".lock")]
        finally:
            os.close(fd)
    return None


def _compact_parts(out: Path, keep_rows: set[tuple[str, str]], keep_samples: set[tuple[str, str]]
                   ) -> tuple[set[str], dict[str, int]]:
    """Step 1; returns the shards still referenced and the counts."""
    from .shards import read_part, write_part

    referenced: set[str] = set()
    counts = {"parts_rewritten": 0, "parts_deleted": 0}
    for part in sorted((out / "parts").glob("*.parquet")):
        rows, info = read_part(part)
        kept = [r for r in rows if (r["batch_id"], r["source"]) in keep_rows]
        shards = [sh for sh in info.get("shards", [])
                  if any((sh, r["key"]) in keep_samples for r in kept if r["status"] == "accepted")]
        if len(kept) == len(rows) and shards == info.get("shards", []):
            referenced.update(shards)
            continue
        if not kept:
            part.unlink()
            counts["parts_deleted"] += 1
            continue
        sources = {r["source"] for r in kept}
        accepted = sum(r["status"] == "accepted" for r in kept)
        info = {**info, "shards": shards, "counts": {"accepted": accepted, "rejected": len(kept) - accepted},
                "sources": [s for s in info.get("sources", []) if s in sources],
                "records": [rec for rec in info.get("records", []) if rec["source"] in sources]}
        write_part(part, kept, info)
        referenced.update(shards)
        counts["parts_rewritten"] += 1
    return referenced, counts


def _rewrite_shard(path: Path, keep: set[str]) -> int:
    """Rewrite ``path`` with the samples whose key is in ``keep``; returns the samples dropped."""
    import webdataset as wds

    from .shards import FIXED_MTIME, TMP_SUFFIX

    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    kept = [{k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")}
            for s in samples if s["__key__"] in keep]
    if len(kept) == len(samples):
        return 0
    tmp = Path(str(path) + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as fh:
            writer = wds.TarWriter(fh, mtime=FIXED_MTIME, encoder=False)
            for sample in kept:
                writer.write(sample)
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(samples) - len(kept)


def compact(out_dir: str | Path) -> dict[str, Any]:
    """Make ``out_dir``'s parts and shards hold exactly what its manifest lists (module
    docstring); returns what was done. Idempotent."""
    from .shards import TMP_SUFFIX, merge_parts, read_manifest

    out = Path(out_dir)
    manifest = out / "manifest.parquet"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist: build the dataset first (trackgo data build)")
    busy = _building(out)
    if busy is not None:
        raise RuntimeError(f"a build is running in {out} (batch {busy} is locked); compact when it has finished")
    rows = read_manifest(manifest)
    keep_rows = {(r["batch_id"], r["source"]) for r in rows}
    keep_samples = {(r["shard"], r["key"]) for r in rows if r["status"] == "accepted"}
    referenced, result = _compact_parts(out, keep_rows, keep_samples)
    listed: dict[str, set[str]] = {}
    for shard_rel, key in keep_samples:
        listed.setdefault(shard_rel, set()).add(key)
    result.update(samples_dropped=0, shards_rewritten=0, shards_deleted=0, bytes_freed=0)
    for shard in sorted((out / "shards").iterdir()):
        rel = f"shards/{shard.name}"
        size = shard.stat().st_size
        if shard.name.endswith(TMP_SUFFIX) or rel not in referenced:
            shard.unlink()
            result["shards_deleted"] += not shard.name.endswith(TMP_SUFFIX)
            result["bytes_freed"] += size
            continue
        dropped = _rewrite_shard(shard, listed.get(rel, set()))
        if dropped:
            result["samples_dropped"] += dropped
            result["shards_rewritten"] += 1
            result["bytes_freed"] += size - shard.stat().st_size
    merge_parts(out, selection={r["source"]: r["batch_id"] for r in rows})
    log.info("compacted %s: %s", out, result)
    return result
