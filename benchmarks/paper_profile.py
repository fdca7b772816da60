"""Cost of one clip through the `paper` profile (DEVA automatic mode + SAM + Co-Tracker3), random weights.

The real path — ``trackgo_data.process.iter_video`` with the ``deva`` segmenter and the
``cotracker3_offline`` tracker built by the repositories' own code — on the first window of a
source, with ``random_init=true`` on both backends (no weights needed; the cost of a network does
not depend on its weights). Random SAM weights pass none of SAM's quality filters, so both
thresholds are 0 here: SAM then keeps every proposal that survives its NMS and DEVA tracks more
objects than real weights would give (``objects`` in the output) — an upper bound for the DEVA
part. The track filters are off so every clip goes through render and encode.

Prints one JSON line: seconds per clip by stage (decode, filter, segment, points, track, render,
encode; the median over the ``--repeats`` clips after the first, which warms up the device), the
first clip's seconds, model load seconds, peak GPU memory (GiB, allocated and reserved by torch)
and the settings that were used.

    python benchmarks/paper_profile.py                                     # GPU: 1024×576×25, SAM ViT-H
    python benchmarks/paper_profile.py --device cpu --size 128x96 --frames 8 --sam vit_b   # a CPU check
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from trackgo_data import build as B
from trackgo_data import process as P
from trackgo_data.samples import sample_video_paths

log = logging.getLogger("paper_profile")
ROOT = Path(__file__).resolve().parents[1]
LOCAL_CO_TRACKER = ROOT.parent / "shared" / "third_party" / "co-tracker"
REPORTED = ("decode", "filter", "segment", "points", "track", "render", "encode")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    p.add_argument("--size", default="1024x576", help="clip WxH")
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--sam", default="vit_h", help="vit_h | vit_l | vit_b | mobile")
    p.add_argument("--tracker", default="cotracker3_offline",
                   help="cotracker3_offline | cotracker3_online | cotracker2")
    p.add_argument("--repo", help="Co-Tracker clone or hub spec (default: ../shared/third_party/co-tracker when "
                                  "present, else facebookresearch/co-tracker)",
                   default=str(LOCAL_CO_TRACKER) if LOCAL_CO_TRACKER.is_dir() else "facebookresearch/co-tracker")
    p.add_argument("--points-per-side", type=int, default=None,
                   help="SAM's prompt grid (default: 64, upstream's, on CUDA; 4 on CPU, where 64 takes hours)")
    p.add_argument("--detection-every", type=int, default=5, help="DEVA's detection interval (paper setting 5)")
    p.add_argument("--source", default=None, help="video (default: the bundled bigbuckbunny sample)")
    p.add_argument("--repeats", type=int, default=None,
                   help="clips to run (default 3 on CUDA, 1 on CPU); with more than one, the first warms up")
    return p.parse_args(argv)


def build_config(args, device: str) -> B.BuildConfig:
    import dataclasses

    from trackgo_data.filters import FilterConfig

    w, h = (int(v) for v in args.size.lower().split("x"))
    pps = args.points_per_side or (64 if device.startswith("cuda") else 4)
    seg = {"random_init": True, "device": device, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
           "points_per_side": pps, "detection_every": args.detection_every, "min_motion": 0.0}
    seg.update({"sam_variant": "mobile"} if args.sam == "mobile" else {"sam_encoder": args.sam})
    off = {f.name: None for f in dataclasses.fields(FilterConfig) if "None" in str(f.type)}
    return B.make_config("paper", {
        "clip": {"num_frames": args.frames, "width": w, "height": h},
        "segmenter": {"options": seg},
        "tracker": {"name": args.tracker, "options": {"random_init": True, "device": device, "repo": args.repo}},
        "filters": {**off, "min_median_motion": 0.0, "min_visible_ratio": 0.0},
    })


def one_clip(src: Path, cfg: B.BuildConfig, seg, trk) -> tuple[float, dict, dict]:
    clock = P.StageClock()
    t0 = time.perf_counter()
    clips = P.iter_video(src, cfg, seg, trk, clock=clock, limit=1)
    members, row = next(clips)
    clips.close()
    return time.perf_counter() - t0, dict(clock.seconds), row


def main(argv=None) -> None:
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    cfg = build_config(args, device)
    src = Path(args.source) if args.source else sample_video_paths()["bigbuckbunny"]

    t0 = time.perf_counter()
    seg, trk = B.get_models(cfg)
    seg.load()
    t1 = time.perf_counter()
    trk.load()
    t2 = time.perf_counter()
    ids: list[np.ndarray] = []
    raw_ids = seg.raw_ids
    seg.raw_ids = lambda frames: ids.append(raw_ids(frames)) or ids[-1]   # to count DEVA's objects

    runs = []
    repeats = args.repeats or (3 if cuda else 1)
    for i in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        runs.append(one_clip(src, cfg, seg, trk))
        log.info("clip %d: %.2f s", i, runs[-1][0])
    measured = runs[1:] or runs
    row = runs[-1][2]
    out = {
        "device": device, "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "size": args.size, "frames": args.frames, "sam": args.sam, "tracker": args.tracker,
        "points_per_side": cfg.segmenter.options["points_per_side"], "detection_every": args.detection_every,
        "random_init": True, "source": src.name, "status": row["status"], "reason": row.get("reason"),
        "objects": int(len(np.unique(ids[-1][0])) - (ids[-1][0] == 0).any()) if ids else None,
        "points": row.get("num_points"),
        "load_seconds": {"segmenter": round(t1 - t0, 3), "tracker": round(t2 - t1, 3)},
        "first_clip_seconds": round(runs[0][0], 3),
        "clip_seconds": round(statistics.median(r[0] for r in measured), 3),
        "stage_seconds": {s: round(statistics.median(r[1].get(s, 0.0) for r in measured), 3) for s in REPORTED},
        "clips_measured": len(measured),
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3) if cuda else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
