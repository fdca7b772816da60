"""Cost of TrackGo's adapters: UNet step with adapters ÷ the bare UNet, same inputs, one run.

    python benchmarks/adapter_overhead.py                      # tiny config on CPU
    python benchmarks/adapter_overhead.py --device cuda --preset svd-xt \
        --height 576 --width 1024 --frames 14 --dtype bf16     # full SVD-xt (random weights)

Variants, timed interleaved (median of ``--repeats`` after ``--warmup`` runs each):
  bare            the UNet with its stock attention processors
  trackgo         TrackGoUNet with the trajectory video P (encoder run inside the step)
  trackgo_cached  TrackGoUNet with P encoded once (what a sampler does across steps)
  trackgo_cached_sdpa / *_compiled   the same with the SDPA kernel / the torch.compile'd kernel
Forward+backward compares the bare UNet training its temporal attn1 to_q/k/v against TrackGo
training its default groups (encoder, adapters, temporal attn1 to_q/k/v).
Prints one JSON line: ratios (goal ≤ 1.05), ms per variant, peak GPU memory, added params.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from trackgo_model.adapter import remove_track_adapters, restore_track_adapters, track_attention
from trackgo_model.model import TrackGoUNet, build_unet

log = logging.getLogger("adapter_overhead")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "svd-xt"])
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-backward", action="store_true", help="time forward passes only")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="enable gradient checkpointing for forward+backward (also used after an OOM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compiled-kernel", action="store_true",
                    help="also time TrackContext.compiled=True (torch.compile of the attention kernel)")
    return ap.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(args, device, dtype) -> TrackGoUNet:
    torch.manual_seed(args.seed)
    unet = build_unet(args.preset, device=device, dtype=dtype)
    model = TrackGoUNet.from_unet(unet).eval()
    with torch.no_grad():  # as after training: gates and encoder heads non-zero
        for head in model.encoder.heads.values():
            head.weight.normal_(0.0, 0.05)
        for a in model.adapters.values():
            a.gate.fill_(0.1)
    return model


def make_inputs(args, model, device, dtype):
    cfg = model.config
    h, w = args.height // 8, args.width // 8
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    sample = torch.randn(args.batch, args.frames, cfg.in_channels, h, w, generator=g).to(device, dtype)
    t = torch.full((args.batch,), 0.25 * 1.5, dtype=dtype, device=device)
    ehs = torch.randn(args.batch, 1, cfg.cross_attention_dim, generator=g).to(device, dtype)
    ati = torch.tensor([[6.0, 127.0, 0.02]] * args.batch, dtype=dtype, device=device)
    traj = (torch.rand(args.batch, args.frames, 3, args.height, args.width, generator=g) * 2 - 1).to(device, dtype)
    return sample, t, ehs, ati, traj


def time_variants(variants: dict, args, device) -> tuple[dict, dict]:
    """Median seconds and peak memory (bytes, CUDA only) per variant; runs are interleaved.

    Each variant is (prepare, run, finish); only ``run`` is timed (processor swaps are not).
    """
    times = {k: [] for k in variants}
    peaks = {k: 0 for k in variants}

    def once(name, timed):
        prepare, run, finish = variants[name]
        prepare()
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            if timed:
                times[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
        finally:
            finish()

    for name in variants:
        for _ in range(args.warmup):
            once(name, timed=False)
    for _ in range(args.repeats):
        for name in variants:
            once(name, timed=True)
    return {k: statistics.median(v) for k, v in times.items()}, peaks


def _swap(model):
    """(prepare, finish) pair that runs a variant on the bare UNet (stock processors)."""
    state = {}

    def prepare():
        state["removed"] = remove_track_adapters(model.unet)

    def finish():
        restore_track_adapters(model.unet, state.pop("removed"))

    return prepare, finish


def _noop():
    return None


def _context_switch(model, name: str, value):
    """(prepare, finish) pair that sets ``model.context.<name>`` for one variant."""
    old = getattr(model.context, name)
    return (lambda: setattr(model.context, name, value)), (lambda: setattr(model.context, name, old))


def forward_variants(model, inputs, compiled: bool = False):
    sample, t, ehs, ati, traj = inputs
    unet = model.unet
    with torch.no_grad():
        encoded = model.encode(traj)

    def bare():
        with torch.no_grad():
            unet(sample, t, ehs, ati, return_dict=False)

    def trackgo():
        with torch.no_grad():
            model(sample, t, ehs, ati, trajectories=traj)

    def trackgo_cached():
        with torch.no_grad():
            model(sample, t, ehs, ati, trajectories=encoded)

    prepare, finish = _swap(model)
    variants = {"bare": (prepare, bare, finish), "trackgo": (_noop, trackgo, _noop),
                "trackgo_cached": (_noop, trackgo_cached, _noop)}
    on, off = _context_switch(model, "sdpa", True)
    variants["trackgo_cached_sdpa"] = (on, trackgo_cached, off)
    if compiled:
        on, off = _context_switch(model, "compiled", True)
        variants["trackgo_cached_compiled"] = (on, trackgo_cached, off)
    return variants


def kernel_variants(model, args, device, dtype, compiled: bool = False):
    """The attention kernel alone at the first (finest) temporal layer's shape."""
    first = next(iter(model.adapters.values()))
    n = args.batch * (args.height // 8) * (args.width // 8)
    shape = (n, first.heads, args.frames, first.width // first.heads)
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    q, k, v, qp, kp = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(5))
    gate = torch.full((first.heads,), 0.1, device=device, dtype=dtype)

    def stock():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    def sdpa():
        with torch.no_grad():
            track_attention(q, k, v, qp, kp, gate=gate)

    def explicit():
        with torch.no_grad():
            track_attention(q, k, v, qp, kp, gate=gate, sdpa=False)

    def fused():
        with torch.no_grad():
            track_attention(q, k, v, qp, kp, gate=gate, compiled=True)

    variants = {"stock_sdpa": (_noop, stock, _noop), "track_sdpa": (_noop, sdpa, _noop),
                "track_explicit": (_noop, explicit, _noop)}
    if compiled:
        variants["track_compiled"] = (_noop, fused, _noop)
    return variants, list(shape)


def backward_variants(model, inputs, compiled: bool = False):
    sample, t, ehs, ati, traj = inputs
    unet = model.unet
    qkv = model.trainable_parameters(("temporal_qkv",))
    full = model.trainable_parameters()

    def set_trainable(params):
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)

    def clear():
        for p in full:
            p.grad = None

    def bare():
        unet(sample, t, ehs, ati, return_dict=False)[0].float().square().mean().backward()

    def trackgo():
        model(sample, t, ehs, ati, trajectories=traj).float().square().mean().backward()

    swap_in, swap_out = _swap(model)

    def prepare_bare():
        set_trainable(qkv)
        swap_in()

    def finish_bare():
        swap_out()
        clear()

    variants = {"bare": (prepare_bare, bare, finish_bare),
                "trackgo": (lambda: set_trainable(full), trackgo, clear)}
    if compiled:
        on, off = _context_switch(model, "compiled", True)

        def finish_compiled():
            off()
            clear()

        variants["trackgo_compiled"] = (lambda: (set_trainable(full), on()), trackgo, finish_compiled)
    return variants


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda requested but CUDA is not available")
        return 2
    if args.height % 8 or args.width % 8:
        log.error("--height and --width must be multiples of 8")
        return 2
    log.info("building %s on %s (%s)", args.preset, device, args.dtype)
    model = make_model(args, device, dtype)
    inputs = make_inputs(args, model, device, dtype)
    result = {
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "batch": args.batch,
        "frames": args.frames, "height": args.height, "width": args.width, "repeats": args.repeats,
        "added_params": model.added_parameters(), "num_adapters": len(model.adapters),
        "unet_params": sum(p.numel() for n, p in model.unet.named_parameters() if ".processor." not in n),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)

    log.info("timing forward")
    fwd, fwd_peak = time_variants(forward_variants(model, inputs, args.compiled_kernel), args, device)
    result["forward_ms"] = {k: round(v * 1e3, 3) for k, v in fwd.items()}
    result["forward_ratio"] = round(fwd["trackgo"] / fwd["bare"], 4)
    result["forward_ratio_cached_encoder"] = round(fwd["trackgo_cached"] / fwd["bare"], 4)
    result["forward_ratio_cached_sdpa"] = round(fwd["trackgo_cached_sdpa"] / fwd["bare"], 4)
    if args.compiled_kernel:
        result["forward_ratio_cached_compiled"] = round(fwd["trackgo_cached_compiled"] / fwd["bare"], 4)

    log.info("timing the attention kernel alone")
    kernels, shape = kernel_variants(model, args, device, dtype, args.compiled_kernel)
    kern, _ = time_variants(kernels, args, device)
    result["kernel_shape"] = shape
    result["kernel_ms"] = {k: round(v * 1e3, 4) for k, v in kern.items()}
    if device.type == "cuda":
        result["forward_peak_gib"] = {k: round(v / 2**30, 3) for k, v in fwd_peak.items()}

    if not args.no_backward:
        model.train()
        if args.grad_checkpointing:
            model.enable_gradient_checkpointing()
        result["grad_checkpointing"] = bool(args.grad_checkpointing)
        log.info("timing forward+backward (gradient checkpointing: %s)", args.grad_checkpointing)
        try:
            bwd, bwd_peak = time_variants(backward_variants(model, inputs, args.compiled_kernel), args, device)
        except torch.cuda.OutOfMemoryError:
            if args.grad_checkpointing:
                raise
            log.warning("out of memory in forward+backward; retrying with gradient checkpointing")
            for p in model.parameters():
                p.grad = None
            torch.cuda.empty_cache()
            model.enable_gradient_checkpointing()
            result["grad_checkpointing"] = True
            bwd, bwd_peak = time_variants(backward_variants(model, inputs, args.compiled_kernel), args, device)
        result["fwd_bwd_ms"] = {k: round(v * 1e3, 3) for k, v in bwd.items()}
        result["fwd_bwd_ratio"] = round(bwd["trackgo"] / bwd["bare"], 4)
        if args.compiled_kernel:
            result["fwd_bwd_ratio_compiled"] = round(bwd["trackgo_compiled"] / bwd["bare"], 4)
        if device.type == "cuda":
            result["fwd_bwd_peak_gib"] = {k: round(v / 2**30, 3) for k, v in bwd_peak.items()}
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
