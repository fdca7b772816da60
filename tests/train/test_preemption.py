"""Preemption: SIGTERM to a real training process, to a 2-process torchrun group (what the kubelet
does to a pod's launcher) and the SLURM batch script's time-limit signal each leave a checkpoint
of the step reached, which a resumed run continues from.

The SLURM script runs as written, with two stand-ins on PATH for what only a SLURM cluster has:
``srun`` (runs the step's command here and passes SIGTERM on to it, as srun forwards signals to its
tasks) and ``scontrol`` (``show hostnames`` → 127.0.0.1; ``requeue`` is recorded)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import free_port
from tests.train.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: far beyond what the tests reach: the runs stop only through the signal
LONG = {"max_steps": 100000, "checkpoint_every": 100000, "global_batch_size": 2, "keep_checkpoints": 0}

FAKE_SRUN = """#!/usr/bin/env bash
# srun stand-in: one task on this machine; SIGTERM/SIGINT go on to the task, as srun forwards them
while [[ "${1:-}" == -* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0
"$@" &
task=$!
trap 'kill -TERM "$task"' TERM INT
while :; do wait "$task"; rc=$?; kill -0 "$task" 2>/dev/null || exit "$rc"; done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol stand-in: the node list is this machine; requeue is recorded
case "$1 ${2:-}" in
  "show hostnames") echo 127.0.0.1 ;;
  requeue*) echo "$*" >> "$SCONTROL_LOG" ;;
  *) echo "scontrol stand-in: $*" >&2; exit 1 ;;
esac
"""


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false",
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, log: Path, timeout: float = 300) -> None:
    """Until the run has logged ``step`` (the training loop is past start-up, its handler is set)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if max(_steps(run), default=0) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step} ({proc.returncode}):\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no step {step} after {timeout}s:\n{log.read_text()[-4000:]}")


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"did not stop {timeout}s after the signal:\n{log.read_text()[-4000:]}")


def _checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))


def _state(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"checkpoint-{step:06d}" / "state.json").read_text())


def test_sigterm_to_one_process_writes_a_checkpoint_that_resumes(tiny_shards, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, "-m", "trackgo_model.train", "--config", "tiny-cpu"]
    ov = tiny_overrides(tiny_shards, tiny_model_dir, run, **LONG)
    log = tmp_path / "train.log"
    proc = _start([*train, *ov], log, _env())
    _wait_for_step(proc, run, 2, log)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc, log) == 0, log.read_text()[-4000:]
    stopped = max(_steps(run))
    assert _checkpoints(run) == [stopped]  # not a checkpoint_every multiple: written because of the signal
    assert _state(run, stopped)["step"] == stopped
    assert "stopping after this step" in log.read_text()

    log2 = tmp_path / "resume.log"
    proc = _start([*train, "--resume", "--max-steps", str(stopped + 2), *ov], log2, _env())
    assert _finish(proc, log2) == 0, log2.read_text()[-4000:]
    assert _checkpoints(run) == [stopped, stopped + 2]
    assert _steps(run) == list(range(1, stopped + 3))  # continued at stopped + 1, nothing redone twice


def test_sigterm_to_a_torchrun_group_then_slurm_time_limit_requeues(tiny_shards, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(tiny_shards, tiny_model_dir, run, **LONG)

    # 1. launch.sh, 2 processes under torchrun; SIGTERM to the launcher only (a pod's PID 1)
    log = tmp_path / "torchrun.log"
    env = _env(LAUNCHER="torchrun", MASTER_PORT=str(free_port()), PYTHON=sys.executable)
    proc = _start(["bash", "infra/train/launch.sh", "cpu2", "--config", "tiny-cpu", *ov], log, env)
    _wait_for_step(proc, run, 2, log)
    os.kill(proc.pid, signal.SIGTERM)
    _finish(proc, log)  # torchrun exits non-zero after a signal; what counts is the checkpoint
    first = max(_steps(run))
    assert _checkpoints(run) == [first], log.read_text()[-4000:]
    state = _state(run, first)
    assert state["step"] == first and state["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / f"checkpoint-{first:06d}").glob("rng-rank*.pt")) == \
        ["rng-rank0.pt", "rng-rank1.pt"]
    assert log.read_text().count("stopping after this step") >= 2  # both workers got it from the launcher

    # 2. the SLURM batch script resumes it (--resume is in the script); the time-limit signal (USR1
    #    to the batch shell) stops the 2-process step with a checkpoint and requeues the job
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    requeues = tmp_path / "scontrol.log"
    env = _env(SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_JOB_NODELIST="node1",
               GPUS_PER_NODE="2", LAUNCHER="torchrun", TRACKGO_TRAIN_CONFIG="tiny-cpu", PYTHON=sys.executable,
               MASTER_PORT=str(free_port()), SCONTROL_LOG=str(requeues))
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    log = tmp_path / "sbatch.log"
    proc = _start(["bash", "infra/train/slurm.sbatch", *ov], log, env)
    _wait_for_step(proc, run, first + 2, log)
    os.kill(proc.pid, signal.SIGUSR1)
    assert _finish(proc, log) == 0, log.read_text()[-4000:]
    second = max(_steps(run))
    assert second >= first + 2
    assert _checkpoints(run) == [first, second], log.read_text()[-4000:]
    assert _state(run, second)["world_size"] == 2
    assert _steps(run) == list(range(1, second + 1))  # resumed at first + 1
    assert requeues.read_text().split() == ["requeue", "4242"]
