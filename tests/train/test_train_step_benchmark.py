"""benchmarks/train_step.py measures the loop's own step in fp16 (with the loss scaler) and bf16;
checked here at the tiny preset on the CPU."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_preset_both_precisions_json(bench, monkeypatch, tmp_path, capsys):
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--preset", "tiny", "--precision", "fp16", "bf16",
                                      "--frames", "2", "--height", "32", "--width", "32", "--steps", "1",
                                      "--no-loader", "--out", str(out)])
    torch.manual_seed(0)
    bench.main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    assert printed["preset"] == "tiny" and (printed["width"], printed["height"]) == (32, 32)
    fp16, bf16 = printed["fp16_frames2"], printed["bf16_frames2"]
    assert fp16["mixed_precision"] == "fp16" and fp16["loss_scaler"]
    assert bf16["mixed_precision"] == "bf16" and not bf16["loss_scaler"] and "final_loss_scale" not in bf16
    # the benchmark counts a step as skipped exactly when the scaler skipped it: the scaler starts at
    # 2**16, halves on every skipped step and grows only after 2000 clean ones (4 steps were taken)
    assert fp16["final_loss_scale"] == 2.0**16 * 0.5 ** fp16["skipped_steps"]
    assert bf16["skipped_steps"] == 0  # without a scaler only a non-finite loss skips a step
    # the trainable groups of svd-xt-paper's recipe (paper formula: no gates) on the tiny model
    from trackgo_model.model import TrackGoUNet, build_unet
    from trackgo_model.train.config import load_train_config
    from trackgo_model.train.config import trackgo_config_for

    cfg = trackgo_config_for(load_train_config("tiny-cpu", ["model.trackgo.mode=paper"]))
    expected = sum(p.numel() for p in TrackGoUNet.from_unet(build_unet("tiny"), cfg).trainable_parameters())
    for r in (fp16, bf16):
        assert r["step_s_all"] == [pytest.approx(r["step_s"], abs=1e-4)] and r["trainable_params"] == expected
        assert 0 <= r["skipped_steps"] <= 4
