"""``trackgo model init-tiny|stats`` and ``trackgo generate``.

    trackgo model init-tiny --out DIR [--seed 0] [--base svd|wan]
    trackgo model stats --config svd-xt|tiny
    trackgo model stats --base wan --config wan2.1-i2v-14b|wan2.2-i2v-a14b|tiny|tiny-2.2
    trackgo generate --image IMG --masks a.png b.png --arrows x0,y0,x1,y1 x0,y0,x1,y1 \\
        --checkpoint DIR [--svd PATH] [--frames 14] [--steps 25] [--height H --width W] \\
        [--tau T] [--motion M] [--trajectory-guidance G] [--seed 0] [--dtype fp32|fp16|bf16] \\
        [--device cpu|cuda] \\
        --out out.mp4 [--preview]
    trackgo generate --base wan --wan WAN_FOLDER --checkpoint DIR --frames 81 [--prompt TEXT \
        --negative-prompt TEXT --guidance 5] [--checkpoint-2 DIR --guidance-2 G] …

``--base wan`` samples with :class:`~trackgo_model.wan.pipeline.WanTrackGoPipeline` (a diffusers
Wan image-to-video folder and a TrackGo checkpoint trained with ``model.base=wan``): 4k + 1
frames, sides multiples of 16, classifier-free guidance against the negative prompt; a Wan2.2
two-expert folder takes the high-noise expert's checkpoint as ``--checkpoint`` and the low-noise
one's as ``--checkpoint-2`` (``--guidance-2`` its guidance, default ``--guidance``); the SVD
knobs (--fps conditioning, --motion-bucket-id, --noise-aug-strength, --min/--max-guidance,
--trajectory-guidance, --decode-chunk-size, --cpu-offload) do not apply and are refused when changed.

``generate`` checks the masks and arrows and turns them into point tracks
(``trackgo_data.user_input``: colours ordered by mask area as in training, at most the
checkpoint's number of objects), scales them to the output size, renders P with the one renderer,
samples the video and writes it with P (lossless) next to it (``out.mp4`` → ``out.trajectory.mp4``).
The output size defaults to the image's, scaled down to at most 1024 px on its longer side and
rounded to what the model takes (``trackgo_data.user_input.fit_size``, as the studio does);
given sizes must be multiples of it. ``--preview`` writes ``<out>.preview.png`` (masks, tracks
and control points drawn over the image) and P, and stops before any model is loaded. Each
command prints one JSON object on stdout; bad input (a
:class:`~trackgo_data.user_input.UserInputError`) ends it with one message (exit status 1) before
anything is written.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    model = subparsers.add_parser("model", help="tiny model, parameter counts")
    msub = model.add_subparsers(dest="model_command", required=True)

    p = msub.add_parser("init-tiny", help="write a tiny random-weight TrackGo (SVD layout + TrackGo files)")
    p.add_argument("--out", required=True, type=Path, help="folder to write (replaced as a whole)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default="svd", choices=("svd", "wan"),
                   help="svd: SVD layout + TrackGo files; wan: a diffusers Wan image-to-video folder (Wan2.1 layout)")
    p.set_defaults(func=cmd_init_tiny)

    p = msub.add_parser("stats", help="parameter counts on the meta device, as one JSON object")
    p.add_argument("--base", default="svd", choices=("svd", "wan"), help="base model family")
    p.add_argument("--config", default=None, help="preset of the base: svd-xt or tiny (svd); wan2.1-i2v-14b, "
                                                  "wan2.2-i2v-a14b, tiny or tiny-2.2 (wan)")
    p.set_defaults(func=cmd_stats)

    g = subparsers.add_parser("generate", help="image + masks + arrows → video")
    g.add_argument("--image", required=True, type=Path, help="first frame (any image format)")
    g.add_argument("--masks", required=True, nargs="+", type=Path,
                   help="one binary mask PNG per object, or a single label PNG (0 = background)")
    g.add_argument("--arrows", required=True, nargs="+",
                   help="one arrow per mask, x0,y0,x1,y1 (or a polyline x0,y0,x1,y1,x2,y2,…), image pixels")
    g.add_argument("--checkpoint", type=Path, help="TrackGo checkpoint folder (trackgo_config.json, "
                   "trackgo.safetensors); not needed with --preview")
    g.add_argument("--base", default="svd", choices=("svd", "wan"), help="base model family of the checkpoint")
    g.add_argument("--svd", type=Path, help="SVD folder in diffusers layout (default: --checkpoint when "
                   "it has unet/)")
    g.add_argument("--wan", type=Path, help="--base wan: Wan image-to-video folder in diffusers layout")
    g.add_argument("--prompt", default="", help="--base wan: the text prompt (training used model.prompt)")
    g.add_argument("--negative-prompt", default="", help="--base wan: the guidance's negative prompt")
    g.add_argument("--guidance", type=float, default=1.0, help="--base wan: classifier-free guidance scale "
                   "(1 = none)")
    g.add_argument("--checkpoint-2", type=Path, default=None, help="--base wan, a two-expert Wan2.2 folder: "
                   "the low-noise expert's TrackGo checkpoint (--checkpoint is the high-noise one's)")
    g.add_argument("--guidance-2", type=float, default=None, help="--base wan, two experts: the low-noise "
                   "expert's guidance scale (default --guidance)")
    g.add_argument("--out", required=True, type=Path, help="output video (.mp4)")
    g.add_argument("--frames", type=int, default=None, help="frames (default 14 for svd, 81 for wan: 4k + 1)")
    g.add_argument("--steps", type=int, default=25)
    g.add_argument("--height", type=int, help="output height (default: the image's, fitted to the model)")
    g.add_argument("--width", type=int, help="output width (default: the image's, fitted to the model)")
    g.add_argument("--tau", type=float, default=None,
                   help="mask value where A' < alpha (paper's inference knob; default 0)")
    g.add_argument("--motion", "--strength", dest="motion", type=float, default=1.0,
                   help="unspecified-region motion strength (1 unchanged, 0 frozen, >1 more)")
    g.add_argument("--mode", choices=("gated", "paper"), default=None,
                   help="adapter mode (default: the checkpoint's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the point sampling and of the noise")
    g.add_argument("--fps", type=int, default=None, help="output frame rate (default 7 for svd, also its fps "
                   "conditioning; 16 for wan)")
    g.add_argument("--motion-bucket-id", type=int, default=127)
    g.add_argument("--noise-aug-strength", type=float, default=0.02)
    g.add_argument("--min-guidance", type=float, default=1.0)
    g.add_argument("--max-guidance", type=float, default=3.0)
    g.add_argument("--trajectory-guidance", type=float, default=1.0,
                   help="g: amplify what the trajectories change, ε + (g − 1)·(ε(P) − ε(no P)); 1 = off, "
                   "one more UNet pass per step (TrackGoPipeline)")
    g.add_argument("--decode-chunk-size", type=int, default=None, help="frames per VAE decode (memory)")
    g.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    g.add_argument("--cpu-offload", action="store_true", help="keep modules on the CPU between uses")
    g.add_argument("--preview", action="store_true",
                   help="only write the trajectory overlay (PNG) and P (mp4); no model is run")
    g.set_defaults(func=cmd_generate)


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def cmd_init_tiny(args: argparse.Namespace) -> int:
    if args.base == "wan":
        from trackgo_model.wan.tiny import init_tiny_wan as init_tiny
    else:
        from trackgo_model.tiny import init_tiny

    out = init_tiny(args.out, seed=args.seed)
    _emit({"out": str(out), "seed": args.seed, "base": args.base})
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    if args.base == "wan":
        from trackgo_model.wan import WAN_PRESETS as presets
        from trackgo_model.wan import count_params
        config = args.config or "wan2.1-i2v-14b"
    else:
        from trackgo_model.configs import UNET_PRESETS as presets
        from trackgo_model.model import count_params
        config = args.config or "svd-xt"
    if config not in presets:
        raise SystemExit(f"trackgo model stats: unknown --config {config!r} for --base {args.base}; "
                         f"choose one of {', '.join(sorted(presets))}")
    _emit(count_params(config))
    return 0


def side_paths(out: Path) -> tuple[Path, Path]:
    """``out.mp4`` → (``out.trajectory.mp4``, ``out.preview.png``)."""
    return out.with_suffix(".trajectory.mp4"), out.with_suffix(".preview.png")


def sample(pipe, image, P, args: argparse.Namespace, progress: bool = False, callback=None, guide=None):
    """The pipeline call of ``trackgo generate`` (the studio makes the same one): image (H,W,3)
    uint8 and P (L,H,W,3) at the output size → frames (L,H,W,3) uint8. guide: (tracks (L, N, 2)
    pixels of the output size, visibility (L, N)), what steers a Wan-Move model instead of P."""
    if getattr(pipe, "base", "svd") == "wan":
        wan_move = getattr(pipe, "wan_move", False)
        return pipe(image, None if wan_move else P, num_frames=len(P), height=P.shape[1], width=P.shape[2],
                    guide=guide if wan_move else None, guidance_scale_2=getattr(args, "guidance_2", None),
                    num_inference_steps=args.steps, guidance_scale=args.guidance, prompt=args.prompt,
                    negative_prompt=args.negative_prompt, seed=args.seed, tau=args.tau, motion=args.motion,
                    mode=args.mode, progress=progress, callback=callback)
    return pipe(image, P, num_frames=args.frames, height=P.shape[1], width=P.shape[2],
                num_inference_steps=args.steps, min_guidance_scale=args.min_guidance,
                max_guidance_scale=args.max_guidance, fps=args.fps,
                motion_bucket_id=args.motion_bucket_id, noise_aug_strength=args.noise_aug_strength,
                decode_chunk_size=args.decode_chunk_size, seed=args.seed, tau=args.tau,
                trajectory_guidance=getattr(args, "trajectory_guidance", 1.0),
                motion=args.motion, mode=args.mode, progress=progress, callback=callback)


def _resolve_svd(args: argparse.Namespace) -> Path:
    if args.svd is not None:
        return args.svd
    if args.checkpoint is not None and (args.checkpoint / "unet").is_dir():
        return args.checkpoint
    raise SystemExit("trackgo generate: pass --svd PATH (a diffusers Stable Video Diffusion folder); "
                     f"--checkpoint {args.checkpoint} has no unet/ to use instead")


#: the size multiple of every Stable Video Diffusion model (VAE /8, three UNet down-samplings)
SVD_SIZE_MULTIPLE = 64
#: ... and of every Wan image-to-video model (VAE /8, 2×2 patches)
WAN_SIZE_MULTIPLE = 16
#: the SVD-only options and their defaults (``--base wan`` refuses other values)
SVD_ONLY = {"motion_bucket_id": 127, "noise_aug_strength": 0.02, "min_guidance": 1.0,
            "max_guidance": 3.0, "trajectory_guidance": 1.0, "decode_chunk_size": None, "cpu_offload": False}


def _resolve_wan(args: argparse.Namespace) -> Path:
    if args.wan is None:
        raise SystemExit("trackgo generate: --base wan needs --wan PATH (a diffusers Wan image-to-video folder)")
    return args.wan


def check_base_options(args: argparse.Namespace) -> None:
    """Fill the base's default frame count; refuse options the base does not have (UserInputError)."""
    from trackgo_data.user_input import UserInputError

    base = getattr(args, "base", "svd")
    if args.frames is None:
        args.frames = 81 if base == "wan" else 14
    if args.fps is None:
        args.fps = 16 if base == "wan" else 7
    if base != "wan":
        if getattr(args, "checkpoint_2", None) is not None or getattr(args, "guidance_2", None) is not None:
            raise UserInputError("--checkpoint-2 and --guidance-2 are for a two-expert Wan2.2 folder (--base wan)")
        return
    changed = [k for k, v in SVD_ONLY.items() if getattr(args, k, v) != v]
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UserInputError(f"--base wan does not take the SVD option(s) {names}")
    if (args.frames - 1) % 4:
        raise UserInputError(f"--base wan generates 4k + 1 frames (5, 9, …, 81); got --frames {args.frames}")


