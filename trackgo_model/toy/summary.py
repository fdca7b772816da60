"""From per-clip scores to the toy's results: point estimates, 95 % intervals, paired differences
and the verdict on each of Table 2's claims.

Per clip and row the evaluation records sums and counts (``objmc_sum``/``objmc_n`` over the
(frame, point) entries the real clip sees, ``lost_n`` of them lost by the re-tracker,
``path_sum``/``path_n`` over ground-truth object paths) and the clip's ``psnr``. A row's ObjMC
is the flat mean Σ objmc_sum / Σ objmc_n, its PSNR the mean over clips. The gap closed is

    G = (ObjMC_static − ObjMC_row) / (ObjMC_static − ObjMC_floor)

with ``static`` the first frame repeated (no motion: G = 0) and the floor ``vae_roundtrip`` (the
real clip through the VAE and back, re-tracked: G = 1, the best a generated clip can score).
Intervals: percentile bootstrap over clips (``trackgo_model.eval.bootstrap``), one set of
resampled clips for every row, so differences between rows are paired.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from trackgo_model.eval.bootstrap import gap_closed, interval, pooled, resample_indices, verdict

STATIC, FLOOR, REAL = "static", "vae_roundtrip", "real"
REFERENCES = (STATIC, FLOOR, REAL)

#: Table 2 of the paper (FVD on its internal set; lower is better) as claims "better beats than"
TABLE2_CLAIMS = (
    {"claim": "mask and attention loss together help (full vs w/o mask and loss)",
     "better": "trackgo", "than": "no_mask_no_loss"},
    {"claim": "the attention loss helps (full vs w/o attention loss)",
     "better": "trackgo", "than": "no_attn_loss"},
    {"claim": "the mask alone helps (w/o attention loss vs w/o mask and loss)",
     "better": "no_attn_loss", "than": "no_mask_no_loss"},
)
#: Table 2 reports FVD at 14k / 16k / 18k steps
PAPER_TABLE2 = {"no_mask_no_loss": (219.15, 208.31, 218.50), "no_attn_loss": (216.54, 191.54, 165.12),
                "trackgo": (204.02, 184.03, 136.11)}


def _columns(clips: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = ("objmc_sum", "objmc_n", "lost_n", "psnr", "path_sum", "path_n")
    return {k: np.array([float(c.get(k, 0.0)) for c in clips]) for k in keys}


def _replicates(col: dict[str, np.ndarray], idx: np.ndarray | None) -> dict[str, Any]:
    """Every statistic of one row on all clips (idx None) or on each replicate (idx (R, C))."""
    ones = np.ones_like(col["psnr"])
    return {"objmc": pooled(col["objmc_sum"], col["objmc_n"], idx),
            "lost_points": pooled(col["lost_n"], col["objmc_n"], idx),
            "psnr": pooled(col["psnr"], ones, idx),
            "path_error": pooled(col["path_sum"], col["path_n"], idx)}


def summarise(per_clip: dict[str, list[dict[str, Any]]], model_rows: list[str], *, replicates: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """{"rows", "references", "differences", "claims"} of results.json (module docstring).

    per_clip: {row: [clip record, …]} for every model row and every reference, the clips in one
    order (checked by ``key``)."""
    keys = [c["key"] for c in per_clip[STATIC]]
    for row, clips in per_clip.items():
        if [c["key"] for c in clips] != keys:
            raise ValueError(f"row {row!r} was scored on other clips than {STATIC!r}")
    idx = resample_indices(len(keys), replicates, seed)
    cols = {row: _columns(clips) for row, clips in per_clip.items()}
    point = {row: _replicates(c, None) for row, c in cols.items()}
    reps = {row: _replicates(c, idx) for row, c in cols.items()}
    for stats in (point, reps):
        for row in stats:
            stats[row]["gap_closed"] = gap_closed(stats[STATIC]["objmc"], stats[row]["objmc"], stats[FLOOR]["objmc"])

    return assemble(point, reps, model_rows, len(keys), replicates)


def assemble(point: dict[str, dict[str, Any]], reps: dict[str, dict[str, Any]], model_rows: list[str],
             num_clips: int, replicates: int) -> dict[str, Any]:
    """results.json's body from each row's point figures and bootstrap replicates (with G)."""
    def describe(row: str) -> dict[str, Any]:
        out: dict[str, Any] = {"num_clips": num_clips}
        for name in ("objmc", "gap_closed", "psnr", "lost_points", "path_error"):
            out[name] = float(point[row][name])
            out[f"{name}_ci95"] = interval(reps[row][name])
        return out

    differences = {}
    for a, b in comparison_pairs(model_rows):
        d: dict[str, Any] = {}
        for name in ("objmc", "gap_closed", "psnr"):
            d[name] = float(point[a][name] - point[b][name])
            d[f"{name}_ci95"] = interval(reps[a][name] - reps[b][name])
        differences[f"{a}-{b}"] = d
    return {"rows": {r: describe(r) for r in model_rows}, "references": {r: describe(r) for r in REFERENCES},
            "differences": differences, "claims": table2_verdicts(differences),
            "replicates": replicates, "num_clips": num_clips}


def summarise_seeds(per_clip: dict[str, list[dict[str, Any]]], runs: dict[str, list[str]], *,
                    replicates: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Like :func:`summarise`, with each row trained several times (training seeds).

    runs: {row: [run, …]}, each run a key of ``per_clip`` (one trained model, scored on the shared
    clips); a row with one run (the base model) has no seed variation. A row's figure is the mean
    over its runs. Two-level bootstrap: each replicate draws the clips (shared by all rows, so
    differences stay paired over clips) and, per row, as many runs as it has, with replacement
    (independent between rows: different trainings); the row's statistic on the drawn clips is
    averaged over the drawn runs. The intervals thus cover "another training seed" as well as
    "other clips". Adds ``rows[row]["runs"]``: each run's point figures.
    """
    keys = [c["key"] for c in per_clip[STATIC]]
    for name, clips in per_clip.items():
        if [c["key"] for c in clips] != keys:
            raise ValueError(f"run {name!r} was scored on other clips than {STATIC!r}")
    idx = resample_indices(len(keys), replicates, seed)
    rng = np.random.default_rng(seed + 1)
    cols = {name: _columns(clips) for name, clips in per_clip.items()}
    stats = ("objmc", "psnr", "lost_points", "path_error")
    refs = {r: (_replicates(cols[r], None), _replicates(cols[r], idx)) for r in REFERENCES}
    point: dict[str, dict[str, Any]] = {r: dict(v[0]) for r, v in refs.items()}
    reps: dict[str, dict[str, Any]] = {r: dict(v[1]) for r, v in refs.items()}
    per_run: dict[str, dict[str, float]] = {}
    for row, names in runs.items():
        run_point = [_replicates(cols[n], None) for n in names]
        run_reps = [_replicates(cols[n], idx) for n in names]
        draw = rng.integers(0, len(names), size=(replicates, len(names)))  # (R, S) runs per replicate
        point[row], reps[row] = {}, {}
        for name in stats:
            point[row][name] = float(np.mean([rp[name] for rp in run_point]))
            stacked = np.stack([rr[name] for rr in run_reps], axis=1)  # (R, S)
            reps[row][name] = np.take_along_axis(stacked, draw, axis=1).mean(axis=1)
        for n, rp in zip(names, run_point):
            per_run[n] = {k: float(rp[k]) for k in ("objmc", "psnr")}
    for table in (point, reps):
        for row in table:
            table[row]["gap_closed"] = gap_closed(table[STATIC]["objmc"], table[row]["objmc"], table[FLOOR]["objmc"])
    for n in per_run:
        per_run[n]["gap_closed"] = float(gap_closed(point[STATIC]["objmc"], per_run[n]["objmc"], point[FLOOR]["objmc"]))

    results = assemble(point, reps, list(runs), len(keys), replicates)
    for row, names in runs.items():
        results["rows"][row]["runs"] = {n: per_run[n] for n in names}
    return results


