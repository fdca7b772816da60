"""Prefect flow ``eval-vipseg``: the paper's Table 1 protocol on VIPSeg, one run.

Thin orchestration over :mod:`trackgo_model.eval.vipseg` (which never imports Prefect):

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
from trackgo_model.eval import vipseg as E


@task(name="generate")
def generate_task(cfg: E.EvalConfig) -> dict[str, Any]:
    return E.generate(cfg)


@task(name="score")
def score_task(cfg: E.EvalConfig) -> dict[str, Any]:
    res = E.score(cfg)
    keep = ("num_videos", "metrics", "tracker", "objmc_protocol", "comparable_to_paper", "not_comparable_because")
    return {k: res[k] for k in keep}


@flow(name="eval-vipseg", version="1", validate_parameters=True)
def eval_vipseg_flow(vipseg: str, checkpoint: str, svd: Optional[str] = None, out: str = "runs/eval-vipseg",
                     score_only: bool = False, max_videos: Optional[int] = None, objmc_protocol: str = "ours",
                     overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """``objmc_protocol``: ``ours`` or ``draganything`` (Table 1's). ``overrides``: ``key=value``
    strings for any EvalConfig field (e.g. ``tracker_options.repo=/path/to/co-tracker``)."""
    logger = get_run_logger()
    data: dict[str, Any] = {"vipseg": vipseg, "checkpoint": checkpoint, "svd": svd, "out": out,
                            "max_videos": max_videos, "objmc_protocol": objmc_protocol}
    cfg = config_from_dict(E.EvalConfig, apply_overrides(data, list(overrides or [])))
    if not score_only:
        gen = generate_task(cfg)
        logger.info("generated %d, already there %d, left out %d", len(gen["generated"]),
                    len(gen["skipped"]), len(gen["rejects"]))
    res = score_task(cfg)
    for name, m in res["metrics"].items():
        if m["status"] == "missing":
            logger.warning("%s NOT COMPUTED: %s", name.upper(), m["reason"])
    if not res["comparable_to_paper"]:
        logger.warning("ObjMC NOT comparable to the paper's Table 1: %s", "; ".join(res["not_comparable_because"]))
    md = (Path(cfg.out) / "results.md").read_text()
    create_markdown_artifact(markdown=md, key="eval-vipseg-results",
                             description=f"VIPSeg Table 1 protocol, {res['num_videos']} videos")
    create_table_artifact(key="eval-vipseg-metrics", description="metric values (None: not computed)",
                          table=[{"metric": k, "value": v["value"], "status": v["status"]}
                                 for k, v in res["metrics"].items()])
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the eval-vipseg flow once (no deployment needed).")
    p.add_argument("--vipseg", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--svd")
    p.add_argument("--out", default="runs/eval-vipseg")
    p.add_argument("--max-videos", type=int)
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--objmc-protocol", choices=list(E.OBJMC_PROTOCOLS), default="ours")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    res = eval_vipseg_flow(vipseg=a.vipseg, checkpoint=a.checkpoint, svd=a.svd, out=a.out,
                           score_only=a.score_only, max_videos=a.max_videos, objmc_protocol=a.objmc_protocol,
                           overrides=a.overrides)
    json.dump(res, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
