"""Pieces of the 3D-CVAE detector that need no network: its PPCA initialisation (the principal
axes above the noise's Marchenko-Pastur edge) and the prefix scorer of nested models.

Kept apart from :mod:`eelsanom.detectors.cvae3d` so that module stays one job, the detector
(issue 21: no module over 900 lines); ``cvae3d`` re-exports every name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._gaussian import top_eigh

__all__ = ["PCA_EDGE", "PrefixScorer"]

#: principal axes start in the model when their variance exceeds this multiple of the
#: noise's Marchenko-Pastur edge
PCA_EDGE = 1.1


def _inv_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


class PrefixScorer:
    """``m -> (ny, nx)`` map of a fitted 3D-CVAE decoded from the first ``m`` latent dimensions.

    Made by :meth:`CVAE3DDetector.prefix_scorer`; pass it to
    :func:`eelsanom.latent.prefix_curve` (which then defaults to ``prefixes``).

    Parameters
    ----------
    fn : callable
        ``m -> ndarray (ny, nx)``.
    prefixes, nested, kind
        See Attributes.

    Attributes
    ----------
    prefixes : tuple of int
        The trained Matryoshka prefixes of a nested model, else ``1..latent_dim``.
    nested : bool
        Whether the model was trained with nested latents.
    kind : str
        Which map: ``"score"`` or ``"recon_nll"``.
    """

    def __init__(self, fn: Any, prefixes: tuple[int, ...], nested: bool, kind: str) -> None:
        self._fn = fn
        self.prefixes = tuple(int(p) for p in prefixes)
        self.nested = bool(nested)
        self.kind = kind

    def __call__(self, m: int) -> np.ndarray:
        return self._fn(m)

    def __repr__(self) -> str:
        return (f"PrefixScorer(kind={self.kind!r}, prefixes={self.prefixes}, "
                f"nested={self.nested})")


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal axes ``(k', E)`` and variances ``(k',)`` of the rows of ``x (n, E)``.

    Decomposed on the smaller side: the ``n x n`` Gram matrix of the centred rows
    when ``n < E`` (then ``k' = min(k, n)``: the other axes have zero variance),
    else the ``E x E`` covariance, of which only the top ``k`` eigenvectors are
    computed (``k' = min(k, E)``). Signs are fixed (largest loading positive) so the
    result does not depend on the LAPACK build.
    """
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    n, ne = x.shape
    dof = max(n - 1, 1)
    if n < ne:
        val, v = top_eigh(x @ x.T / dof, min(k, n))
        comps = (x.T @ v) / np.sqrt(np.maximum(val * dof, 1e-300))
        idx = np.abs(comps).argmax(axis=0)
        comps = comps * np.where(comps[idx, np.arange(comps.shape[1])] < 0, -1.0, 1.0)
    else:
        val, comps = top_eigh(x.T @ x / dof, k)
    return np.ascontiguousarray(comps.T), val


def _pca_init(x: np.ndarray, k: int, noise_var: float, trim: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axes above the noise, their variances and the centre, for the initialisation.

    Only axes whose variance exceeds the Marchenko-Pastur edge of the noise
    (``noise_var (1 + sqrt(E / n))^2``, times 1.1) carry signal; the others are
    left out. With ``trim > 0`` (training on all pixels) the fit is repeated
    without the pixels worst explained by the previous one (the top ``trim / 2``
    by residual energy and the top ``trim / 2`` by Mahalanobis distance within
    the subspace), so a few anomalies do not get an axis of their own.
    """
    x = np.asarray(x, np.float64)
    n, ne = x.shape
    keep = np.ones(n, bool)
    for it in range(3 if trim > 0 and n >= 20 else 1):
        xk = x[keep]
        centre = xk.mean(axis=0)
        comps, var = _pca(xk, k)
        edge = noise_var * (1.0 + math.sqrt(ne / max(len(xk), 1))) ** 2
        m = var > PCA_EDGE * edge
        comps, var = comps[m], var[m]
        if it == 2 or trim <= 0 or n < 20:
            break
        dev = x - centre
        z = dev @ comps.T
        resid = np.sum(dev ** 2, axis=1) - np.sum(z ** 2, axis=1)
        maha = np.sum(z ** 2 / np.maximum(var, 1e-12), axis=1)
        keep = ((resid <= np.quantile(resid, 1.0 - trim / 2))
                & (maha <= np.quantile(maha, 1.0 - trim / 2)))
    return comps.astype(np.float32), var, centre.astype(np.float32)
