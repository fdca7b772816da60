"""Cost of TrackGo's adapters: UNet step with adapters ÷ the bare UNet, same inputs, one run.

    python benchmarks/adapter_overhead.py                      # tiny config on CPU
    python benchmarks/adapter_overhead.py --device cuda --preset svd-xt \
        --height 576 --width 1024 --frames 14 --dtype bf16     # full SVD-xt (random weights)
    ... --candidates reference fused_projections encoder_channels_last triton compiled combined

Speed candidates (``CANDIDATES``: ``KernelConfig`` settings, the same function each) are timed
interleaved with the bare UNet (median of ``--repeats`` after ``--warmup`` runs each):
  forward      bare · trackgo[c] (P encoded inside the step) · cached[c] (P encoded once, as a
               sampler does across steps)
  kernel       the attention kernel alone at the finest temporal layer's shape
  fwd+bwd      bare UNet training its temporal attn1 to_q/k/v · trackgo[c] training the default
               groups (encoder, adapters, temporal attn1 to_q/k/v) · with ``--attention-loss`` also
               trackgo_attn_loss[c] (maps collected, L = mse + L_attn)
A candidate that fails (e.g. the Triton kernel off CUDA) is reported under ``errors``.
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

from trackgo_model.adapter import remove_track_adapters, restore_track_adapters
from trackgo_model.attention import track_attention
from trackgo_model.configs import KernelConfig
from trackgo_model.model import TrackGoUNet, build_unet

log = logging.getLogger("adapter_overhead")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CANDIDATES: dict[str, dict] = {
    "reference": {},
    "sdpa": {"attention": "sdpa"},
    "fused_projections": {"fused_projections": True},
    "encoder_channels_last": {"encoder_channels_last": True},
    "compiled": {"attention": "compiled"},
    "triton": {"attention": "triton"},
    "combined": {"attention": "triton", "fused_projections": True, "encoder_channels_last": True},
    "combined_compiled": {"attention": "compiled", "fused_projections": True, "encoder_channels_last": True},
}


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
    ap.add_argument("--candidates", nargs="+", default=["reference", "sdpa"], choices=sorted(CANDIDATES))
    ap.add_argument("--compiled-kernel", action="store_true", help="shorthand: also the 'compiled' candidate")
    ap.add_argument("--no-backward", action="store_true", help="time forward passes only")
    ap.add_argument("--attention-loss", action="store_true",
                    help="also time forward+backward with the attention loss (maps collected)")
    ap.add_argument("--grad-checkpointing", action="store_true",
                    help="enable gradient checkpointing for forward+backward (also used after an OOM)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.compiled_kernel and "compiled" not in args.candidates:
        args.candidates.append("compiled")
    if "reference" not in args.candidates:
        args.candidates.insert(0, "reference")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(preset: str, device, dtype, seed: int = 0) -> TrackGoUNet:
    torch.manual_seed(seed)
    unet = build_unet(preset, device=device, dtype=dtype)
    model = TrackGoUNet.from_unet(unet).eval()
    with torch.no_grad():  # as after training: gates and encoder heads non-zero
        for head in model.encoder.heads.values():
            head.weight.normal_(0.0, 0.05)
        for a in model.adapters.values():
            a.gate.fill_(0.1)
    return model


def make_inputs(model, batch: int, frames: int, height: int, width: int, device, dtype, seed: int = 0):
    """(sample, t, clip token, time ids, P, motion masks) for one UNet call."""
    cfg = model.config
    h, w = height // 8, width // 8
    g = torch.Generator(device="cpu").manual_seed(seed)
    sample = torch.randn(batch, frames, cfg.in_channels, h, w, generator=g).to(device, dtype)
    t = torch.full((batch,), 0.25 * 1.5, dtype=dtype, device=device)
    ehs = torch.randn(batch, 1, cfg.cross_attention_dim, generator=g).to(device, dtype)
    ati = torch.tensor([[6.0, 127.0, 0.02]] * batch, dtype=dtype, device=device)
    traj = (torch.rand(batch, frames, 3, height, width, generator=g) * 2 - 1).to(device, dtype)
    masks = (torch.rand(batch, frames, h, w, generator=g) > 0.7).float().to(device)
    return sample, t, ehs, ati, traj, masks


def time_variants(variants: dict, warmup: int, repeats: int, device) -> tuple[dict, dict, dict]:
    """Median seconds, peak memory (bytes, CUDA only) and errors per variant; runs interleaved.

    Each variant is (prepare, run, finish); only ``run`` is timed. A variant that raises is
    dropped and its error kept (CUDA out-of-memory errors propagate)."""
    times = {k: [] for k in variants}
    peaks = {k: 0 for k in variants}
    errors: dict[str, str] = {}

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

    live = list(variants)
    for rnd in range(warmup + repeats):
        for name in list(live):
            try:
                once(name, timed=rnd >= warmup)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # a candidate that cannot run here: report, go on
                log.warning("variant %s failed: %s", name, exc)
                errors[name] = f"{type(exc).__name__}: {exc}"[:400]
                live.remove(name)
    return ({k: statistics.median(v) for k, v in times.items() if v}, {k: peaks[k] for k in live}, errors)


def _noop():
    return None


def _swap(model):
    """(prepare, finish) pair that runs a variant on the bare UNet (stock processors)."""
    state = {}

    def prepare():
        state["removed"] = remove_track_adapters(model.unet)

    def finish():
        restore_track_adapters(model.unet, state.pop("removed"))

    return prepare, finish


def _kernels(model, name: str):
    """(prepare, finish) pair that switches the model to candidate ``name`` and back."""
    return (lambda: model.set_kernels(KernelConfig(**CANDIDATES[name]))), (lambda: model.set_kernels(KernelConfig()))


def forward_variants(model, inputs, candidates):
    sample, t, ehs, ati, traj, _ = inputs
    with torch.no_grad():
        encoded = model.encode(traj)

    def bare():
        with torch.no_grad():
            model.unet(sample, t, ehs, ati, return_dict=False)

    def trackgo():
        with torch.no_grad():
            model(sample, t, ehs, ati, trajectories=traj)

    def cached():
        with torch.no_grad():
            model(sample, t, ehs, ati, trajectories=encoded)

    prepare, finish = _swap(model)
    variants = {"bare": (prepare, bare, finish)}
    for c in candidates:
        on, off = _kernels(model, c)
        variants[f"trackgo[{c}]"] = (on, trackgo, off)
        variants[f"cached[{c}]"] = (on, cached, off)
    return variants


def kernel_variants(model, batch: int, frames: int, height: int, width: int, device, dtype, candidates,
                    seed: int = 0):
    """The attention kernel alone at the first (finest) temporal layer's shape."""
    first = next(iter(model.adapters.values()))
    n = batch * (height // 8) * (width // 8)
    shape = (n, first.heads, frames, first.width // first.heads)
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, qp, kp = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(5))
    gate = torch.full((first.heads,), 0.1, device=device, dtype=dtype)

    def stock():
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, k, v)

    variants = {"stock_sdpa": (_noop, stock, _noop)}
    for kernel in dict.fromkeys(KernelConfig(**CANDIDATES[c]).attention for c in candidates):
        def run(kernel=kernel):
            with torch.no_grad():
                track_attention(q, k, v, qp, kp, gate=gate, kernel=kernel)

        variants[f"track_{kernel}"] = (_noop, run, _noop)
    return variants, list(shape)


