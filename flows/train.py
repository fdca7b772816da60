"""Prefect flow ``train``: the same entry point as ``trackgo train``, watched from the Prefect UI.

The flow is a thin wrapper around :func:`trackgo_model.train.train` (the library never imports
Prefect). It posts a progress artifact (steps done / total, updated every ``log_every`` steps)
and, at the end, a table artifact with the final metrics and a markdown artifact pointing at the
checkpoint and the TensorBoard folder.

    prefect deployment run train/local --param config=tiny-cpu
    python -m flows.train --config tiny-cpu [dotted.key=value …] [--resume] [--max-steps N]

Multi-GPU runs are launched with ``accelerate launch`` (infra/train/); this flow runs one process.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.artifacts import update_progress_artifact

from trackgo_model.train import train
from trackgo_model.train.config import load_train_config


@flow(name="train", log_prints=False)
def train_flow(config: str = "tiny-cpu", overrides: Optional[list[str]] = None, resume: bool = False,
               max_steps: Optional[int] = None) -> dict[str, Any]:
    """Train TrackGo with config NAME_OR_FILE plus ``dotted.key=value`` overrides."""
    logger = get_run_logger()
    cfg = load_train_config(config, list(overrides or []))
    total = min(cfg.max_steps, max_steps) if max_steps else cfg.max_steps
    progress = create_progress_artifact(progress=0.0, key="train-progress",
                                        description=f"{cfg.name}: steps done of {total}")

    def on_log(step: int, metrics: dict[str, float]) -> None:
        update_progress_artifact(progress, progress=100.0 * step / total)
        logger.info("step %d: loss %.4f (mse %.4f, attn %.4f) lr %.2e", step, metrics["loss"],
                    metrics["loss_mse"], metrics["loss_attn"], metrics["lr"])

    result = train(cfg, resume=resume, stop_at=max_steps, callback=on_log)
    update_progress_artifact(progress, progress=100.0 * result["step"] / total)
    create_table_artifact(key="train-final-metrics", description=f"{cfg.name}: final metrics",
                          table=[{"metric": k, "value": v} for k, v in sorted(result.items())])
    create_markdown_artifact(key="train-outputs", description="where the run wrote its outputs", markdown=(
        f"### {cfg.name}\n\n- checkpoint: `{result.get('checkpoint')}`\n"
        f"- TensorBoard: `tensorboard --logdir {cfg.run_path / 'tb'}`\n"
        f"- validation videos: `{cfg.run_path / 'val'}`\n"))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.train")
    ap.add_argument("--config", default="tiny-cpu")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-steps", type=int, default=None)
    args = ap.parse_args(argv)
    result = train_flow(config=args.config, overrides=args.overrides, resume=args.resume, max_steps=args.max_steps)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
