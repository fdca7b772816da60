"""TrackGoUNet: starts exactly from SVD, gradients, checkpointing, save/load, parameter counts."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from trackgo_model.configs import TrackGoConfig
from trackgo_model.model import (
    TrackGoUNet,
    build_unet,
    count_params,
    load_trackgo,
    read_trackgo_config,
)

B, F, H, W = 2, 4, 4, 6  # latent grid 4×6 (mid block 2×3) → trajectories 32×48


@pytest.fixture(scope="module")
def bare_unet():
    torch.manual_seed(0)
    return build_unet("tiny", device="cpu").eval()


def inputs(seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, F, 8, H, W, generator=g)
    t = torch.rand(batch, generator=g)
    ehs = torch.randn(batch, 1, 32, generator=g)
    ati = torch.randn(batch, 3, generator=g)
    p = torch.rand(batch, F, 3, 8 * H, 8 * W, generator=g) * 2 - 1
    return sample, t, ehs, ati, p


def wrapped(bare, cfg=None):
    torch.manual_seed(123)  # the encoder's random init
    return TrackGoUNet.from_unet(copy.deepcopy(bare), cfg)


def activate(model, seed=3):
    """Non-zero encoder heads and gates, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.encoder.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 3.0)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g))
        for a in model.adapters.values():
            a.gate.copy_(torch.rand(a.gate.shape, generator=g) * 0.5 + 0.1)


@torch.no_grad()
def test_fresh_default_mode_reproduces_bare_unet_paper_mode_does_not(bare_unet):
    sample, t, ehs, ati, p = inputs()
    ref = bare_unet(sample, t, ehs, ati).sample
    model = wrapped(bare_unet)
    out = model(sample, t, ehs, ati, trajectories=p)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(sample, t, ehs, ati, trajectories=None), ref, atol=1e-6, rtol=1e-6)
    assert torch.equal(model(sample, t, ehs, ati, trajectories=p, return_dict=False)[0], out)
    assert torch.equal(model(sample, t, ehs, ati, trajectories=p, return_dict=True).sample, out)
    model.set_inference(mode="paper")
    assert (model(sample, t, ehs, ati, trajectories=p) - ref).abs().max() > 1e-2
    model.set_inference(mode="gated", motion=0.2)
    assert (model(sample, t, ehs, ati, trajectories=p) - ref).abs().max() > 1e-3


@torch.no_grad()
def test_batch_entries_are_independent_and_encoded_input_is_reusable(bare_unet):
    model = wrapped(bare_unet)
    activate(model)
    sample, t, ehs, ati, p = inputs(1)
    both = model(sample, t, ehs, ati, trajectories=p)
    for i in range(B):
        one = model(sample[i:i + 1], t[i:i + 1], ehs[i:i + 1], ati[i:i + 1], trajectories=p[i:i + 1])
        torch.testing.assert_close(one[0], both[i], atol=1e-5, rtol=1e-5)
    enc = model.encode(p[:1]).repeat(2)
    dup = model(sample[:1].repeat(2, 1, 1, 1, 1), t[:1].repeat(2), ehs[:1].repeat(2, 1, 1), ati[:1].repeat(2, 1),
                trajectories=enc)
    torch.testing.assert_close(dup[1], both[0], atol=1e-5, rtol=1e-5)
    # the adapters really act once trained: trajectories change the output
    other = model(sample, t, ehs, ati, trajectories=-p)
    assert (other - both).abs().max() > 1e-4


def test_shape_errors_are_clear(bare_unet):
    model = wrapped(bare_unet)
    sample, t, ehs, ati, p = inputs()
    with pytest.raises(ValueError, match="duplicate for guidance"):
        model(sample, t, ehs, ati, trajectories=p[:1])
    with pytest.raises(ValueError, match="8× the latent size"):
        model(sample, t, ehs, ati, trajectories=p[..., :40])
    with pytest.raises(ValueError, match="motion masks"):
        model.attention_loss()


def test_gradients_reach_adapter_encoder_and_temporal_qkv_only(bare_unet):
    model = wrapped(bare_unet)
    activate(model)
    trainable = model.freeze_for_training()
    sample, t, ehs, ati, p = inputs(2)
    masks = torch.zeros(B, F, 8 * H, 8 * W, dtype=torch.bool)
    masks[:, :, 8:24, 16:40] = True
    out = model(sample, t, ehs, ati, trajectories=p, motion_masks=masks, collect_attention=True)
    maps = model.attention_maps()
    assert len(maps) == 4
    assert {m.grid for m in maps} == {(4, 6), (2, 3)}
    assert maps[0].diag.shape == (B, 24, 2, F)
    l_attn = model.attention_loss()
    assert l_attn.item() > 0
    (out.pow(2).mean() + model.cfg.attn_loss.weight * l_attn).backward()
    named = model.named_group_parameters()
    assert len(trainable) == len(named)
    for name, param in named.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert any(k.startswith("encoder.convs.0") for k in named)
    assert model.unet.conv_in.weight.grad is None
    assert all(p.grad is None for n, p in model.unet.named_parameters() if ".attn2." in n)