def backward_variants(model, inputs, candidates, attention_loss: bool = False):
    sample, t, ehs, ati, traj, masks = inputs
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
        model.unet(sample, t, ehs, ati, return_dict=False)[0].float().square().mean().backward()

    def trackgo():
        model(sample, t, ehs, ati, trajectories=traj).float().square().mean().backward()

    def trackgo_attn_loss():
        out = model(sample, t, ehs, ati, trajectories=traj, motion_masks=masks, collect_attention=True)
        (out.float().square().mean() + model.attention_loss().float()).backward()

    swap_in, swap_out = _swap(model)
    variants = {"bare": (lambda: (set_trainable(qkv), swap_in()), bare, lambda: (swap_out(), clear()))}
    for c in candidates:
        on, off = _kernels(model, c)
        variants[f"trackgo[{c}]"] = (lambda on=on: (set_trainable(full), on()), trackgo, lambda off=off: (off(), clear()))
        if attention_loss:
            variants[f"trackgo_attn_loss[{c}]"] = (lambda on=on: (set_trainable(full), on()), trackgo_attn_loss,
                                                   lambda off=off: (off(), clear()))
    return variants


def ratios(ms: dict, prefix: str) -> dict:
    """{candidate: ms[prefix[c]] / ms["bare"]} for every timed ``prefix[...]`` variant."""
    return {k[len(prefix) + 1:-1]: round(v / ms["bare"], 4) for k, v in ms.items() if k.startswith(prefix + "[")}


