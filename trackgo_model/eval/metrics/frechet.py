"""Fréchet distance between two Gaussians fitted to feature sets (the FID / FVD core).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁Σ₂)^{1/2})

The matrix square root is scipy's ``linalg.sqrtm``. Two numerical cases are handled the way the
widely used reference implementations do:

* a singular product (non-finite square root, e.g. fewer samples than dimensions): ``eps`` is
  added to both covariance diagonals and the root is taken again;
* a tiny imaginary part from rounding: dropped when the diagonal's imaginary part is within
  ``imag_atol``; a larger one is an error (the inputs are not covariance matrices).
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import linalg

log = logging.getLogger(__name__)


class FrechetError(ValueError):
    """Inputs cannot give a Fréchet distance (shape mismatch, too few samples, complex root)."""


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features: (N, D) → (mu (D,) float64, sigma (D, D) float64), unbiased covariance.

    N ≥ 2 is required (a covariance from one sample is undefined).
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise FrechetError(f"features must be (N, D), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise FrechetError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise FrechetError("features contain NaN or inf")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    eps: float = 1e-6,
    imag_atol: float = 1e-3,
) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2).

    mu1, mu2: (D,); sigma1, sigma2: (D, D). Returns a float ≥ 0 up to rounding.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise FrechetError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise FrechetError(f"covariances must be ({mu1.shape[0]}, {mu1.shape[0]}): got {s1.shape}, {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("Fréchet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=imag_atol):
            raise FrechetError(
                f"matrix square root has a large imaginary component ({np.max(np.abs(covmean.imag)):.3g}); "
                "the inputs are not valid covariance matrices"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray, **kw) -> float:
    """feats1: (N1, D), feats2: (N2, D) → Fréchet distance of their Gaussian fits."""
    m1, s1 = feature_statistics(feats1)
    m2, s2 = feature_statistics(feats2)
    return frechet_distance(m1, s1, m2, s2, **kw)
