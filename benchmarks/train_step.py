"""One full TrackGo training step (SVD-xt UNet + adapters, random weights) and the loader's pace.

A step is exactly the training loop's: VAE + CLIP conditioning, UNet forward/backward with the
attention loss, global-norm clipping and the optimizer step through accelerate —
``--precision fp16`` with the loss scaler (the paper's setting) and/or ``bf16``, each on its own
freshly built model. On a CUDA machine the default preset is ``svd-xt`` at 1024×576 with 25 and
14 frames, gradient checkpointing and the ``svd-xt-paper`` config (paper attention), batch 1 per
GPU: step time and peak memory. Then the webdataset loader's samples/s at the same size (shards
written here from synthetic clips) against what one step consumes. ``--preset tiny`` (the default
without CUDA) runs the tiny model at 64×64 so the script can be checked anywhere. Prints ONE JSON
line; ``--out FILE`` also writes it to FILE.

    python benchmarks/train_step.py [--precision fp16 bf16] [--frames 25 14] [--steps 3] \
        [--preset svd-xt|tiny] [--mode paper|gated] [--no-loader] [--workers 0 4 8] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
log = logging.getLogger("train_step")

# Stable Video Diffusion img2vid-xt: VAE (AutoencoderKLTemporalDecoder) and CLIP ViT-H/14 image encoder.
SVD_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
               block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
               sample_size=768, scaling_factor=0.18215, force_upcast=True)
SVD_CLIP = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                image_size=224, patch_size=14, num_channels=3, projection_dim=1024, hidden_act="gelu")


def build_components(full: bool, cfg, device):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from trackgo_model.model import TrackGoUNet, build_unet
    from trackgo_model.tiny import CLIP_PROCESSOR, SVD_SCHEDULER, TINY_CLIP, TINY_VAE
    from trackgo_model.train.config import trackgo_config_for
    from trackgo_model.train.data import Components

    torch.manual_seed(0)
    with torch.device(device):
        unet = build_unet("svd-xt" if full else "tiny", device=device)
        model = TrackGoUNet.from_unet(unet, trackgo_config_for(cfg))
        vae = AutoencoderKLTemporalDecoder(**(SVD_VAE if full else TINY_VAE))
        clip_kw = SVD_CLIP if full else dict(TINY_CLIP, projection_dim=unet.config.cross_attention_dim)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_kw))
    vae.requires_grad_(False).eval()
    image_encoder.requires_grad_(False).eval()
    return Components(model, vae, image_encoder, CLIPImageProcessor(**CLIP_PROCESSOR),
                      EulerDiscreteScheduler(**SVD_SCHEDULER), Path("."))


def synthetic_batch(frames: int, height: int, width: int, seed: int = 0):
    """A loader-shaped batch (uint8) of one sample: a moving smooth texture + a moving square."""
    from trackgo_data.loader import Batch

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    vid = np.stack([np.stack([127 + 100 * np.sin((xx + 6 * t) / 37.0 + c) * np.cos((yy - 3 * t) / 29.0)
                              for c in range(3)], -1) for t in range(frames)])
    vid = np.clip(vid + rng.normal(0, 6, vid.shape), 0, 255).astype(np.uint8)
    traj = np.zeros_like(vid)
    masks = np.zeros((frames, height // 8, width // 8), np.uint8)
    for t in range(frames):
        y, x = height // 4 + 2 * t, width // 4 + 4 * t
        traj[t, y:y + 4, x:x + 4] = (255, 0, 0)
        masks[t, y // 8:(y + height // 4) // 8, x // 8:(x + width // 4) // 8] = 1
    to = lambda a, perm: torch.from_numpy(a).permute(*perm).unsqueeze(0).contiguous()
    return Batch(key=["bench-000000"], image=to(vid[0], (2, 0, 1)), video=to(vid, (0, 3, 1, 2)),
                 trajectory=to(traj, (0, 3, 1, 2)), masks=torch.from_numpy(masks).unsqueeze(0),
                 tracks=[], visibility=[], components=[], meta=[{"fps": 7.0}]), vid, traj, masks


def one_step(accelerator, model, comp, params, opt, batch, cfg, gen, x0=None):
    """One optimizer step as the training loop takes it (one micro-batch, no accumulation):
    loss, backward, global-norm clipping, the step (skipped on inf/NaN, through the fp16 scaler).
    Returns (inputs, loss parts, grad norm, step outcome)."""
    from trackgo_model.train.distributed import clip_gradients, optimizer_step
    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    inputs = batch_to_inputs(batch, accelerator.device, cfg.data.fps)
    with accelerator.autocast():
        parts = compute_loss(model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor,
                             inputs, cfg.objective, generator=gen, motion_bucket_id=127.0, x0=x0)
    accelerator.backward(parts.loss)
    gn = clip_gradients(accelerator, model, params, cfg.optim.max_grad_norm)
    outcome = optimizer_step(accelerator, opt, loss_finite=bool(torch.isfinite(parts.loss.detach())), grad_norm=gn)
    opt.zero_grad(set_to_none=True)
    return inputs, parts, gn, outcome


def time_steps(comp, cfg, frames: int, height: int, width: int, steps: int) -> dict:
    """``steps`` timed training steps (after one warm-up) as the loop runs them, then the same with
    cached latents. fp16 goes through the loss scaler: skipped (overflowing) steps are counted."""
    from trackgo_model.train.distributed import make_accelerator, prepare_model

    accelerator, _ = make_accelerator(cfg)
    device = accelerator.device
    params = prepare_model(comp, cfg, device)
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    model, opt = accelerator.prepare(comp.model, opt)
    batch = synthetic_batch(frames, height, width)[0]
    gen = torch.Generator().manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out = {"mixed_precision": cfg.mixed_precision, "trainable_params": sum(p.numel() for p in params),
           "loss_scaler": accelerator.scaler is not None}
    cached = None
    skipped = 0
    for label in ("", "_cached_latents"):  # second pass: x0 given, as with data.latent_cache
        times = []
        for i in range(steps + 1):  # the first step warms up (kernels, allocator)
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            inputs, parts, gn, step = one_step(accelerator, model, comp, params, opt, batch, cfg, gen, x0=cached)
            skipped += not step.applied
            if cuda:
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t0)
            log.info("%s frames %d%s step %d: %.3fs loss %.4f grad norm %.3f%s", cfg.mixed_precision, frames, label,
                     i, time.perf_counter() - t0, parts.loss.item(), gn,
                     "" if step.loss_scale is None else f" loss scale {step.loss_scale:g}")
        out[f"step_s{label}"] = float(np.median(times))
        out[f"step_s{label}_all"] = [round(t, 4) for t in times]
        if cuda and not label:
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if cached is None:
            from trackgo_model.conditioning import encode_video_latents

            with torch.no_grad():
                vdt = next(comp.vae.parameters()).dtype
                cached = encode_video_latents(comp.vae, inputs.video.to(vdt)).float()
    out["cache_speedup"] = out["step_s"] / out["step_s_cached_latents"]
    out["skipped_steps"] = skipped
    if accelerator.scaler is not None:
        out["final_loss_scale"] = float(accelerator.scaler.get_scale())
    accelerator.free_memory()  # accelerate's references to the model and optimizer
    del opt, model
    return out


def loader_rate(frames: int, height: int, width: int, n: int, workers: list[int], tmp: Path) -> dict:
    from trackgo_data.loader import make_dataset
    from trackgo_data.sample import Sample, encode_sample
    from trackgo_data.shards import ShardSpec, write_shards

    _, vid, traj, masks = synthetic_batch(frames, height, width)
    N = 16
    tracks = np.tile(np.array([[width / 4, height / 4]], np.float32), (frames, N, 1))
    s = Sample(key="bench-000000", image=vid[0].copy(), video=vid, trajectory=traj, tracks=tracks,
               visibility=np.ones((frames, N), bool), components=np.zeros(N, np.int64), masks=masks,
               meta={"fps": 7.0})
    members = encode_sample(s)  # encode once; every sample decodes the same bytes
    samples = [dict(members, __key__=f"bench-{i:06d}") for i in range(n)]
    shard_dir = tmp / "shards"
    write_shards(samples, shard_dir, "bench", ShardSpec(maxcount=max(1, n // 4)))
    res = {}
    for w in workers:
        ds = make_dataset(str(shard_dir), batch_size=1, num_frames=frames, size=(width, height),
                          shuffle=0, resampled=True, seed=0, split_by_node=False)
        it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=w) if w else ds)
        next(it)  # first batch: worker start-up
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        res[str(w)] = n / (time.perf_counter() - t0)
        del it
    return res


def loop_check(tmp: Path, mixed_precision: str) -> dict:
    """The real ``train()`` loop on the tiny model (accelerate, checkpoint, resume, validation video)."""
    from trackgo_data.sample import Sample, encode_sample
    from trackgo_data.shards import ShardSpec, write_shards
    from trackgo_model.tiny import init_tiny
    from trackgo_model.train import train
    from trackgo_model.train.config import load_train_config

    samples = []
    for i in range(4):
        _, vid, traj, masks = synthetic_batch(4, 64, 64, seed=i)
        tracks = np.tile(np.array([[16.0, 16.0]], np.float32), (4, 4, 1))
        samples.append(encode_sample(Sample(key=f"loop-{i:06d}", image=vid[0].copy(), video=vid, trajectory=traj,
                                            tracks=tracks, visibility=np.ones((4, 4), bool),
                                            components=np.zeros(4, np.int64), masks=masks, meta={"fps": 7.0})))
    write_shards(samples, tmp / "shards", "loop", ShardSpec(maxcount=3))
    model_dir = init_tiny(tmp / "model", seed=0)
    cfg = load_train_config("tiny-cpu", [
        f"run_dir={tmp / 'run'}", f"model.tiny_dir={model_dir}", f"data.shards={tmp / 'shards'}",
        "data.width=64", "data.height=64", "data.num_frames=4", f"mixed_precision={mixed_precision}",
        "model.gradient_checkpointing=true", "max_steps=4", "checkpoint_every=2", "validation.every=4",
        "validation.num_inference_steps=2", "progress=none"])
    first = train(cfg, stop_at=2)
    final = train(cfg, resume=True)
    return {"mixed_precision": mixed_precision, "steps": [first["step"], final["step"]], "loss": final["loss"],
            "nonfinite_skipped": final["nonfinite_skipped"],
            "val_videos": len(list((tmp / "run" / "val").rglob("*.mp4")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", nargs="+", choices=["fp16", "bf16", "no"], default=["fp16", "bf16"],
                    help="one run per precision: fp16 uses the loss scaler")
    ap.add_argument("--preset", choices=["svd-xt", "tiny"], default=None,
                    help="svd-xt (default with CUDA) or tiny (default without)")
    ap.add_argument("--mode", choices=["paper", "gated"], default="paper", help="TrackGo attention variant")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--frames", type=int, nargs="+", default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--loader-samples", type=int, default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--no-loader", action="store_true", help="skip the loader measurement")
    ap.add_argument("--loop-check", action="store_true",
                    help="also run the real train() loop on the tiny model (bf16 on CUDA) with a resume")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from trackgo_model.train.config import load_train_config

    cuda = torch.cuda.is_available()
    full = (args.preset or ("svd-xt" if cuda else "tiny")) == "svd-xt"
    if not cuda:
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    if full:
        name, (W, H), frames_list = "svd-xt-paper", (1024, 576), args.frames or [25, 14]
        workers, n_load = args.workers or [0, 4, 8], args.loader_samples or 24
    else:
        name, (W, H), frames_list = "tiny-cpu", (64, 64), args.frames or [6, 4]
        workers, n_load = args.workers or [0, 2], args.loader_samples or 16
    W, H = args.width or W, args.height or H
    device = torch.device("cuda" if cuda else "cpu")
    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "config": name, "mode": args.mode,
              "preset": "svd-xt" if full else "tiny", "width": W, "height": H, "torch": torch.__version__}
    for precision in args.precision:
        for frames in frames_list:
            cfg = load_train_config(name, [f"data.num_frames={frames}", f"data.width={W}", f"data.height={H}",
                                           f"mixed_precision={precision}", f"model.trackgo.mode={args.mode}"])
            key = f"{precision}_frames{frames}"
            try:
                comp = build_components(full, cfg, device)
                result[key] = time_steps(comp, cfg, frames, H, W, args.steps)
            except torch.OutOfMemoryError as exc:  # report, keep going with the next size
                result[key] = {"error": f"out of memory: {exc}"[:300]}
            comp = None
            if cuda:
                torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        for frames in ([] if args.no_loader else frames_list):
            rates = loader_rate(frames, H, W, n_load, workers, Path(tmp) / f"f{frames}")
            step = result.get(f"{args.precision[0]}_frames{frames}", {})
            need = 1.0 / step["step_s"] if "step_s" in step else None  # samples/s one GPU consumes
            result[f"loader_frames{frames}"] = {
                "samples_per_s_by_workers": {k: round(v, 3) for k, v in rates.items()},
                "consumed_samples_per_s_per_gpu": round(need, 4) if need else None,
                "ratio_best_loader_to_consumption": round(max(rates.values()) / need, 2) if need else None,
            }
        if args.loop_check:
            try:
                result["loop_check"] = loop_check(Path(tmp) / "loop", "bf16" if cuda else "no")
            except Exception as exc:  # report it in the JSON line rather than lose the timings
                log.exception("loop check failed")
                result["loop_check"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    line = json.dumps(result, sort_keys=True)
    if args.out is not None:
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
