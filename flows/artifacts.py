"""What the flows show in the Prefect UI, computed without Prefect.

Pure helpers (manifest rows / summaries in, markdown strings / table rows / PNG bytes out), so
they are unit-testable and the flow bodies stay thin:

    histogram_png(values, title, xlabel, bins) -> PNG bytes
    png_data_uri(png) -> "data:image/png;base64,…"   (markdown images the UI renders inline)
    histograms_markdown(rows) -> markdown             motion, points per clip, components per clip
    summary_table(summary, wall_seconds) -> [dict]    sources (processed, removed), accepted/rejected by
                                                      reason, clips/s, stage s
    preview_images(out_dir, rows, limit, max_width) -> [(key, PNG bytes)]   first frame + tracks
    previews_markdown(images) -> markdown
"""
from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: (manifest column, plot title, x label, integer bins?)
HISTOGRAMS = (
    ("median_motion_px", "Motion per clip", "median track displacement (px)", False),
    ("num_points", "Points per clip", "control points", True),
    ("num_components", "Components per clip", "moving components", True),
)


def png_bytes(image: np.ndarray) -> bytes:
    """(H,W,3) uint8 RGB → PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def histogram_png(values: Sequence[float], title: str, xlabel: str, integer: bool = False,
                  bins: int = 20, size: tuple[float, float] = (4.0, 2.6)) -> bytes:
    """A small histogram as PNG bytes (matplotlib, Agg canvas; no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    fig = Figure(figsize=size, dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if len(vals):
        if integer:
            lo, hi = int(vals.min()), int(vals.max())
            edges = np.arange(lo - 0.5, hi + 1.5, max(1, (hi - lo + 1) // bins))
        else:
            edges = bins
        ax.hist(vals, bins=edges, color="#3b7dd8", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no accepted clips", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{title} (n={len(vals)})", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("clips", fontsize=8)
    ax.tick_params(labelsize=7)
    # fixed margins (room for 4-digit counts and both labels); tight_layout costs ~50 ms a figure
    fig.subplots_adjust(left=0.17, right=0.97, top=0.89, bottom=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def histograms_markdown(rows: Iterable[dict[str, Any]]) -> str:
    """Markdown with one inline PNG histogram per :data:`HISTOGRAMS` entry (accepted clips)."""
    acc = [r for r in rows if r.get("status") == "accepted"]
    parts = ["# Accepted clips", ""]
    for column, title, xlabel, integer in HISTOGRAMS:
        vals = [r.get(column) for r in acc]
        png = histogram_png(vals, title, xlabel, integer)
        finite = [float(v) for v in vals if v is not None]
        stats = (f"(n={len(finite)}) median {np.median(finite):.2f}, min {min(finite):.2f}, "
                 f"max {max(finite):.2f}" if finite else "(n=0) no values")
        parts += [f"## {title}", "", f"![{column}]({png_data_uri(png)})", "", f"{stats}", ""]
    return "\n".join(parts)


def summary_table(summary: dict[str, Any], wall_seconds: float) -> list[dict[str, Any]]:
    """Rows for the final table artifact: counts, rejects by reason, throughput, stage seconds."""
    clips = int(summary.get("clips", 0))
    rows: list[dict[str, Any]] = [
        {"item": "sources", "value": summary.get("sources", 0)},
        {"item": "sources processed by this run", "value": summary.get("sources_processed", 0)},
        {"item": "sources removed (rows left the manifest)", "value": summary.get("sources_removed", 0)},
        {"item": "batches", "value": summary.get("batches", 0)},
        {"item": "candidate clips", "value": clips},
        {"item": "accepted", "value": summary.get("accepted", 0)},
        {"item": "rejected", "value": summary.get("rejected", 0)},
    ]
    for reason, n in sorted(summary.get("rejected_by_reason", {}).items()):
        rows.append({"item": f"rejected: {reason}", "value": n})
    rows.append({"item": "wall time (s)", "value": round(wall_seconds, 2)})
    rows.append({"item": "clips/s (wall)", "value": round(clips / wall_seconds, 3) if wall_seconds > 0 else None})
    rows.append({"item": "shard bytes per accepted sample",
                 "value": int(summary.get("shard_bytes_per_sample", 0))})
    for stage, sec in summary.get("seconds", {}).items():
        rows.append({"item": f"stage {stage} (s, summed over workers)", "value": round(float(sec), 3)})
    return rows


def _read_samples(shard: Path, keys: set[str]) -> dict[str, dict[str, Any]]:
    """Raw members of the samples ``keys`` found in one webdataset shard."""
    import webdataset as wds

    found: dict[str, dict[str, Any]] = {}
    for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
        if sample["__key__"] in keys:
            found[sample["__key__"]] = sample
            if len(found) == len(keys):
                break
    return found


def preview_images(out_dir: str | Path, rows: Iterable[dict[str, Any]], limit: int = 4,
                   max_width: int = 384) -> list[tuple[str, bytes]]:
    """First frame with its tracks drawn (``render.overlay_tracks``) for the first ``limit``
    accepted clips, as (key, PNG bytes); each is also saved as ``out_dir/previews/<key>.png``."""
    import cv2

    from trackgo_data.config import atomic_write_bytes
    from trackgo_data.render import overlay_tracks
    from trackgo_data.sample import decode_sample

    out = Path(out_dir)
    chosen = [r for r in rows if r.get("status") == "accepted" and r.get("shard")][: max(0, limit)]
    by_shard: dict[str, set[str]] = {}
    for r in chosen:
        by_shard.setdefault(r["shard"], set()).add(r["key"])
    members: dict[str, dict[str, Any]] = {}
    for shard, keys in by_shard.items():
        path = Path(shard) if Path(shard).is_absolute() else out / shard
        members.update(_read_samples(path, keys))
    images = []
    for r in chosen:
        if r["key"] not in members:
            log.warning("preview: sample %s not found in %s", r["key"], r["shard"])
            continue
        s = decode_sample(members[r["key"]], decode_video=False)
        img = overlay_tracks(s.image, s.tracks, s.visibility, s.components)
        h, w = img.shape[:2]
        if w > max_width:
            img = cv2.resize(img, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
        png = png_bytes(img)
        atomic_write_bytes(out / "previews" / f"{r['key']}.png", png)
        images.append((r["key"], png))
    return images


def previews_markdown(images: Sequence[tuple[str, bytes]]) -> str:
    if not images:
        return "# Trajectory previews\n\nNo accepted clip to show."
    parts = ["# Trajectory previews", "", "First frame of each clip with its tracks drawn "
             "(colour = component; dot = last visible position).", ""]
    for key, png in images:
        parts += [f"### {key}", "", f"![{key}]({png_data_uri(png)})", ""]
    return "\n".join(parts)
