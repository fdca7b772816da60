"""benchmarks/gpu_suite.py at its tiny size on the CPU: every section runs and writes finite figures;
the Triton check runs in Triton's interpreter."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


def numbers(tree, path=""):
    """(dotted path, value) of every number in a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from numbers(v, f"{path}.{k}" if path else k)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_tiny_suite_writes_every_section(tmp_path):
    pytest.importorskip("triton", reason="the suite's kernel check runs the Triton kernel")
    from trackgo_model.fused_attention import interpreted

    spec = importlib.util.spec_from_file_location("gpu_suite_bench", SCRIPT)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    out = tmp_path / "suite.json"
    assert suite.main(["--tiny", "--out", str(out)]) == 0
    r = json.loads(out.read_text())

    assert {"meta", "checks", "training", "memory", "generation", "summary", "skipped"} <= set(r)
    assert "errors" not in r, r.get("errors")
    bad = [(p, v) for p, v in numbers(r) if not math.isfinite(v)]
    assert not bad, bad

    # the fused kernel agrees with the explicit one (fp32 tightly, bf16 within its rounding); the
    # --tiny suite runs on the CPU, in Triton's interpreter (tests/conftest.py sets it up without
    # CUDA; on a GPU machine tests/model/test_fused.py checks the compiled kernel instead)
    checks = {k: v for k, v in r["checks"].items() if k.startswith("triton")}
    if not interpreted():
        assert not checks and "TRITON_INTERPRET=1" in r["skipped"]["checks triton"]
    else:
        assert len(checks) == 4 and all("error" not in v for v in checks.values()), checks
    for key, errs in checks.items():
        limit = 1e-4 if "float32" in key else 5e-2
        assert errs.pop("rows_off") == 0 and max(errs.values()) < limit, (key, errs)

    tr = r["training"]
    assert set(tr["fwd_bwd_ratio"]) == set(tr["fwd_bwd_ratio_attn_loss"]) == {
        "reference", "fused_projections", "encoder_channels_last"}
    assert not tr["errors"]
    # the ratios are the timings' (bare SVD below TrackGo per candidate), every variant timed
    candidates = set(tr["fwd_bwd_ratio"])
    assert set(tr["fwd_bwd_ms"]) == {"bare"} | {f"trackgo[{c}]" for c in candidates} | {
        f"trackgo_attn_loss[{c}]" for c in candidates}
    for c in candidates:
        for prefix, ratio in (("trackgo", tr["fwd_bwd_ratio"]), ("trackgo_attn_loss", tr["fwd_bwd_ratio_attn_loss"])):
            assert ratio[c] == pytest.approx(tr["fwd_bwd_ms"][f"{prefix}[{c}]"] / tr["fwd_bwd_ms"]["bare"], rel=2e-3)
    assert "training triton" not in r["skipped"]  # the tiny list has none; on a GPU it is timed

    mem = r["memory"]
    assert not mem["errors"] and {"diffusers", "temporal"} <= set(mem["options"])
    # same batch, same draws: re-running blocks in backward changes no number of the first step
    assert mem["options"]["diffusers"]["loss"] == mem["options"]["temporal"]["loss"]
    # one timed step each, within the section's own wall time; the same trainable parameters
    assert sum(v["step_s"] for v in mem["options"].values()) < r["meta"]["memory_s"]
    assert len({v["trainable_params"] for v in mem["options"].values()}) == 1

    gen = r["generation"]
    assert not gen["errors"] and set(gen["variants"]) == {"default", "channels_last", "decode_chunk"}
    default = gen["variants"]["default"]
    assert {"svd", "trackgo", "trackgo_no_trajectories", "ratio_total", "ratio_denoise"} <= set(default)
    for kind in ("svd", "trackgo", "trackgo_no_trajectories"):
        row = default[kind]
        assert row["unet_calls"] == gen["steps"] == 2  # guidance: both halves in one call per step
        assert row["total"] >= row["denoise"] >= row["unet"] > 0 and row["vae_decode"] > 0 and row["clip"] > 0
        assert abs(row["total"] - sum(row[s] for s in ("clip", "vae_encode", "trajectory_encode", "denoise",
                                                         "vae_decode", "other"))) < 1e-3
    assert default["trackgo"]["trajectory_encode"] > 0 and default["svd"]["trajectory_encode"] == 0
    assert r["summary"]["ratio_to_svd"]["default"] == default["ratio_total"]
    assert r["meta"]["preset"] == "tiny" and r["skipped"]["compiled"] == "--no-compile"
