"""TrackGo's masked attention on Wan's token layout: the ``explicit`` and ``flex`` kernels side by
side (``trackgo_model.wan.attention.track_attention_3d``), same inputs, one run.

    python benchmarks/wan_attention.py                                   # tiny, CPU, forward only
    python benchmarks/wan_attention.py --device cuda --dtype bf16 --heads 40 --dim 128 \\
        --frames 21 --height 15 --width 26                               # a quarter of 480p's positions
    python benchmarks/wan_attention.py --device cuda --dtype bf16 --heads 40 --dim 128 \\
        --frames 21 --height 30 --width 52 --kernels flex                # 81×480×832 (explicit cannot fit)

Per kernel: median milliseconds of the forward (and, on CUDA, forward + backward of
out² + diag(A), what training with the attention loss runs) after warm-up, peak CUDA memory, and
the largest difference from the first kernel's output and diagonal. Prints one JSON line (and
writes it to ``--out``): the figures and flex ÷ explicit ratios. PyTorch has no FlexAttention
backward on the CPU, so there only the forward is timed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from trackgo_model.wan.attention import KERNELS, track_attention_3d

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=16, help="head dimension d")
    ap.add_argument("--frames", type=int, default=5, help="latent frames F")
    ap.add_argument("--height", type=int, default=4, help="token rows (latent height / 2)")
    ap.add_argument("--width", type=int, default=6, help="token columns (latent width / 2)")
    ap.add_argument("--alpha", type=float, default=0.4)
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="")
    return ap.parse_args(argv)


def inputs(a, device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    p, n = a.height * a.width, a.frames * a.height * a.width
    qkv = [torch.randn(a.batch, a.heads, n, a.dim, device=device, dtype=dtype, generator=g) for _ in range(3)]
    # peaked adapter queries/keys, so that the mask acts on part of the entries
    qp, kp = (3 * torch.randn(a.batch, a.heads, p, a.frames, a.dim, device=device, dtype=dtype, generator=g)
              for _ in range(2))
    return qkv, qp, kp


def timed(fn, a, device) -> float:
    for _ in range(a.warmup):
        fn()
    times = []
    for _ in range(a.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    a = parse_args(argv)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    (q, k, v), qp, kp = inputs(a, device, dtype)
    gate = torch.ones(a.heads, device=device, dtype=dtype)
    kw = dict(alpha=a.alpha, gate=gate, with_diag=True, with_hits=True)
    res: dict = {"meta": {**vars(a), "tokens": q.shape[2], "torch": torch.__version__}, "kernels": {}}
    ref = None
    for kernel in a.kernels:
        row: dict = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            got = track_attention_3d(q, k, v, qp, kp, kernel=kernel, **kw)
            row["forward_ms"] = timed(lambda: track_attention_3d(q, k, v, qp, kp, kernel=kernel, **kw), a, device)
        row["hits"] = float(got.hits)
        if ref is None:
            ref = got
        row["max_diff_out"] = float((got.out.float() - ref.out.float()).abs().max())
        row["max_diff_diag"] = float((got.diag.float() - ref.diag.float()).abs().max())
        if device.type == "cuda":
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]

            def step():
                r = track_attention_3d(*leaves, qp, kp, kernel=kernel, **kw)
                (r.out.float().square().sum() + r.diag.sum()).backward()

            row["fwd_bwd_ms"] = timed(step, a, device)
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        res["kernels"][kernel] = row
    if {"explicit", "flex"} <= set(res["kernels"]):
        e, f = res["kernels"]["explicit"], res["kernels"]["flex"]
        res["ratios"] = {k: f[k] / e[k] for k in ("forward_ms", "fwd_bwd_ms", "peak_mib") if k in e and e[k]}
    line = json.dumps(res, sort_keys=True)
    print(line)
    if a.out:
        Path(a.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