def _size_multiple(args: argparse.Namespace, pipe=None) -> int:
    """What the output sides must be multiples of: the loaded pipeline's, else the SVD folder's
    (read from its configs, no weights loaded); a preview without a model folder uses SVD's."""
    if pipe is not None:
        return pipe.size_multiple
    if getattr(args, "base", "svd") == "wan":
        from trackgo_model.wan.pipeline import wan_size_multiple

        return WAN_SIZE_MULTIPLE if args.preview and args.wan is None else wan_size_multiple(_resolve_wan(args))
    if args.preview and args.svd is None and not (args.checkpoint and (args.checkpoint / "unet").is_dir()):
        return SVD_SIZE_MULTIPLE
    from trackgo_model.pipeline import folder_size_multiple

    return folder_size_multiple(_resolve_svd(args))


def cmd_generate(args: argparse.Namespace) -> int:
    from trackgo_data.user_input import UserInputError
    from trackgo_model.pipeline import MissingWeightsError

    if args.checkpoint is None and not args.preview:
        raise SystemExit("trackgo generate: --checkpoint is required (unless --preview)")
    try:
        result = run_generate(args)
    except (UserInputError, MissingWeightsError) as exc:
        raise SystemExit(f"trackgo generate: {exc}") from None
    _emit(result)
    return 0


