"""benchmarks/wan_attention.py at its tiny size on the CPU: both kernels run, agree, and the
figures are finite."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "wan_attention.py"


def test_tiny_run_times_both_kernels_and_they_agree(tmp_path):
    spec = importlib.util.spec_from_file_location("wan_attention_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "wan.json"
    assert bench.main(["--out", str(out), "--repeats", "2", "--warmup", "1"]) == 0
    r = json.loads(out.read_text())
    assert set(r["kernels"]) == {"explicit", "flex"} and r["meta"]["tokens"] == 5 * 4 * 6
    for row in r["kernels"].values():
        assert math.isfinite(row["forward_ms"]) and row["forward_ms"] > 0
        assert 0 < row["hits"] < 1
        assert row["max_diff_out"] < 1e-4 and row["max_diff_diag"] < 1e-5
    assert math.isfinite(r["ratios"]["forward_ms"])
