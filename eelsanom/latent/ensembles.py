"""Seed ensembles: several detectors trained with different seeds on the same data.

Zhang and Bottou, "Learning useful representations for shifting distributions"
(ICML 2023; "Learning useful representations for shifting tasks"): the
concatenation of representations trained with different seeds is richer than
any single one -- a linear read-out from the concatenation does at least as well
as from the best seed. For anomaly maps, averaging over seeds gives a steadier
map and the spread across seeds says where the map depends on the seed.

The seed-ensemble *training* option belongs to the detector
(``CVAE3DDetector(n_seeds=3)``; its ``seed_results(si)`` feeds
:func:`seed_ensemble`); this module analyses results that were already produced.
The seed maps themselves (mean, spread, disagreement) are defined once, in
:func:`eelsanom.scoring.seed_maps`, which both use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..scoring import seed_maps
from ._common import as_codes
from .similarity import linear_cka

log = logging.getLogger(__name__)

__all__ = ["SeedEnsemble", "seed_ensemble", "seed_maps", "least_squares_r2", "EnsembleR2",
           "ensemble_r2"]


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


@dataclass
class SeedEnsemble:
    """Mean and disagreement of the anomaly maps of several seeds.

    Attributes
    ----------
    mean_nll : ndarray of shape (ny, nx)
        Mean NLL over seeds (higher = more anomalous).
    std_nll : ndarray of shape (ny, nx)
        Standard deviation of the NLL over seeds.
    disagreement : ndarray of shape (ny, nx)
        Standard deviation over seeds of each pixel's *rank quantile* in its own
        seed's NLL map (0 = least, 1 = most anomalous pixel of that map). Scale-free,
        so seeds whose NLLs differ by a constant or a factor still agree; in
        [0, 0.5], 0 where all seeds rank the pixel the same.
    vote : ndarray of shape (ny, nx)
        Fraction of seeds whose mask flags the pixel (NaN when no masks were given).
    latent : ndarray of shape (ny, nx, sum of d), optional
        The seeds' latent codes concatenated along the last axis (when all have them).
    cka : ndarray of shape (n_seeds, n_seeds)
        Linear CKA between the seeds' latents (NaN without latents).
    n_seeds : int
        Number of seeds (maps) combined.
    """

    mean_nll: np.ndarray
    std_nll: np.ndarray
    disagreement: np.ndarray
    vote: np.ndarray
    latent: np.ndarray | None
    cka: np.ndarray
    n_seeds: int

    def plot(self) -> Any:
        """Mean-NLL and disagreement maps side by side; returns the matplotlib Figure.

        Returns
        -------
        matplotlib.figure.Figure
            A new two-panel figure (no pyplot state): ``mean_nll`` and ``disagreement``.
        """
        from ._plot import image, new_figure  # matplotlib: only when plotting

        fig = new_figure(size=(10.5, 4.2))
        a1, a2 = fig.subplots(1, 2)
        image(a1, self.mean_nll, title=f"mean NLL over {self.n_seeds} seeds",
              cbar_label="NLL (higher = more anomalous)", cmap="magma")
        image(a2, self.disagreement, title="seed disagreement",
              cbar_label="std of rank quantile over seeds", cmap="viridis", vmin=0)
        return fig


def seed_ensemble(results: Sequence[Any]) -> SeedEnsemble:
    """Combine the results of several seeds: mean NLL map, disagreement map, concatenated latents.

    What it tells you: the mean map is a steadier anomaly map than any one seed;
    the disagreement map shows pixels whose score depends on the training seed
    (treat them with caution); the CKA matrix says whether the seeds learned the
    same latent geometry (identical seeds give 1).

    Parameters
    ----------
    results : sequence of AnomalyResult (or dicts with ``"nll"``, ``"mask"``, ``"latent"``)
        At least two results of the same image.

    Returns
    -------
    SeedEnsemble

    Examples
    --------
    >>> import numpy as np
    >>> r = {"nll": np.arange(6.0).reshape(2, 3), "mask": None, "latent": None}
    >>> ens = seed_ensemble([r, r])
    >>> float(ens.disagreement.max())
    0.0
    """

    res = list(results)
    if len(res) < 2:
        raise InputError(f"seed_ensemble: expected at least 2 results, found {len(res)}.")
    nlls = []
    for i, r in enumerate(res):
        v = _get(r, "nll")
        if v is None:
            raise InputError(f"seed_ensemble: result {i} has no NLL map; expected "
                             "AnomalyResult objects.")
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 2:
            raise InputError(f"seed_ensemble: result {i}: expected an NLL map (ny, nx), found "
                             f"shape {a.shape}.")
        if not np.isfinite(a).all():
            raise InputError(f"seed_ensemble: result {i}: the NLL map has NaN/inf values.")
        nlls.append(a)
    shape = nlls[0].shape
    for i, a in enumerate(nlls):
        if a.shape != shape:
            raise InputError(f"seed_ensemble: expected results of the same image: result 0 is "
                             f"{shape}, result {i} is {a.shape}.")
    stack = np.stack(nlls)
    sm = seed_maps(nlls)
    masks = [_get(r, "mask") for r in res]
    vote = (np.mean(np.stack([np.asarray(m, bool) for m in masks]), axis=0)
            if all(m is not None for m in masks) else np.full(shape, np.nan))
    lats = [_get(r, "latent") for r in res]
    latent = None
    cka = np.full((len(res), len(res)), np.nan)
    if all(v is not None for v in lats):
        codes = [as_codes(v, name=f"latent of result {i}") for i, v in enumerate(lats)]
        for i, c in enumerate(codes):
            if c.n != stack[0].size:
                raise InputError(f"seed_ensemble: result {i}'s latent covers {c.n} pixels, its "
                                 f"NLL map {stack[0].size}.")
        latent = np.concatenate([c.z for c in codes], axis=1).reshape(*shape, -1)
        for i in range(len(codes)):
            cka[i, i] = 1.0
            for j in range(i + 1, len(codes)):
                cka[i, j] = cka[j, i] = linear_cka(codes[i], codes[j])
    elif any(v is not None for v in lats):
        log.warning("seed_ensemble: only some results have latent codes; no concatenation")
    return SeedEnsemble(mean_nll=sm["mean"], std_nll=sm["std"],
                        disagreement=sm["disagreement"], vote=vote, latent=latent, cka=cka,
                        n_seeds=len(res))


def least_squares_r2(z: Any, target: Any) -> float:
    """In-sample R^2 of the least-squares linear prediction (with intercept) of a target from codes.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
    target : array of shape (n,), (ny, nx) or (n, t)
        Per-pixel quantity to read out (a physical map: thickness, an edge
        position, a ground-truth label...). With several columns, R^2 is
        ``1 - total residual / total variance`` over all columns.

    Returns
    -------
    float
        In [0, 1] (NaN for a constant target).
    """
    c = as_codes(z, name="Z", min_points=2)
    y = np.asarray(target, dtype=np.float64)
    if y.ndim == 2 and c.shape is not None and y.shape == c.shape:
        y = y.reshape(-1, 1)
    elif y.ndim == 1:
        y = y[:, None]
    elif y.ndim == 3 and c.shape is not None and y.shape[:2] == c.shape:
        y = y.reshape(c.n, -1)
    if y.ndim != 2 or y.shape[0] != c.n:
        raise InputError(f"target: expected one value (or row) per pixel ({c.n}), found shape "
                         f"{np.shape(target)}.")
    if not np.isfinite(y).all():
        raise InputError("target: expected finite values, found NaN/inf.")
    x = np.concatenate([c.z, np.ones((c.n, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    res = y - x @ coef
    yc = y - y.mean(axis=0)
    tot = float(np.sum(yc * yc))
    if tot == 0:
        return float("nan")
    return float(1.0 - np.sum(res * res) / tot)


@dataclass
class EnsembleR2:
    """Linear read-out quality from each seed and from their concatenation.

    Attributes
    ----------
    per_seed : ndarray of shape (n_seeds,)
    concatenated : float
        R^2 from all seeds' codes side by side; never below ``per_seed.max()``
        (in-sample, the single-seed models are nested in the concatenated one).
    """

    per_seed: np.ndarray
    concatenated: float

    @property
    def gain(self) -> float:
        """``concatenated - max(per_seed)``."""
        return float(self.concatenated - np.max(self.per_seed))


def ensemble_r2(latents: Sequence[Any], target: Any) -> EnsembleR2:
    """Least-squares R^2 of a target from each seed's codes and from their concatenation.

    What it tells you: whether seeds learned complementary information (the
    concatenation reads the target out clearly better than the best seed, Zhang
    and Bottou 2023) or redundant information (no gain).

    Parameters
    ----------
    latents : sequence of AnomalyResult or arrays (n, d_i) / (ny, nx, d_i)
        Codes of the same pixels from each seed.
    target : array of shape (n,), (ny, nx) or (n, t)
        See :func:`least_squares_r2`; a boolean mask works too.

    Returns
    -------
    EnsembleR2
    """
    codes = [as_codes(v, name=f"latent {i}") for i, v in enumerate(latents)]
    if len(codes) < 1:
        raise InputError("ensemble_r2: expected at least one latent space.")
    n = codes[0].n
    for i, c in enumerate(codes):
        if c.n != n:
            raise InputError(f"ensemble_r2: latent {i} covers {c.n} pixels, latent 0 covers {n}; "
                             "expected codes of the same pixels.")
    tgt = np.asarray(target)
    if tgt.size == 0 or tgt.size % n != 0:
        raise InputError(f"target: expected one value (or row) per pixel ({n}), found shape "
                         f"{tgt.shape}.")
    y = tgt.astype(np.float64).reshape(n, -1)
    per = np.array([least_squares_r2(c.z, y) for c in codes])
    cat = np.concatenate([c.z for c in codes], axis=1)
    return EnsembleR2(per_seed=per, concatenated=least_squares_r2(cat, y))
