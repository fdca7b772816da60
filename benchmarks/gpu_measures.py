"""The GPU suite's measurements (``gpu_suite.py`` runs them in order and writes the JSON): the
fast attention kernels against the explicit one, the kernel alone per launch configuration, what
autograd keeps per checkpointing scope (counted on the meta device), and the training loop's full
step with its peak memory."""
from __future__ import annotations

import statistics
import time

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def kernel_checks(device, shapes, kernels, dtypes=(torch.float32, torch.bfloat16)) -> dict:
    """Relative errors (max |x − ref| / max |ref|) of each kernel's out, diag(A) and gradients
    against the explicit kernel on the same values in fp32 (bf16 inputs included), and
    ``rows_off``: output rows off by more than 1e-4 (fp32) / 2e-2 (bf16) of max |ref| — a handful
    means an A′ entry within rounding of α fell on the other side (the mask is discontinuous), many
    a wrong kernel."""
    from trackgo_model.adapter import track_attention

    out = {}
    for shape in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        base = [torch.randn(shape, generator=g, device=device) * s for s in (1, 1, 1, 1.2, 1.2)]
        gate = torch.linspace(-0.5, 0.5, shape[1], device=device)
        w_out = torch.randn(shape, generator=g, device=device)
        w_diag = torch.randn(shape[:3], generator=g, device=device)
        for dtype in dtypes:
            xs = [x.to(device, dtype) for x in base]
            for mode in ("gated", "paper"):

                def run(kernel, values):
                    leaves = [v.detach().clone().requires_grad_(True) for v in values]
                    kw = {"mode": mode, "motion": 0.5}
                    if mode == "gated":
                        kw["gate"] = gate.clone().requires_grad_(True)
                        leaves.append(kw["gate"])
                    output, diag = track_attention(*leaves[:5], kernel=kernel, return_diag=True, **kw)
                    grads = torch.autograd.grad((output.float() * w_out).sum() + (diag * w_diag).sum(), leaves)
                    return output, diag, grads

                ref = run("explicit", [x.float() for x in xs])
                for kernel in kernels:
                    key = f"{kernel} {tuple(shape)} {str(dtype)[6:]} {mode}"
                    try:
                        output, diag, grads = run(kernel, xs)
                        tol = (1e-4 if dtype == torch.float32 else 2e-2) * float(ref[0].detach().abs().max())
                        rows_off = int(((output.detach().float() - ref[0].detach()).abs().amax(-1) > tol).sum())
                        out[key] = {"out": rel_err(output, ref[0]), "diag": rel_err(diag, ref[1]), "rows_off": rows_off,
                                    "grads": max(rel_err(a, b) for a, b in zip(grads, ref[2]))}
                    except Exception as exc:
                        out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out


