"""Parameter groups by attention mode: the paper's formula has no gate, so in mode="paper" the gates
are neither trained nor saved, and every parameter that trains receives a gradient (DDP needs it)."""
from __future__ import annotations

import pytest
import torch

from trackgo_model.configs import TrackGoConfig
from trackgo_model.model import TrackGoUNet, build_unet

B, F, H, W = 1, 4, 4, 6


@pytest.fixture(scope="module")
def bare_unet():
    torch.manual_seed(0)
    return build_unet("tiny", device="cpu")


def _model(bare, mode: str) -> TrackGoUNet:
    import copy

    torch.manual_seed(1)
    model = TrackGoUNet.from_unet(copy.deepcopy(bare), TrackGoConfig(mode=mode))
    with torch.no_grad():  # non-zero encoder heads: the adapter branch carries signal
        for head in model.encoder.heads.values():
            head.weight.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("mode", ["paper", "gated"])
def test_every_trained_parameter_gets_a_gradient(bare_unet, mode):
    model = _model(bare_unet, mode)
    params = model.freeze_for_training()
    named = model.named_group_parameters()
    gates = [k for k in named if k.endswith(".gate")]
    assert (len(gates) == 4) if mode == "gated" else not gates
    assert len(params) == len(named) and all(p.requires_grad for p in params)
    assert all(g.requires_grad == (mode == "gated") for g in model.gates().values())
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(B, F, 8, H, W, generator=g)
    p = torch.rand(B, F, 3, 8 * H, 8 * W, generator=g) * 2 - 1
    out = model(sample, torch.rand(B, generator=g), torch.randn(B, 1, 32, generator=g),
                torch.randn(B, 3, generator=g), trajectories=p, motion_masks=torch.ones(B, F, H, W),
                collect_attention=True)
    (out.pow(2).mean() + model.attention_loss()).backward()
    no_grad = [k for k, p in named.items() if p.grad is None]
    assert not no_grad, no_grad[:3]
    if mode == "paper":  # the gates take no part in the paper's output
        assert all(gate.grad is None for gate in model.gates().values())


def test_paper_mode_export_has_no_gates_and_loads_older_files(bare_unet, tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model(bare_unet, "paper")
    model.save_trackgo(tmp_path / "ck")
    saved = load_file(str(tmp_path / "ck" / "trackgo.safetensors"))
    assert sorted(saved) == sorted(model.checkpoint_parameters()) and not any(k.endswith(".gate") for k in saved)
    # a file written when the gates were still saved in paper mode loads (gates included)
    older = dict(saved, **{k: torch.full_like(v, 0.25) for k, v in model.gates().items()})
    save_file(older, str(tmp_path / "ck" / "trackgo.safetensors"))
    other = _model(bare_unet, "paper").load_trackgo(tmp_path / "ck")
    assert all(torch.equal(g, torch.full_like(g, 0.25)) for g in other.gates().values())
    # full tensors from elsewhere (a sharded run): same keys required
    tensors = {k: v.detach().clone() for k, v in model.checkpoint_parameters().items()}
    model.save_trackgo(tmp_path / "ck2", tensors=tensors)
    assert sorted(load_file(str(tmp_path / "ck2" / "trackgo.safetensors"))) == sorted(tensors)
    with pytest.raises(ValueError, match="keys"):
        model.save_trackgo(tmp_path / "ck3", tensors={**tensors, **model.gates()})


@pytest.mark.parametrize("mode", ["paper", "gated"])
def test_optimizer_groups_carry_their_learning_rates(bare_unet, mode):
    from types import SimpleNamespace

    from trackgo_model.train.memory import make_optimizer, parameter_groups

    model = _model(bare_unet, mode)
    params = model.freeze_for_training()
    groups = parameter_groups(model, model.cfg.trainable, {"temporal_qkv": 1e-2, "gate": 5e-2}, 1e-3)
    names = [g["name"] for g in groups]
    assert names == (["encoder", "adapter", "gate", "temporal_qkv"] if mode == "gated"
                     else ["encoder", "adapter", "temporal_qkv"])
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["encoder"] == lrs["adapter"] == 1e-3 and lrs["temporal_qkv"] == 1e-2
    assert lrs.get("gate", 5e-2) == 5e-2
    # every trainable parameter in exactly one group, gates only in "gate", q/k/v only in "temporal_qkv"
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in params)
    by_id = {id(p): k for k, p in model.named_group_parameters().items()}
    for g in groups:
        keys = [by_id[id(p)] for p in g["params"]]
        assert all(k.endswith(".gate") == (g["name"] == "gate") for k in keys)
        assert all((".to_q." in k or ".to_k." in k or ".to_v." in k) == (g["name"] == "temporal_qkv") for k in keys)
    cfg = SimpleNamespace(optim=SimpleNamespace(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8,
                                                optimizer="adamw"), distributed="ddp")
    opt = make_optimizer(groups, cfg)
    assert [pg["lr"] for pg in opt.param_groups] == [g["lr"] for g in groups]
