"""TrackGo on Wan: the masked 3D attention against a per-token reference, a fresh model is the
base, the encoder learns from step one, frame grouping, checkpoints and diffusers-folder loading."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from trackgo_model.configs import TrackGoConfig
from trackgo_model.model import TrackGoUNet, build_unet
from trackgo_model.wan import (TrackGoWan, build_transformer, count_params, latent_frame_masks, load_transformer,
                               pool_frames)
from trackgo_model.wan.attention import track_attention_3d

B, F, H, W = 2, 3, 4, 6  # latent frames and grid (tokens 2×3 per frame) → trajectories 9×32×48
SMALL_ENCODER = {"channels": [8, 8, 8, 8, 16, 16]}


def reference(q, k, v, qp, kp, alpha, mode, gate, tau, mask_value=-1.0e4):
    """Token by token: the row over all N keys, the mask on the same position's keys, the
    adapter term within the position; returns (out, diag (B, heads, P, F))."""
    b, heads, n, d = q.shape
    p, frames = qp.shape[2], qp.shape[3]
    out = torch.zeros_like(v, dtype=torch.float64)
    diag = torch.zeros(b, heads, p, frames, dtype=torch.float64)
    q, k, v, qp, kp = (x.double() for x in (q, k, v, qp, kp))
    for bi in range(b):
        for h in range(heads):
            g = 1.0 if mode == "paper" else float(gate[h])
            centre = 0.0 if mode == "paper" else 1.0 / frames
            for pos in range(p):
                a_prime = torch.softmax(qp[bi, h, pos] @ kp[bi, h, pos].T / math.sqrt(d), dim=-1)  # (F, F)
                for t in range(frames):
                    i = t * p + pos
                    logits = q[bi, h, i] @ k[bi, h].T / math.sqrt(d)
                    for u in range(frames):
                        j = u * p + pos
                        logits[j] += mask_value if a_prime[t, u] >= alpha else (tau or 0.0)
                    a = torch.softmax(logits, dim=-1)
                    o = a @ v[bi, h]
                    for u in range(frames):
                        o = o + g * (a_prime[t, u] - centre) * v[bi, h, u * p + pos]
                    out[bi, h, i] = o
                    diag[bi, h, pos, t] = a[i]
    return out, diag


@pytest.mark.parametrize("mode,tau,with_diag", [("gated", None, True), ("gated", None, False),
                                                ("paper", None, True), ("gated", -3.0, False), ("paper", -3.0, True)])
def test_masked_3d_attention_matches_the_per_token_reference(mode, tau, with_diag):
    g = torch.Generator().manual_seed(1)
    b, heads, p, frames, d = 2, 2, 4, 3, 4
    q, k, v = (torch.randn(b, heads, frames * p, d, generator=g) for _ in range(3))
    qp, kp = (3 * torch.randn(b, heads, p, frames, d, generator=g) for _ in range(2))  # peaked A′: hits
    gate = torch.tensor([0.7, -1.3]) if mode == "gated" else None
    alpha = 0.5
    got = track_attention_3d(q, k, v, qp, kp, alpha=alpha, mode=mode, gate=gate, tau=tau,
                             with_diag=with_diag, with_hits=True)
    want, want_diag = reference(q, k, v, qp, kp, alpha, mode, gate, tau)
    torch.testing.assert_close(got.out.double(), want, atol=2e-5, rtol=1e-5)
    if with_diag:
        torch.testing.assert_close(got.diag.double(), want_diag, atol=1e-6, rtol=1e-5)
    assert 0.05 < float(got.hits) < 0.9  # the mask acted, and not everywhere


def test_alpha_at_or_below_a_uniform_row_is_refused():
    x = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="must exceed 1/F"):
        track_attention_3d(x, x, x, x.view(1, 1, 2, 4, 4), x.view(1, 1, 2, 4, 4), alpha=0.25)


@pytest.fixture(scope="module", params=["tiny", "tiny-2.2"])
def bare(request):
    torch.manual_seed(0)
    return request.param, build_transformer(request.param, device="cpu").eval()


def inputs(preset, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 36, F, H, W, generator=g)
    t = torch.tensor([700.0, 30.0])
    text = torch.randn(B, 512, 32, generator=g)  # Wan's processor splits image tokens off a 512-token text
    image = torch.randn(B, 5, 16, generator=g) if preset == "tiny" else None
    p = torch.rand(B, 4 * (F - 1) + 1, 3, 8 * H, 8 * W, generator=g) * 2 - 1
    return x, t, text, image, p


def wrapped(transformer, **cfg):
    torch.manual_seed(123)
    return TrackGoWan(copy.deepcopy(transformer), TrackGoConfig(**{"alpha_frames": 25, "encoder": SMALL_ENCODER, **cfg}))


def make_trained_like(model, seed=5):
    """Encoder heads without the constant part and sharper adapter queries: an adapter that masks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.encoder.heads.values():
            head.weight.normal_(std=2.0, generator=g)
            head.bias.zero_()  # only what differs between frames is left
        for adapter in model.adapters.values():
            adapter.norm_q_prime.weight.fill_(4.0)
    return model


