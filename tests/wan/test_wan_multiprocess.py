"""TrackGo on Wan trained by 2 processes on the CPU (gloo, torchrun): DDP and FSDP2 (per-block
units, ZeRO-3-like), every block checkpointed in both; replicas agree, one writer, and the
sharded run's checkpoint holds what the DDP run's holds."""
from __future__ import annotations

import json

import pytest
import torch

from tests.train.test_multiprocess import _ckpt, _close, _launch, _tensors, _torchrun
from tests.wan.conftest import wan_overrides


@pytest.fixture(scope="module")
def runs(wan_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-mp")
    ddp, fsdp = root / "ddp", root / "fsdp2"
    common = {"max_steps": 2, "checkpoint_every": 1, "global_batch_size": 2, "keep_checkpoints": 0,
              "log_every": 1, "optim.max_grad_norm": 0.05}
    blocks = {"model.gradient_checkpointing": "true", "model.checkpointing": "blocks"}
    tiny = root / "tiny-wan"  # made by the main process of the first run, loaded by the other
    (root / "ddp.json").write_text(json.dumps([["--config", "tiny-wan-cpu", *wan_overrides(
        wan_shards, tiny, ddp, **common, **blocks)]]))
    (root / "fsdp.json").write_text(json.dumps([["--config", "tiny-wan-cpu", *wan_overrides(
        wan_shards, tiny, fsdp, **common, distributed="fsdp", fsdp_version=2, fsdp_reshard_after_forward="true",
        **blocks)]]))
    log = _launch(_torchrun("tests/train/launch_worker.py", str(root / "ddp.json")))  # writes digests
    _launch(_torchrun("tests/train/launch_worker.py", str(root / "fsdp.json"), "--fsdp-on-cpu"))
    return {"ddp": ddp, "fsdp2": fsdp, "log": log}


def test_ddp_replicas_agree_and_one_process_writes(runs):
    products = [json.loads(ln) for ln in runs["log"].stdout.splitlines() if ln.startswith("{")]
    assert [p["step"] for p in products] == [2]
    run = runs["ddp"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-000001", "checkpoint-000002"]
    for step in (1, 2):
        digests = [(run / "digests" / f"step-{step:06d}-rank{r}.txt").read_text() for r in (0, 1)]
        assert digests[0] == digests[1]
    assert json.loads((_ckpt(run, 2) / "state.json").read_text())["world_size"] == 2
    a, b = _tensors(run, 1, "trainable.safetensors"), _tensors(run, 2, "trainable.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # training moved the weights
    assert any(".to_q." in k for k in a) and any(k.startswith("encoder.") for k in a)


def test_fsdp2_checkpoint_matches_ddp(runs):
    """Same data, same draws: the sharded run (one unit per DiT block, re-sharded after forward,
    blocks re-run in backward) holds the DDP run's full tensors."""
    for step in (1, 2):
        for name in ("trainable.safetensors", "ema.safetensors", "trackgo/trackgo.safetensors"):
            a, b = _tensors(runs["fsdp2"], step, name), _tensors(runs["ddp"], step, name)
            assert sorted(a) == sorted(b), name
            assert all(_close(a[k], b[k], 1e-4) for k in a), (step, name)


def test_fsdp_units_are_wan_blocks():
    from trackgo_model.train.config import load_train_config
    from trackgo_model.train.distributed import accelerate_kwargs

    cfg = load_train_config("wan-i2v-14b-trackgo")
    plugin = accelerate_kwargs(cfg, 1)["fsdp_plugin"]
    assert plugin.transformer_cls_names_to_wrap == ["WanTransformerBlock"] and plugin.reshard_after_forward is True
