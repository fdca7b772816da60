"""Percentile bootstrap over clips for pooled metrics, paired across rows.

Every statistic here is a ratio of per-clip sums, ``Σ_c num_c / Σ_c den_c`` (a flat mean over
the entries of the clips; a per-clip mean is the case ``den_c = 1``). A bootstrap replicate draws
the clips with replacement — the same draw for every row, so differences between rows are paired
over shared clips — and recomputes the statistic on the drawn clips. The 95 % interval is the
2.5th and 97.5th percentile of the replicates.

    idx = resample_indices(num_clips=48, replicates=2000, seed=0)       # (R, C)
    reps = pooled(num, den, idx)                                        # (R,)
    lo, hi = interval(reps)
"""
from __future__ import annotations

import numpy as np


def resample_indices(num_clips: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, num_clips) clip indices drawn uniformly with replacement."""
    if num_clips < 1 or replicates < 1:
        raise ValueError("need at least one clip and one replicate")
    return np.random.default_rng(seed).integers(0, num_clips, size=(replicates, num_clips))


def pooled(num: np.ndarray, den: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray | float:
    """Σ num / Σ den over all clips (idx None → a float) or over each replicate's clips (→ (R,)).

    num, den: (C,) per-clip sums; a replicate whose denominators sum to 0 gives NaN."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"num and den must be (C,) of one shape; got {num.shape} and {den.shape}")
    if idx is None:
        total = den.sum()
        return float(num.sum() / total) if total else float("nan")
    n, d = num[idx].sum(axis=1), den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1.0), np.nan)


def interval(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval of the finite replicates (NaN, NaN when there are none)."""
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return [float("nan"), float("nan")]
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(r, [tail, 100 - tail])
    return [float(lo), float(hi)]


#: the floor must beat the static reference by this share of the static ObjMC for G to be defined
MIN_GAP = 0.05


def gap_closed(static: np.ndarray | float, row: np.ndarray | float, floor: np.ndarray | float):
    """G = (static − row) / (static − floor): 0 = no better than a frozen first frame, 1 = as good
    as the reference floor. Works elementwise on replicate arrays. NaN where the floor is not at
    least ``MIN_GAP``·static below the static reference: there is no gap to close (for example
    when the VAE's reconstructions cannot be re-tracked, so the floor scores as a frozen frame)."""
    static, row, floor = np.asarray(static, float), np.asarray(row, float), np.asarray(floor, float)
    gap = static - floor
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gap > MIN_GAP * np.abs(static), (static - row) / gap, np.nan)


def verdict(diff_interval: list[float]) -> str:
    """'better' when the whole interval of (claimed-better − other) is > 0, 'worse' when < 0,
    else 'cannot tell'."""
    lo, hi = diff_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "cannot tell"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "cannot tell"
