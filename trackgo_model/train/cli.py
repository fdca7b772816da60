"""The ``trackgo train`` subcommand and ``python -m trackgo_model.train`` (what ``torchrun -m`` and
``accelerate launch -m`` run). Light on purpose: registering the subcommand imports neither torch
nor the loop, so ``trackgo data …`` starts without them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny-cpu", help="config name (tiny-cpu, svd-xt-paper) or a YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of run_dir")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this global step (checkpointed); the LR schedule still spans max_steps")


def _run(args: argparse.Namespace) -> int:
    from trackgo_data.config import ConfigError

    from .config import load_train_config
    from .data import MissingShardsError
    from .loop import NonFiniteLossError, train

    try:
        cfg = load_train_config(args.config, args.overrides)
        if not cfg.model.tiny:
            cfg.resolved_weights_path()  # one clear error before anything heavy
        result = train(cfg, resume=args.resume, stop_at=args.max_steps)
    except (ConfigError, MissingShardsError, NonFiniteLossError) as exc:
        log.error("%s", exc)
        return 2
    if _rank() == 0:  # the command's product: final metrics as one JSON line
        print(json.dumps(result, sort_keys=True))
    return 0


def _rank() -> int:
    """This process's global rank as the launcher (torchrun, accelerate launch) set it."""
    return int(os.environ.get("RANK", "0"))


def _calibrate(args: argparse.Namespace) -> int:
    from trackgo_data.config import ConfigError

    from .calibrate import calibrate_attention_weight
    from .config import load_train_config
    from .data import MissingShardsError

    try:
        cfg = load_train_config(args.config, args.overrides)
        if not cfg.model.tiny:
            cfg.resolved_weights_path()
        result = calibrate_attention_weight(cfg, batches=args.batches, ratio=args.ratio)
    except (ConfigError, MissingShardsError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train TrackGo on webdataset shards (accelerate; resumable)",
                              description="fine-tune TrackGo (encoder + adapters + temporal attention) on shards")
    add_arguments(p)
    p.set_defaults(func=_run)
    c = subparsers.add_parser("calibrate-attention", help="λ of the attention loss from gradient norms at the "
                              "model a run starts from (trackgo_model.train.calibrate)",
                              description="print λ such that λ·‖∇L_attn‖ = ratio·‖∇L_mse‖ on the temporal W_q/W_k "
                                          "(median over training batches), as one JSON line")
    c.add_argument("--config", default="tiny-cpu", help="config name or a YAML path")
    c.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    c.add_argument("--batches", type=int, default=8, help="training batches measured (median)")
    c.add_argument("--ratio", type=float, default=1.0, help="wanted ‖λ·∇L_attn‖ / ‖∇L_mse‖")
    c.set_defaults(func=_calibrate)


def main(argv: list[str] | None = None) -> int:
    """``python -m trackgo_model.train …``."""
    parser = argparse.ArgumentParser(prog="trackgo train")
    add_arguments(parser)
    args = parser.parse_args(argv)
    # one process logs progress; the others only warnings and errors (prefixed with their rank)
    rank = _rank()
    tag = "" if rank == 0 else f"[rank {rank}] "
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    return _run(args)
