"""Validate format-v1 shards and summarise them (``trackgo data inspect SHARDS…``).

Checks per sample: key format, every member present and nothing unknown, decodable members,
shapes consistent with each other and with meta.json (frames, width, height), trajectory colours
in the component palette (black background + the colour of each component present), visible
track points inside the frame, mask labels within the components, no key twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .sample import FORMAT_VERSION, KEY_RE, MASK_STRIDE, MEMBERS, SampleError, decode_sample, validate_arrays

log = logging.getLogger(__name__)


@dataclass
class ShardReport:
    path: str
    samples: int = 0
    bad: int = 0
    frames: set = field(default_factory=set)
    sizes: set = field(default_factory=set)
    points: list = field(default_factory=list)
    components: list = field(default_factory=list)
    bytes: int = 0


@dataclass
class InspectReport:
    shards: list[ShardReport] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (shard, key, message)

    @property
    def ok(self) -> bool:
        return not self.problems and sum(s.samples for s in self.shards) > 0

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def check_sample(members: dict[str, Any]) -> tuple[list[str], Any]:
    """(problems, decoded Sample or None) for one sample's raw members."""
    key = str(members.get("__key__", "?"))
    problems: list[str] = []
    if not KEY_RE.match(key):
        problems.append(f"key {key!r} is not <[A-Za-z0-9_]+>-<6 digits>")
    present = {k for k in members if not k.startswith("__")}
    missing = [m for m in MEMBERS if m not in present]
    if missing:
        return problems + [f"missing member(s): {', '.join(missing)}"], None
    unknown = sorted(present - set(MEMBERS))
    if unknown:
        problems.append(f"unknown member(s): {', '.join(unknown)}")
    try:
        sample = decode_sample(members)
    except Exception as exc:  # any decode failure is a finding, not a crash
        return problems + [f"undecodable: {type(exc).__name__}: {exc}"], None
    problems += validate_arrays(sample)
    if problems:
        return problems, sample
    from .render import COLOURS

    L, H, W, _ = sample.video.shape
    meta = sample.meta
    if meta.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    if meta.get("key") != key:
        problems.append(f"meta key {meta.get('key')!r} != {key!r}")
    if (meta.get("num_frames"), meta.get("width"), meta.get("height")) != (L, W, H):
        problems.append(f"meta says {meta.get('num_frames')}x{meta.get('width')}x{meta.get('height')}, "
                        f"members are {L}x{W}x{H}")
    if sample.image.shape != sample.video.shape[1:]:
        problems.append("image and video sizes differ")
    comps = sorted(set(int(c) for c in sample.components))
    palette = np.concatenate([np.zeros((1, 3), np.uint8), COLOURS[comps]]) if comps else np.zeros((1, 3), np.uint8)
    codes = lambda a: (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]  # noqa: E731
    stray = ~np.isin(codes(sample.trajectory), codes(palette))
    if stray.any():
        problems.append(f"trajectory has {int(stray.sum())} pixel(s) outside the component palette")
    vis = sample.visibility
    xs, ys = sample.tracks[..., 0][vis], sample.tracks[..., 1][vis]
    outside = (xs < -0.5) | (xs > W - 0.5) | (ys < -0.5) | (ys > H - 0.5) | ~np.isfinite(xs) | ~np.isfinite(ys)
    if outside.any():
        problems.append(f"{int(outside.sum())} visible track point(s) outside the {W}x{H} frame")
    if sample.masks.size and int(sample.masks.max()) > 6:
        problems.append(f"mask label {int(sample.masks.max())} beyond the 6 components")
    if (H % MASK_STRIDE) or (W % MASK_STRIDE):
        problems.append(f"frame {W}x{H} not divisible by {MASK_STRIDE}")
    return problems, sample


def inspect_shards(paths: Sequence[str | Path]) -> InspectReport:
    """Read every shard with webdataset and check every sample (see the module docstring)."""
    import webdataset as wds

    report = InspectReport()
    seen: dict[str, str] = {}
    for path in paths:
        shard = ShardReport(str(path))
        report.shards.append(shard)
        if not Path(path).is_file():
            report.problems.append((str(path), "", "no such shard file"))
            continue
        shard.bytes = Path(path).stat().st_size
        tar_errors: list[str] = []

        def on_error(exn: Exception, _errs=tar_errors) -> bool:
            _errs.append(f"{type(exn).__name__}: {exn}")
            return True

        dataset = wds.WebDataset(str(path), shardshuffle=False, handler=on_error, empty_check=False,
                                 nodesplitter=None, workersplitter=None)
        for members in dataset:
            key = str(members.get("__key__"))
            shard.samples += 1
            problems, sample = check_sample(members)
            if key in seen:
                problems.append(f"key also in {seen[key]}")
            seen.setdefault(key, str(path))
            if problems:
                shard.bad += 1
                report.problems.extend((str(path), key, p) for p in problems)
            if sample is not None and sample.video.ndim == 4:
                shard.frames.add(sample.video.shape[0])
                shard.sizes.add(f"{sample.video.shape[2]}x{sample.video.shape[1]}")
                shard.points.append(sample.tracks.shape[1])
                shard.components.append(len(set(int(c) for c in sample.components)))
        for error in tar_errors:
            report.problems.append((str(path), "", f"unreadable tar data: {error}"))
        if shard.samples == 0 and not tar_errors:
            report.problems.append((str(path), "", "shard holds no sample"))
    return report


def expand_shard_args(args: Sequence[str]) -> list[Path]:
    """Shard paths, globs, or output folders (→ their ``shards/*.tar``) → sorted paths."""
    import glob

    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            sub = p / "shards" if (p / "shards").is_dir() else p
            out.extend(sorted(sub.glob("*.tar")))
        elif p.exists():
            out.append(p)
        else:
            found = sorted(glob.glob(a))
            out.extend(Path(f) for f in found) if found else out.append(p)
    return out


def print_report(report: InspectReport, console: Any = None) -> None:
    """Rich table: one row per shard, then the problems (at most 50)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="trackgo shards")
    for col in ("shard", "samples", "bad", "frames", "size", "points (mean)", "components (mean)", "MB"):
        table.add_column(col, justify="left" if col == "shard" else "right", overflow="fold")
    for s in report.shards:
        table.add_row(
            Path(s.path).name, str(s.samples), str(s.bad),
            ",".join(str(f) for f in sorted(s.frames)) or "-", ",".join(sorted(s.sizes)) or "-",
            f"{np.mean(s.points):.1f}" if s.points else "-",
            f"{np.mean(s.components):.2f}" if s.components else "-", f"{s.bytes / 1e6:.2f}",
        )
    console.print(table)
    for shard, key, msg in report.problems[:50]:
        console.print(f"[red]PROBLEM[/red] {Path(shard).name} {key}: {msg}")
    if len(report.problems) > 50:
        console.print(f"… and {len(report.problems) - 50} more problems")
    verdict = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(f"{verdict}: {len(report.shards)} shard(s), {report.samples} sample(s), "
                  f"{len(report.problems)} problem(s)")


__all__ = ["InspectReport", "ShardReport", "check_sample", "inspect_shards", "expand_shard_args",
           "print_report", "SampleError"]
