"""``trackgo metrics fid|fvd|objmc`` and ``trackgo eval-vipseg``.

    trackgo metrics fid REAL_DIR GEN_DIR [--fid-weights FILE] [--device D] [--batch-size N] [--json]
    trackgo metrics fvd REAL_DIR GEN_DIR [--i3d FILE] [--device D] [--batch-size N] [--json]
    trackgo metrics objmc --gt DIR --pred DIR [--json]
    trackgo eval-vipseg --vipseg DIR --checkpoint DIR [--svd PATH] [--out DIR] [--score-only] …

REAL_DIR / GEN_DIR hold mp4 files and/or folders of frames (see ``metrics.list_videos``).
FID pools all frames; FVD uses each video as one clip. ``objmc`` compares two folders of
peer-format ``<video>.json`` trajectory files and prints the peer-definition value.
Without extractor weights ``metrics fid|fvd`` print which file to put where and exit 2.
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
    p = msub.add_parser("objmc", help="peer ObjMC of two folders of <video>.json trajectory files")
    p.add_argument("--gt", required=True, type=Path)
    p.add_argument("--pred", required=True, type=Path)
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
    e.add_argument("--tracker", help="lk (offline) or cotracker3_offline (the paper's tracker), …")
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


def cmd_objmc(args) -> int:
    from trackgo_model.eval.metrics.objmc import ObjMCError, objmc_peer_files

    try:
        r = objmc_peer_files(args.gt, args.pred)
    except ObjMCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r))
    else:
        print(f"ObjMC: {r['objmc']:.4f} ({r['num_videos']} videos, {r['num_objects']} objects)")
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
    apply_overrides(data, args.overrides)
    return config_from_dict(EvalConfig, data)


def cmd_eval_vipseg(args) -> int:
    from trackgo_data.config import ConfigError
    from trackgo_data.vipseg import VIPSegError
    from trackgo_model.eval.vipseg import run
    from trackgo_model.pipeline import MissingWeightsError

    try:
        cfg = eval_config_from_args(args)
        if not args.vipseg.strip() or not args.checkpoint.strip():
            raise ConfigError("--vipseg and --checkpoint are required (make eval-vipseg VIPSEG=… CHECKPOINT=…)")
        results = run(cfg, score_only=args.score_only)
    except (ConfigError, VIPSegError, MissingWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v["value"] for k, v in results["metrics"].items()}
    missing = {k: v["reason"] for k, v in results["metrics"].items() if v["status"] == "missing"}
    print(json.dumps({"out": cfg.out, "num_videos": results["num_videos"], "metrics": summary,
                      "missing": missing}))
    return 0
