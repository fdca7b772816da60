"""Cost of one 1024×576×25 clip through the `local` profile vs the bare cost of its operations.

Measured in one run, interleaved, median of ``--repeats``:

* full path — ``trackgo_data.process.iter_video`` for the first window of a source (probe, decode +
  resize, flow segmentation, K-means control points, LK tracking, filters, render, sample
  encoding) plus writing the sample into a shard;
* bare operations — the library calls that work cannot avoid, on the same inputs:
  decode + resize (PyAV/libswscale), the dense motion estimate (DIS optical flow forward and
  backward over the clip at the segmenter's resolution, as the segmenter needs them), K-means
  (sklearn on 3K pixels per first-frame component), point tracking (pyramidal LK forward and
  backward per frame pair on the same points) and the two encodes (H.264 video, lossless P).

Prints per-stage seconds and clips/s, the ratio full / bare (goal ≤ 1.5: the median over repeats
of full / bare measured back to back, so both sides of a ratio see the same machine load), shard
bytes per sample and the dominant stage.

    python benchmarks/clip_cost.py [--source PATH] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from trackgo_data import build as B
from trackgo_data import process as P
from trackgo_data.points import k_for_area
from trackgo_data.render import render_trajectories
from trackgo_data.samples import sample_video_paths
from trackgo_data.shards import write_shards
from trackgo_data.video import encode_lossless_rgb, encode_mp4, read_frames

log = logging.getLogger("clip_cost")


def full_path(src: Path, cfg: B.BuildConfig, seg, trk, out: Path) -> tuple[float, dict, int]:
    """(seconds, per-stage seconds, shard bytes) for the first clip of ``src`` end to end.

    Only the first window is processed (the bare operations run on it): when the filters reject
    it, the measurement stops with the reason instead of going on to later windows.
    """
    clock = P.StageClock()
    t0 = time.perf_counter()
    clips = P.iter_video(src, cfg, seg, trk, clock=clock, limit=1)
    members, row = next(clips)
    clips.close()
    if members is None:
        raise SystemExit(f"{src}: the first window was rejected ({row['reason']}); pick another "
                         "--source or pass --keep-all")
    t1 = time.perf_counter()
    (shard,) = write_shards([members], out, "bench")
    clock.seconds["write"] += time.perf_counter() - t1
    return time.perf_counter() - t0, dict(clock.seconds), shard.stat().st_size


def bare_ops(src: Path, cfg: B.BuildConfig, seg, labels0: np.ndarray, points: np.ndarray,
             traj: np.ndarray) -> dict[str, float]:
    """Seconds of each bare operation on the same inputs as the full path."""
    import cv2
    from sklearn.cluster import KMeans

    c = cfg.clip
    s = {}
    t = time.perf_counter()
    frames = read_frames(src, 0, c.num_frames, size=(c.width, c.height))
    s["decode+resize"] = time.perf_counter() - t

    t = time.perf_counter()
    grey = seg.grey_frames(frames)
    for a, b in zip(grey[:-1], grey[1:]):
        seg.dis.calc(a, b, None)
        seg.dis.calc(b, a, None)
    s["dense motion"] = time.perf_counter() - t

    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for lab in [i for i in np.unique(labels0) if i > 0]:
        ys, xs = np.nonzero(labels0 == lab)
        k = min(k_for_area(len(xs) / labels0.size), len(xs))
        pick = rng.choice(len(xs), size=min(3 * k, len(xs)), replace=False)
        if len(pick) > k:
            KMeans(n_clusters=k, n_init=1, random_state=0).fit(np.stack([xs[pick], ys[pick]], 1).astype(float))
    s["k-means"] = time.perf_counter() - t

    t = time.perf_counter()
    lk = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    p0 = points.reshape(-1, 1, 2).astype(np.float32)
    for f in frames[1:]:
        cur = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        p1, _, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **lk)
        cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **lk)
        prev, p0 = cur, p1
    s["point tracking"] = time.perf_counter() - t

    t = time.perf_counter()
    encode_mp4(frames, fps=25.0)
    encode_lossless_rgb(traj, fps=25.0)
    s["two encodes"] = time.perf_counter() - t
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=None, help="video file (default: bundled bigbuckbunny)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    ap.add_argument("--keep-all", action="store_true",
                    help="filters keep every clip that has points (a cost measurement of a window the "
                         "default filters reject; the filter statistics are still computed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    src = Path(args.source) if args.source else sample_video_paths()["bigbuckbunny"]
    over: dict = {"clip": {"num_frames": 25, "width": 1024, "height": 576}}
    if args.keep_all:
        over["filters"] = {"min_median_motion": 0.0, "min_visible_ratio": 0.0, "max_scene_cut": 1e9}
    cfg = B.make_config("local", over)
    seg, trk = B.get_models(cfg)

    # inputs of the bare operations, computed once (untimed) exactly as the full path does
    frames = read_frames(src, 0, 25, size=(1024, 576))
    labels = seg.segment(frames)
    from trackgo_data.points import sample_points

    key = f"{B.sanitize_video_id(src.stem)}-000000"
    points, comps = sample_points(labels[0], seed=P.clip_seed(cfg.seed, key))
    tracks, vis = trk.track(frames, points)
    traj = render_trajectories(tracks, vis, comps, 576, 1024)

    with tempfile.TemporaryDirectory() as tmp:
        full_path(src, cfg, seg, trk, Path(tmp))  # warm-up: imports, first-call allocations
        fulls, stages, bares, shard_bytes = [], [], [], 0
        for _ in range(args.repeats):
            secs, st, shard_bytes = full_path(src, cfg, seg, trk, Path(tmp))
            fulls.append(secs)
            stages.append(st)
            bares.append(bare_ops(src, cfg, seg, labels[0], points, traj))
    med = statistics.median
    full = med(fulls)
    stage = {k: med(s[k] for s in stages) for k in stages[0]}
    bare = {k: med(b[k] for b in bares) for k in bares[0]}
    bare_totals = [sum(b.values()) for b in bares]
    bare_total = med(bare_totals)
    # each repeat runs the full path and then the bare operations back to back, so their ratio
    # sees the same machine load; the median over repeats is the reported ratio
    ratios = [f / b for f, b in zip(fulls, bare_totals)]
    ratio = med(ratios)
    dominant = max(stage, key=stage.get)

    print(f"clip: {src.name} first window, 1024x576x25, local profile "
          f"({len(points)} points, {len(set(comps.tolist()))} components), median of {args.repeats}")
    print(f"{'full-path stage':<18}{'seconds':>10}{'clips/s':>10}")
    for k, v in stage.items():
        print(f"{k:<18}{v:>10.3f}{(1 / v if v > 0 else float('inf')):>10.2f}")
    print(f"{'full path':<18}{full:>10.3f}{1 / full:>10.2f}")
    print(f"{'bare operation':<18}{'seconds':>10}{'clips/s':>10}")
    for k, v in bare.items():
        print(f"{k:<18}{v:>10.3f}{1 / v:>10.2f}")
    print(f"{'bare total':<18}{bare_total:>10.3f}{1 / bare_total:>10.2f}")
    print(f"per-repeat ratios: {' '.join(f'{r:.2f}' for r in ratios)}; "
          f"ratio of the medians {full / bare_total:.2f}")
    print(f"ratio full / bare = {ratio:.2f} (median of the paired per-repeat ratios; "
          f"goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    print(f"shard bytes per sample = {shard_bytes}")
    print(f"dominant stage = {dominant} ({stage[dominant] / full:.0%} of the full path)")
    if args.json:
        print(json.dumps({"full_s": full, "stages_s": stage, "bare_s": bare, "bare_total_s": bare_total,
                          "ratio": ratio, "ratios": ratios, "shard_bytes_per_sample": shard_bytes, "dominant": dominant}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
