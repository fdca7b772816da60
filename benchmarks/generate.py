"""Generation time by stage and peak memory: TrackGoPipeline against plain SVD, same run, same modules.

    python benchmarks/generate.py --device cuda --preset svd-xt [--variants default fused compile] [--out r.json]
    python benchmarks/generate.py --preset tiny --device cpu        # seconds; checks the script anywhere

svd-xt: random-weight SVD-xt-shaped UNet, VAE and CLIP ViT-H in bf16, 14 frames at 1024×576, 25
Euler steps, frame-wise guidance 1 → 3 (both halves in one batch). Stages, from hooks that
synchronise the device around each call: ``clip`` (image encoder), ``vae_encode``,
``trajectory_encode`` (TrackGo's encoder, once per video), ``denoise`` (first to last UNet call,
scheduler included; ``unet`` = the UNet calls alone), ``vae_decode``, ``other`` (the rest of
``total``). Peak memory (CUDA) is the allocator's peak over those calls.

**Plain SVD is diffusers' own StableVideoDiffusionPipeline** on the same modules, with TrackGo's
adapters removed (the stock attention processors): the reference users run, so TrackGo's ratio
includes any difference between the two pipelines. The ``default`` variant also runs
TrackGoPipeline with ``trajectories=None`` (the bare UNet through our pipeline), which isolates
what the adapters cost from what the pipelines do differently.

Variants (each applied to both pipelines unless it only concerns TrackGo; plain SVD is then the
``default`` run): ``default``; ``sdpa`` / ``fused`` (TrackGo's kernels: SDPA, or Triton + fused
projections + channels-last encoder); ``channels_last`` (UNet and VAE channels-last);
``decode_chunk`` (4 frames per VAE decode call); ``compile`` (``torch.compile`` of the UNet; the
warm-up run compiles). Each timed run follows a 2-step warm-up run of the same configuration (``--warmup-steps``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
log = logging.getLogger("generate")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS: dict[str, dict] = {
    "default": {},
    "sdpa": {"kernels": {"attention": "sdpa"}},
    "fused": {"kernels": {"attention": "triton", "fused_projections": True, "encoder_channels_last": True}},
    "channels_last": {"channels_last": True},
    "decode_chunk": {"decode_chunk_size": 4},
    "compile": {"compile": True},
}
PRESETS = {"svd-xt": dict(frames=14, height=576, width=1024, steps=25, dtype="bf16"),
           "tiny": dict(frames=4, height=64, width=64, steps=3, dtype="fp32")}


def build(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """{"model": TrackGoUNet, "vae", "image_encoder", "feature_extractor", "scheduler"}, random weights."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from benchmarks.adapter_overhead import make_model
    from trackgo_model.tiny import CLIP_PROCESSOR, SVD_SCHEDULER, build_tiny_components

    if preset == "tiny":
        parts = build_tiny_components(seed)
        parts["model"] = parts.pop("unet")
    else:
        from benchmarks.train_step import SVD_CLIP, SVD_VAE

        parts = {"model": make_model(preset, device, dtype, seed)}
        with torch.device(device):
            parts["vae"] = AutoencoderKLTemporalDecoder(**SVD_VAE)
            parts["image_encoder"] = CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP))
        parts["feature_extractor"] = CLIPImageProcessor(**CLIP_PROCESSOR)
        parts["scheduler"] = EulerDiscreteScheduler(**SVD_SCHEDULER)
    for name in ("model", "vae", "image_encoder"):
        parts[name] = parts[name].to(device, dtype).eval().requires_grad_(False)
    return parts