def comparison_pairs(rows: list[str]) -> list[tuple[str, str]]:
    """The paired differences reported: every variant against the base, then every pair of
    TrackGo variants (in row order)."""
    variants = [r for r in rows if r != "base"]
    pairs = [(v, "base") for v in variants if "base" in rows]
    pairs += [(a, b) for i, a in enumerate(variants) for b in variants[i + 1:]]
    return pairs


def table2_verdicts(differences: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of Table 2's claims judged on control (G: higher is better) and on fidelity (PSNR):
    ``confirms`` when the whole 95 % interval of the paired difference favours the claimed-better
    row, ``refutes`` when it wholly favours the other, else ``cannot tell``."""
    out = []
    words = {"better": "confirms", "worse": "refutes", "cannot tell": "cannot tell"}
    for claim in TABLE2_CLAIMS:
        a, b = claim["better"], claim["than"]
        sign, d = 1.0, differences.get(f"{a}-{b}")
        if d is None:
            d, sign = differences.get(f"{b}-{a}"), -1.0
        if d is None:
            continue
        entry = dict(claim)
        for name in ("gap_closed", "psnr"):
            lo, hi = (sign * x for x in d[f"{name}_ci95"])
            ci = [min(lo, hi), max(lo, hi)]
            entry[name] = {"difference": sign * d[name], "ci95": ci, "verdict": words[verdict(ci)]}
        out.append(entry)
    return out
