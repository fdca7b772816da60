"""Control points of each component: the K rule (Eq. 10) and 3K random pixels → K-means centres.

The same functions serve training data (first-frame masks from the segmenter) and inference
(user masks), so both see identically distributed points.
"""
from __future__ import annotations

import numpy as np

K_MIN, K_MAX = 16, 64
P_LOW, P_HIGH = 0.1, 0.4
KMEANS_N_INIT = 1  # centres of 3K uniform samples are stable; one k-means++ init is enough


def k_for_area(p: float) -> int:
    """Number of control points for a mask covering fraction ``p`` of the image (Eq. 10).

    K = 16 for p < 0.1, 64 for p > 0.4, and 16 + 48·(p − 0.1)/0.3 in between, rounded to the
    nearest integer (halves away from zero: 0.25 → 40 exactly; 0.175 → 28).
    """
    if not np.isfinite(p) or p < 0 or p > 1:
        raise ValueError(f"area ratio must be in [0, 1], got {p}")
    if p < P_LOW:
        return K_MIN
    if p > P_HIGH:
        return K_MAX
    k = K_MIN + (K_MAX - K_MIN) * (p - P_LOW) / (P_HIGH - P_LOW)
    return int(np.floor(k + 0.5 + 1e-9))


def control_points(mask: np.ndarray, k: int, rng: np.random.Generator | int) -> np.ndarray:
    """mask (H,W) bool, k → centres (k',2) float32 as (x, y) pixels, k' = min(k, #pixels).

    Draws 3k distinct pixels of the mask uniformly (all pixels if the mask has fewer), then runs
    sklearn KMeans(k', n_init=KMEANS_N_INIT) seeded from ``rng``. A centre whose pixel (rounded
    as the renderer rounds) is off the mask — the mean of a thin, curved or ring-shaped cluster
    can fall outside it — is replaced by the member of its own cluster nearest to it, so every
    point lies on the object and no two coincide. Centres are sorted by (y, x) so the output
    order does not depend on cluster labelling. Deterministic for a given seed.
    """
    from sklearn.cluster import KMeans

    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H,W), got {mask.shape}")
    rng = np.random.default_rng(rng)
    ys, xs = np.nonzero(mask)
    n = len(xs)
    if n == 0:
        raise ValueError("empty mask: no pixel to place control points on")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, n)
    m = min(3 * k, n)
    pick = rng.choice(n, size=m, replace=False) if m < n else np.arange(n)
    pts = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)
    if k == m:  # as many samples as clusters: every sample is its own centre
        centres = pts
    else:
        km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=int(rng.integers(2**31 - 1)))
        km.fit(pts)
        centres = snap_into_mask(km.cluster_centers_, km.labels_, pts, mask)
    order = np.lexsort((centres[:, 0], centres[:, 1]))
    return centres[order].astype(np.float32)


def snap_into_mask(centres: np.ndarray, labels: np.ndarray, samples: np.ndarray, mask: np.ndarray
                   ) -> np.ndarray:
    """centres (k,2) x,y; labels (m,) cluster of each sample; samples (m,2) x,y mask pixels; mask
    (H,W) bool → centres with every off-mask one moved onto its cluster's sample nearest to it."""
    centres = np.array(centres, np.float64)
    H, W = mask.shape
    cx = np.clip(np.round(centres[:, 0]).astype(np.int64), 0, W - 1)
    cy = np.clip(np.round(centres[:, 1]).astype(np.int64), 0, H - 1)
    for j in np.nonzero(~mask[cy, cx])[0]:
        members = samples[labels == j]
        if len(members):
            centres[j] = members[np.argmin(((members - centres[j]) ** 2).sum(1))]
    return centres


def sample_points(labels0: np.ndarray, seed: int = 0, max_components: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """labels0 (H,W) int (0 background, 1..s) → points (N,2) float32 x,y; components (N,) int64.

    Component j (0-based) is label j+1; each gets k_for_area(area share) points. Labels missing
    from the frame are skipped (their index is still j = label − 1, so colours stay fixed).
    The seed of component j is derived from (seed, j): adding a component does not move the
    points of the others.
    """
    labels0 = np.asarray(labels0)
    if labels0.ndim != 2:
        raise ValueError(f"labels0 must be (H,W), got {labels0.shape}")
    total = labels0.size
    ids = [int(i) for i in np.unique(labels0) if i > 0]
    if max_components is not None:
        ids = [i for i in ids if i <= max_components]
    pts, comps = [], []
    for lab in ids:
        mask = labels0 == lab
        k = k_for_area(mask.sum() / total)
        c = control_points(mask, k, np.random.default_rng([seed, lab - 1]))
        pts.append(c)
        comps.append(np.full(len(c), lab - 1, np.int64))
    if not pts:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(pts), np.concatenate(comps)