def synthetic_inputs(frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A first frame (smooth colours, uint8 (H, W, 3)) and a rendered-P-like video: two coloured
    dots moving on black, uint8 (L, H, W, 3)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([127 + 100 * np.sin(xx / 37.0 + c) * np.cos(yy / 29.0) for c in range(3)], -1)
    traj = np.zeros((frames, height, width, 3), np.uint8)
    r = max(1, height // 32)
    for t in range(frames):
        for k, colour in enumerate(((255, 0, 0), (0, 255, 0))):
            y = int(height * (0.3 + 0.3 * k) + t * height / (4 * frames))
            x = int(width * (0.25 + 0.4 * k) + t * width / (3 * frames)) % width
            traj[t, max(0, y - r):y + r, max(0, x - r):x + r] = colour
    return image.clip(0, 255).astype(np.uint8), traj


class StageClock:
    """Wraps the modules' entry points, synchronising the device around each call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.calls: list[tuple[str, float, float, int]] = []  # (stage, start, end, peak bytes)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, stage, fn):
        def timed(*args, **kwargs):
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
                self.calls.append((stage, t0, time.perf_counter(), peak))

        return timed

    def _hooks(self, stage, module):
        """Forward pre/post hooks: outside a compiled ``forward``, so they time it too."""
        state = {}

        def pre(*_):
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            state["t0"] = time.perf_counter()

        def post(*_):
            self._sync()
            peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
            self.calls.append((stage, state.pop("t0"), time.perf_counter(), peak))

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post, always_call=True)]

    @contextlib.contextmanager
    def attached(self, parts: dict):
        methods = [("vae_encode", parts["vae"], "encode"), ("vae_decode", parts["vae"], "decode"),
                   ("trajectory_encode", parts["model"], "encode")]
        hooks = self._hooks("clip", parts["image_encoder"]) + self._hooks("unet", parts["model"].unet)
        with contextlib.ExitStack() as stack:
            for stage, obj, attr in methods:  # restored (the class's method again) on exit
                stack.enter_context(mock.patch.object(obj, attr, self._wrap(stage, getattr(obj, attr))))
            try:
                yield self
            finally:
                for hook in hooks:
                    hook.remove()

    def run(self, fn) -> dict:
        """Seconds by stage (and peak GiB on CUDA) of one call of ``fn``."""
        self.calls = []
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        total = time.perf_counter() - t0
        out = {stage: sum(end - start for name, start, end, _ in self.calls if name == stage)
               for stage in ("clip", "vae_encode", "trajectory_encode", "unet", "vae_decode")}
        unet = [(start, end) for name, start, end, _ in self.calls if name == "unet"]
        out["denoise"] = max(end for _, end in unet) - min(start for start, _ in unet) if unet else 0.0
        out["total"] = total
        out["other"] = total - sum(out[s] for s in ("clip", "vae_encode", "trajectory_encode", "denoise", "vae_decode"))
        out = {k: round(v, 4) for k, v in out.items()}
        out["unet_calls"] = len(unet)
        if self.device.type == "cuda":
            out["peak_gib"] = round(max(p for *_, p in self.calls) / 2**30, 3)
        return out


@contextlib.contextmanager
def applied(parts: dict, options: dict):
    """The variant's settings on the shared modules, undone afterwards."""
    model, vae = parts["model"], parts["vae"]
    model.set_kernels(options.get("kernels"))
    if options.get("channels_last"):
        conv_layout(model.unet, torch.channels_last)
        conv_layout(vae, torch.channels_last)
    if options.get("compile"):  # the forward only: the timing hooks stay outside
        model.unet.forward = torch.compile(model.unet.forward)
    try:
        yield
    finally:
        model.set_kernels(None)
        if options.get("channels_last"):
            conv_layout(model.unet, torch.contiguous_format)
            conv_layout(vae, torch.contiguous_format)
        if options.get("compile"):
            del model.unet.forward


def conv_layout(module: torch.nn.Module, fmt: torch.memory_format) -> None:
    """Every 2-D convolution's weight in ``fmt`` (Module.to(memory_format) also tries the 5-D ones)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def svd_pipeline(parts: dict):
    """diffusers' StableVideoDiffusionPipeline on the same modules (the UNet inside TrackGoUNet; its
    adapters are removed while this pipeline runs)."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline

    return StableVideoDiffusionPipeline(vae=parts["vae"], image_encoder=parts["image_encoder"], unet=parts["model"].unet,
                                        scheduler=EulerDiscreteScheduler.from_config(parts["scheduler"].config),
                                        feature_extractor=parts["feature_extractor"])


def measure(args, parts: dict | None = None, budget=None) -> dict:
    """Every figure of this benchmark as one dict. ``budget()`` (seconds left) skips variants."""
    from PIL import Image

    from trackgo_model.pipeline import TrackGoPipeline

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    parts = parts or build(args.preset, device, dtype, args.seed)
    image, traj = synthetic_inputs(args.frames, args.height, args.width)
    model = parts["model"]
    ours = TrackGoPipeline(model, parts["vae"], parts["image_encoder"], parts["feature_extractor"],
                           parts["scheduler"], device=device)
    svd = svd_pipeline(parts)
    svd.set_progress_bar_config(disable=True)
    common = dict(num_frames=args.frames, height=args.height, width=args.width, min_guidance_scale=1.0,
                  max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02)
    result = {"preset": args.preset, "device": str(device), "dtype": args.dtype, "frames": args.frames,
              "height": args.height, "width": args.width, "steps": args.steps, "repeats": args.repeats,
              "baseline": "diffusers StableVideoDiffusionPipeline, same modules, stock attention processors",
              "variants": {}, "errors": {}, "skipped": {}}
    clock = StageClock(device)

    def call(kind: str, steps: int, chunk: int | None):
        gen = torch.Generator().manual_seed(args.seed)
        if kind == "svd":
            with model.without_adapters():
                svd(image=Image.fromarray(image), num_inference_steps=steps, decode_chunk_size=chunk,
                    generator=gen, output_type="pt", **common)
        else:
            ours(image, traj if kind == "trackgo" else None, num_inference_steps=steps, decode_chunk_size=chunk,
                 generator=gen, output_type="pt", **common)

    with clock.attached(parts), torch.inference_mode():
        for name in args.variants:
            if budget is not None and budget() <= 0:
                result["skipped"][name] = "time budget spent"
                continue
            opts = VARIANTS[name]
            kinds = ["svd", "trackgo"] if set(opts) - {"kernels"} or name == "default" else ["trackgo"]
            kinds += ["trackgo_no_trajectories"] if name == "default" else []
            rows = {}
            try:
                with applied(parts, opts):
                    for kind in kinds:
                        chunk = opts.get("decode_chunk_size")
                        if args.warmup_steps:  # warm-up (and, with compile, the compilation)
                            call(kind, args.warmup_steps, chunk)
                        runs = [clock.run(lambda: call(kind, args.steps, chunk)) for _ in range(args.repeats)]
                        rows[kind] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            except Exception as exc:  # e.g. the Triton kernel off CUDA: report, go on
                log.warning("variant %s failed: %s", name, exc)
                result["errors"][name] = f"{type(exc).__name__}: {exc}"[:400]
                continue
            base = rows.get("svd") or result["variants"].get("default", {}).get("svd")
            if base:
                rows["ratio_total"] = round(rows["trackgo"]["total"] / base["total"], 4)
                rows["ratio_denoise"] = round(rows["trackgo"]["denoise"] / base["denoise"], 4)
            result["variants"][name] = rows
    return result


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="svd-xt with CUDA, else tiny")
    ap.add_argument("--frames", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--dtype", choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed run before each timed one")
    ap.add_argument("--variants", nargs="+", default=["default", "sdpa", "fused", "channels_last", "decode_chunk"],
                    choices=list(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    args.preset = args.preset or ("svd-xt" if args.device.startswith("cuda") else "tiny")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if "default" not in args.variants:
        args.variants.insert(0, "default")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from benchmarks.adapter_overhead import start

    if not start(args):
        return 2
    if args.preset == "tiny" and args.device == "cpu":
        torch.set_num_threads(1)  # tiny ops: a second thread only contends with whatever else runs
    line = json.dumps(measure(args), sort_keys=True)
    if args.out:
        from trackgo_data.config import atomic_write_bytes

        atomic_write_bytes(args.out, (line + "\n").encode())
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