def test_fresh_model_learns_adapter_path_within_three_steps(bare_unet):
    model = wrapped(bare_unet)
    params = model.freeze_for_training()
    opt = torch.optim.Adam(params, lr=1e-3)  # scale-free steps, as AdamW in training
    sample, t, ehs, ati, p = inputs(4)
    start = {k: v.detach().clone() for k, v in model.named_group_parameters(("adapter", "encoder")).items()}
    for _ in range(3):
        opt.zero_grad()
        model(sample, t, ehs, ati, trajectories=p).pow(2).mean().backward()
        opt.step()
    moved = {k for k, v in model.named_group_parameters(("adapter", "encoder")).items() if not torch.equal(v, start[k])}
    assert any(".gate" in k for k in moved)
    assert any("to_q_prime" in k for k in moved) and any("to_k_prime" in k for k in moved)
    assert any(k.startswith("encoder.heads") for k in moved) and any(k.startswith("encoder.convs") for k in moved)


def test_gradient_checkpointing_gives_same_gradients(bare_unet):
    sample, t, ehs, ati, p = inputs(5)
    grads = []
    for ckpt in (False, True):
        model = wrapped(bare_unet)
        activate(model)
        model.freeze_for_training()
        model.train()
        if ckpt:
            model.enable_gradient_checkpointing()
            assert model.unet.down_blocks[0].gradient_checkpointing
        out = model(sample, t, ehs, ati, trajectories=p, motion_masks=torch.ones(B, F, H, W), collect_attention=True)
        (out.pow(2).mean() + model.attention_loss()).backward()
        grads.append({k: v.grad.clone() for k, v in model.named_group_parameters().items()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-5)


def test_save_load_round_trip_restores_outputs_exactly(bare_unet, tmp_path):
    cfg = TrackGoConfig(alpha=0.25, tau=-5.0)
    model = wrapped(bare_unet, cfg)
    activate(model)
    with torch.no_grad():
        for p in model.named_group_parameters(("temporal_qkv",)).values():
            p.add_(0.01)
    sample, t, ehs, ati, p = inputs(6)
    with torch.no_grad():
        want = model(sample, t, ehs, ati, trajectories=p)
    model.save_trackgo(tmp_path / "ck")
    first = (tmp_path / "ck" / "trackgo.safetensors").read_bytes()
    model.save_trackgo(tmp_path / "ck")  # rerun: identical bytes, no temp files left behind
    assert (tmp_path / "ck" / "trackgo.safetensors").read_bytes() == first
    assert sorted(x.name for x in (tmp_path / "ck").iterdir()) == ["trackgo.safetensors", "trackgo_config.json"]
    meta = read_trackgo_config(tmp_path / "ck")
    assert meta["num_adapters"] == 4 and meta["trackgo"]["alpha"] == 0.25
    loaded = load_trackgo(copy.deepcopy(bare_unet), tmp_path / "ck")
    assert loaded.cfg == cfg
    with torch.no_grad():
        got = loaded(sample, t, ehs, ati, trajectories=p)
    assert torch.equal(got, want)


def test_load_errors(bare_unet, tmp_path):
    with pytest.raises(FileNotFoundError, match="trackgo.safetensors"):
        load_trackgo(copy.deepcopy(bare_unet), tmp_path)
    model = wrapped(bare_unet)
    model.save_trackgo(tmp_path / "a")
    other = wrapped(bare_unet, TrackGoConfig(trainable=("encoder", "adapter")))
    other.save_trackgo(tmp_path / "b")
    # same config file, fewer tensors → strict key check fails
    (tmp_path / "b" / "trackgo_config.json").write_text((tmp_path / "a" / "trackgo_config.json").read_text())
    with pytest.raises(ValueError, match="missing"):
        load_trackgo(copy.deepcopy(bare_unet), tmp_path / "b")
    cfg = json.loads((tmp_path / "a" / "trackgo_config.json").read_text())
    cfg["format"] = "other"
    (tmp_path / "a" / "trackgo_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format"):
        load_trackgo(copy.deepcopy(bare_unet), tmp_path / "a")


def test_without_adapters_restores_stock_processors(bare_unet):
    model = wrapped(bare_unet)
    keys = set(model.unet.state_dict())
    with model.without_adapters() as unet:
        assert set(unet.state_dict()) == set(bare_unet.state_dict())
    assert set(model.unet.state_dict()) == keys
    assert any(".processor.to_q_prime" in k for k in keys)


def _expected_added(cfg: TrackGoConfig, layers: list[tuple[int, int, int]]) -> int:
    """Hand formula: encoder convs + one 1×1 head per width + per layer (2·C·C + heads)."""
    c = (3,) + cfg.encoder.channels
    convs = sum(c[i] * c[i + 1] * 9 + c[i + 1] for i in range(6))
    widths = {w for w, _, _ in layers}
    heads = sum(c[-1] * w + w for w in widths)
    adapters = sum(n * (2 * w * w + h) for w, h, n in layers)
    return convs + heads + adapters


def test_count_params_svd_xt_and_tiny():
    stats = count_params("svd-xt")
    assert stats["unet_params"] == 1_524_623_082
    assert stats["num_adapters"] == 16
    assert stats["added_params"] == _expected_added(TrackGoConfig(), [(320, 5, 5), (640, 10, 5), (1280, 20, 6)])
    assert stats["added_params"] <= 29_360_000
    tiny = count_params("tiny")
    assert tiny["num_adapters"] == 4
    assert tiny["added_params"] == _expected_added(TrackGoConfig(), [(32, 2, 3), (64, 4, 1)])
    assert tiny["unet_params"] == sum(p.numel() for p in build_unet("tiny", device="meta").parameters())


@pytest.mark.parametrize("gate_init, learns", [(1.0, True), (0.0, False)])
def test_fresh_gated_model_is_exact_and_its_encoder_learns_from_step_one(bare_unet, gate_init, learns):
    """O = A·V + g·(A′ − 1/F)·V: a fresh encoder makes A′ uniform, so the output is the bare UNet's
    for any g; with g ≠ 0 the encoder's heads get gradient at once (g = 0 blocks it)."""
    sample, t, ehs, ati, p = inputs(5)
    ref = bare_unet(sample, t, ehs, ati).sample.detach()
    model = wrapped(bare_unet, TrackGoConfig(mode="gated", gate_init=gate_init))
    out = model(sample, t, ehs, ati, trajectories=p)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (out * torch.randn_like(out)).sum().backward()
    head_grad = sum(float(h.weight.grad.abs().sum()) for h in model.encoder.heads.values())
    assert (head_grad > 1e-6) is learns


def test_mask_hits_follow_alpha_and_its_frame_scaling(bare_unet):
    from trackgo_model.attention import track_attention

    sample, t, ehs, ati, p = inputs(6)
    model = wrapped(bare_unet, TrackGoConfig(mode="paper"))
    activate(model)
    with torch.no_grad():
        model(sample, t, ehs, ati, trajectories=p)
    plain = model.mask_hits()
    assert set(plain) == set(model.adapters) and all(0.0 <= h <= 1.0 for h in plain.values())
    assert max(plain.values()) > 0.0
    scaled = wrapped(bare_unet, TrackGoConfig(mode="paper", alpha_frames=8))  # α·8/F = 0.4 at F = 4
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled(sample, t, ehs, ati, trajectories=p)
    assert all(scaled.mask_hits()[k] <= plain[k] for k in plain) and scaled.mask_hits() != plain
    assert TrackGoConfig(alpha=0.2, alpha_frames=25).alpha_at(8) == pytest.approx(0.625)
    assert TrackGoConfig(alpha=0.2, alpha_frames=25).alpha_at(2) == 1.0
    assert TrackGoConfig(alpha=0.2).alpha_at(8) == 0.2
    # the hit fraction is the share of A′ entries ≥ α
    g = torch.Generator().manual_seed(0)
    q, k, v, qp, kp = (torch.randn(2, 3, 5, 4, generator=g) * 3 for _ in range(5))
    res = track_attention(q, k, v, qp, kp, mode="paper", alpha=0.3, with_hits=True, with_maps=True)
    assert float(res.hits) == pytest.approx(float((res.maps[1] >= 0.3).float().mean()))


def test_v1_checkpoints_load_in_paper_mode_only(bare_unet, tmp_path):
    from trackgo_model.model import CONFIG_NAME, FORMAT_V1

    for mode in ("paper", "gated"):
        model = wrapped(bare_unet, TrackGoConfig(mode=mode))
        folder = model.save_trackgo(tmp_path / mode)
        meta = json.loads((folder / CONFIG_NAME).read_text())
        meta["format"] = FORMAT_V1
        (folder / CONFIG_NAME).write_text(json.dumps(meta))
    assert read_trackgo_config(tmp_path / "paper")["format"] == FORMAT_V1
    with pytest.raises(ValueError, match="train it again"):
        read_trackgo_config(tmp_path / "gated")
