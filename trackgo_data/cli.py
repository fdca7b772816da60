"""``trackgo data build|plan|compact|inspect`` (registered into the ``trackgo`` console command).

Exit codes of ``build``: 0 done; 1 no clip accepted; 2 bad arguments or config; 3 the batch could
not run as set up — a backend that cannot load (any typo in its name, options or paths; missing
weights or package, unreachable hub), CUDA error, out of memory, storage errors, a backend failing
on every clip: nothing was recorded for the failing batch, fix it and rerun to resume.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build and inspect training shards (sample format v1)")
    sub = data.add_subparsers(dest="data_command", required=True)

    build = sub.add_parser("build", help="videos → shards + manifest.parquet, in this process")
    plan = sub.add_parser("plan", help="what a build would do (sources done, to run, removed, batches, "
                                       "estimated clips), without processing anything")
    for cmd in (build, plan):
        cmd.add_argument("--source", required=True,
                         help="folder, glob, list-file (.txt), a video file, or 'samples' (bundled clips)")
        cmd.add_argument("--out", required=True, help="output folder (shards/, parts/, manifest.parquet)")
        cmd.add_argument("--profile", default="local", help="local (flow + lk) | paper (deva + cotracker3) | "
                                                            "wan (deva + cotracker3; 81 frames at 16 fps, 832×480)")
        cmd.add_argument("--frames", type=int, default=None, help="frames per clip (default: the profile's, 25)")
        cmd.add_argument("--fps", type=float, default=None, help="clip frame rate: sources are resampled to it "
                                                                 "(default: the profile's; local, paper: the source's)")
        cmd.add_argument("--width", type=int, default=None, help="clip width (default 1024)")
        cmd.add_argument("--height", type=int, default=None, help="clip height (default 576)")
        cmd.add_argument("--stride", type=int, default=None, help="frames between window starts")
        cmd.add_argument("--batch-size", type=int, default=4, help="sources per batch (a unit of work; the source is the unit of "
                                                                          "record)")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, e.g. --set filters.min_median_motion=2 (repeatable)")
    build.add_argument("--max-clips", type=int, default=None, help="stop after this many accepted clips")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_build)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_cmd_plan)

    compact = sub.add_parser("compact", help="rewrite the shards that still hold samples of removed "
                                              "sources (the manifest no longer lists them)")
    compact.add_argument("--out", required=True, help="a build output folder")
    compact.set_defaults(func=_cmd_compact)

    inspect = sub.add_parser("inspect", help="validate shards and print a summary; non-zero exit on problems")
    inspect.add_argument("shards", nargs="+", help="shard files, globs or build output folders")
    inspect.add_argument("--json", action="store_true", help="print the problems as JSON instead of a table")
    inspect.set_defaults(func=_cmd_inspect)


def build_config_from_args(args: argparse.Namespace):
    from .build import make_config
    from .config import apply_overrides

    over: dict = {}
    clip = {k: v for k, v in (("num_frames", args.frames), ("width", args.width), ("height", args.height),
                              ("stride", args.stride), ("fps", args.fps)) if v is not None}
    if clip:
        over["clip"] = clip
    apply_overrides(over, list(args.overrides))
    return make_config(args.profile, over)


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import build_dataset
    from .config import ConfigError
    from .faults import is_infrastructure_error

    try:
        cfg = build_config_from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"trackgo data build: {exc}", file=sys.stderr)
        return 2
    try:
        summary = build_dataset(args.source, args.out, cfg, max_clips=args.max_clips,
                                batch_size=args.batch_size, progress=not args.no_progress)
    except Exception as exc:  # noqa: BLE001 - the machine's problems get the one-line treatment
        if is_infrastructure_error(exc):
            print(f"trackgo data build: a batch cannot run as set up: {exc}. Nothing was recorded for it "
                  f"(finished batches in {args.out} are kept); fix this and rerun to resume.", file=sys.stderr)
            return 3
        if isinstance(exc, (ConfigError, FileNotFoundError)):
            print(f"trackgo data build: {exc}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(summary, indent=2, sort_keys=True))
    if summary["accepted"] == 0:
        log.error("no clip was accepted (see %s/manifest.parquet for the reasons)", args.out)
        return 1
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .build import plan_summary
    from .config import ConfigError

    try:
        plan = plan_summary(args.source, args.out, build_config_from_args(args), batch_size=args.batch_size)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"trackgo data plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan, indent=2, sort_keys=True))
        return 0
    est = plan["estimated_clips"]
    print(f"sources          {plan['sources']} ({plan['source_bytes'] / 2**30:.2f} GiB), "
          f"{plan['sources_missing']} listed but missing")
    print(f"already done     {plan['sources_done']} sources")
    print(f"to run           {plan['sources_to_run']} sources in {plan['batches_to_run']} batches of "
          f"<= {plan['batch_size']}")
    print(f"removed          {plan['sources_removed']} recorded sources no longer listed (their rows leave "
          "the manifest; trackgo data compact drops their samples)")
    print(f"estimated clips  {'unknown' if est is None else f'~{est}'} candidate clips (from "
          f"{plan['probed']} probed sources, {plan['probed_unusable']} of them unusable)")
    print(f"config hash      {plan['config_hash']}; output folder: {plan['output']}")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from .build import compact

    try:
        result = compact(args.out)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"trackgo data compact: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import expand_shard_args, inspect_shards, print_report

    paths = expand_shard_args(args.shards)
    if not paths:
        print("trackgo data inspect: no shard found", file=sys.stderr)
        return 2
    report = inspect_shards(paths)
    if args.json:
        print(json.dumps({"ok": report.ok, "shards": len(report.shards), "samples": report.samples,
                          "problems": [{"shard": s, "key": k, "message": m} for s, k, m in report.problems]},
                         indent=2))
    else:
        print_report(report)
    return 0 if report.ok else 1
