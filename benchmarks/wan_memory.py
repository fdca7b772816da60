"""Memory of one TrackGo-on-Wan training step per GPU, for the options that decide whether it fits
(``trackgo_model.wan.memory``): activations measured on fake tensors in this run, parameters
counted on the meta device.

    python benchmarks/wan_memory.py                                  # Wan2.1-I2V-14B, 81×480×832, 8 GPUs
    python benchmarks/wan_memory.py --preset tiny --frames 9 --height 32 --width 48 --processes 2

Prints one JSON line (also written to ``--out``): the measured activations and, per option set
(block checkpointing on/off × re-shard after forward on/off), every term in GiB, the total and
whether it fits an 80 GB card, plus the ratio of each total to 80 GB.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("wan_memory")


def run(argv: list[str] | None = None) -> dict:
    from trackgo_model.wan.memory import measure_activations, step_memory

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="wan2.1-i2v-14b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    size = dict(frames=args.frames, height=args.height, width=args.width)
    acts = measure_activations(args.preset, **size)
    options = {}
    for checkpointing in (True, False):
        for reshard in (True, False):
            plan = step_memory(args.preset, acts, processes=args.processes, reshard=reshard,
                               checkpointing=checkpointing, **size)
            plan["ratio_to_80gb"] = plan["total"] * 2 ** 30 / 80e9
            options[f"checkpointing={checkpointing},reshard={reshard}"] = plan
    result = {"preset": args.preset, **size, "processes": args.processes,
              "activations_gib": {k: v / 2 ** 30 for k, v in acts.items()}, "options": options,
              "seconds": round(time.perf_counter() - t0, 2)}
    line = json.dumps(result, sort_keys=True)
    sys.stdout.write(line + "\n")
    if args.out is not None:
        from trackgo_data.config import atomic_write_text

        atomic_write_text(args.out, line + "\n")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
