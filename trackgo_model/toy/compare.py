"""``trackgo toy compare``: TrackGo beside the peers' way of taking trajectories, same budget.

Each row of ``cfg.compare`` (default ``injection``: P's encoder features added to the UNet's
feature maps, as DragAnything and MotionPro do — :mod:`trackgo_model.injection`) is fine-tuned
from the same base model with the same recipe as the ``trackgo`` row (``toy-trackgo``, the
calibrated λ where the row keeps the attention loss, the same steps, learning rates and
trainable temporal q/k/v), then generated on the same held-out clips with the same seeds and
scored with the same metric. Outputs: ``<out>/compare/<row>/`` (training), ``eval/<row>/``,
``compare.json`` (rows, references, paired differences — like results.json) and ``compare.md``.
Not part of ``make toy`` (outside its time budget); needs its ``trackgo`` and ``eval`` stages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trackgo_data.config import atomic_write_json, atomic_write_text, config_hash, config_to_dict

from .config import ToyConfig
from .stages import calibrated_lambda, finetune_config, model_size, need, run_stage, train_variants


def compare_configs(cfg: ToyConfig) -> dict[str, Any]:
    lam = calibrated_lambda(cfg)
    return {row: finetune_config(cfg, row, overrides, cfg.out_path / "compare" / row, attn_loss_weight=lam)
            for row, overrides in cfg.compare.items()}


def evaluate_compare(cfg: ToyConfig, rows: list[str]) -> dict[str, Any]:
    """Generate the compare rows (base and trackgo are reused from the eval stage), score every row
    next to the references, write compare.json and compare.md."""
    import torch

    from . import report
    from .evaluate import generate_all, generation_jobs, heldout_samples, score_rows, scoring_tools
    from .summary import summarise

    torch.set_num_threads(cfg.threads)
    size, frames = model_size(cfg)
    out = cfg.out_path
    samples = heldout_samples(cfg, size, frames, cfg.eval.num_clips)
    run_dirs = {"trackgo": out / "trackgo" / "trackgo", **{row: out / "compare" / row for row in rows}}
    jobs = [j for j in generation_jobs(cfg, [s.key for s in samples], run_dirs)
            if (out / "eval" / "curve") not in Path(j.folder).parents]  # final checkpoints only
    generate_all(cfg, jobs, size, frames)
    tracker, vae = scoring_tools(cfg)
    names = ["base", "trackgo", *rows]
    scores = score_rows(cfg, {row: out / "eval" / row for row in names}, samples, tracker, vae)
    results = summarise(scores, names, replicates=cfg.eval.bootstrap_replicates, seed=cfg.eval.bootstrap_seed)
    results.update({"model_size": list(size), "num_frames": frames, "per_clip": scores,
                    "rows_config": {row: list(cfg.compare[row]) for row in rows}})
    atomic_write_json(out / "compare.json", results)
    atomic_write_text(out / "compare.md", report.compare_markdown(results))
    return {row: results["rows"][row] for row in names}


def compare(cfg: ToyConfig) -> dict[str, Any]:
    """Train every compare row (stages ``compare-<row>``), then evaluate (stage ``compare``)."""
    need(cfg, "eval")
    upstream = config_hash([need(cfg, "base"), need(cfg, "calibrate")])
    cfgs = compare_configs(cfg)
    run_stage(cfg, "compare-train", [upstream, {r: config_to_dict(c) for r, c in cfgs.items()}],
              train_variants, cfg, cfgs, upstream, "compare")
    inputs = [need(cfg, "trackgo-trackgo"), *(need(cfg, f"compare-{r}") for r in cfgs),
              config_to_dict(cfg.eval), list(model_size(cfg))]
    return run_stage(cfg, "compare", inputs, evaluate_compare, cfg, list(cfgs))
