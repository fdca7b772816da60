"""mode="injection" (the peers' additive trajectory features, for comparison): exact start,
gradients from step one, the features reach every injection point, groups and checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch

from trackgo_model.configs import TrackGoConfig
from trackgo_model.model import TrackGoUNet, build_unet, load_trackgo

from .test_model import inputs


@pytest.fixture(scope="module")
def bare_unet():
    torch.manual_seed(0)
    return build_unet("tiny", device="cpu").eval()


def injected(bare):
    torch.manual_seed(7)
    return TrackGoUNet.from_unet(copy.deepcopy(bare), TrackGoConfig(mode="injection"))


def test_fresh_injection_is_exact_and_learns(bare_unet):
    sample, t, ehs, ati, p = inputs(2)
    ref = bare_unet(sample, t, ehs, ati).sample.detach()
    model = injected(bare_unet)
    assert [path for path, _ in model.injection.points] == ["conv_in", "down_blocks.0.resnets.0",
                                                             "down_blocks.1.resnets.0"]
    out = model(sample, t, ehs, ati, trajectories=p)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    (out * torch.randn_like(out)).sum().backward()
    for name, head in model.injection.heads.items():
        assert head.weight.grad.abs().sum() > 0, name
    assert all(a.to_q_prime.weight.grad is None for a in model.adapters.values())  # the adapters idle


def test_each_point_receives_the_pooled_trunk_projection(bare_unet):
    """At every point, output with trajectories − output without = head(pool(trunk)) (the hooks
    registered here run after the injection's)."""
    from trackgo_model.encoder import pool_to

    sample, t, ehs, ati, p = inputs(3)
    model = injected(bare_unet)
    with torch.no_grad():
        for head in model.injection.heads.values():
            head.weight.normal_()
            head.bias.normal_()
    outputs: dict[str, list[torch.Tensor]] = {path: [] for path, _ in model.injection.points}
    for path in outputs:
        model.unet.get_submodule(path).register_forward_hook(lambda m, i, o, path=path: outputs[path].append(o))
    with torch.no_grad():
        model(sample, t, ehs, ati, trajectories=None)
        model(sample, t, ehs, ati, trajectories=p)
        trunk = model.encoder.trunk(p)
    # only conv_in sees the same input in both runs; deeper points see the earlier additions too
    without, with_p = outputs["conv_in"]
    head = model.injection.heads["conv_in"]
    expect = torch.nn.functional.conv2d(pool_to(trunk, tuple(without.shape[-2:])), head.weight, head.bias)
    torch.testing.assert_close(with_p - without, expect, atol=1e-5, rtol=1e-5)
    for path, (a, b) in outputs.items():
        assert a.shape == b.shape and (a - b).abs().max() > 0, path


def test_groups_checkpoint_and_mode_switch(bare_unet, tmp_path):
    model = injected(bare_unet)
    groups = model.named_group_parameters(("encoder", "adapter"))
    assert any(k.startswith("injection.heads.") for k in groups)
    assert not any(k.startswith("encoder.heads.") or k.startswith("adapters.") for k in groups)
    with torch.no_grad():
        for head in model.injection.heads.values():
            head.weight.normal_()
    model.save_trackgo(tmp_path / "ckpt")
    loaded = load_trackgo(copy.deepcopy(bare_unet), tmp_path / "ckpt")
    for name, head in model.injection.heads.items():
        assert torch.equal(loaded.injection.heads[name].weight, head.weight)
    sample, t, ehs, ati, p = inputs(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, t, ehs, ati, trajectories=p), model(sample, t, ehs, ati, trajectories=p))
    with pytest.raises(ValueError, match="for this model"):
        model.set_inference(mode="paper")
    with pytest.raises(ValueError, match="for this model"):
        TrackGoUNet.from_unet(copy.deepcopy(bare_unet), TrackGoConfig(mode="paper")).set_inference(mode="injection")
