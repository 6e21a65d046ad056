"""Intrinsic dimension of latent codes (or spectra): global TwoNN and MLE, and a local map.

References
----------
Facco, d'Errico, Rodriguez and Laio, "Estimating the intrinsic dimension of
datasets by a minimal neighborhood information", Scientific Reports 7, 12140
(2017) (TwoNN). Levina and Bickel, "Maximum likelihood estimation of intrinsic
dimension", NeurIPS 2004, with the pooled estimate of MacKay and Ghahramani
(2005) (MLE). Pope, Zhu, Abdelkader, Goldblum and Goldstein, "The intrinsic
dimension of images and its impact on learning", ICLR 2021, and "Effect of
intrinsic dataset properties on generalization" (ID of data vs representation).
Ruppik et al., "Less is more: local intrinsic dimensions of contextual language
models" (2024) (TwoNN on each point's neighbourhood, as a map).

All estimators use exact Euclidean neighbours (``scipy`` k-d tree for d <= 8,
blocked brute force above) and never form an ``n x n`` matrix. They are
invariant to rotations, isotropic scaling and shifts of the codes (they only use
ratios of distances). Like all neighbour-based estimators they underestimate
when the sampled manifold has boundaries and high dimension (a uniform
``[0,1]^8`` cube sampled with 20,000 points reads about 7.3).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import Codes, as_codes, check_neighbours, knn, subsample

log = logging.getLogger(__name__)

__all__ = ["twonn", "mle_dimension", "local_dimension_map"]


def _codes(z: Any, max_points: int | None, seed: int, min_points: int) -> Codes:
    c = as_codes(z, name="Z", min_points=min_points)
    sel = subsample(c.n, max_points, seed)
    if sel is not None:
        c = Codes(c.z[sel], None, c.name)
    return c


def _ratios(dist: np.ndarray) -> np.ndarray:
    """``mu = r2 / r1`` per point; NaN where ``r1 == 0`` (exact duplicates)."""
    r1, r2 = dist[:, 0], dist[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(r1 > 0, r2 / np.where(r1 > 0, r1, 1.0), np.nan)
    ndup = int(np.sum(r1 == 0))
    if ndup:
        log.warning("%d codes have an exact duplicate; they are left out of the intrinsic-"
                    "dimension estimate", ndup)
    return mu


def twonn(z: Any, *, discard_fraction: float = 0.1, max_points: int | None = None,
          seed: int = 0) -> float:
    """Global intrinsic dimension by TwoNN (Facco et al., 2017).

    With ``mu = r2 / r1`` the ratio of each point's second to first neighbour
    distance, ``mu`` is Pareto-distributed with shape ``d`` on a locally uniform
    ``d``-dimensional manifold, so ``-log(1 - F(mu)) = d log(mu)``. We fit that
    line through the origin to the empirical distribution after discarding the
    largest ``discard_fraction`` of the ratios (as in the paper).

    What it tells you: how many independent degrees of freedom the codes (or
    spectra) actually vary along. A latent of size 16 with TwoNN 3 uses 3
    directions; anomalies that add a new kind of variation raise it.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``); any
        feature vectors work, e.g. spectra reshaped to ``(n, n_energy)``.
    discard_fraction : float, default 0.1
        Fraction in [0, 1) of the largest ratios left out of the fit.
    max_points : int or None, default None
        Use a random subsample of this many codes (seeded); ``None``: all.
    seed : int, default 0
        Seed of the subsample.

    Returns
    -------
    float
        Intrinsic dimension (codes with an exact duplicate are left out, with a
        logged warning).

    Raises
    ------
    InputError
        When ``discard_fraction`` is not in [0, 1), ``z`` is not valid latent
        codes (at least 4 pixels), fewer than 3 distinct codes remain, or all
        neighbour-distance ratios are 1.

    Examples
    --------
    >>> import numpy as np
    >>> plane = np.random.default_rng(0).random((2000, 2)) @ np.eye(2, 5)
    >>> round(twonn(plane), 1)
    2.0
    """
    if not 0 <= float(discard_fraction) < 1:
        raise InputError(f"discard_fraction: expected a number in [0, 1), found "
                         f"{discard_fraction!r}.")
    c = _codes(z, max_points, seed, min_points=4)
    dist, _ = knn(c.z, 2)
    return _twonn_from_dist(dist, float(discard_fraction))


def _twonn_from_dist(dist: np.ndarray, discard_fraction: float) -> float:
    mu = _ratios(dist)
    mu = np.sort(mu[np.isfinite(mu)])
    n = mu.size
    if n < 3:
        raise InputError(f"TwoNN: expected at least 3 distinct codes, found {n}.")
    f = np.arange(1, n + 1) / n
    keep = max(2, int(np.floor(n * (1.0 - discard_fraction))))
    keep = min(keep, n - 1)  # F = 1 at the last point: -log(0)
    x = np.log(mu[:keep])
    y = -np.log1p(-f[:keep])
    den = float(x @ x)
    if den == 0:
        raise InputError("TwoNN: all neighbour-distance ratios are 1 (a lattice or duplicated "
                         "codes); expected codes with varying spacing.")
    return float((x @ y) / den)


def mle_dimension(z: Any, *, k: int = 10, max_points: int | None = None,
                  seed: int = 0) -> float:
    """Global intrinsic dimension by maximum likelihood (Levina and Bickel, 2004).

    With ``T_j`` the distance of a point to its ``j``-th neighbour, the pooled
    estimate (MacKay and Ghahramani, 2005) is
    ``d = (k - 1) / mean_i sum_{j<k} log(T_k / T_j)``, the inverse of the mean of the
    per-point inverse estimates (less biased than averaging per-point estimates).

    What it tells you: as :func:`twonn`, from ``k`` neighbours instead of two (less
    noisy, more sensitive to curvature and boundaries at the scale of the
    ``k``-th neighbour).

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``); any
        feature vectors work, e.g. spectra reshaped to ``(n, n_energy)``.
    k : int, default 10
        Neighbours, ``2 <= k < n``.
    max_points : int or None, default None
        Random subsample size (seeded); ``None``: all codes.
    seed : int, default 0
        Seed of the subsample.

    Returns
    -------
    float
        Intrinsic dimension (codes with an exact duplicate are left out, with a
        logged warning).

    Raises
    ------
    InputError
        When ``z`` is not valid latent codes (at least 3 pixels), ``k`` is not
        an integer in ``[2, n - 1]``, every code has a duplicate, or all
        neighbour distances are equal.
    """
    c = _codes(z, max_points, seed, min_points=3)
    k = check_neighbours(c.n, k)
    if k < 2:
        raise InputError(f"k: the MLE needs k >= 2 neighbours, found {k}.")
    dist, _ = knn(c.z, k)
    return _mle_from_dist(dist)


def _mle_from_dist(dist: np.ndarray) -> float:
    k = dist.shape[1]
    ok = dist[:, 0] > 0
    if not ok.all():
        log.warning("%d codes have an exact duplicate; left out of the MLE", int((~ok).sum()))
    dist = dist[ok]
    if dist.shape[0] == 0:
        raise InputError("MLE: every code has an exact duplicate; expected distinct codes.")
    s = np.sum(np.log(dist[:, -1:] / dist[:, :-1]), axis=1)
    mean_s = float(np.mean(s))
    if mean_s == 0:
        raise InputError("MLE: all neighbour distances are equal; expected varying spacing.")
    return float((k - 1) / mean_s)


_LOCAL_METHODS = ("twonn", "mle")


def local_dimension_map(z: Any, *, k: int = 50, method: str = "twonn") -> np.ndarray:
    """Local intrinsic dimension of every pixel's neighbourhood in latent space, as a map.

    ``"twonn"`` (default; Ruppik et al., 2024): the TwoNN maximum-likelihood
    estimate ``d_i = (m - 1) / sum_{j in N(i)} log(mu_j)`` over the pixel and its
    ``k`` nearest neighbours (``m = k + 1``), where ``mu_j = r2/r1`` of each
    neighbour is computed once against all codes (not re-computed inside the
    neighbourhood, which changes little for ``k >= 20`` and keeps the cost to one
    k-NN query). ``"mle"``: the per-pixel Levina-Bickel estimate
    ``(k - 2) / sum_{j<k} log(T_k / T_j)`` (unbiased form, noisier).

    What it tells you: where in the image the codes live on a higher- or
    lower-dimensional set than the bulk. Bulk pixels that differ only by noise
    and thickness share a low local dimension; pixels on a boundary between
    phases or with a new spectral feature sit in regions of different dimension.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``); any
        feature vectors work, e.g. spectra reshaped to ``(n, n_energy)``.
    k : int, default 50
        Neighbourhood size, ``2 <= k < n``.
    method : {"twonn", "mle"}, default "twonn"
        Estimator, see above.

    Returns
    -------
    ndarray of shape (ny, nx), or (n,) for flat input
        NaN where undefined (duplicated codes).

    Raises
    ------
    InputError
        When ``method`` is unknown, ``z`` is not valid latent codes (at least 3
        pixels), or ``k`` is not an integer in ``[2, n - 1]``.
    """
    if method not in _LOCAL_METHODS:
        raise InputError(f"method: expected one of {_LOCAL_METHODS}, found {method!r}.")
    c = as_codes(z, name="Z", min_points=3)
    k = check_neighbours(c.n, k)
    if k < 2:
        raise InputError(f"k: a local dimension needs k >= 2 neighbours, found {k}.")
    dist, idx = knn(c.z, k)
    return c.to_map(_local_from(dist, idx, method))


def _local_from(dist: np.ndarray, idx: np.ndarray, method: str) -> np.ndarray:
    n, k = idx.shape
    if method == "twonn":
        logmu = np.log(_ratios(dist))                       # (n,), NaN for duplicates
        nb = np.concatenate([np.arange(n)[:, None], idx], axis=1)
        vals = logmu[nb]
        cnt = np.sum(np.isfinite(vals), axis=1)
        s = np.nansum(vals, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((cnt >= 2) & (s > 0), (cnt - 1) / np.where(s > 0, s, 1.0), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sum(np.log(dist[:, -1:] / dist[:, :-1]), axis=1)
        return np.where(np.isfinite(s) & (s > 0) & (k > 2),
                        (k - 2) / np.where(s > 0, s, 1.0), np.nan)