def square_trajectories():
    """P: a white 8×8 square crossing a black frame, (B, 9, 3, 8H, 8W) in [−1, 1]."""
    p = -torch.ones(B, 9, 3, 8 * H, 8 * W)
    for i in range(9):
        p[:, i, :, 8:16, 4 * i:4 * i + 8] = 1.0
    return p


def test_fresh_gated_model_is_the_base_and_paper_mode_is_not(bare):
    preset, transformer = bare
    x, t, text, image, p = inputs(preset)
    with torch.no_grad():
        base = transformer(x, t, text, image, return_dict=False)[0]
        model = wrapped(transformer)
        assert torch.equal(model(x, t, text, image, trajectories=p), base)  # no hit: the base's own calls
        torch.testing.assert_close(model(x, t, text, image, trajectories=p, collect_attention=True), base,
                                   atol=2e-6, rtol=0)
        assert model.mask_hits() and max(model.mask_hits().values()) == 0.0
        paper = wrapped(transformer, mode="paper")(x, t, text, image, trajectories=p)
    assert (paper - base).abs().max() > 1e-3  # O = (A + A′)·V adds the temporal mean of V at step 0


def test_fresh_gated_encoder_and_adapter_get_gradient_from_step_one(bare):
    preset, transformer = bare
    x, t, text, image, p = inputs(preset, seed=1)
    model = wrapped(transformer)
    params = model.freeze_for_training()
    model(x, t, text, image, trajectories=p).square().mean().backward()
    grads = {k: v.grad for k, v in model.named_group_parameters().items()}
    assert all(grads[k] is not None for k in grads)
    head = next(k for k in grads if k.startswith("encoder.heads.") and k.endswith("weight"))
    assert grads[head].abs().sum() > 0
    assert all(grads[k].abs().sum() > 0 for k in grads if "to_k_prime.weight" in k)
    assert not any(p.grad is not None for n, p in model.transformer.named_parameters() if "ffn" in n)
    assert len(params) == len(grads)


def masking_setup():
    """A tiny Wan2.1-layout transformer, a trained-like TrackGo on a copy, inputs and a moving square."""
    torch.manual_seed(0)
    transformer = build_transformer("tiny", device="cpu").eval()
    model = make_trained_like(wrapped(transformer, alpha_frames=None, alpha=0.5))
    x, t, text, image, _ = inputs("tiny")
    return transformer, model, (x, t, text, image), square_trajectories()