def kernel_timings(device, shape, dtype=torch.bfloat16, repeats: int = 10) -> dict:
    """The attention kernel alone at ``shape`` (gated, diag(A) as in training): forward and
    forward+backward ms of the explicit kernel and of the Triton one per launch configuration."""
    from trackgo_model import fused_attention
    from trackgo_model.adapter import track_attention

    g = torch.Generator().manual_seed(0)
    xs = [(torch.randn(shape, generator=g) * s).to(device, dtype).requires_grad_(True) for s in (1, 1, 1, 1.2, 1.2)]
    gate = torch.full((shape[1],), 0.1, device=device, requires_grad=True)

    def fwd(kernel):
        with torch.no_grad():
            track_attention(*xs, gate=gate, kernel=kernel, return_diag=True)

    def fwd_bwd(kernel):
        output, diag = track_attention(*xs, gate=gate, kernel=kernel, return_diag=True)
        torch.autograd.grad(output.float().sum() + diag.sum(), [*xs, gate])

    def ms(fn, kernel):
        for _ in range(3):
            fn(kernel)
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn(kernel)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1e3, 4)

    out = {"shape": list(shape), "explicit": {"fwd_ms": ms(fwd, "explicit"), "fwd_bwd_ms": ms(fwd_bwd, "explicit")}}
    try:
        for seq in (1, 2, 4, 8):
            for warps in (2, 4):
                fused_attention.LAUNCH.update(seq=seq, num_warps=warps)
                try:
                    out[f"triton_seq{seq}_warps{warps}"] = {"fwd_ms": ms(fwd, "triton"),
                                                           "fwd_bwd_ms": ms(fwd_bwd, "triton")}
                except Exception as exc:
                    out[f"triton_seq{seq}_warps{warps}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        fused_attention.LAUNCH.update(seq=None, num_warps=None)
    return out


def saved_activations_gib(preset: str, frames: int, height: int, width: int, scope: str | None,
                          kernels: dict | None = None) -> float:
    """What autograd keeps for backward in one UNet forward with the attention loss (bf16, batch 1,
    the default trainable groups), counted on the meta device — no memory, no GPU, a second.
    ``scope``: None (no checkpointing) or a ``model.checkpointing`` scope. The Triton kernel cannot
    run on meta; its candidates are counted with the explicit kernel (which keeps more)."""
    from trackgo_model.model import TrackGoUNet, build_unet
    from trackgo_model.train.memory import enable_checkpointing

    dt = torch.bfloat16
    model = TrackGoUNet.from_unet(build_unet(preset, device="meta", dtype=dt)).to("meta", dt).train()
    model.freeze_for_training()
    model.set_kernels({**(kernels or {}), "attention": "explicit"})
    if scope:
        enable_checkpointing(model, scope)
    h, w, cfg = height // 8, width // 8, model.config
    with torch.device("meta"):
        inputs = (torch.randn(1, frames, cfg.in_channels, h, w, dtype=dt), torch.rand(1, dtype=dt),
                  torch.randn(1, 1, cfg.cross_attention_dim, dtype=dt), torch.randn(1, 3, dtype=dt))
        p, masks = torch.randn(1, frames, 3, height, width, dtype=dt), torch.rand(1, frames, h, w)
    kept: dict[int, int] = {}

    def pack(x):
        kept[x.untyped_storage()._cdata] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = model(*inputs, trajectories=p, motion_masks=masks, collect_attention=True)
        out.float().square().mean() + model.attention_loss()
    return round(sum(kept.values()) / 2**30, 3)


def memory_step(full: bool, overrides: list[str], frames: int, height: int, width: int, steps: int,
                warmup: int = 1, precision: str = "bf16") -> dict:
    """The training loop's step (train_step.py's model and batch), ``steps`` times after ``warmup``
    untimed ones: median seconds, peak memory (CUDA, over all of them), optimizer state."""
    import train_step
    from trackgo_model.train.config import load_train_config
    from trackgo_model.train.distributed import make_accelerator, prepare_model
    from trackgo_model.train.memory import make_optimizer, optimizer_state_bytes

    cfg = load_train_config("svd-xt-gated" if full else "tiny-cpu", [
        f"data.num_frames={frames}", f"data.width={width}", f"data.height={height}", f"mixed_precision={precision}",
        "model.gradient_checkpointing=true", *overrides])
    acc, _ = make_accelerator(cfg)
    device = acc.device
    comp = train_step.build_components(full, cfg, device)
    params = prepare_model(comp, cfg, device)
    opt = make_optimizer(params, cfg)
    model, opt = acc.prepare(comp.model, opt)
    batch = train_step.synthetic_batch(frames, height, width)[0]
    gen = torch.Generator().manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        _, parts, _, _ = train_step.one_step(acc, model, comp, params, opt, batch, cfg, gen)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(parts.loss.detach()))
    out = {"step_s": round(statistics.median(times), 4), "loss": round(losses[-1], 5),
           "trainable_params": sum(p.numel() for p in params),
           "optimizer_state_gib": round(optimizer_state_bytes(getattr(opt, "optimizer", opt)) / 2**30, 4)}
    if cuda:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    acc.free_memory()
    return out
