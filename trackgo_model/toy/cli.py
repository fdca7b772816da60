"""``trackgo toy all|videos|data|vae|base|trackgo|eval|status`` (registered into ``trackgo``).

    trackgo toy all                         # every stage; a rerun skips finished stages
    trackgo toy base --set base_overrides=[max_steps=100]
    trackgo toy status                      # which stages are done, their wall and CPU seconds
    trackgo toy all --config my-toy.yaml --set out=runs/toy2

Exit codes: 0 done; 2 bad config or a stage folder made from other inputs; 1 a stage failed.
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)

ORDER = ("videos", "data", "vae", "base", "trackgo", "eval")


def register(subparsers) -> None:
    p = subparsers.add_parser("toy", help="the toy reproduction: synthetic videos → shards → VAE → base → "
                                          "TrackGo + ablations → evaluation (resumable)",
                              description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("all", *ORDER, "status"), help="stage to run (all: every stage in order)")
    p.add_argument("--config", default="toy", help="toy config name (trackgo_model/configs) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set out=runs/toy2 (repeatable)")
    p.set_defaults(func=_run)


def run(cfg, stages: tuple[str, ...]) -> dict:
    """Run ``stages`` (in pipeline order) of the toy; returns {stage: record}."""
    from . import stages as st

    out = {}
    for name in ORDER:
        if name not in stages:
            continue
        if name == "videos":
            out[name] = st.videos(cfg)
        elif name == "data":
            out[name] = st.data(cfg)
        elif name == "vae":
            out[name] = st.vae(cfg)
        elif name == "base":
            out[name] = st.base(cfg, cfg.unet, cfg.image_encoder, cfg.model_seed, cfg.image_encoder_random_init)
        elif name == "trackgo":
            out[name] = st.trackgo(cfg)
        elif name == "eval":
            out[name] = st.evaluation(cfg)
    return out


def status(cfg) -> dict:
    from .stages import read_record

    rows = {}
    for name in (*ORDER[:4], *(f"trackgo-{v}" for v in cfg.variants), "trackgo", "eval"):
        rec = read_record(cfg, name)
        rows[name] = {"done": rec is not None, **({"wall_s": rec["wall_s"], "cpu_s": rec["cpu_s"]} if rec else {})}
    return rows


def _run(args: argparse.Namespace) -> int:
    from trackgo_data.config import ConfigError

    from .config import load_toy_config

    try:
        cfg = load_toy_config(args.config, args.overrides)
        if args.stage == "status":
            print(json.dumps(status(cfg), indent=1))
            return 0
        recs = run(cfg, ORDER if args.stage == "all" else (args.stage,))
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