def test_trained_adapter_masks_and_steers():
    transformer, model, (x, t, text, image), p = masking_setup()
    with torch.no_grad():
        base = transformer(x, t, text, image, return_dict=False)[0]
        out = model(x, t, text, image, trajectories=p, collect_attention=True)
    assert min(model.mask_hits().values()) > 0
    assert (out - base).abs().max() > 1e-3
    maps = model.attention_maps()
    assert len(maps) == 2 and maps[0].diag.shape == (B, (H // 2) * (W // 2), 2, F) and maps[0].grid == (2, 3)


def test_frames_are_grouped_as_the_vae_groups_them():
    x = torch.arange(2 * 9, dtype=torch.float32).view(2 * 9, 1, 1, 1)
    got = pool_frames(x, 2, 4).view(2, 3)
    torch.testing.assert_close(got, torch.tensor([[0.0, 2.5, 6.5], [9.0, 11.5, 15.5]]))
    masks = torch.zeros(1, 9, 2, 2, dtype=torch.bool)
    masks[0, 3, 0, 0] = masks[0, 8, 1, 1] = masks[0, 0, 0, 1] = True
    m = latent_frame_masks(masks, 4)
    assert m.shape == (1, 3, 2, 2)
    assert m[0, 0].tolist() == [[0, 1], [0, 0]] and m[0, 1].tolist() == [[1, 0], [0, 0]]
    assert m[0, 2].tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="r·"):
        pool_frames(torch.zeros(8, 1, 1, 1), 1, 4)


def test_trajectories_of_the_wrong_length_are_refused(bare):
    preset, transformer = bare
    x, t, text, image, p = inputs(preset)
    with pytest.raises(ValueError, match="9 frames"):
        wrapped(transformer)(x, t, text, image, trajectories=p[:, :8])


def test_attention_loss_reads_latent_frame_masks_and_reaches_qkv(bare):
    preset, transformer = bare
    x, t, text, image, p = inputs(preset)
    model = wrapped(transformer)
    model.freeze_for_training()
    masks = torch.rand(B, 9, 8 * H, 8 * W) > 0.6
    model(x, t, text, image, trajectories=p, collect_attention=True, motion_masks=masks)
    loss = model.attention_loss()
    from trackgo_model.losses import attention_loss
    torch.testing.assert_close(loss, attention_loss(model.attention_maps(), latent_frame_masks(masks, 4)))
    loss.backward()
    qkv = model.named_group_parameters(("temporal_qkv",))
    assert qkv["transformer.blocks.0.attn1.to_q.weight"].grad.abs().sum() > 0


def test_checkpoint_round_trip_and_base_check(bare, tmp_path):
    preset, transformer = bare
    model = wrapped(transformer)
    with torch.no_grad():
        for prm in model.checkpoint_parameters().values():
            prm.add_(torch.randn_like(prm) * 0.1)
    model.save_trackgo(tmp_path / "ck")
    fresh = wrapped(transformer).load_trackgo(tmp_path / "ck")
    for k, v in model.checkpoint_parameters().items():
        assert torch.equal(v, fresh.checkpoint_parameters()[k]), k
    svd = TrackGoUNet(build_unet("tiny", device="cpu"))
    with pytest.raises(ValueError, match="'wan' base"):
        svd.load_trackgo(tmp_path / "ck")


def test_transformer_loads_from_a_diffusers_folder(tmp_path):
    torch.manual_seed(0)
    transformer = build_transformer("tiny-2.2", device="cpu").eval()
    transformer.save_pretrained(tmp_path / "wan" / "transformer")
    loaded = load_transformer(tmp_path / "wan").eval()
    x, t, text, image, _ = inputs("tiny-2.2")
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text, return_dict=False)[0], transformer(x, t, text, return_dict=False)[0])
    with pytest.raises(FileNotFoundError, match="supply a diffusers-format Wan"):
        load_transformer(tmp_path / "wan", subfolder="transformer_2")


def test_added_parameters_are_counted_by_hand():
    """tiny: 2 blocks of width 24 (2 heads); the encoder's six 3×3 convolutions and its one head."""
    got = count_params("tiny", TrackGoConfig(encoder=SMALL_ENCODER))
    chans = [3, 8, 8, 8, 8, 16, 16]
    encoder = sum(9 * chans[i] * chans[i + 1] + chans[i + 1] for i in range(6)) + (16 * 24 + 24)
    per_block = 2 * (24 * 24 + 24) + 2 * 24 + 2  # W′_q, W′_k with biases; two RMS norm weights; gates
    assert got["added_params"] == encoder + 2 * per_block
    assert got["temporal_qkv_params"] == 2 * 3 * (24 * 24 + 24)
    assert got["num_adapters"] == 2
    assert got["transformer_params"] == sum(p.numel() for p in build_transformer("tiny").parameters())


