"""The dataset card: ``OUT/README.md``, what a reader of a build output folder needs first.

Written (atomically) by :func:`trackgo_data.shards.merge_parts` every time the manifest is, so a
rerun regenerates it: counts and rejects by reason, the backends (name + version) that made the
samples, the config and its hash, the shards, and ready-to-run ``duckdb`` queries on
``manifest.parquet``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"

#: (what it answers, SQL) — run from the output folder: ``duckdb -c "<query>"``
QUERIES = (
    ("clips by status and reason",
     "SELECT status, reason, count(*) AS clips FROM 'manifest.parquet' GROUP BY ALL ORDER BY clips DESC;"),
    ("samples and bytes per shard",
     "SELECT shard, count(*) AS samples, sum(sample_bytes) AS bytes FROM 'manifest.parquet' "
     "WHERE status = 'accepted' GROUP BY shard ORDER BY shard;"),
    ("accepted clips with strong motion, where to find them",
     "SELECT key, shard, median_motion_px FROM 'manifest.parquet' "
     "WHERE status = 'accepted' AND median_motion_px > 20 ORDER BY median_motion_px DESC LIMIT 20;"),
    ("a filter statistic kept in stats_json, by outcome",
     "SELECT coalesce(reason, 'accepted') AS outcome, count(*) AS clips, "
     "round(median(CAST(json_extract(stats_json, '$.camera_motion_rel') AS DOUBLE)), 4) AS camera_motion_rel "
     "FROM 'manifest.parquet' GROUP BY ALL ORDER BY clips DESC;"),
    ("sources that gave no accepted clip",
     "SELECT source, count(*) AS clips, string_agg(DISTINCT reason, ', ') AS reasons FROM 'manifest.parquet' "
     "GROUP BY source HAVING count(*) FILTER (WHERE status = 'accepted') = 0 ORDER BY source;"),
)


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render_card(summary: dict[str, Any], rows: list[dict[str, Any]], config: dict[str, Any] | None) -> str:
    """Markdown of the card from the merged ``summary`` (see ``merge_parts``), the manifest
    ``rows`` and the folder's ``build_config.json`` content (None when absent)."""
    n_clips, n_acc = int(summary["clips"]), int(summary["accepted"])
    cfg = (config or {}).get("config", {})
    chash = (config or {}).get("config_hash", "unknown")
    clip = cfg.get("clip", {})
    lines = [
        f"# Dataset card: {Path(summary['out_dir']).name}",
        "",
        "TrackGo training samples in sample format v1 (webdataset shards; members and meanings in the "
        "project's docs/sample_format.md), with `manifest.parquet` holding one row per candidate clip, "
        "accepted or rejected. This file is regenerated whenever the manifest is.",
        "",
        *_table(("", ""), [
            ("sources", summary["sources"]), ("batches", summary["batches"]),
            ("candidate clips", n_clips), ("accepted", n_acc), ("rejected", summary["rejected"]),
            ("shards", f"{len(summary['shards'])} ({summary['shard_bytes'] / 2**30:.3f} GiB)"),
            ("bytes per accepted sample", int(summary["shard_bytes_per_sample"])),
            ("clip", f"{clip.get('num_frames', '?')} frames at {clip.get('width', '?')}×{clip.get('height', '?')}"),
            ("profile", cfg.get("profile", "?")), ("config hash", f"`{chash}`"),
        ]),
        "",
        "## Rejected clips by reason",
        "",
    ]
    by_reason = summary.get("rejected_by_reason", {})
    if by_reason:
        lines += _table(("reason", "clips", "share of candidates"),
                        [(f"`{r}`", n, f"{n / max(1, n_clips):.1%}")
                         for r, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))])
    else:
        lines.append("None.")
    lines += ["", "## Backends", ""]
    backends = summary.get("backends") or []
    if backends:
        lines += _table(("segmenter", "tracker"),
                        [(f"{b.get('segmenter', {}).get('name')} `{b.get('segmenter', {}).get('version')}`",
                          f"{b.get('tracker', {}).get('name')} `{b.get('tracker', {}).get('version')}`")
                         for b in backends])
        extra = [b for b in backends if set(b) - {"segmenter", "tracker"}]
        if extra:
            lines += ["", "Further backend records: `" + json.dumps(extra, sort_keys=True) + "`"]
    else:
        lines.append("Not recorded (no batch part holds them).")
    lines += ["", "## Configuration", "", f"Hash `{chash}` (also in `build_config.json`):", "",
              "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", "", "## Shards", ""]
    per_shard: dict[str, int] = {}
    for r in rows:
        if r.get("status") == "accepted" and r.get("shard"):
            per_shard[r["shard"]] = per_shard.get(r["shard"], 0) + 1
    sizes = summary.get("shard_sizes", {})
    if summary["shards"]:
        lines += _table(("shard", "samples", "bytes"),
                        [(f"`{s}`", per_shard.get(s, 0), sizes.get(s, "?")) for s in summary["shards"]])
    else:
        lines.append("None (no clip was accepted).")
    lines += ["", "## Querying the manifest", "",
              "With [duckdb](https://duckdb.org) from this folder (`duckdb -c \"…\"`), or `pyarrow.parquet`:", ""]
    for what, sql in QUERIES:
        lines += [f"{what}:", "", "```sql", sql, "```", ""]
    return "\n".join(lines)


def write_card(out_dir: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Render the card of ``out_dir`` and write it atomically as ``out_dir/README.md``."""
    from .config import atomic_write_text

    out = Path(out_dir)
    cfg_file = out / "build_config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else None
    return atomic_write_text(out / CARD_FILE, render_card(summary, rows, config))
