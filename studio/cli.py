"""``trackgo studio``: serve the page.

    trackgo studio [--checkpoint DIR --svd DIR] [--sam SAM_WEIGHTS] [--host 127.0.0.1 --port 7860]

No model given → the tiny random-weight model, written to the cache folder on first use.
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
    try:
        model = load_model(args.checkpoint, args.svd, cache=cache, device=args.device, dtype=args.dtype,
                           cpu_offload=args.cpu_offload, max_side=args.max_side)
        sam = None
        if args.sam is not None:
            from .sam import SamClicker

            sam = SamClicker(args.sam, device=model.device)
    except (MissingWeightsError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"trackgo studio: {exc}") from None
    from .app import build_app, launch

    demo = build_app(model, out_root=args.out, cache=cache, sam=sam)
    log.warning("TrackGo Studio on http://%s:%d (runs in %s)", args.host, args.port, args.out)
    launch(demo, args.host, args.port, block=True)
    return 0