def run_generate(args: argparse.Namespace, pipe=None, callback=None, max_objects: int | None = None) -> dict:
    """``trackgo generate`` without the console: parsed ``args`` → the result dict it prints.

    ``pipe``: an already loaded TrackGoPipeline (else loaded from ``--svd``/``--checkpoint``);
    ``callback(done, total)`` after each denoising step; ``max_objects`` overrides the
    checkpoint's limit. Bad input raises :class:`~trackgo_data.user_input.UserInputError` before
    anything is written.
    """
    from PIL import Image

    from trackgo_data.config import atomic_write_bytes
    from trackgo_data.user_input import (UserInputError, checkpoint_max_objects, load_image, output_size, prepare,
                                         preview_image)
    from trackgo_data.video import encode_lossless_rgb, encode_mp4

    check_base_options(args)
    if args.frames < 2 or args.steps < 1:
        raise UserInputError("--frames must be >= 2 and --steps >= 1")
    if getattr(args, "trajectory_guidance", 1.0) < 1.0:
        raise UserInputError("--trajectory-guidance must be >= 1 (1 = off)")
    if max_objects is None:
        max_objects = checkpoint_max_objects(args.checkpoint)
    image = load_image(args.image)
    width, height = output_size((image.shape[1], image.shape[0]), args.width, args.height, _size_multiple(args, pipe))
    prep = prepare(args.image, args.masks, args.arrows, args.frames, height, width, args.seed,
                   max_objects=max_objects)
    image, tracks, vis, comps, P = prep.image, prep.tracks, prep.visibility, prep.components, prep.P
    traj_path, preview_path = side_paths(args.out)
    result = {"trajectory": str(traj_path), "frames": int(P.shape[0]), "height": int(P.shape[1]),
              "width": int(P.shape[2]), "points": int(tracks.shape[1])}
    if args.preview:
        import io

        encode_lossless_rgb(P, traj_path, fps=args.fps)
        buf = io.BytesIO()
        Image.fromarray(preview_image(image, tracks, vis, comps, prep.motion.labels)).save(buf, format="PNG")
        atomic_write_bytes(preview_path, buf.getvalue())
        result["preview"] = str(preview_path)
        return result

    if pipe is None and getattr(args, "base", "svd") == "wan":
        import torch

        from trackgo_model.wan.pipeline import WanTrackGoPipeline

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = WanTrackGoPipeline.from_pretrained(_resolve_wan(args), args.checkpoint, torch_dtype=args.dtype,
                                                  trackgo_checkpoint_2=getattr(args, "checkpoint_2", None),
                                                  device=device)
    elif pipe is None:
        import torch

        from trackgo_model.pipeline import TrackGoPipeline

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = TrackGoPipeline.from_pretrained(_resolve_svd(args), args.checkpoint, torch_dtype=args.dtype,
                                               device=device, enable_model_cpu_offload=args.cpu_offload)
    t0 = time.perf_counter()
    frames = sample(pipe, image, P, args, progress=log.isEnabledFor(logging.INFO), callback=callback,
                    guide=(tracks, vis))
    seconds = time.perf_counter() - t0
    encode_lossless_rgb(P, traj_path, fps=args.fps)
    encode_mp4(frames, args.out, fps=args.fps)
    log.info("wrote %s (%d frames, %.1f s sampling)", args.out, len(frames), seconds)
    result.update({"video": str(args.out), "seconds": round(seconds, 3), "device": str(pipe.device)})
    return result
