"""Prefect flow ``eval-vipseg``: the paper's Table 1 protocol on VIPSeg, one run.

Thin orchestration over :mod:`trackgo_model.eval.vipseg` and :mod:`trackgo_model.eval.scoring`
(which never import Prefect):

    generate   conditions from the panoptic masks + tracker (Co-Tracker, or LK after a recorded
               fallback), one generated video per val video; videos already generated in the
               output folder are skipped (reruns resume)
    score      FVD / FID / ObjMC from the saved files, ObjMC by the chosen protocol (``ours`` or
               ``draganything``); a metric without extractor weights is reported missing with its
               reason (warning), the others are still computed; a run whose ObjMC is not
               comparable to the paper's says so (warning, and the first lines of results.md)

The results table (``results.md``: ours beside the paper's rows) is posted as a markdown
artifact, and the metric values as a table artifact. Tasks exchange paths and small dicts only.

Run it: ``prefect deployment run eval-vipseg/local --param vipseg=… --param checkpoint=…`` (after
``make server``), or directly ``python -m flows.eval_vipseg --vipseg DIR --checkpoint DIR``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from trackgo_data.config import apply_overrides, config_from_dict
from trackgo_model.eval.config import OBJMC_PROTOCOLS, EvalConfig
from trackgo_model.eval.scoring import score
from trackgo_model.eval.vipseg import generate


@task(name="generate")
def generate_task(cfg: EvalConfig) -> dict[str, Any]:
    return generate(cfg)


@task(name="score")
def score_task(cfg: EvalConfig) -> dict[str, Any]:
    results = score(cfg)
    keep = ("num_videos", "metrics", "tracker", "objmc_protocol", "comparable_to_paper", "not_comparable_because")
    return {k: results[k] for k in keep}


@flow(name="eval-vipseg", version="1", validate_parameters=True)
def eval_vipseg_flow(vipseg: str, checkpoint: str, svd: Optional[str] = None, out: str = "runs/eval-vipseg",
                     score_only: bool = False, max_videos: Optional[int] = None, objmc_protocol: str = "ours",
                     overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """``objmc_protocol``: ``ours`` or ``draganything`` (Table 1's). ``overrides``: ``key=value``
    strings for any EvalConfig field (e.g. ``tracker_options.repo=/path/to/co-tracker``)."""
    logger = get_run_logger()
    data: dict[str, Any] = {"vipseg": vipseg, "checkpoint": checkpoint, "svd": svd, "out": out,
                            "max_videos": max_videos, "objmc_protocol": objmc_protocol}
    cfg = config_from_dict(EvalConfig, apply_overrides(data, list(overrides or [])))
    if not score_only:
        gen = generate_task(cfg)
        logger.info("generated %d, already there %d, left out %d", len(gen["generated"]),
                    len(gen["skipped"]), len(gen["rejects"]))
    results = score_task(cfg)
    for name, metric in results["metrics"].items():
        if metric["status"] == "missing":
            logger.warning("%s NOT COMPUTED: %s", name.upper(), metric["reason"])
    if not results["comparable_to_paper"]:
        logger.warning("ObjMC NOT comparable to the paper's Table 1: %s", "; ".join(results["not_comparable_because"]))
    create_markdown_artifact(markdown=(Path(cfg.out) / "results.md").read_text(), key="eval-vipseg-results",
                             description=f"VIPSeg Table 1 protocol, {results['num_videos']} videos")
    create_table_artifact(key="eval-vipseg-metrics", description="metric values (None: not computed)",
                          table=[{"metric": k, "value": v["value"], "status": v["status"]}
                                 for k, v in results["metrics"].items()])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the eval-vipseg flow once (no deployment needed).")
    parser.add_argument("--vipseg", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--svd")
    parser.add_argument("--out", default="runs/eval-vipseg")
    parser.add_argument("--max-videos", type=int)
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--objmc-protocol", choices=list(OBJMC_PROTOCOLS), default="ours")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    results = eval_vipseg_flow(vipseg=args.vipseg, checkpoint=args.checkpoint, svd=args.svd, out=args.out,
                               score_only=args.score_only, max_videos=args.max_videos,
                               objmc_protocol=args.objmc_protocol, overrides=args.overrides)
    json.dump(results, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
