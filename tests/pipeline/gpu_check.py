"""GPU check of the inference pipeline (a script, not collected by pytest).

    python tests/pipeline/gpu_check.py [--steps 4] [--frames 14] [--height 576 --width 1024]

Builds a random-weight pipeline with the full Stable Video Diffusion img2vid-xt shapes (UNet
``svd-xt`` preset + TrackGo encoder/adapters, SVD's VAE widths, a ViT-H/14 CLIP vision tower) in
bf16 on the GPU — no weights needed, timings only — and measures in one run:

* seconds per denoising step with trajectories vs without (adapters bypassed = plain SVD): ratio;
* peak GPU memory for a whole call with ``decode_chunk_size`` = frames vs 2, and with
  ``enable_model_cpu_offload``.

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

SVD_VAE = {"down_block_types": ["DownEncoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
           "layers_per_block": 2, "latent_channels": 4, "sample_size": 768, "scaling_factor": 0.18215,
           "force_upcast": True}
VIT_H = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
         "patch_size": 14, "image_size": 224, "projection_dim": 1024, "hidden_act": "gelu"}


def build_full(dtype: torch.dtype):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from trackgo_model.model import TrackGoUNet, build_unet
    from trackgo_model.pipeline import TrackGoPipeline
    from trackgo_model.tiny import CLIP_PROCESSOR, SVD_SCHEDULER, randomise_zero_params

    torch.manual_seed(0)
    unet = build_unet("svd-xt", device="cuda", dtype=dtype)
    model = TrackGoUNet.from_unet(unet).eval()
    randomise_zero_params(model, 0)          # make the adapter term non-trivial (timing realism)
    with torch.device("cuda"):
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE).to(dtype).eval()
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)).to(dtype).eval()
    pipe = TrackGoPipeline(model, vae, clip, CLIPImageProcessor(**CLIP_PROCESSOR),
                           EulerDiscreteScheduler(**SVD_SCHEDULER))
    return pipe.to("cuda")   # also moves buffers built outside the device context


def timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--width", type=int, default=1024)
    args = ap.parse_args()
    from trackgo_data.render import render_trajectories

    L, H, W = args.frames, args.height, args.width
    res = {"device": torch.cuda.get_device_name(), "frames": L, "height": H, "width": W, "steps": args.steps}
    pipe = build_full(torch.bfloat16)
    res["added_params"] = pipe.unet.added_parameters()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    pts = rng.uniform([100, 100], [W / 2, H - 100], (64, 2)).astype(np.float32)
    tracks = np.stack([pts + [20.0 * t, 0.0] for t in range(L)])
    P = render_trajectories(tracks, np.ones((L, 64), bool), np.zeros(64, np.int64), H, W)
    kw = dict(num_frames=L, seed=0, output_type="latent")
    pipe(img, P, num_inference_steps=1, **kw)                       # warm-up
    pipe(img, None, num_inference_steps=1, **kw)
    per_step = {}
    for name, traj in (("trackgo", P), ("svd", None)):
        _, t1, _ = timed(lambda: pipe(img, traj, num_inference_steps=1, **kw))
        lat, tn, _ = timed(lambda: pipe(img, traj, num_inference_steps=args.steps + 1, **kw))
        per_step[name] = (tn - t1) / args.steps
        res[f"finite_{name}"] = bool(torch.isfinite(lat).all())
    res["s_per_step_trackgo"] = round(per_step["trackgo"], 4)
    res["s_per_step_svd"] = round(per_step["svd"], 4)
    res["step_ratio_trackgo_over_svd"] = round(per_step["trackgo"] / per_step["svd"], 4)
    for chunk in (L, 2):
        frames, sec, peak = timed(lambda: pipe(img, P, num_inference_steps=args.steps, seed=0,
                                               decode_chunk_size=chunk))
        res[f"peak_gib_decode_chunk_{chunk}"] = round(peak, 2)
        res[f"seconds_call_decode_chunk_{chunk}"] = round(sec, 2)
        assert frames.shape == (L, H, W, 3)
    pipe.enable_model_cpu_offload("cuda")
    torch.cuda.empty_cache()
    _, sec, peak = timed(lambda: pipe(img, P, num_inference_steps=args.steps, seed=0, decode_chunk_size=2))
    res["peak_gib_cpu_offload_chunk_2"] = round(peak, 2)
    res["seconds_call_cpu_offload_chunk_2"] = round(sec, 2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
