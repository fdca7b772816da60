"""The ``trackgo`` console command.

Subcommands are registered by the modules that own them, each through a ``register(subparsers)``
function that adds its parser and sets ``func`` (called with the parsed namespace, returns an exit
code). Modules import their heavy dependencies inside ``func`` so ``trackgo --help`` stays fast.

    trackgo data build|inspect …      trackgo_data.cli
    trackgo model init-tiny|stats …    trackgo_model.cli.model
    trackgo generate …                 trackgo_model.cli.model
    trackgo train …                    trackgo_model.train
    trackgo metrics fid|fvd|objmc …    trackgo_model.cli.eval
    trackgo eval-vipseg …              trackgo_model.cli.eval
    trackgo eval-movebench …           trackgo_model.cli.eval
    trackgo toy all|videos|…|eval      trackgo_model.toy.cli
    trackgo studio …                   studio.cli (the browser page; gradio loads only when it runs)
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

_REGISTRARS = (
    "trackgo_data.cli",
    "trackgo_model.cli.model",
    "trackgo_model.train",
    "trackgo_model.cli.eval",
    "studio.cli",
    "trackgo_model.toy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackgo", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _REGISTRARS:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
