"""Real 2-process training on the CPU (gloo): torchrun and accelerate launch, DDP in both attention
modes, FSDP1 and FSDP2. One checkpoint per save (written by one process), replicas that agree,
resume across launchers, and sharded checkpoints that hold what a single process would write."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.processes import free_port
from tests.train.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TIMEOUT = 600


def _launch(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; kill the whole group on timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:4]} timed out after {TIMEOUT}s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"{cmd[:6]} failed ({proc.returncode}):\n{err[-5000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]


def _overrides(shards, model_dir, run, **extra) -> list[str]:
    base = dict(max_steps=4, checkpoint_every=2, global_batch_size=2, keep_checkpoints=0,
                **{"optim.max_grad_norm": 0.02})  # below the tiny model's gradient norm: clipping acts
    base.update(extra)
    ov = tiny_overrides(shards, model_dir, run, **base)
    return [x for x in ov if not (model_dir is None and x.startswith("model.tiny_dir="))]


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"checkpoint-{step:06d}"


def _tensors(run: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(_ckpt(run, step) / name))


def _same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_shards, tiny_model_dir, tmp_path_factory):
    """All launches once: {"paper_split", "paper", "gated", "fsdp1", "fsdp2": run dir, "logs": …}."""
    root = tmp_path_factory.mktemp("mp")
    r = {k: root / k for k in ("paper_split", "paper", "gated", "fsdp1", "fsdp2")}
    paper = {"model.trackgo.mode": "paper", "model.gradient_checkpointing": "true"}
    logs = {}
    # 1. torchrun, DDP: paper mode with the tiny model made by the main process first (no
    #    model.tiny_dir), a progress bar, stop at step 2 of 4; then straight runs in both modes.
    #    Every rank writes a digest of its trained tensors at each checkpoint.
    spec = root / "ddp.json"
    spec.write_text(json.dumps([
        ["--config", "tiny-cpu", "--max-steps", "2",
         *_overrides(tiny_shards, None, r["paper_split"], progress="tqdm", **paper)],
        ["--config", "tiny-cpu", *_overrides(tiny_shards, tiny_model_dir, r["paper"], **paper)],
        ["--config", "tiny-cpu", *_overrides(tiny_shards, tiny_model_dir, r["gated"])],
    ]))
    logs["torchrun"] = _launch(_torchrun("tests/train/launch_worker.py", str(spec)))
    # 2. accelerate launch (2 CPU processes) of `python -m trackgo_model.train` resumes the split run
    logs["accelerate"] = _launch([
        str(BIN / "accelerate"), "launch", "--config_file", "infra/train/accelerate-cpu-2proc.yaml",
        "--main_process_port", str(free_port()), "-m", "trackgo_model.train", "--config", "tiny-cpu", "--resume",
        *_overrides(tiny_shards, None, r["paper_split"], **paper)])
    # 3. FSDP2 and FSDP1 (gated): stop at 2, resume to 4 with a validation video at 4
    fsdp = []
    for v in (2, 1):
        ov = _overrides(tiny_shards, tiny_model_dir, r[f"fsdp{v}"], distributed="fsdp", fsdp_version=v)
        fsdp += [["--config", "tiny-cpu", "--max-steps", "2", *ov],
                 ["--config", "tiny-cpu", "--resume", *ov, "validation.every=4", "validation.num_samples=1",
                  "validation.num_inference_steps=2"]]
    spec = root / "fsdp.json"
    spec.write_text(json.dumps(fsdp))
    logs["fsdp"] = _launch(_torchrun("tests/train/launch_worker.py", str(spec), "--fsdp-on-cpu"))
    return {**r, "logs": logs}


def test_torchrun_one_writer_one_bar_and_the_tiny_model_made_once(runs):
    log = runs["logs"]["torchrun"]
    run = runs["paper_split"]
    products = [json.loads(ln) for ln in log.stdout.splitlines() if ln.startswith("{")]
    assert [p["step"] for p in products] == [2, 4, 4]  # one JSON line per run: the main process's
    assert log.stderr.count("| 0/2 [") == 1  # one progress bar
    # the main process made the tiny model; the other loaded it (no second copy, no leftovers)
    assert sorted(p.name for p in run.iterdir() if "tiny" in p.name) == ["tiny-model"]
    entries = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert entries == ["checkpoint-000002", "checkpoint-000004"]  # (4 from the accelerate resume)
    assert sorted(p.name for p in _ckpt(run, 2).glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]
    assert json.loads((_ckpt(run, 2) / "state.json").read_text())["world_size"] == 2


def test_paper_mode_trains_no_gates_and_resume_across_launchers_is_exact(runs):
    assert json.loads(runs["logs"]["accelerate"].stdout.strip().splitlines()[-1])["step"] == 4
    split, straight = runs["paper_split"], runs["paper"]
    assert json.loads((_ckpt(split, 4) / "state.json").read_text())["world_size"] == 2  # accelerate: 2 processes
    assert sorted(p.name for p in _ckpt(split, 4).glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]
    for name in ("trainable.safetensors", "ema.safetensors", "trackgo/trackgo.safetensors"):
        a, b = _tensors(split, 4, name), _tensors(straight, 4, name)
        assert not any(k.endswith(".gate") for k in a), name
        assert _same(a, b), name  # torchrun 0→2, accelerate launch 2→4 == torchrun 0→4
    oa = torch.load(_ckpt(split, 4) / "optimizer.pt", weights_only=False)["state"]
    ob = torch.load(_ckpt(straight, 4) / "optimizer.pt", weights_only=False)["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    assert [m["loss"] for m in _metrics(split)] == [m["loss"] for m in _metrics(straight)]
    # the paper-mode export loads into the pipeline
    from trackgo_model.pipeline import TrackGoPipeline

    pipe = TrackGoPipeline.from_pretrained(split / "tiny-model", _ckpt(split, 4) / "trackgo")
    assert pipe.unet.cfg.mode == "paper"


@pytest.mark.parametrize("name", ["paper", "gated"])
def test_ddp_replicas_hold_identical_weights(runs, name):
    run = runs[name]
    for step in (2, 4):
        d = [(run / "digests" / f"step-{step:06d}-rank{r}.txt").read_text() for r in (0, 1)]
        assert d[0] == d[1], (name, step)
    assert (runs["paper_split"] / "digests" / "step-000002-rank1.txt").read_text() == (
        runs["paper"] / "digests" / "step-000002-rank1.txt").read_text()
    # the digest is of the checkpointed tensors, which moved during training
    import hashlib

    t = _tensors(run, 4, "trainable.safetensors")
    h = hashlib.sha256()
    for k in sorted(t):
        h.update(k.encode())
        h.update(t[k].contiguous().numpy().tobytes())
    assert h.hexdigest() == d[0]
    assert not _same(t, _tensors(run, 2, "trainable.safetensors"))
    gates = [k for k in t if k.endswith(".gate")]
    assert (len(gates) == 4) if name == "gated" else not gates


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool((a.float() - b.float()).norm() <= rel * b.float().norm() + 1e-12)


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_checkpoints_hold_full_tensors_and_resume(runs, version):
    run, ddp = runs[f"fsdp{version}"], runs["gated"]
    for step in (2, 4):  # sharded 0→2, resumed 2→4 == DDP 0→4: weights, EMA, export, optimizer
        for name in ("trainable.safetensors", "ema.safetensors", "trackgo/trackgo.safetensors"):
            a, b = _tensors(run, step, name), _tensors(ddp, step, name)
            assert sorted(a) == sorted(b) and all(a[k].shape == b[k].shape for k in a), name
            assert all(_close(a[k], b[k]) for k in a), (step, name)
        oa = torch.load(_ckpt(run, step) / "optimizer.pt", weights_only=False)
        ob = torch.load(_ckpt(ddp, step) / "optimizer.pt", weights_only=False)
        assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
        for i, st in ob["state"].items():
            assert oa["state"][i].keys() == st.keys() and torch.equal(oa["state"][i]["step"], st["step"])
            assert all(_close(oa["state"][i][k], st[k], 1e-4) for k in ("exp_avg", "exp_avg_sq")), (step, i)
    # the gradient norm (clipping is active) is the global one on the main process
    fm, dm = _metrics(run), _metrics(ddp)
    assert [m["step"] for m in fm] == [1, 2, 3, 4]
    for x, y in zip(fm, dm):
        assert x["grad_norm"] > 0.02 and x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    vids = sorted(p.name for p in (run / "val" / "step-000004").glob("*.mp4"))
    assert len(vids) == 2  # one sample: generated + side by side, written by the main process