def test_block_checkpointing_gives_the_same_gradients_and_diffusers_own_is_refused(bare):
    preset, transformer = bare
    x, t, text, image, _ = inputs(preset, seed=2)
    p = square_trajectories()
    masks = torch.rand(B, 9, 8 * H, 8 * W) > 0.6

    def grads(checkpointing: bool):
        model = make_trained_like(wrapped(transformer, alpha_frames=None, alpha=0.5))
        model.freeze_for_training()
        if checkpointing:
            assert model.enable_gradient_checkpointing() == 2
        out = model(x, t, text, image, trajectories=p, collect_attention=True, motion_masks=masks)
        assert min(model.mask_hits().values()) > 0  # the masked path is the one checked
        (out.square().mean() + model.attention_loss()).backward()
        return {k: v.grad.clone() for k, v in model.named_group_parameters().items()}, model

    plain, _ = grads(False)
    checked, model = grads(True)
    assert plain.keys() == checked.keys()
    for k in plain:
        torch.testing.assert_close(checked[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    model.disable_gradient_checkpointing()
    model.transformer.enable_gradient_checkpointing()
    with pytest.raises(ValueError, match="enable_gradient_checkpointing"):
        model(x, t, text, image, trajectories=p)


@pytest.mark.parametrize("mode,tau,with_diag", [("gated", None, True), ("paper", -3.0, False), ("gated", -3.0, True)])
def test_flex_kernel_computes_the_same_attention_and_diagonal(mode, tau, with_diag):
    g = torch.Generator().manual_seed(3)
    b, heads, p, frames, d = 2, 2, 4, 3, 8
    q, k, v = (torch.randn(b, heads, frames * p, d, generator=g) for _ in range(3))
    qp, kp = (3 * torch.randn(b, heads, p, frames, d, generator=g) for _ in range(2))
    gate = torch.tensor([0.7, -1.3]) if mode == "gated" else None
    kw = dict(alpha=0.5, mode=mode, gate=gate, tau=tau, with_diag=with_diag, with_hits=True)
    with torch.no_grad():
        want = track_attention_3d(q, k, v, qp, kp, kernel="explicit", **{**kw, "with_diag": True})
        got = track_attention_3d(q, k, v, qp, kp, kernel="flex", **kw)
    assert float(want.hits) > 0.05
    torch.testing.assert_close(got.out, want.out, atol=1e-5, rtol=1e-5)
    if with_diag:
        torch.testing.assert_close(got.diag, want.diag, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="no backward on the CPU"):
        track_attention_3d(q.requires_grad_(), k, v, qp, kp, kernel="flex", **kw)


def test_model_with_the_flex_kernel_matches_explicit():
    _, model, (x, t, text, image), p = masking_setup()
    with torch.no_grad():
        want = model(x, t, text, image, trajectories=p, collect_attention=True)
        maps = [m.diag for m in model.attention_maps()]
        model.set_attention_kernel("flex")
        got = model(x, t, text, image, trajectories=p, collect_attention=True)
    assert max(model.mask_hits().values()) > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(model.attention_maps(), maps):
        torch.testing.assert_close(a.diag, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="kernel must be one of"):
        model.set_attention_kernel("triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_flex_gradients_match_explicit_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(4)
    b, heads, p, frames, d = 2, 2, 16, 5, 16
    q, k, v = (torch.randn(b, heads, frames * p, d, device="cuda", generator=g, requires_grad=True) for _ in range(3))
    qp, kp = (3 * torch.randn(b, heads, p, frames, d, device="cuda", generator=g) for _ in range(2))
    grads = {}
    for kernel in ("explicit", "flex"):
        res = track_attention_3d(q, k, v, qp, kp, alpha=0.4, gate=torch.tensor([0.5, 1.0], device="cuda"),
                                 with_diag=True, kernel=kernel)
        grads[kernel] = torch.autograd.grad(res.out.square().sum() + res.diag.sum(), (q, k, v))
    for a, e in zip(grads["flex"], grads["explicit"]):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)



def test_adapters_install_once_and_come_off(bare):
    from trackgo_model.wan.adapter import WanTrackAdapterProcessor, install_wan_adapters

    preset, transformer = bare
    model = wrapped(transformer)
    with pytest.raises(ValueError, match="already has a TrackAdapter"):
        install_wan_adapters(model.transformer, model.context)
    with model.without_adapters() as base:
        assert not any(isinstance(p, WanTrackAdapterProcessor) for p in base.attn_processors.values())
    assert sum(isinstance(p, WanTrackAdapterProcessor) for p in model.transformer.attn_processors.values()) == 2