def measure(args, model=None, inputs=None) -> dict:
    """Every figure of this benchmark as one dict (see the module docstring)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = model or make_model(args.preset, device, dtype, args.seed)
    inputs = inputs or make_inputs(model, args.batch, args.frames, args.height, args.width, device, dtype, args.seed)
    result = {
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "batch": args.batch,
        "frames": args.frames, "height": args.height, "width": args.width, "repeats": args.repeats,
        "candidates": {c: CANDIDATES[c] for c in args.candidates}, "errors": {},
        "added_params": model.added_parameters(), "num_adapters": len(model.adapters), "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    gib = lambda peaks: {k: round(v / 2**30, 3) for k, v in peaks.items()}  # noqa: E731

    log.info("timing forward")
    model.eval()
    fwd, fwd_peak, err = time_variants(forward_variants(model, inputs, args.candidates), args.warmup, args.repeats, device)
    result["errors"].update({f"forward {k}": v for k, v in err.items()})
    result["forward_ms"] = {k: round(v * 1e3, 3) for k, v in fwd.items()}
    result["forward_ratio"] = ratios(fwd, "trackgo")
    result["forward_ratio_cached_encoder"] = ratios(fwd, "cached")
    log.info("timing the attention kernel alone")
    kernels, shape = kernel_variants(model, args.batch, args.frames, args.height, args.width, device, dtype,
                                     args.candidates, args.seed)
    kern, _, err = time_variants(kernels, args.warmup, args.repeats, device)
    result["errors"].update({f"kernel {k}": v for k, v in err.items()})
    result["kernel_shape"], result["kernel_ms"] = shape, {k: round(v * 1e3, 4) for k, v in kern.items()}
    if device.type == "cuda":
        result["forward_peak_gib"] = gib(fwd_peak)
    if args.no_backward:
        return result
    model.train()
    if args.grad_checkpointing:
        model.enable_gradient_checkpointing()
    result["grad_checkpointing"] = bool(args.grad_checkpointing)
    log.info("timing forward+backward (gradient checkpointing: %s)", args.grad_checkpointing)
    variants = backward_variants(model, inputs, args.candidates, args.attention_loss)
    try:
        bwd, bwd_peak, err = time_variants(variants, args.warmup, args.repeats, device)
    except torch.cuda.OutOfMemoryError:
        if args.grad_checkpointing:
            raise
        log.warning("out of memory in forward+backward; retrying with gradient checkpointing")
        for p in model.parameters():
            p.grad = None
        torch.cuda.empty_cache()
        model.enable_gradient_checkpointing()
        result["grad_checkpointing"] = True
        bwd, bwd_peak, err = time_variants(variants, args.warmup, args.repeats, device)
    result["errors"].update({f"fwd_bwd {k}": v for k, v in err.items()})
    result["fwd_bwd_ms"] = {k: round(v * 1e3, 3) for k, v in bwd.items()}
    result["fwd_bwd_ratio"] = ratios(bwd, "trackgo")
    if args.attention_loss:
        result["fwd_bwd_ratio_attn_loss"] = ratios(bwd, "trackgo_attn_loss")
    if device.type == "cuda":
        result["fwd_bwd_peak_gib"] = gib(bwd_peak)
    return result


def start(args) -> bool:
    """Log to stderr; False (after one error line) when ``--device cuda`` is asked for without CUDA."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log.error("--device cuda requested but CUDA is not available")
        return False
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if not start(args):
        return 2
    if args.height % 8 or args.width % 8:
        log.error("--height and --width must be multiples of 8")
        return 2
    log.info("building %s on %s (%s)", args.preset, args.device, args.dtype)
    print(json.dumps(measure(args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
