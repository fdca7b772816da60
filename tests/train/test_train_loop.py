"""The training loop on the tiny model: it learns, touches only what it trains, resumes bitwise,
skips non-finite steps, and exports weights the pipeline loads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.train.conftest import tiny_config


def _snapshot(*modules) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _fixed_eval(comp, batches, cfg, seeds=(11, 12, 13, 14)) -> tuple[float, float]:
    """Loss on fixed batches and fixed draws (no dropout): a deterministic yardstick."""
    from dataclasses import replace

    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    obj = replace(cfg.objective, drop_clip_prob=0.0, drop_image_prob=0.0)
    total = []
    with torch.no_grad():
        for batch in batches:
            inputs = batch_to_inputs(batch, torch.device("cpu"), cfg.data.fps)
            for s in seeds:
                parts = compute_loss(comp.model, comp.model, comp.vae, comp.image_encoder, comp.feature_extractor,
                                     inputs, obj, generator=torch.Generator().manual_seed(s),
                                     motion_bucket_id=cfg.data.motion_bucket_id)
                total.append((parts.mse.item(), parts.attn.item()))
    mse, attn = np.mean(total, axis=0)
    return float(mse), float(attn)


def test_overfit_changes_only_trainable_and_exports(tiny_shards, tiny_model_dir, tmp_path):
    from trackgo_data.video import decode_mp4
    from trackgo_model.pipeline import TrackGoPipeline
    from trackgo_model.train import train
    from trackgo_model.train.data import load_components, shard_urls, validation_batches

    run = tmp_path / "run"
    cfg = tiny_config(tiny_shards, tiny_model_dir, run, max_steps=24, checkpoint_every=24, global_batch_size=1,
                      **{"optim.lr": 1e-2, "data.shuffle_buffer": 0, "validation.every": 24,
                         "validation.num_inference_steps": 2, "validation.num_samples": 1})
    comp = load_components(cfg, run)
    train_urls, _ = shard_urls(cfg)
    fixed = validation_batches(cfg, train_urls)[:3]  # the three training samples themselves
    comp.model.eval()
    before = _fixed_eval(comp, fixed, cfg)
    snap = _snapshot(comp.model, comp.vae, comp.image_encoder)
    trainable = set(comp.model.named_group_parameters())  # the config's groups (all three)
    result = train(cfg, components=comp)
    comp.model.eval()
    after = _fixed_eval(comp, fixed, cfg)
    assert result["step"] == 24 and result["nonfinite_skipped"] == 0
    # Fixed samples, fixed draws: L_attn collapses, the EDM MSE goes down (the tiny model's
    # trainable part is small, so the MSE moves by a few per cent in 24 steps), the total clearly.
    lam = cfg.objective.attn_loss_weight
    assert after[1] < 0.3 * before[1], (before, after)
    assert after[0] < before[0], (before, after)
    assert after[0] + lam * after[1] < 0.95 * (before[0] + lam * before[1]), (before, after)

    # only the configured groups moved; the frozen UNet (incl. temporal q/k/v here), VAE, CLIP bitwise equal
    named = dict(comp.model.named_group_parameters(("encoder", "adapter", "temporal_qkv")))
    ptr_to_key = {p.data_ptr(): k for k, p in named.items()}
    changed = set()
    for name, p in comp.model.named_parameters():
        old = snap[0][name]
        if not torch.equal(old, p.detach()):
            changed.add(ptr_to_key.get(p.data_ptr(), name))
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    for group in ("encoder.", "adapters.", "unet."):
        assert any(k.startswith(group) for k in changed), group
    for old, module in zip(snap[1:], (comp.vae, comp.image_encoder)):
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in old.items())

    # TensorBoard + metrics + validation video (real | generated | P side by side)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 25))
    assert {"loss", "loss_mse", "loss_attn", "lr", "grad_norm", "samples_per_s"} <= set(lines[0])
    # per temporal layer: the mask's hit fraction and, in gated mode, the mean gate
    layers = len(comp.model.adapters)
    assert {f"mask_hits/{i}" for i in range(layers)} <= set(lines[-1])
    assert all(0.0 <= lines[-1][f"mask_hits/{i}"] <= 1.0 for i in range(layers))
    if comp.model.cfg.mode == "gated":
        gates = [float(a.gate.detach().mean()) for a in comp.model.adapters.values()]
        assert [lines[-1][f"gate/{i}"] for i in range(layers)] == pytest.approx(gates)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    vids = sorted((run / "val" / "step-000024").glob("*.mp4"))
    assert len(vids) == 2
    sbs = decode_mp4(next(v for v in vids if v.name.endswith("-sbs.mp4")))
    assert sbs.shape[1:] == (32, 96, 3)

    # the export loads into the pipeline and equals the trained weights
    ckpt = run / "checkpoints" / "checkpoint-000024"
    pipe = TrackGoPipeline.from_pretrained(tiny_model_dir, ckpt / "trackgo")
    exported = pipe.unet.named_group_parameters()
    assert set(exported) == trainable
    ema = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(ckpt / "ema.safetensors"))
    source = ema if cfg.ema.export_ema else comp.model.named_group_parameters()
    for k, p in exported.items():
        assert torch.equal(p.detach(), source[k].detach()), k


def _final(run):
    from trackgo_model.train import checkpoint as ck

    last = ck.latest_checkpoint(run)
    return (ck.load_tensors(last, "trainable.safetensors"), ck.load_tensors(last, "ema.safetensors"),
            ck.load_torch(last, "optimizer.pt"), ck.load_state(last), last.name)


def _same_tensors(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bitwise_identical(tiny_shards, tiny_model_dir, tmp_path):
    from trackgo_model.train import train

    extra = dict(max_steps=4, checkpoint_every=2, global_batch_size=2)  # 2 micro-steps per step
    straight = tmp_path / "straight"
    r = train(tiny_config(tiny_shards, tiny_model_dir, straight, **extra))
    assert r["step"] == 4 and r["samples_consumed"] == 8

    # stop at a checkpoint boundary (k = 2), then resume for k more
    split = tmp_path / "split"
    cfg = tiny_config(tiny_shards, tiny_model_dir, split, **extra)
    assert train(cfg, stop_at=2)["step"] == 2
    with pytest.raises(Exception, match="--resume"):
        train(cfg)  # a rerun without --resume never silently overwrites
    assert train(cfg, resume=True)["step"] == 4

    # stop mid-segment (exit checkpoint at step 3), resume
    mid = tmp_path / "mid"
    cfg = tiny_config(tiny_shards, tiny_model_dir, mid, **extra)
    train(cfg, stop_at=3)
    train(cfg, resume=True)
    # the metrics log reads like one run: each step once, same losses as the straight run
    log_of = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log_of(mid)] == [1, 2, 3, 4]
    assert [x["loss"] for x in log_of(mid)] == [x["loss"] for x in log_of(straight)]

    ref = _final(straight)
    for run in (split, mid):
        got = _final(run)
        assert got[4] == "checkpoint-000004"
        assert _same_tensors(ref[0], got[0]), run.name
        assert _same_tensors(ref[1], got[1]), run.name
        sa, sb = ref[2]["state"], got[2]["state"]
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
        assert got[3]["samples_consumed"] == 8 and got[3]["step"] == 4
    # and the training actually moved the weights
    init = dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(tiny_model_dir / "trackgo.safetensors")))
    assert any(not torch.equal(init[k], v) for k, v in ref[0].items() if k in init)


def test_nonfinite_steps_are_skipped_then_stop(tiny_shards, tiny_model_dir, tmp_path, monkeypatch):
    import trackgo_model.train.loss as tl
    from trackgo_model.train import NonFiniteLossError, train
    from trackgo_model.train.data import load_components

    real = tl.compute_loss
    calls = {"n": 0, "nan_at": set()}

    def flaky(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in calls["nan_at"]:
            parts.loss = parts.loss * float("nan")
        return parts

    monkeypatch.setattr(tl, "compute_loss", flaky)
    # step 2 of 3 is NaN: skipped (weights unchanged across it), counted, training goes on
    calls["nan_at"] = {2}
    cfg = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "a", max_steps=3, checkpoint_every=10,
                      global_batch_size=1, max_nonfinite_steps=2, **{"model.trainable": "[encoder, adapter]"})
    comp = load_components(cfg, tmp_path / "a")
    qkv = {k: v.detach().clone() for k, v in comp.model.named_group_parameters(("temporal_qkv",)).items()}
    seen = []
    cb = lambda step, m: seen.append((step, {k: v.detach().clone() for k, v in
                                             comp.model.named_group_parameters().items()}))
    r = train(cfg, components=comp, callback=cb)
    assert r["step"] == 3 and r["nonfinite_skipped"] == 1 and r["nonfinite_streak"] == 0
    assert _same_tensors(seen[0][1], seen[1][1])  # step 2 changed nothing
    assert not _same_tensors(seen[1][1], seen[2][1])  # step 3 trained again
    assert all(k.startswith(("encoder.", "adapters.")) for k in seen[0][1])
    assert _same_tensors(qkv, comp.model.named_group_parameters(("temporal_qkv",)))  # not configured
    # every step NaN: stops after max_nonfinite_steps in a row with a clear error
    calls.update(n=0, nan_at=set(range(1, 100)))
    cfg = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "b", max_steps=10, checkpoint_every=10,
                      global_batch_size=1, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        train(cfg)
    assert calls["n"] == 2


def test_corrupt_sample_is_skipped_and_counted(tiny_shards, tiny_model_dir, tmp_path):
    import shutil

    import webdataset as wds

    from trackgo_data.shards import ShardSpec, write_shards
    from trackgo_model.train import train

    good = [dict(s) for s in wds.WebDataset(str(tiny_shards / "clips-000000.tar"), shardshuffle=False)]
    for s in good:
        s.pop("__url__", None), s.pop("__local_path__", None)
    broken = dict(good[1], __key__="broken-000000")
    broken["video.mp4"] = b"this is not an mp4"
    shards = tmp_path / "shards"
    write_shards([good[0], broken, good[2]], shards, "a-mixed", ShardSpec(maxcount=10))
    shutil.copy(tiny_shards / "clips-000001.tar", shards / "z-val-000000.tar")  # held out
    cfg = tiny_config(shards, tiny_model_dir, tmp_path / "run", max_steps=3, checkpoint_every=10,
                      global_batch_size=1, **{"data.shuffle_buffer": 0})
    r = train(cfg)
    assert r["step"] == 3 and r["corrupt_samples"] >= 1
