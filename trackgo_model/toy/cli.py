"""``trackgo toy all|videos|data|vae|base|calibrate|trackgo|eval|status|compare|seeds`` (registered into ``trackgo``).

    trackgo toy all                         # every stage; a rerun skips finished stages
    trackgo toy base --set base_overrides=[max_steps=100]
    trackgo toy status                      # which stages are done, their wall and CPU seconds
    trackgo toy seeds                       # after all: each variant again with seeds 1, 2 (intervals over seeds)
    trackgo toy all --config my-toy.yaml --set out=runs/toy2

Exit codes: 0 done; 2 bad config or a stage folder made from other inputs; 1 a stage failed.
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)



def register(subparsers) -> None:
    from .stages import STAGES

    p = subparsers.add_parser("toy", help="the toy reproduction: synthetic videos → shards → VAE → base → λ → "
                                          "TrackGo + ablations → evaluation (resumable)",
                              description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("all", *STAGES, "status", "compare", "seeds"),
                   help="stage to run (all: every stage in order; compare: the peers' injection beside "
                        "TrackGo, after all; seeds: every variant trained with more seeds, after all)")
    p.add_argument("--config", default="toy", help="toy config name (trackgo_model/configs) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set out=runs/toy2 (repeatable)")
    p.set_defaults(func=_run)


def run(cfg, stages: tuple[str, ...]) -> dict:
    """Run ``stages`` (in pipeline order) of the toy; returns {stage: record}."""
    from . import stages as toy_stages

    steps = {"videos": toy_stages.videos, "data": toy_stages.data, "vae": toy_stages.vae, "base": toy_stages.base,
             "calibrate": toy_stages.calibrate, "trackgo": toy_stages.trackgo, "eval": toy_stages.evaluation}
    return {name: steps[name](cfg) for name in toy_stages.STAGES if name in stages}


def status(cfg) -> dict:
    from .stages import STAGES, read_record

    rows = {}
    for name in (*STAGES[:5], *(f"trackgo-{v}" for v in cfg.variants), *STAGES[5:]):
        record = read_record(cfg, name)
        rows[name] = {"done": record is not None,
                      **({"wall_s": record["wall_s"], "cpu_s": record["cpu_s"]} if record else {})}
    return rows


def _run(args: argparse.Namespace) -> int:
    from trackgo_data.config import ConfigError

    from .config import load_toy_config

    try:
        cfg = load_toy_config(args.config, args.overrides)
        if args.stage == "status":
            print(json.dumps(status(cfg), indent=1))
            return 0
        from .stages import STAGES

        if args.stage == "compare":
            from .compare import compare

            recs = {"compare": compare(cfg)}
        elif args.stage == "seeds":
            from .seeds import seeds

            recs = {"seeds": seeds(cfg)}
        else:
            recs = run(cfg, STAGES if args.stage == "all" else (args.stage,))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    summary = {k: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "skipped": r.get("skipped", False)}
               for k, r in recs.items()}
    if "eval" in recs:
        summary["results"] = str(cfg.out_path / "results.md")
    print(json.dumps(summary, sort_keys=True))
    return 0
