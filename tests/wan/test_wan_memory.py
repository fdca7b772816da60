"""The memory plan of a Wan training step: fake-tensor activations equal real ones on a tiny
model, the plan's terms by hand, and the benchmark's option ladder."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from trackgo_model.wan.memory import LiveBytes, adapter_bytes, encoder_bytes, measure_activations, step_memory
from trackgo_model.wan.model import WAN_PRESETS

SIZE = dict(frames=9, height=32, width=48)


def test_live_bytes_by_hand():
    with LiveBytes() as live:
        a = torch.ones(1000)          # 4,000 bytes
        b = torch.ones(500) * 2       # the ones (2,000) die at once, the product stays: peak 8,000
        del a
        c = b + 1                     # 2,000 + 2,000 alive
    assert live.peak == 8000 and live.current == 4000
    del b, c


def test_fake_tensors_measure_what_real_tensors_hold():
    fake = measure_activations("tiny", dtype=torch.float32, **SIZE)
    real = measure_activations("tiny", dtype=torch.float32, fake=False, **SIZE)
    assert fake == real and fake["block"] > 0 and fake["one_block_step"] > fake["block"]


def test_step_memory_terms_by_hand():
    acts = {"block": 1000, "one_block_step": 5000}
    cfg = WAN_PRESETS["tiny"]
    plan = step_memory("tiny", acts, processes=2, **SIZE)
    gib = 2 ** 30
    tokens = 3 * 2 * 3  # 3 latent frames × (32/16) × (48/16)
    assert plan["tokens"] == tokens
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    extra = adapter_bytes(tokens, dim, cfg["num_attention_heads"], 3)
    assert extra == 4 * tokens * dim * 2 + 2 * (tokens // 3) * 9 * 5
    assert plan["activations"] * gib == pytest.approx(2 * 2 * tokens * dim + 5000 + extra)
    unrolled = step_memory("tiny", acts, processes=2, checkpointing=False, reshard=False, **SIZE)
    assert unrolled["activations"] * gib == pytest.approx(2 * (1000 + extra) + 4000)
    assert plan["shards"] * gib == pytest.approx(4 * plan["params"] / 2)
    assert plan["optimizer"] == pytest.approx(2 * plan["grads"]) == pytest.approx(2 * plan["ema"])
    assert unrolled["gathered"] * gib == pytest.approx(2 * plan["params"]) and plan["gathered"] < unrolled["gathered"]
    assert plan["encoders"] * gib == encoder_bytes(cfg)
    parts = ("shards", "encoders", "gathered", "grads", "optimizer", "ema", "activations")
    assert plan["total"] == pytest.approx(sum(plan[k] for k in parts))


def test_benchmark_tiny_run(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "wan_memory.py"
    spec = importlib.util.spec_from_file_location("wan_memory_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run(["--preset", "tiny", "--frames", "9", "--height", "32", "--width", "48", "--processes", "2",
                   "--out", str(tmp_path / "m.json")])
    assert (tmp_path / "m.json").is_file() and len(r["options"]) == 4
    ladder = r["options"]
    assert ladder["checkpointing=True,reshard=True"]["total"] < ladder["checkpointing=True,reshard=False"]["total"]
    assert all(o["fits_80gb"] and o["ratio_to_80gb"] < 1 for o in ladder.values())
