"""Run several ``trackgo train`` command lines in one launched process group (test helper).

    torchrun --nproc_per_node 2 tests/train/launch_worker.py RUNS.json [--fsdp-on-cpu]

RUNS.json is a list of argument lists, each given to ``trackgo_model.train.main`` in turn (the
function ``python -m trackgo_model.train`` runs), so one launch pays the start-up once. After
every checkpoint each rank writes ``<run_dir>/digests/step-<step>-rank<rank>.txt``: the SHA-256 of
its own trainable tensors (full tensors under DDP), to show that the replicas agree.

``--fsdp-on-cpu``: accelerate turns FSDP on only for processes on accelerator devices (GPUs, …);
on CPU processes (distributed type MULTI_CPU) it keeps DDP, although torch's FSDP1 and FSDP2 both
run on the CPU with gloo. With this flag the launcher records the FSDP state the way accelerate
does on GPUs right after the Accelerator is built, so the training code's sharded path (wrapping,
global-norm clipping, full-tensor checkpoints, resume into shards) runs on a CPU-only machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from trackgo_model.train import main
from trackgo_model.train.state import TrainingState


def _fsdp_on_cpu() -> None:
    init = Accelerator.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            for shared in (PartialState._shared_state, AcceleratorState._shared_state):
                shared["distributed_type"] = DistributedType.FSDP
                shared["device"] = torch.device("cpu")  # FSDP1 checks device_id == "cpu", not "cpu:0"
            AcceleratorState._shared_state["fsdp_plugin"] = plugin

    Accelerator.__init__ = patched


def _write_digests() -> None:
    save = TrainingState.save

    def patched(self, run_dir, step, counters):
        out = save(self, run_dir, step, counters)
        h = hashlib.sha256()
        for k in sorted(self.named):
            h.update(k.encode())
            h.update(self.named[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        d = Path(run_dir) / "digests"
        d.mkdir(exist_ok=True)
        (d / f"step-{step:06d}-rank{self.accelerator.process_index}.txt").write_text(h.hexdigest())
        return out

    TrainingState.save = patched


if __name__ == "__main__":
    runs = json.loads(Path(sys.argv[1]).read_text())
    fsdp = "--fsdp-on-cpu" in sys.argv[2:]
    if fsdp:
        _fsdp_on_cpu()
    else:
        _write_digests()
    for argv in runs:
        rc = main(argv)
        if rc != 0:
            print(f"rank {os.environ.get('RANK')}: run {argv} exited with {rc}", file=sys.stderr)
            raise SystemExit(rc)
        if fsdp:  # a fresh accelerate state for the next run (the FSDP version may change)
            AcceleratorState._reset_state()
            PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU
