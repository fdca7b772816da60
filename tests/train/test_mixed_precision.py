"""fp16 as the paper trained: autocast + the loss scaler; an overflowing step is skipped, the scale
halves, training goes on, and the scaler state survives a resume."""
from __future__ import annotations

import json

import torch

from tests.train.conftest import tiny_config


class _InfGradient(torch.autograd.Function):
    """Identity forward, inf backward: a finite loss whose gradients overflow (as fp16 can)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _patch_loss(monkeypatch, overflow_at: set[int], seen_autocast: list):
    import trackgo_model.train.loss as tl

    real = tl.compute_loss
    calls = {"n": 0}

    def patched(*args, **kwargs):
        seen_autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in overflow_at:
            parts.loss = _InfGradient.apply(parts.loss)
        return parts

    monkeypatch.setattr(tl, "compute_loss", patched)
    return calls


def _final(run):
    from trackgo_model.train import checkpoint as ck

    last = ck.latest_checkpoint(run)
    return (last.name, ck.load_tensors(last, "trainable.safetensors"), ck.load_tensors(last, "ema.safetensors"),
            ck.load_torch(last, "optimizer.pt"), ck.load_torch(last, "scaler.pt"))


def test_fp16_overflow_skips_the_step_lowers_the_scale_and_training_goes_on(
        tiny_shards, tiny_model_dir, tmp_path, monkeypatch):
    from trackgo_model.train import train
    from trackgo_model.train.data import load_components

    autocast: list = []
    calls = _patch_loss(monkeypatch, {2}, autocast)
    # max_nonfinite_steps=1: an overflow with a finite loss must not count towards stopping
    extra = dict(max_steps=4, checkpoint_every=2, global_batch_size=1, mixed_precision="fp16",
                 max_nonfinite_steps=1)
    cfg = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "a", **extra)
    comp = load_components(cfg, tmp_path / "a")
    seen = []
    def cb(step, m):
        seen.append((m, {k: v.detach().clone() for k, v in comp.model.named_group_parameters().items()}))

    r = train(cfg, components=comp, callback=cb)
    assert r["step"] == 4 and r["nonfinite_skipped"] == 1 and r["nonfinite_streak"] == 0
    assert autocast and all(a == (True, torch.float16) for a in autocast)  # fp16 autocast on the CPU
    scales = [m["loss_scale"] for m, _ in seen]
    assert scales[1] == scales[0] / 2 and scales[2:] == [scales[1]] * 2  # halved once, no growth yet
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)
    assert same(seen[0][1], seen[1][1])  # step 2 changed nothing
    assert not same(seen[1][1], seen[2][1]) and not same(seen[2][1], seen[3][1])  # 3 and 4 trained
    ck = tmp_path / "a" / "checkpoints" / "checkpoint-000004"
    assert torch.load(ck / "scaler.pt")["scale"] == scales[3]

    # stop at step 2 (the skipped step is in the first part), resume: identical to the straight run,
    # scaler state included
    calls["n"] = 0
    cfg_b = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "b", **extra)
    assert train(cfg_b, stop_at=2)["nonfinite_skipped"] == 1
    calls["n"] = 100  # no overflow after the resume
    assert train(cfg_b, resume=True)["step"] == 4
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    assert a[0] == b[0] == "checkpoint-000004"
    for x, y in zip(a[1:3], b[1:3]):
        assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)
    sa, sb = a[3]["state"], b[3]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert a[4] == b[4]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss_scale"] for x in lines] == scales
