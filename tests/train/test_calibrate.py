"""λ from gradient norms: the calibrated weight gives the attention loss's gradient on the temporal
W_q/W_k the requested share of the diffusion loss's, checked with plain backward passes."""
from __future__ import annotations

import copy
import statistics

import pytest
import torch

from .conftest import tiny_config


def grad_norm(params) -> float:
    return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))


def test_calibrated_lambda_balances_the_gradients(tiny_shards, tiny_model_dir, tmp_path):
    from trackgo_model.train.calibrate import calibrate_attention_weight, qk_parameters
    from trackgo_model.train.data import data_stream, load_components, shard_urls
    from trackgo_model.train.loss import batch_to_inputs, compute_loss

    cfg = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "run")
    comp = load_components(cfg, tmp_path / "run")
    with torch.no_grad():  # as at the end of training: trajectories act on the attention
        for head in comp.model.encoder.heads.values():
            head.weight.normal_(0, 0.5)
    result = calibrate_attention_weight(cfg, batches=3, ratio=0.5, components=comp)
    assert result["batches"] == 3 and len(result["mse_grad_norms"]) == 3 and result["weight"] > 0

    # the same batches and draws, plain backward of λ·L_attn and of L_mse
    core = comp.model
    params = qk_parameters(core)
    assert params and all(".to_v." not in n for n, p in core.named_group_parameters(("temporal_qkv",)).items()
                          if any(p is q for q in params))
    stream = data_stream(cfg, shard_urls(cfg)[0], rank=0, world=1, segment_start=0, skip_batches=0)
    generator = torch.Generator().manual_seed(cfg.seed)
    plain = copy.deepcopy(cfg.objective)
    plain.attn_loss_weight = 0.0
    shares = []
    for _ in range(3):
        inputs = batch_to_inputs(next(stream), torch.device("cpu"), cfg.data.fps)
        state = generator.get_state()
        core.zero_grad(set_to_none=True)
        compute_loss(core, core, comp.vae, comp.image_encoder, comp.feature_extractor, inputs, cfg.objective,
                     generator=generator, motion_bucket_id=cfg.data.motion_bucket_id)
        (result["weight"] * core.attention_loss(inputs.motion_masks)).backward()
        attn = grad_norm(params)
        core.zero_grad(set_to_none=True)
        generator.set_state(state)
        compute_loss(core, core, comp.vae, comp.image_encoder, comp.feature_extractor, inputs, plain,
                     generator=generator, motion_bucket_id=cfg.data.motion_bucket_id).loss.backward()
        shares.append(attn / grad_norm(params))
    assert statistics.median(shares) == pytest.approx(0.5, rel=1e-3)


def test_bad_arguments(tiny_shards, tiny_model_dir, tmp_path):
    from trackgo_model.train.calibrate import calibrate_attention_weight

    cfg = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "run")
    with pytest.raises(ValueError, match="ratio > 0"):
        calibrate_attention_weight(cfg, batches=1, ratio=0.0)


def test_command_prints_the_weight(tiny_shards, tiny_model_dir, tmp_path, capsys):
    import json

    from trackgo_model.cli import main

    from .conftest import tiny_overrides

    code = main(["calibrate-attention", "--config", "tiny-cpu", "--batches", "2", "--ratio", "2.0",
                 *tiny_overrides(tiny_shards, tiny_model_dir, tmp_path / "run")])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["ratio"] == 2.0 and len(out["attn_grad_norms"]) == 2
    ratios = sorted(m / a for m, a in zip(out["mse_grad_norms"], out["attn_grad_norms"]))
    assert out["weight"] == pytest.approx(2.0 * (ratios[0] + ratios[1]) / 2)
    assert main(["calibrate-attention", "--config", "tiny-cpu", "optim.nope=1"]) == 2
