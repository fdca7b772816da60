"""``trackgo metrics fid|fvd|objmc``, ``trackgo eval-vipseg`` and ``trackgo eval-movebench``.

    trackgo metrics fid REAL_DIR GEN_DIR [--fid-weights FILE] [--device D] [--batch-size N] [--json]
    trackgo metrics fvd REAL_DIR GEN_DIR [--i3d FILE] [--device D] [--batch-size N] [--json]
    trackgo metrics objmc --gt DIR --pred DIR [--json]
    trackgo metrics objmc --protocol draganything --real DIR --gen DIR --masks DIR
                          [--cotracker-repo CLONE] [--grid-size 100] [--num-frames 14] [--save-tracks DIR] …
    trackgo eval-vipseg --vipseg DIR --checkpoint DIR [--svd PATH] [--out DIR] [--score-only]
                        [--tracker auto] [--cotracker-repo CLONE] [--objmc-protocol ours|draganything] …
    trackgo eval-movebench --movebench DIR --wan WAN_DIR --checkpoint DIR [--language en] [--mode single]
                           [--gt-dir video] [--out DIR] [--tracker cotracker3_offline] [--score-only] …

REAL_DIR / GEN_DIR hold mp4 files and/or folders of frames (see ``metrics.list_videos``).
FID pools all frames; FVD uses each video as one clip. ``objmc --gt/--pred`` compares two folders
of peer-format ``<video>.json`` trajectory files; ``objmc --protocol draganything`` makes those
trajectories from videos and first-frame masks the way DragAnything's script does (Co-Tracker2, a
grid on frame 0) and scores them. Without extractor weights ``metrics fid|fvd`` print which file
to put where and exit 2; a tracker without its weights makes ``objmc`` and ``eval-vipseg`` exit 2
with what to supply.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    m = subparsers.add_parser("metrics", help="FID, FVD, ObjMC on folders of videos / trajectories")
    msub = m.add_subparsers(dest="metrics_command", required=True)
    for name, weights_flag, env in (("fid", "--fid-weights", "TRACKGO_FID_WEIGHTS"),
                                    ("fvd", "--i3d", "TRACKGO_I3D_PATH")):
        p = msub.add_parser(name, help=f"{name.upper()} of REAL_DIR vs GEN_DIR")
        p.add_argument("real", type=Path, help="folder of real videos (mp4 and/or frame folders)")
        p.add_argument("gen", type=Path, help="folder of generated videos")
        p.add_argument(weights_flag, dest="weights", help=f"extractor weights file (default ${env})")
        p.add_argument("--device", default="auto")
        p.add_argument("--batch-size", type=int, default=16 if name == "fvd" else 32)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=cmd_fid if name == "fid" else cmd_fvd)
    p = msub.add_parser("objmc", help="peer ObjMC: of two folders of <video>.json trajectory files, or of "
                        "videos by DragAnything's protocol")
    p.add_argument("--gt", type=Path, help="folder of ground-truth <video>.json trajectory files")
    p.add_argument("--pred", type=Path, help="folder of predicted <video>.json trajectory files")
    p.add_argument("--protocol", choices=["draganything"], help="track videos: DragAnything's script")
    p.add_argument("--real", type=Path, help="folder of real videos (mp4 and/or frame folders)")
    p.add_argument("--gen", type=Path, help="folder of generated videos, same names and sizes")
    p.add_argument("--masks", type=Path, help="first-frame masks: <video>.png or <video>/<frame>.png (panomasks)")
    p.add_argument("--num-frames", type=int, default=14, help="first frames of each clip (0: all; default 14)")
    p.add_argument("--grid-size", type=int, default=100, help="query grid side on frame 0 (default 100)")
    p.add_argument("--channel-order", choices=["bgr", "rgb"], default="bgr",
                   help="what the tracker sees (default bgr, as the peer's script hands frames over)")
    p.add_argument("--tracker", default="cotracker2", help="tracker backend (default cotracker2, the peer's)")
    p.add_argument("--cotracker-repo", help="local clone of facebookresearch/co-tracker (torch.hub source)")
    p.add_argument("--checkpoint", help="the tracker's weight file (cotracker2.pth; default: torch.hub's cache)")
    p.add_argument("--device", help="tracker device (default: the backend's choice)")
    p.add_argument("--random-init", action="store_true",
                   help="random tracker weights (smoke tests only; recorded in the output)")
    p.add_argument("--save-tracks", type=Path, help="write peer-format trajectories to DIR/gt and DIR/pred")
    p.add_argument("--json", action="store_true", help="print one JSON object (with per-video values)")
    p.set_defaults(func=cmd_objmc)

    e = subparsers.add_parser("eval-vipseg", help="paper Table 1 protocol on VIPSeg: generate + FVD/FID/ObjMC")
    e.add_argument("--vipseg", required=True, help="VIPSeg_720P folder (images/, panomasks/, val.txt)")
    e.add_argument("--checkpoint", required=True, help="TrackGo checkpoint folder")
    e.add_argument("--svd", help="SVD folder in diffusers layout (default: the checkpoint folder)")
    e.add_argument("--out", help="output folder (default runs/eval-vipseg)")
    e.add_argument("--split", help="split list to evaluate (default val)")
    e.add_argument("--max-videos", type=int)
    e.add_argument("--num-frames", type=int)
    e.add_argument("--width", type=int)
    e.add_argument("--height", type=int)
    e.add_argument("--tracker", help="conditioning tracker: auto (default: Co-Tracker 3 offline when it loads, "
                   "else LK with a warning), lk, cotracker3_offline, cotracker3_online, cotracker2")
    e.add_argument("--cotracker-repo", help="local clone of facebookresearch/co-tracker, for every Co-Tracker used")
    e.add_argument("--objmc-protocol", choices=["ours", "draganything"],
                   help="ours (default) or draganything: the peer's script, Co-Tracker2 on a 100×100 grid (Table 1)")
    e.add_argument("--steps", dest="num_inference_steps", type=int)
    e.add_argument("--seed", type=int)
    e.add_argument("--device")
    e.add_argument("--dtype", help="float32, float16 or bfloat16")
    e.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (default $TRACKGO_FID_WEIGHTS)")
    e.add_argument("--i3d", dest="i3d_path", help="i3d_torchscript.pt (default $TRACKGO_I3D_PATH)")
    e.add_argument("--config", type=Path, help="YAML with EvalConfig keys")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any EvalConfig key (repeatable)")
    e.add_argument("--score-only", action="store_true", help="score saved videos without generating")
    e.set_defaults(func=cmd_eval_vipseg)
    register_movebench(subparsers)


def register_movebench(subparsers) -> None:
    b = subparsers.add_parser("eval-movebench", help="MoveBench's protocol on a Wan checkpoint: generate + PSNR, "
                              "SSIM, FID, FVD, EPE (trackgo_model.eval.movebench)")
    b.add_argument("--movebench", required=True, help="MoveBench folder (en/, zh/)")
    b.add_argument("--wan", help="Wan image-to-video folder in diffusers layout (not needed with --score-only)")
    b.add_argument("--checkpoint", help="TrackGo checkpoint trained with model.base=wan")
    for name, help_ in (("language", "en or zh"), ("mode", "single or multi"),
                        ("gt-dir", "folder of the real clips under <language>/ (default video)"), ("out", None),
                        ("tracker", "EPE's re-tracker (default cotracker3_offline; lk offline)"),
                        ("device", None), ("dtype", None), ("negative-prompt", None)):
        b.add_argument(f"--{name}", help=help_)
    for name, kind in (("max-videos", int), ("steps", int), ("seed", int), ("guidance", float)):
        b.add_argument(f"--{name}", type=kind)
    b.add_argument("--cotracker-repo", help="local clone of facebookresearch/co-tracker for the re-tracker")
    b.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (default $TRACKGO_FID_WEIGHTS)")
    b.add_argument("--i3d", dest="i3d_path", help="i3d_torchscript.pt (default $TRACKGO_I3D_PATH)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any MoveBenchConfig key (repeatable)")
    b.add_argument("--score-only", action="store_true", help="score saved videos without generating")
    b.set_defaults(func=cmd_eval_movebench)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_pair(args):
    from trackgo_model.eval.metrics import load_video_dir

    real, gen = load_video_dir(args.real), load_video_dir(args.gen)
    return list(real.values()), list(gen.values())


def _report(args, name: str, value: float, extra: dict) -> int:
    if args.json:
        print(json.dumps({name: value, **extra}))
    else:
        print(f"{name.upper()}: {value:.4f}")
    return 0


def _run_metric(args, name: str) -> int:
    from trackgo_model.eval.metrics import MetricUnavailable

    try:
        if name == "fid":
            from trackgo_model.eval.metrics.fid import fid_from_videos, load_fid_inception

            model = load_fid_inception(args.weights, _device(args.device))
            real, gen = _load_pair(args)
            value = fid_from_videos(model, real, gen, args.batch_size)
            extra = {"real_frames": sum(len(v) for v in real), "gen_frames": sum(len(v) for v in gen)}
        else:
            from trackgo_model.eval.metrics.fvd import fvd_from_videos, load_i3d

            dev = _device(args.device)
            model = load_i3d(args.weights, dev)
            real, gen = _load_pair(args)
            value = fvd_from_videos(model, real, gen, args.batch_size, dev)
            extra = {"real_clips": len(real), "gen_clips": len(gen)}
    except MetricUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _report(args, name, value, extra)


def cmd_fid(args) -> int:
    return _run_metric(args, "fid")


def cmd_fvd(args) -> int:
    return _run_metric(args, "fvd")


def _objmc_tracked(args) -> dict:
    """--protocol draganything: track the videos, score, and say how (tracker, weights)."""
    from trackgo_data.track import get_tracker
    from trackgo_model.eval.metrics.objmc_draganything import objmc_videos

    opts = {}
    if args.tracker.startswith("cotracker"):
        opts.update({"repo": args.cotracker_repo} if args.cotracker_repo else {})
        opts.update({"device": args.device} if args.device else {})
        opts.update({"random_init": True} if args.random_init else {})
        opts.update({"checkpoint": args.checkpoint} if args.checkpoint else {})
    elif args.cotracker_repo or args.random_init or args.checkpoint or args.device:
        raise ValueError("--cotracker-repo, --checkpoint, --device and --random-init apply to Co-Tracker "
                         "trackers only")
    tracker = get_tracker(args.tracker, **opts)   # random weights are warned about by the backend
    r = objmc_videos(tracker, args.real, args.gen, args.masks, grid_size=args.grid_size,
                     num_frames=args.num_frames or None, channel_order=args.channel_order,
                     save_dir=args.save_tracks)
    r.update(protocol="draganything", tracker=args.tracker, tracker_version=tracker.version,
             random_init=bool(args.random_init), grid_size=args.grid_size, num_frames=args.num_frames,
             channel_order=args.channel_order)
    return r


def cmd_objmc(args) -> int:
    from trackgo_data.track.cotracker import CoTrackerUnavailable
    from trackgo_model.eval.metrics.objmc import ObjMCError, objmc_peer_files

    files, videos = (args.gt, args.pred), (args.real, args.gen, args.masks)
    try:
        if args.protocol == "draganything":
            if any(files) or not all(videos):
                raise ObjMCError("--protocol draganything takes --real, --gen and --masks (not --gt/--pred)")
            r = _objmc_tracked(args)
        else:
            if any(videos) or not all(files):
                raise ObjMCError("give --gt and --pred (trajectory files), or --protocol draganything with "
                                 "--real, --gen and --masks (videos)")
            r = objmc_peer_files(args.gt, args.pred)
    except ValueError as exc:  # ObjMCError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CoTrackerUnavailable as exc:  # what to supply is in the message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r))
    else:
        how = f", protocol {r['protocol']}, tracker {r['tracker_version']}" if "protocol" in r else ""
        print(f"ObjMC: {r['objmc']:.4f} ({r['num_videos']} videos, {r['num_objects']} objects{how})")
    return 0


def eval_config_from_args(args):
    from trackgo_data.config import apply_overrides, config_from_dict, load_yaml
    from trackgo_model.eval.vipseg import EvalConfig

    data = load_yaml(args.config) if args.config else {}
    for key in ("vipseg", "checkpoint", "svd", "out", "split", "max_videos", "num_frames", "width", "height",
                "tracker", "num_inference_steps", "seed", "device", "dtype", "fid_weights", "i3d_path"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = str(value) if isinstance(value, Path) else value
    if getattr(args, "objmc_protocol", None):
        data["objmc_protocol"] = args.objmc_protocol
    if getattr(args, "cotracker_repo", None):  # every Co-Tracker of the run reads this clone
        if str(data.get("tracker", "auto")) != "lk":
            data.setdefault("tracker_options", {})["repo"] = args.cotracker_repo
        if str(data.get("objmc_tracker", "cotracker2")).startswith("cotracker"):
            data.setdefault("objmc_tracker_options", {})["repo"] = args.cotracker_repo
    apply_overrides(data, args.overrides)
    return config_from_dict(EvalConfig, data)


def cmd_eval_vipseg(args) -> int:
    from trackgo_data.config import ConfigError
    from trackgo_data.track.cotracker import CoTrackerUnavailable
    from trackgo_data.vipseg import VIPSegError
    from trackgo_model.eval.vipseg import run
    from trackgo_model.pipeline import MissingWeightsError

    try:
        cfg = eval_config_from_args(args)
        if not args.vipseg.strip() or not args.checkpoint.strip():
            raise ConfigError("--vipseg and --checkpoint are required (make eval-vipseg VIPSEG=… CHECKPOINT=…)")
        results = run(cfg, score_only=args.score_only)
    except (ConfigError, VIPSegError, MissingWeightsError, CoTrackerUnavailable, FileNotFoundError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v["value"] for k, v in results["metrics"].items()}
    missing = {k: v["reason"] for k, v in results["metrics"].items() if v["status"] == "missing"}
    print(json.dumps({"out": cfg.out, "num_videos": results["num_videos"], "metrics": summary,
                      "missing": missing, "tracker": results["tracker"]["name"],
                      "objmc_protocol": results["objmc_protocol"]["protocol"],
                      "comparable_to_paper": results["comparable_to_paper"],
                      "not_comparable_because": results["not_comparable_because"]}))
    return 0


def cmd_eval_movebench(args) -> int:
    from trackgo_data.config import ConfigError, apply_overrides, config_from_dict
    from trackgo_data.track.cotracker import CoTrackerUnavailable
    from trackgo_model.eval.movebench import MoveBenchConfig, run
    from trackgo_model.pipeline import MissingWeightsError

    data = {}
    for key, attr in (("movebench", "movebench"), ("wan", "wan"), ("checkpoint", "checkpoint"),
                      ("language", "language"), ("mode", "mode"), ("gt_dir", "gt_dir"), ("out", "out"),
                      ("tracker", "tracker"), ("device", "device"), ("dtype", "dtype"),
                      ("negative_prompt", "negative_prompt"), ("max_videos", "max_videos"),
                      ("num_inference_steps", "steps"), ("seed", "seed"), ("guidance_scale", "guidance"),
                      ("fid_weights", "fid_weights"), ("i3d_path", "i3d_path")):
        value = getattr(args, attr, None)
        if value is not None:
            data[key] = value
    if args.cotracker_repo:
        data["tracker_options"] = {"repo": args.cotracker_repo}
    try:
        apply_overrides(data, args.overrides)
        results = run(config_from_dict(MoveBenchConfig, data), score_only=args.score_only)
    except (ConfigError, MissingWeightsError, CoTrackerUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": results["config"]["out"], "num_videos": results["num_videos"],
                      "metrics": {k: v["value"] for k, v in results["metrics"].items()},
                      "missing": {k: v["reason"] for k, v in results["metrics"].items() if v["status"] == "missing"},
                      "tracker": results["tracker"]["name"]}))
    return 0
