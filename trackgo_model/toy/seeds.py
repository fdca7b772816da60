"""``trackgo toy seeds``: every TrackGo variant trained again with other training seeds, and the
results with intervals over seeds as well as clips.

The main run's intervals (results.json) resample the held-out clips: they say how well *that
trained model* is known. A claim about the recipe — the paper's Table 2 is one — also has to
survive another training run. Here each variant of ``cfg.variants`` is fine-tuned again with each
seed of ``cfg.seeds`` (the ``trackgo`` stage's run is seed 0), with the same recipe, calibrated λ
and base model, generated on the same held-out clips with the same sampling seeds, and summarised
by :func:`trackgo_model.toy.summary.summarise_seeds` (two-level bootstrap: clips, then seeds).
Outputs: ``<out>/seeds/<variant>-seed<k>/`` (training), ``eval/<variant>-seed<k>/``,
``seeds.json`` (like results.json; every run's own figures under ``rows.<row>.runs``) and
``seeds.md``. Not part of ``make toy`` (outside its time budget: one more training per variant
and seed); needs its ``trackgo`` and ``eval`` stages.
"""
from __future__ import annotations

from typing import Any

from trackgo_data.config import ConfigError, atomic_write_json, atomic_write_text, config_hash, config_to_dict

from .config import ToyConfig
from .stages import calibrated_lambda, finetune_config, model_size, need, run_stage, train_variants


def run_name(variant: str, seed: int) -> str:
    """The run of ``variant`` trained with ``seed`` (seed 0: the variant's own row name)."""
    return variant if seed == 0 else f"{variant}-seed{seed}"


def seed_configs(cfg: ToyConfig) -> dict[str, Any]:
    """{run: TrainConfig} of every variant with every extra seed."""
    lam = calibrated_lambda(cfg)
    return {run_name(v, s): finetune_config(cfg, run_name(v, s), [*over, f"seed={s}"],
                                            cfg.out_path / "seeds" / run_name(v, s), attn_loss_weight=lam)
            for s in cfg.seeds for v, over in cfg.variants.items()}


def evaluate_seeds(cfg: ToyConfig) -> dict[str, Any]:
    """Generate every extra run on the held-out clips (seed 0 and the base are reused from the eval
    stage), score them next to the references, write seeds.json and seeds.md."""
    import torch

    from . import report
    from .evaluate import generate_all, generation_jobs, heldout_samples, score_rows, scoring_tools
    from .summary import summarise_seeds

    torch.set_num_threads(cfg.threads)
    size, frames = model_size(cfg)
    out = cfg.out_path
    samples = heldout_samples(cfg, size, frames, cfg.eval.num_clips)
    extra = {run_name(v, s): out / "seeds" / run_name(v, s) for s in cfg.seeds for v in cfg.variants}
    jobs = [j for j in generation_jobs(cfg, [s.key for s in samples], extra)
            if j.row != "base" and j.folder == str(out / "eval" / j.row)]  # final checkpoints only
    generate_all(cfg, jobs, size, frames)
    tracker, vae = scoring_tools(cfg)
    runs = {"base": ["base"], **{v: [run_name(v, s) for s in (0, *cfg.seeds)] for v in cfg.variants}}
    names = [n for group in runs.values() for n in group]
    scores = score_rows(cfg, {n: out / "eval" / n for n in names}, samples, tracker, vae)
    results = summarise_seeds(scores, runs, replicates=cfg.eval.bootstrap_replicates, seed=cfg.eval.bootstrap_seed)
    results.update({"model_size": list(size), "num_frames": frames, "seeds": [0, *cfg.seeds], "per_clip": scores})
    atomic_write_json(out / "seeds.json", results)
    atomic_write_text(out / "seeds.md", report.seeds_markdown(results))
    return {row: {k: v for k, v in results["rows"][row].items() if k != "runs"} for row in runs}


def seeds(cfg: ToyConfig) -> dict[str, Any]:
    """Train every extra run (stages ``seeds-<run>``), then evaluate (stage ``seeds``)."""
    if not cfg.seeds:
        raise ConfigError("seeds: no extra training seeds configured (e.g. --set seeds=[1,2])")
    need(cfg, "eval")
    upstream = config_hash([need(cfg, "base"), need(cfg, "calibrate")])
    cfgs = seed_configs(cfg)
    run_stage(cfg, "seeds-train", [upstream, {r: config_to_dict(c) for r, c in cfgs.items()}],
              train_variants, cfg, cfgs, upstream, "seeds")
    inputs = [*(need(cfg, f"trackgo-{v}") for v in cfg.variants), *(need(cfg, f"seeds-{r}") for r in cfgs),
              config_to_dict(cfg.eval), list(model_size(cfg)), list(cfg.seeds)]
    return run_stage(cfg, "seeds", inputs, evaluate_seeds, cfg)
