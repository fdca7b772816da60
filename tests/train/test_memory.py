"""Memory options: checkpointing scopes beyond diffusers' (same gradients, fewer saved activations,
the attention loss's maps intact), 8-bit AdamW (close to AdamW, a quarter of the state), wiring."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from trackgo_data.config import ConfigError
from trackgo_model.model import TrackGoUNet, build_unet
from trackgo_model.train.config import load_train_config
from trackgo_model.train.memory import (CheckpointedForward, checkpointed_blocks, disable_extra_checkpointing,
                                        enable_checkpointing, make_optimizer, optimizer_state_bytes)


@pytest.fixture(scope="module")
def model() -> TrackGoUNet:
    torch.manual_seed(0)
    m = TrackGoUNet.from_unet(build_unet("tiny", device="cpu"), {"mode": "gated"})
    with torch.no_grad():
        for head in m.encoder.heads.values():
            head.weight.normal_(0.0, 0.1)
        for a in m.adapters.values():
            a.gate.fill_(0.3)
    return m.train()


def step(m: TrackGoUNet):
    """(gradients of mean(out²) + L_attn, bytes of distinct storages autograd saved, the maps)."""
    g = torch.Generator().manual_seed(0)
    b, f, h, w = 1, 4, 2, 4
    sample = torch.randn(b, f, 8, h, w, generator=g)
    args = (torch.rand(b, generator=g), torch.randn(b, 1, 32, generator=g), torch.randn(b, 3, generator=g))
    p = torch.rand(b, f, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    masks = (torch.rand(b, f, h, w, generator=g) > 0.5).float()
    params = m.freeze_for_training()
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(sample, *args, trajectories=p, motion_masks=masks, collect_attention=True)
        loss = out.square().mean() + m.attention_loss()
    maps = [c.diag for c in m.attention_maps()]
    grads = torch.autograd.grad(loss, params)
    return grads, sum(storages.values()), maps, [c.diag for c in m.attention_maps()]


def test_scopes_give_the_same_gradients_and_save_less(model):
    plain = copy.deepcopy(model)
    ref, ref_bytes, _, _ = step(plain)
    saved = {}
    for scope in ("diffusers", "temporal", "transformer"):
        m = copy.deepcopy(model)
        added = enable_checkpointing(m, scope)
        assert added == {"diffusers": 0, "temporal": 4, "transformer": 4}[scope]
        grads, saved[scope], before, after = step(m)
        # the re-run during backward must not replace the maps the loss was computed from
        assert all(a is b for a, b in zip(before, after)) and len(after) == 4
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert sum(int(g.abs().sum() > 0) for g in ref) > len(ref) // 2
    assert ref_bytes > saved["diffusers"] > saved["temporal"] > saved["transformer"]


def test_checkpointed_model_keeps_its_keys_copies_and_undoes(model):
    m = copy.deepcopy(model)
    keys, paths = sorted(m.state_dict()), [name for name, _ in m.named_modules()]
    enable_checkpointing(m, "temporal")
    blocks = checkpointed_blocks(m.unet)
    assert len(blocks) == 4 and {type(b).__name__ for b in blocks} == {"TemporalBasicTransformerBlock"}
    assert sorted(m.state_dict()) == keys and [name for name, _ in m.named_modules()] == paths
    clone = copy.deepcopy(m)  # the copy re-runs its own blocks against its own context
    copied = checkpointed_blocks(clone.unet)
    assert len(copied) == 4 and all(isinstance(b.forward, CheckpointedForward) and b.forward.block is b
                                    and b.forward.context is clone.context for b in copied)
    enable_checkpointing(m, "transformer")  # switching scopes replaces the previous one
    assert {type(b).__name__ for b in checkpointed_blocks(m.unet)} == {"TransformerSpatioTemporalModel"}
    disable_extra_checkpointing(m)
    assert not checkpointed_blocks(m.unet)
    assert all(b.forward.__func__ is type(b).forward for b in blocks)  # the class's forward again
    with pytest.raises(ConfigError, match="checkpointing must be one of"):
        enable_checkpointing(m, "everything")


def test_config_keys_are_checked():
    with pytest.raises(ValueError, match="needs model.gradient_checkpointing=true"):
        load_train_config("tiny-cpu", ["model.checkpointing=temporal"])
    with pytest.raises(ValueError, match="model.checkpointing must be one of"):
        load_train_config("tiny-cpu", ["model.gradient_checkpointing=true", "model.checkpointing=all"])
    with pytest.raises(ValueError, match="optim.optimizer must be one of"):
        load_train_config("tiny-cpu", ["optim.optimizer=sgd"])
    with pytest.raises(ValueError, match="kernels.attention must be one of"):
        load_train_config("tiny-cpu", ["model.kernels.attention=flash"])
    with pytest.raises(ConfigError, match="unknown"):
        load_train_config("tiny-cpu", ["model.kernels.fast=true"])


def test_prepare_model_applies_scope_and_kernels(model, monkeypatch):
    from trackgo_model.train.distributed import prepare_model

    cfg = load_train_config("tiny-cpu", ["mixed_precision=no", "model.gradient_checkpointing=true",
                                         "model.checkpointing=temporal", "model.kernels.fused_projections=true",
                                         "model.kernels.encoder_channels_last=true"])
    from trackgo_model.train.data import Components

    vae = torch.nn.Linear(1, 1)
    vae.config = type("VaeConfig", (), {"force_upcast": True})()
    comp = Components(copy.deepcopy(model), vae, torch.nn.Linear(1, 1), None, None, Path("."))
    params = prepare_model(comp, cfg, torch.device("cpu"))
    m = comp.model
    assert params and m.context.fused_projections and m.encoder.channels_last and m.context.kernel == "explicit"
    blocks = checkpointed_blocks(m.unet)
    assert len(blocks) == 4 and {type(b).__name__ for b in blocks} == {"TemporalBasicTransformerBlock"}


def test_make_optimizer_adamw_and_clear_errors(monkeypatch):
    cfg = load_train_config("tiny-cpu", ["optim.lr=1e-3", "optim.weight_decay=0.1"])
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer([p], cfg)
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 0.1
    eight = load_train_config("tiny-cpu", ["optim.optimizer=adamw8bit"])
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"needs bitsandbytes: pip install 'trackgo\[lowmem\]'"):
        make_optimizer([p], eight)
    eight.distributed = "fsdp"
    with pytest.raises(ConfigError, match="distributed=ddp"):
        make_optimizer([p], eight)


def test_adamw8bit_tracks_adamw_with_a_quarter_of_the_state():
    pytest.importorskip("bitsandbytes", reason="the optional 8-bit optimizer (pip install 'trackgo[lowmem]')")
    cfg32 = load_train_config("tiny-cpu", ["optim.lr=1e-2"])
    cfg8 = load_train_config("tiny-cpu", ["optim.lr=1e-2", "optim.optimizer=adamw8bit"])
    g = torch.Generator().manual_seed(0)
    start = torch.randn(64, 128, generator=g)  # ≥ 4096 entries: bitsandbytes quantises its moments
    grads = [torch.randn(64, 128, generator=g) for _ in range(5)]
    params, opts = [], []
    for cfg in (cfg32, cfg8):
        p = torch.nn.Parameter(start.clone())
        params.append(p)
        opts.append(make_optimizer([p], cfg))
    for grad in grads:
        for p, opt in zip(params, opts):
            p.grad = grad.clone()
            opt.step()
    moved = (params[0] - start).abs().mean()
    assert moved > 1e-2
    assert (params[1] - params[0]).abs().mean() < 0.05 * moved  # same steps up to quantisation
    assert optimizer_state_bytes(opts[1]) * 3 < optimizer_state_bytes(opts[0])
