"""All of TrackGo's GPU speed figures in one run, written to one JSON file.

GPU (one H200 or H100, random weights; 6–9 minutes: nothing new starts after --budget-s 420, and
the JSON is rewritten after every section, so a timeout still leaves the sections done). Where the
machine lacks diffusers, carry wheels downloaded here (bitsandbytes for the 8-bit optimizer option):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl diffusers==0.42.1 bitsandbytes==0.50.2

and run there, in the repository root, as one 10-minute command (carry: .whl):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && nvidia-smi -L && PYTHONUNBUFFERED=1 timeout 560 \
        python3 benchmarks/gpu_suite.py --out $OUT/gpu_suite.json 2>&1 | tee $OUT/gpu_suite.log

A rerun of one part: ``--only training`` (checks, training, memory, generation, compiled), or
``--no-compile`` to leave out the torch.compile candidates.

CPU check of the script itself (tiny model, well under a minute; the Triton kernel's check runs in
Triton's interpreter when the process starts with TRITON_INTERPRET=1, and is skipped otherwise):

    TRITON_INTERPRET=1 python benchmarks/gpu_suite.py --tiny --out /tmp/gpu_suite.json

Sections, in this order (``--only`` picks some; ``compiled`` runs its training part right after
``training`` and its generation part last):
  checks      the fast attention kernels against the explicit one at real layer shapes (values,
              diag(A) and every gradient; fp32 and bf16; gated and paper): relative errors; then
              the kernel alone, explicit vs Triton per launch configuration (kernel_timings)
  training    adapter overhead, UNet forward+backward with TrackGo ÷ bare SVD at 1024×576×14 bf16,
              per speed candidate (benchmarks/adapter_overhead.py; goal ≤ 1.05), also with the
              attention loss; forward with P encoded once (sampling)
  memory      the training loop's full step (VAE + CLIP conditioning, UNet, attention loss, clip,
              optimizer) at 1024×576×25, batch 1, bf16, per memory option (goal ≤ 64 GiB); and
              memory_estimate: what autograd keeps per checkpointing scope, counted on the meta device
  generation  a video, seconds by stage and peak memory, TrackGo vs diffusers' SVD pipeline, per
              variant (benchmarks/generate.py; goals ≤ 10 s and ≤ 1.05× SVD)
  compiled    torch.compile candidates (the compiled kernel in training, a compiled UNet in
              generation), last because compiling takes minutes; skipped when the budget is spent
A candidate that fails is listed under its section's ``errors``; one not run under ``skipped``.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import adapter_overhead, generate  # noqa: E402
from benchmarks.gpu_measure import (kernel_checks, kernel_timings, memory_step, saved_activations_gib,  # noqa: E402
                                    triton_checkable, triton_usable)

log = logging.getLogger("gpu_suite")
SECTIONS = ("checks", "training", "memory", "generation", "compiled")
MEMORY_OPTIONS: dict[str, dict] = {  # on top of gradient checkpointing (diffusers' blocks)
    "diffusers": {},
    "temporal": {"checkpointing": "temporal"},
    "transformer": {"checkpointing": "transformer"},
    "temporal_kernels": {"checkpointing": "temporal", "kernels": adapter_overhead.CANDIDATES["combined"]},
    "temporal_adamw8bit": {"checkpointing": "temporal", "optimizer": "adamw8bit"},
    "transformer_kernels_adamw8bit": {"checkpointing": "transformer", "optimizer": "adamw8bit",
                                      "kernels": adapter_overhead.CANDIDATES["combined"]},
}


def settings(args) -> SimpleNamespace:
    """Sizes of every section: SVD-xt on the GPU, the tiny model with ``--tiny``."""
    if args.tiny:
        return SimpleNamespace(preset="tiny", dtype="fp32", train=dict(frames=4, height=32, width=32),
                               gen=dict(frames=3, height=32, width=32, steps=2), mem=dict(frames=4, height=32, width=32),
                               repeats=1, warmup=0, mem_steps=1, mem_warmup=0, mem_precision="no",
                               grad_checkpointing=False,
                               gen_warmup_steps=0, kernel_shapes=[(2, 2, 7, 16)],
                               # one of each kind: the script's paths, not the figures, are checked
                               candidates=["reference", "fused_projections", "encoder_channels_last"],
                               attention_loss=True, memory_options=["diffusers", "temporal", "transformer_kernels_adamw8bit"],
                               gen_variants=["default", "channels_last", "decode_chunk"])
    return SimpleNamespace(preset="svd-xt", dtype="bf16", train=dict(frames=14, height=576, width=1024),
                           gen=dict(frames=14, height=576, width=1024, steps=25),
                           mem=dict(frames=args.memory_frames, height=576, width=1024),
                           repeats=args.repeats, warmup=2, mem_steps=2, mem_warmup=1, mem_precision="bf16",
                           # without it the 14-frame step keeps more than the card holds (see the
                           # suite's memory_estimate); diffusers' blocks, as the training loop uses
                           grad_checkpointing=True,
                           gen_warmup_steps=2,
                           kernel_shapes=[(2 * 72 * 128, 5, 14, 64), (72 * 128, 5, 25, 64)],
                           candidates=["reference", "fused_projections", "encoder_channels_last", "triton", "combined"],
                           attention_loss=True, memory_options=list(MEMORY_OPTIONS),
                           gen_variants=["default", "fused", "sdpa", "channels_last", "decode_chunk"])


class Suite:
    def __init__(self, args):
        self.args, self.s = args, settings(args)
        self.device = torch.device(args.device)
        self.t0 = time.perf_counter()
        self.result = {"meta": self.meta(), "skipped": {}}

    def meta(self) -> dict:
        import diffusers

        m = {"argv": sys.argv[1:], "device": self.args.device, "preset": self.s.preset, "dtype": self.s.dtype,
             "torch": torch.__version__, "diffusers": diffusers.__version__, "budget_s": self.args.budget_s}
        try:
            import triton

            m["triton"] = triton.__version__
        except ImportError:
            pass
        if self.device.type == "cuda":
            m["gpu"] = torch.cuda.get_device_name(self.device)
        return m

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.result["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        if self.args.out:
            from trackgo_data.config import atomic_write_bytes

            self.args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.args.out, (json.dumps(self.result, sort_keys=True, indent=1) + "\n").encode())

    def skip(self, what: str, why: str) -> None:
        log.info("skipping %s: %s", what, why)
        self.result["skipped"][what] = why

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def candidates(self, names) -> list[str]:
        why = triton_usable(self.device)
        keep = []
        for c in names:
            if why and adapter_overhead.CANDIDATES[c].get("attention") == "triton":
                self.skip(f"training {c}", why)
            else:
                keep.append(c)
        return keep

    # -- sections -------------------------------------------------------------------------------
    def checks(self) -> None:
        why = triton_checkable(self.device)
        if why:
            self.skip("checks triton", why)
        kernels = [] if why else ["triton"]
        self.result["checks"] = kernel_checks(self.device, self.s.kernel_shapes, kernels)
        if "triton" in kernels and self.device.type == "cuda":
            self.save()
            self.result["kernel_timings"] = kernel_timings(self.device, self.s.kernel_shapes[-1])

    def _overhead_args(self, candidates, no_backward=False):
        return SimpleNamespace(device=self.args.device, preset=self.s.preset, dtype=self.s.dtype, batch=1,
                               seed=0, warmup=self.s.warmup, repeats=self.s.repeats, candidates=candidates,
                               no_backward=no_backward, attention_loss=self.s.attention_loss,
                               grad_checkpointing=self.s.grad_checkpointing,
                               **self.s.train)

    def training(self, candidates) -> dict:
        args = self._overhead_args(candidates)
        model = adapter_overhead.make_model(self.s.preset, self.device, adapter_overhead.DTYPES[self.s.dtype])
        try:
            return adapter_overhead.measure(args, model=model)
        finally:
            del model
            self.free()

    def memory(self) -> None:
        rows, errors = {}, {}
        why = triton_usable(self.device)
        estimate = {"none": saved_activations_gib(self.s.preset, scope=None, **self.s.mem)}
        for scope in ("diffusers", "temporal", "transformer"):
            estimate[scope] = saved_activations_gib(self.s.preset, scope=scope, **self.s.mem)
        self.result["memory_estimate"] = {"saved_activations_gib": estimate, "counted": "meta device, bf16, "
                                          "one UNet forward with the attention loss, per checkpointing scope"}
        for name in self.s.memory_options:
            opt = MEMORY_OPTIONS[name]
            if self.left() <= 0:
                self.skip(f"memory {name}", "time budget spent")
                continue
            kernels = opt.get("kernels", {})
            if why and kernels.get("attention") == "triton":
                kernels = {k: v for k, v in kernels.items() if k != "attention"}
                name += "_no_triton"
            if opt.get("optimizer") == "adamw8bit" and _missing("bitsandbytes"):
                self.skip(f"memory {name}", "bitsandbytes is not installed (pip install 'trackgo[lowmem]')")
                continue
            overrides = [f"model.kernels.{k}={str(v).lower()}" for k, v in kernels.items()]
            overrides += [f"model.checkpointing={opt['checkpointing']}"] if "checkpointing" in opt else []
            overrides += [f"optim.optimizer={opt['optimizer']}"] if "optimizer" in opt else []
            log.info("memory option %s: %s", name, overrides)
            try:
                rows[name] = memory_step(self.s.preset == "svd-xt", overrides, steps=self.s.mem_steps,
                                         warmup=self.s.mem_warmup, precision=self.s.mem_precision, **self.s.mem)
            except Exception as exc:  # out of memory included: that is a figure too
                log.warning("memory option %s failed: %s", name, exc)
                errors[name] = f"{type(exc).__name__}: {exc}"[:400]
            self.free()
            self.result["memory"] = {"frames": self.s.mem["frames"], "options": rows, "errors": errors,
                                     "base": "gradient checkpointing on (diffusers' blocks), svd-xt-gated, "
                                             f"mixed_precision={self.s.mem_precision}, batch 1"}
            self.save()

    def generation(self, variants) -> dict:
        gen_args = SimpleNamespace(device=self.args.device, preset=self.s.preset, dtype=self.s.dtype, seed=0,
                                   repeats=1, variants=variants, warmup_steps=self.s.gen_warmup_steps, **self.s.gen)
        if triton_usable(self.device) and "fused" in variants:
            self.skip("generation fused", triton_usable(self.device))
            gen_args.variants = [v for v in variants if v != "fused"]
        try:
            return generate.measure(gen_args, budget=self.left)
        finally:
            self.free()

    def run(self) -> dict:
        only = self.args.only
        steps = [("checks", self.checks)]
        steps.append(("training", lambda: self.result.__setitem__(
            "training", self.training(self.candidates(self.s.candidates)))))
        steps.append(("compiled", self.compiled_training))
        steps.append(("memory", self.memory))
        steps.append(("generation", lambda: self.result.__setitem__("generation", self.generation(self.s.gen_variants))))
        steps.append(("compiled", self.compiled_generation))
        for name, fn in steps:
            if name not in only:
                continue
            if self.left() <= 0:
                self.skip(name, "time budget spent")
                continue
            log.info("section %s (%.0f s left)", name, self.left())
            t = time.perf_counter()
            try:
                fn()
            except Exception as exc:
                log.exception("section %s failed", name)
                self.result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
            key = f"{name}_s"
            self.result["meta"][key] = round(self.result["meta"].get(key, 0) + time.perf_counter() - t, 1)
            self.save()
        self.result["summary"] = summary(self.result)
        self.save()
        return self.result

    def compiled_training(self) -> None:
        """The torch.compile'd kernel: checked against the explicit one, then timed in training."""
        if self.args.no_compile:
            self.skip("compiled", "--no-compile")
            return
        checks = kernel_checks(self.device, self.s.kernel_shapes[-1:], ["compiled"], dtypes=(torch.bfloat16,))
        self.result.setdefault("checks", {}).update(checks)
        self.save()
        self.result["compiled_training"] = self.training(self.candidates(["reference", "compiled", "combined_compiled"]))

    def compiled_generation(self) -> None:
        """A torch.compile'd UNet in both pipelines (compiling it twice takes minutes: last)."""
        if not self.args.no_compile:
            self.result["compiled_generation"] = self.generation(["default", "compile"])


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def summary(result: dict) -> dict:
    """The headline figures against the issue's goals."""
    out = {}
    tr = result.get("training", {})
    if tr.get("fwd_bwd_ratio"):
        out["fwd_bwd_ratio"] = tr["fwd_bwd_ratio"]
        out["best_fwd_bwd_ratio"] = min(tr["fwd_bwd_ratio"].values())
    gen = result.get("generation", {}).get("variants", {})
    if gen:
        out["video_s"] = {k: v["trackgo"]["total"] for k, v in gen.items() if "trackgo" in v}
        out["ratio_to_svd"] = {k: v["ratio_total"] for k, v in gen.items() if "ratio_total" in v}
    mem = result.get("memory", {}).get("options", {})
    if mem:
        out["memory_peak_gib"] = {k: v.get("peak_gib") for k, v in mem.items() if "peak_gib" in v}
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny model on this machine's CPU: checks the script")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_suite.json"))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="no new section or variant starts after this many seconds (the JSON keeps what ran)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--no-compile", action="store_true", help="skip every torch.compile candidate")
    ap.add_argument("--memory-frames", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        args.no_compile = True  # compiling on a CPU takes minutes
        torch.set_num_threads(1)  # tiny ops: a second thread only contends with whatever else runs
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not adapter_overhead.start(args):
        return 2
    if not args.tiny and not args.device.startswith("cuda"):
        log.error("the full-size suite needs a GPU; use --tiny on a CPU")
        return 2
    result = Suite(args).run()
    print(json.dumps(result.get("summary", {}), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
