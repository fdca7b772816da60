"""``trackgo studio``: serve the page.

    trackgo studio [--checkpoint DIR --svd DIR | --toy [RUN]] [--sam SAM_WEIGHTS] [--host 127.0.0.1 --port 7860]
    trackgo studio --base wan [--wan DIR --checkpoint DIR]

No model given → the tiny random-weight model, written to the cache folder on first use.
``--toy`` → the TrackGo that ``make toy`` trained in RUN (default runs/toy), with held-out frames,
masks and arrows as examples.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("studio", help="browser page: draw masks and arrows, preview, generate")
    p.add_argument("--checkpoint", type=Path, help="TrackGo checkpoint folder (default: the tiny random model)")
    p.add_argument("--svd", type=Path,
                   help="SVD folder in diffusers layout (default: --checkpoint when it has unet/)")
    p.add_argument("--base", default="svd", choices=("svd", "wan"), help="base model family (wan: --wan + "
                   "--checkpoint, or neither for the tiny random Wan folder)")
    p.add_argument("--wan", type=Path, help="--base wan: Wan image-to-video folder in diffusers layout")
    p.add_argument("--checkpoint-2", type=Path, default=None, help="--base wan, a two-expert Wan2.2 folder: the "
                   "low-noise expert's TrackGo checkpoint (--checkpoint: the high-noise one's)")
    p.add_argument("--toy", type=Path, nargs="?", const=Path("runs/toy"), default=None, metavar="RUN",
                   help="serve the TrackGo trained by `make toy` in RUN (default runs/toy) with held-out "
                   "examples")
    p.add_argument("--toy-variant", default="trackgo", help="which of the toy's TrackGo rows to serve")
    p.add_argument("--sam", type=Path, help="Segment Anything weights (sam_vit_h_4b8939.pth …): click an "
                   "object to get its mask")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--cpu-offload", action="store_true", help="keep modules on the CPU between uses")
    p.add_argument("--max-side", type=int, default=None,
                   help="longest side of the output video (default 1024; 256 for the tiny model)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="tiny model and sample frames (default $TRACKGO_CACHE_DIR or ~/.cache/trackgo)")
    p.add_argument("--out", type=Path, default=Path("runs/studio"), help="one folder per generated video")
    p.set_defaults(func=cmd_studio)


def cmd_studio(args: argparse.Namespace) -> int:
    from trackgo_model.pipeline import MissingWeightsError

    from .model import cache_dir, load_model

    cache = cache_dir(args.cache_dir)
    examples = []
    if args.toy is not None and (args.checkpoint is not None or args.svd is not None or args.base == "wan"):
        raise SystemExit("trackgo studio: --toy serves the toy's own model; leave out --checkpoint/--svd")
    try:
        if args.toy is not None:
            from .toy import load_toy_model, toy_examples

            model = load_toy_model(args.toy, args.toy_variant, device=args.device)
            examples = toy_examples(args.toy)
        else:
            model = load_model(args.checkpoint, args.svd, cache=cache, device=args.device, dtype=args.dtype,
                               cpu_offload=args.cpu_offload, max_side=args.max_side, base=args.base, wan=args.wan,
                               checkpoint_2=args.checkpoint_2)
        sam = None
        if args.sam is not None:
            from .sam import SamClicker

            sam = SamClicker(args.sam, device=model.device)
    except (MissingWeightsError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"trackgo studio: {exc}") from None
    from .app import build_app, launch

    demo = build_app(model, out_root=args.out, cache=cache, sam=sam, examples=examples)
    log.warning("TrackGo Studio on http://%s:%d (runs in %s)", args.host, args.port, args.out)
    launch(demo, args.host, args.port, block=True)
    return 0
