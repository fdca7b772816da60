"""The output folder and its record of what was built: one record per source.

    prepare_output(out_dir, cfg) -> Path          create it, record the config, refuse another config
    batch_lock(out_dir, batch_id)                 one process at a time writes a batch
    SourceRecord                                   what one batch did with one version of one source
    read_records(out_dir, config_hash, fingerprint_of) -> {source: [SourceRecord]}
    current_record(records, fingerprint) -> SourceRecord | None
    batch_id_for(config_hash, video_ids, fingerprints) -> "b" + 16 hex

The source is the unit of record; a batch is only the unit of work. A batch's completion record
``parts/<batch_id>.parquet`` (written last, atomically) holds its manifest rows and, in its
metadata, one record per source it processed: the source's path, video id and fingerprint (size,
mtime, sampled blocks: :func:`trackgo_data.plan.file_fingerprint`), how many clips it accepted,
whether it was processed to the end (``complete``) or cut by a clip cap (``limit``). A source is
done when a complete record of its current fingerprint exists, whichever batch wrote it.

Folders written before per-source records (parts without ``records``) are read as they are: a
part whose batch id, recomputed from its sources' current fingerprints, is still its own holds
complete records of all its sources (the batch id hashed exactly those fingerprints); any other
such part records nothing, so its sources are processed again once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, atomic_write_json, config_hash, config_to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "build_config.json"
#: version of the part metadata that carries per-source records
PART_FORMAT = 2


@dataclass(frozen=True)
class SourceRecord:
    """One version (fingerprint) of one source as processed by batch ``batch_id``."""

    source: str
    video_id: str
    fingerprint: str
    batch_id: str
    accepted: int
    complete: bool            # processed to its last clip (not cut by a clip cap)
    limit: int | None = None  # the accepted-clip cap it was processed under (None: none)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "batch_id"}


def batch_id_for(chash: str, video_ids: list[str], prints: list[str]) -> str:
    """``b`` + sha256(config hash, then ``|video_id:fingerprint`` per source in order)[:16]."""
    h = hashlib.sha256(chash.encode())
    for v, fp in zip(video_ids, prints):
        h.update(f"|{v}:{fp}".encode())
    return "b" + h.hexdigest()[:16]


def prepare_output(out_dir: str | Path, cfg: Any) -> Path:
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


def output_state(out_dir: str | Path, chash: str) -> str:
    """``new``, ``same config`` or ``other config (<hash>): refused`` for a build with ``chash``."""
    cfg_file = Path(out_dir) / CONFIG_FILE
    if not cfg_file.is_file():
        return "new"
    old = json.loads(cfg_file.read_text()).get("config_hash")
    return "same config" if old == chash else f"other config ({old}): refused"


def part_info(path: Path) -> dict[str, Any]:
    """The metadata of a part file, from its footer only (no rows are read)."""
    import pyarrow.parquet as pq

    from .shards import PART_META_KEY

    import pyarrow as pa

    try:
        schema = pq.read_schema(path)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path} is not a readable batch part ({exc}); delete it and its batch is redone") from exc
    meta = (schema.metadata or {}).get(PART_META_KEY)
    if meta is None:
        raise ValueError(f"{path} is not a batch part file; delete it and its batch is redone")
    return json.loads(meta)


def _legacy_records(path: Path, info: dict[str, Any], chash: str,
                    fingerprint_of: Callable[[str], str | None]) -> list[SourceRecord]:
    """Complete records of an earlier-format part whose sources are unchanged (module docstring)."""
    import pyarrow.parquet as pq

    if not info.get("exhausted", True) or info.get("limit") is not None:
        return []
    table = pq.ParquetFile(path).read(columns=["source", "video_id", "status"]).to_pylist()
    vids = {r["source"]: r["video_id"] for r in table}
    sources = list(info.get("sources", []))
    prints = [fingerprint_of(s) for s in sources]
    if any(s not in vids for s in sources) or any(fp is None for fp in prints):
        return []
    if batch_id_for(chash, [vids[s] for s in sources], prints) != info["batch_id"]:
        return []
    return [SourceRecord(s, vids[s], fp, info["batch_id"],
                         sum(r["source"] == s and r["status"] == "accepted" for r in table), True)
            for s, fp in zip(sources, prints)]


def read_records(out_dir: str | Path, chash: str, fingerprint_of: Callable[[str], str | None]
                 ) -> dict[str, list[SourceRecord]]:
    """Every per-source record in ``out_dir/parts``, by source (earlier-format parts verified
    with ``fingerprint_of(source)``, the current fingerprint or None when unknown)."""
    parts = Path(out_dir) / "parts"
    found: dict[str, list[SourceRecord]] = {}
    names = sorted(n for n in os.listdir(parts) if n.endswith(".parquet")) if parts.is_dir() else []
    for name in names:
        path = parts / name
        try:
            info = part_info(path)
        except FileNotFoundError:  # compacted away meanwhile
            continue
        if "records" in info:
            recs = [SourceRecord(batch_id=info["batch_id"], **r) for r in info["records"]]
        else:
            recs = _legacy_records(path, info, chash, fingerprint_of)
        for rec in recs:
            found.setdefault(rec.source, []).append(rec)
    return found


def current_record(records: list[SourceRecord], fingerprint: str) -> SourceRecord | None:
    """The complete record of this version of the source (the smallest batch id if several)."""
    hits = [r for r in records if r.complete and r.fingerprint == fingerprint]
    return min(hits, key=lambda r: r.batch_id) if hits else None


def reusable_record(records: list[SourceRecord], fingerprint: str, left: int) -> SourceRecord | None:
    """A record of this version usable when ``left`` clips may still be accepted: processed under
    exactly that cap, or complete with no more than ``left`` accepted."""
    same = [r for r in records if r.fingerprint == fingerprint]
    hits = [r for r in same if r.limit == left] or [r for r in same if r.complete and r.accepted <= left]
    return min(hits, key=lambda r: r.batch_id) if hits else None


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
