"""RX detector: Gaussian NLL with a shrunk bulk covariance (Reed-Xiaoli, Mahalanobis distance).

The bulk spectra (Anscombe-transformed counts) are modelled as one Gaussian
``N(mu, S)`` whose covariance is shrunk towards a scaled identity,
``S = (1 - a) S_emp + a (tr S_emp / D) I``, with ``a`` from Ledoit-Wolf, OAS, or
given. A pixel's score is its Gaussian NLL; higher = more anomalous.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import cautions
from ..errors import InputError
from ..pooling import excess_stats, pooling_from
from ..preprocess import check_gain, forward_transform, inverse_transform, transform_sigma
from ..progress import ProgressCallback, emit
from ..spectrum import SpectrumImage
from . import _schemas
from ._gaussian import (
    BLOCK_VALUES,
    Gram,
    PooledGaussian,
    auto_cutoff,
    check_common,
    gather_training,
    iter_row_blocks,
    numpy_gram,
    robust_rule,
    sample_pixels,
    training_gain,
    training_where,
    trim_outlyingness,
    trimmed_fit,
)
from .base import BaseDetector

log = logging.getLogger(__name__)

__all__ = ["RXDetector", "ledoit_wolf_shrinkage", "oas_shrinkage"]

_LOG2PI = math.log(2.0 * math.pi)
SHRINKAGE_RULES = ("ledoit-wolf", "oas")


def ledoit_wolf_shrinkage(S: np.ndarray, n: int, sum_sq_norm2: float) -> float:
    """Ledoit-Wolf shrinkage towards ``(tr S / D) I`` (the formula of scikit-learn's).

    Parameters
    ----------
    S : ndarray of shape (D, D)
        Empirical (maximum-likelihood, divide by ``n``) covariance of centred rows.
    n : int
        Number of rows.
    sum_sq_norm2 : float
        ``sum_i ||x_i - mean||^4`` over the rows (the ``sum(X2.T @ X2)`` term,
        computed in ``O(n D)`` instead of ``O(n D^2)``).

    Returns
    -------
    float
        Shrinkage coefficient ``a`` in ``[0, 1]`` (0 when the estimate's ``beta`` is 0).
    """
    return _ledoit_wolf(float(np.trace(S)), float(np.sum(S * S)), S.shape[0], n, sum_sq_norm2)


def _ledoit_wolf(trace: float, frob2: float, d: int, n: int, sum_sq_norm2: float) -> float:
    """:func:`ledoit_wolf_shrinkage` from ``tr S`` and ``||S||_F^2`` (no ``D x D`` matrix needed)."""
    mu = trace / d
    beta = (sum_sq_norm2 / n - frob2) / (d * n)
    delta = (frob2 - 2.0 * mu * trace + d * mu * mu) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def oas_shrinkage(S: np.ndarray, n: int) -> float:
    """Oracle-approximating shrinkage (Chen et al. 2010, as in scikit-learn).

    Parameters
    ----------
    S : ndarray of shape (D, D)
        Empirical (maximum-likelihood, divide by ``n``) covariance of centred rows.
    n : int
        Number of rows.

    Returns
    -------
    float
        Shrinkage coefficient ``a``, at most 1 (0 when ``D == 1``, 1 when the
        denominator vanishes).
    """
    return _oas(float(np.trace(S)), float(np.sum(S * S)), S.shape[0], n)


def _oas(trace: float, frob2: float, d: int, n: int) -> float:
    """:func:`oas_shrinkage` from ``tr S`` and ``||S||_F^2`` (no ``D x D`` matrix needed)."""
    if d == 1:
        return 0.0
    alpha = frob2 / (d * d)
    mu2 = (trace / d) ** 2
    num = alpha + mu2
    den = (n + 1) * (alpha - mu2 / d)
    return 1.0 if den == 0 else float(min(num / den, 1.0))


#: with more than this many times the kept directions in training pixels, the pixel-side fit
#: takes only the kept directions' eigenpairs of their Gram matrix (and the rest from its trace)
SUBSET_EIGH_RATIO = 2

class RXDetector(PooledGaussian, BaseDetector):
    """RX anomaly detector: Gaussian NLL under a shrunk bulk covariance (higher = more anomalous).

    The model and its fit
        Mean ``mu`` and empirical covariance ``S_emp`` (divide by ``n``) of the
        transformed training spectra; ``S = (1 - a) S_emp + a (tr S_emp / D) I`` with
        ``a`` chosen by ``shrinkage`` (``"ledoit-wolf"``, ``"oas"``, or a number in
        [0, 1]). (No PCA-reduced variant: RX restricted to the bulk's leading
        components is blind to anomalies outside that subspace; with an isotropic
        term for the rest it becomes PPCA, :class:`~.pca.PCADetector`.)

    Score
        ``NLL = 0.5 * (maha^2 + log|S| + D log(2 pi))`` with
        ``maha^2 = (x - mu)^T S^-1 (x - mu)``, in transformed units; ``maha^2`` is
        also returned as ``maps["mahalanobis2"]``. Pixels are streamed in blocks.

    Training without a mask (robust)
        ``train_mask=None`` trains on all pixels by trimming (C-steps, a
        minimum-covariance-determinant-like estimate): fit on all pixels, rank them
        by outlyingness, refit on all but the most outlying (``robust_fraction``, by
        default chosen from the scores at each step), and
        repeat until the kept set no longer changes, at most ``robust_iter`` times.
        Outlyingness (:func:`~._gaussian.outlyingness`) is the largest robust
        z-score (median, MAD) over the whitened coordinates (eigendirections of
        ``S``) and the Mahalanobis distance: a rare anomaly class inflates the
        variance of the directions it lies along, which hides it from the plain
        distance, but hardly their MAD. A pixel's outlyingness is the largest it
        had under any fit so far (this stops the loop from cycling), and the larger
        of its own and its neighbourhood's (as :class:`~.pca.PCADetector`). With a
        mask the masked pixels are used as given.

    Reconstruction
        The mean is the bulk mean spectrum (the same for every pixel), mapped back to
        counts; sigma is the square root of the diagonal of ``S``, mapped to counts
        by the delta method.

    Parameters
    ----------
    shrinkage : {"ledoit-wolf", "oas"} or float
    energy_range : (float, float), optional
        Energy window in eV to model; ``None`` uses the whole axis.
    threshold : str or float
        Threshold spec (see :func:`eelsanom.scoring.parse_threshold`).
    transform : {"anscombe", "none"}
    robust_fraction : "auto" or float
        Pixels dropped at each trimmed refit when there is no mask (``"auto"``, the
        default: chosen from the outlyingness at each refit); as
        :class:`~.pca.PCADetector`.
    robust_iter : int
        Most trimmed refits (0: plain fit on all pixels); stops early once the kept
        pixels no longer change.
    pooling : float
        Neighbourhood evidence pooling (:mod:`eelsanom.pooling`) on the whitened
        deviations: the Gaussian sigma in pixels (0, the default, scores each
        pixel by its own Gaussian NLL; ``maps["gaussian_nll"]`` keeps it when pooled).
    seed : int
        Kept for a uniform interface (the fit is deterministic).
    gain : "auto" or float
        Data units per detected electron, divided out before the Anscombe
        transform (``"auto"``: estimated on the training pixels, stored as
        ``gain_``); as :class:`~.pca.PCADetector`.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsanom.spectrum import Axis, SpectrumImage
    >>> rng = np.random.default_rng(0)
    >>> data = rng.poisson(50.0, size=(8, 8, 40)).astype("float32")
    >>> si = SpectrumImage(data, Axis(40, 0.3, 680.0, "eV"))
    >>> res = RXDetector().fit(si).score(si)
    >>> res.nll.shape, sorted(res.maps)
    ((8, 8), ['mahalanobis2'])
    """

    method = "rx"
    min_train_pixels = 3

    def __init__(self, *, shrinkage: str | float = "ledoit-wolf",
                 energy_range: tuple[float, float] | None = None, threshold: Any = "robust",
                 transform: str = "anscombe", robust_fraction: float | str = "auto",
                 robust_iter: int = 5, pooling: float = 0.0, seed: int = 0,
                 gain: float | str = "auto") -> None:
        self.shrinkage = shrinkage
        self.energy_range = energy_range
        self.threshold = threshold
        self.transform = transform
        self.robust_fraction = robust_fraction
        self.robust_iter = robust_iter
        self.pooling = pooling
        self.seed = seed
        self.gain = gain

    # ------------------------------------------------------------------ params
    def _validate_params(self) -> None:
        super()._validate_params()
        sh = self.shrinkage
        if isinstance(sh, str):
            if sh.lower() not in SHRINKAGE_RULES:
                raise InputError(f"shrinkage: expected one of {list(SHRINKAGE_RULES)} or a number "
                                 f"in [0, 1], got {sh!r}.")
        elif isinstance(sh, bool) or not isinstance(sh, (int, float)) or not 0 <= sh <= 1:
            raise InputError(f"shrinkage: expected one of {list(SHRINKAGE_RULES)} or a number in "
                             f"[0, 1], got {sh!r}.")
        check_common(self)
        check_gain(self.gain)
        pooling_from(self.pooling)

    # ------------------------------------------------------------------ fitting
    #: which side of the data the covariance is decomposed on (see ``_gaussian.Gram``);
    #: the benchmark's dense reference forces ``"channel"`` (and with it the exact fit: every
    #: training pixel, the full covariance)
    _gram_side = "auto"
    #: most training pixels the covariance is estimated from (a seeded subsample beyond):
    #: the fit costs ``O(n^2 D)`` on the pixel side, so it follows the channels, not their square
    max_fit_pixels: int | None = 1024
    #: directions of the shrunk covariance kept exactly; the rest share their mean variance
    #: (low rank plus isotropic, as PPCA): scoring costs ``O(D max_rank)`` per pixel, not ``D^2``
    max_rank: int | None = 64

    def _shrinkage_for(self, trace: float, frob2: float, d: int, n: int,
                       s4: Callable[[], float]) -> float:
        """The shrinkage coefficient ``a`` (``s4()``: ``sum_i ||x_i - mean||^4``, Ledoit-Wolf only)."""
        if isinstance(self.shrinkage, str) and self.shrinkage.lower() == "ledoit-wolf":
            return _ledoit_wolf(trace, frob2, d, n, s4())
        if isinstance(self.shrinkage, str):
            return _oas(trace, frob2, d, n)
        return float(self.shrinkage)

    def _fit_subset(self, gram: Gram, keep: np.ndarray) -> dict[str, Any]:
        if gram.side == "pixel":
            return self._fit_subset_pixels(gram, keep)
        X = gram.X
        d = X.shape[1]
        n = int(keep.sum())
        mean, S = gram.subset_moments(keep)
        rows = np.flatnonzero(keep)

        def s4() -> float:
            step = max(1, BLOCK_VALUES // d)
            return sum(float(np.sum(np.sum((X[rows[i:i + step]] - mean) ** 2, axis=1) ** 2))
                       for i in range(0, n, step))

        a = self._shrinkage_for(float(np.trace(S)), float(np.sum(S * S)), d, n, s4)
        Ss = (1.0 - a) * S
        Ss.flat[::d + 1] += a * float(np.trace(S)) / d
        k = self._rank_cap()
        if k is not None and k < d:  # the top k directions, the rest at their mean variance
            from scipy.linalg import eigh

            # only the top k eigenpairs (the rest's mean from the trace): O(D^2 k) after
            # the reduction instead of every eigenvector
            tr = float(np.trace(Ss))
            ek, U = eigh(Ss, subset_by_index=[d - k, d - 1])
            floor = 1e-10 * max(tr / d, 1e-30)  # 1e-10 of the mean eigenvalue, as below
            ek, U = np.maximum(ek[::-1], floor), U[:, ::-1]
            rest = max((tr - float(np.sum(ek))) / (d - k), floor)
            return {"mean": mean, "whitener": U / np.sqrt(ek),
                    "logdet": float(np.sum(np.log(ek)) + (d - k) * math.log(rest)),
                    "shrinkage": float(a), "var": np.maximum(np.diag(Ss), 0.0), "basis": U,
                    "iso_precision": 1.0 / rest}
        e, V = np.linalg.eigh(Ss)
        e = np.maximum(e, 1e-10 * max(float(np.mean(np.abs(e))), 1e-30))
        return {"mean": mean, "whitener": V / np.sqrt(e), "logdet": float(np.sum(np.log(e))),
                "shrinkage": float(a), "var": np.maximum(np.diag(Ss), 0.0)}

    def _rank_cap(self) -> int | None:
        """Directions kept exactly (``None``: all): :attr:`max_rank`, except in the exact fit."""
        return None if self._gram_side != "auto" or self.max_rank is None else int(self.max_rank)

    def _fit_subset_pixels(self, gram: Gram, keep: np.ndarray) -> dict[str, Any]:
        """The same model with fewer pixels ``n`` than channels ``D``, in ``O(n^2 D)``.

        ``S = Y^T Y / n`` has rank < n: its non-zero eigenpairs come from the
        ``n x n`` centred Gram matrix ``Kc`` (``lambda = mu / n``,
        ``u = Y^T v / sqrt(mu)``), ``tr S = tr Kc / n``, ``||S||_F^2 = ||Kc||_F^2 / n^2``
        and ``||y_i||^2 = Kc_ii``. The shrunk covariance is
        ``S_a = U diag((1-a) lambda + b) U^T + b (I - U U^T)`` with
        ``b = a tr S / D``; by Woodbury its inverse is
        ``U diag(1 / ((1-a) lambda + b)) U^T + (I - U U^T) / b``, so the model keeps
        the whitener of the ``r`` non-zero directions, their basis ``U`` and the
        isotropic precision ``1 / b`` of the rest (no ``D x D`` matrix).
        """
        d = gram.d
        n = int(keep.sum())
        rows = np.flatnonzero(keep)
        Kc, off = gram.centred_gram(rows)
        mean = gram.m0 + off
        trace = float(np.trace(Kc)) / n
        a = self._shrinkage_for(trace, float(np.sum(Kc * Kc)) / n ** 2, d, n,
                                lambda: float(np.sum(np.diag(Kc) ** 2)))
        k = self._rank_cap()
        Yc = np.asarray(gram.X[rows], np.float64) - mean
        floor = 1e-10 * max(trace / d, 1e-30)  # the dense path's floor (mean |eigenvalue|)
        b0 = a * trace / d
        b = max(b0, floor)
        top = None
        if k is not None and n > SUBSET_EIGH_RATIO * k:
            # the top k + 1 eigenpairs only (the full decomposition's vectors cost most of
            # the fit): when the rank is above k, the rest's mean variance follows from the
            # trace, ((1 - a) (tr S - sum of the top k) + (D - k) b) / (D - k)
            from scipy.linalg import eigh

            top, Vt = eigh(Kc, subset_by_index=[n - k - 1, n - 1])
            top, Vt = top[::-1], Vt[:, ::-1]
            if not top[k] > max(float(top[0]), 1e-300) * n * 1e-13:
                top = None  # rank k or less: every eigenpair, below
        if top is not None:
            mu, V, r = top[:k], Vt[:, :k], k
            e = np.maximum((1.0 - a) * mu / n + b0, floor)
            b = b + (1.0 - a) * max(trace - float(np.sum(mu)) / n, 0.0) / (d - k)
        else:
            mu, V = np.linalg.eigh(Kc)
            mu, V = mu[::-1], V[:, ::-1]
            r = int(np.sum(mu > max(float(mu[0]), 1e-300) * n * 1e-13)) if mu.size else 0
            e = np.maximum((1.0 - a) * mu[:r] / n + b0, floor)
            if k is not None and r > k:  # the top k directions, the rest at their mean
                b = float((np.sum(e[k:]) + (d - r) * b) / (d - k))
                e, r = e[:k], k
        U = (Yc.T @ V[:, :r]) / np.sqrt(mu[:r])
        var = np.maximum((1.0 - a) * np.mean(Yc * Yc, axis=0) + a * trace / d, 0.0)
        return {"mean": mean, "whitener": U / np.sqrt(e),
                "logdet": float(np.sum(np.log(e)) + (d - r) * math.log(b)),
                "shrinkage": float(a), "var": var, "basis": U, "iso_precision": 1.0 / b}

    def _set_fitted(self, m: dict[str, Any]) -> None:
        self.mean_ = np.asarray(m["mean"], np.float64)
        self.whitener_ = np.asarray(m["whitener"], np.float64)
        self.logdet_ = float(m["logdet"])
        self.shrinkage_ = float(m["shrinkage"])
        self.var_ = np.asarray(m["var"], np.float64)
        basis = m.get("basis")
        self.basis_ = None if basis is None else np.asarray(basis, np.float64)
        self.iso_precision_ = float(m.get("iso_precision", 0.0)) if basis is not None else 0.0

    def _fit(self, si: SpectrumImage, mask: np.ndarray | None,
             progress: ProgressCallback | None) -> None:
        ny, nx = si.nav_shape
        cap = None if self._gram_side != "auto" else self.max_fit_pixels
        pixels = sample_pixels(si.nav_shape, mask, cap, np.random.default_rng(self.seed))
        if pixels is None:
            self.gain_ = training_gain(si, mask, self.gain, self.transform)
        else:  # the gain from the drawn pixels too
            drawn = np.zeros(ny * nx, bool)
            drawn[pixels] = True
            self.gain_ = training_gain(si, drawn.reshape(ny, nx), self.gain, self.transform)
        X = gather_training(si, mask, self.transform, self.gain_, pixels=pixels)
        gram = Gram(X, numpy_gram, side=self._gram_side)
        # without a mask the rows' neighbourhoods are scored too (their own image positions)
        where = None
        if mask is None:
            where = training_where(self, pixels, (ny, nx))

        def score(model: dict[str, Any]) -> np.ndarray:
            self._set_fitted(model)
            return self._trim_score(X, where)

        fraction, adaptive = robust_rule(self.robust_fraction)
        model, keep = trimmed_fit(X.shape[0], lambda keep, final: self._fit_subset(gram, keep),
                                  score, robust=mask is None,
                                  robust_fraction=fraction,
                                  cutoff=(lambda m: auto_cutoff((X.shape[1] + 1) * (
                                      1 if where is None else 2))) if adaptive
                                  else None,
                                  robust_iter=int(self.robust_iter),
                                  min_keep=self.min_train_pixels, progress=progress)
        self._set_fitted(model)
        self.n_train_ = int(keep.sum())
        self.n_trimmed_ = int(keep.size - keep.sum())
        m2 = self._maha2_rows(X[keep])
        n_pool = self._pool_channels()
        self.pool_excess_ = excess_stats(0.5 * m2, np.full(m2.shape, 0.5 * n_pool), n_pool)
        log.info("RX: shrinkage %.4g, %d training pixels (%d trimmed)", self.shrinkage_,
                 self.n_train_, self.n_trimmed_)
        # a drawn subsample is by design (low rank plus isotropic): the caution looks at the
        # training pixels there were
        n_avail = self.n_train_ if pixels is None else (
            int(mask.sum()) if mask is not None else ny * nx) - self.n_trimmed_
        cautions.add(self, cautions.fit_cautions(self.method, n_avail, X.shape[1]))

    def _whiten(self, X: np.ndarray) -> np.ndarray:
        """Whitened coordinates ``W^T (x - mu)`` of transformed rows, shape (n, r).

        ``r = D``, except for a model fitted on fewer pixels than channels: then the
        ``r`` directions the training pixels span (the rest, isotropic, enters
        :meth:`_maha2_rows` through its residual).
        """
        return (np.asarray(X, np.float64) - self.mean_) @ self.whitener_

    def _maha2_block(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(whitened coordinates (n, r), maha^2 (n,))`` of transformed rows ``X``."""
        xc = np.asarray(X, np.float64) - self.mean_
        w = xc @ self.whitener_
        m2 = np.sum(w * w, axis=1)
        if self.basis_ is not None:  # Woodbury: the isotropic rest outside the basis
            p = xc @ self.basis_
            rest = np.maximum(np.sum(xc * xc, axis=1) - np.sum(p * p, axis=1), 0.0)
            m2 = m2 + self.iso_precision_ * rest
        return w, m2

    def _trim_score(self, X: np.ndarray, where: tuple[np.ndarray, tuple[int, int]] | None = None
                    ) -> np.ndarray:
        """Outlyingness used to choose the pixels to trim (see the class docstring); with
        ``where`` (the rows' flat pixel indices and the image shape) the larger of that and
        the rows' neighbourhood outlyingness (:func:`~._gaussian.spatial_outlyingness`)."""
        step = max(1, BLOCK_VALUES // X.shape[1])
        parts = [self._maha2_block(X[i:i + step]) for i in range(0, X.shape[0], step)]
        w = np.concatenate([p[0] for p in parts])
        return trim_outlyingness(w, np.concatenate([p[1] for p in parts]), 0.1, where)

    # ------------------------------------------------------------------ scoring
    def _maha2_rows(self, X: np.ndarray) -> np.ndarray:
        step = max(1, BLOCK_VALUES // X.shape[1])
        out = np.empty(X.shape[0])
        for i in range(0, X.shape[0], step):
            out[i:i + step] = self._maha2_block(X[i:i + step])[1]
        return out

    def _score(self, si: SpectrumImage, progress: ProgressCallback | None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        ny, nx = si.nav_shape
        maha2 = np.empty((ny, nx))
        for y0, y1, block in iter_row_blocks(si):
            x = forward_transform(block.reshape(-1, block.shape[-1]), self.transform, self.gain_)
            maha2[y0:y1] = self._maha2_rows(x).reshape(y1 - y0, nx)
            emit(progress, "score", y1, ny)
        nll = 0.5 * (maha2 + self.logdet_ + self.mean_.size * _LOG2PI)
        maps = {"mahalanobis2": maha2}
        pool = pooling_from(self.pooling)
        if pool.enabled:
            pm = self._pooled(si, pool)
            maps.update(gaussian_nll=nll, neighbourhood_nll=pm["nb_nll"], scale=pm["scale"])
            nll = pm["score"]
        return nll, None, maps

    # ------------------------------------------------------------------ pooled scoring
    def _gauss_rows(self, x_counts: np.ndarray) -> tuple[Any, Any, Any, None]:
        """RX as a per-pixel Gaussian in whitened coordinates: ``(w, 0, 1, None)``.

        Under ``N(mu, S)`` the whitened deviations ``w = W^T (x - mu)`` are
        independent unit Gaussians, so the pooling stage sees ``D`` channels of
        unit variance and the own term is ``0.5 maha^2`` plus constants.
        """
        import torch

        xc = np.asarray(forward_transform(x_counts, self.transform, self.gain_), np.float64) - self.mean_
        w = xc @ self.whitener_
        if self.basis_ is not None:  # fewer training pixels than channels: the isotropic rest
            rest = xc - (xc @ self.basis_) @ self.basis_.T
            w = np.concatenate([w, math.sqrt(self.iso_precision_) * rest], axis=1)
        wt = torch.as_tensor(w)
        return wt, torch.zeros_like(wt), torch.ones((1, 1), dtype=wt.dtype).expand_as(wt), None

    def _pool_channels(self) -> int:
        """Length of the whitened deviation vectors the pooling stage sees."""
        r = int(self.whitener_.shape[1])
        return r + (int(self.mean_.size) if self.basis_ is not None else 0)

    def _pool_noise2(self) -> float:
        return 1.0  # whitened deviations have unit variance

    # ------------------------------------------------------------------ reconstruction
    def _mean_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(inverse_transform(self.mean_, self.transform, self.gain_), np.float64)
        sigma = np.asarray(transform_sigma(self.mean_, np.sqrt(self.var_), self.transform,
                                           self.gain_), np.float64)
        return mean, sigma

    def _reconstruct(self, si: SpectrumImage) -> tuple[np.ndarray, np.ndarray]:
        mean, sigma = self._mean_sigma()
        shape = si.nav_shape + (mean.size,)
        return (np.broadcast_to(mean.astype(np.float32), shape).copy(),
                np.broadcast_to(sigma.astype(np.float32), shape).copy())

    def _pixel(self, si: SpectrumImage, iy: int, ix: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, sigma (counts) and per-channel NLL contributions of one pixel.

        ``channel_nll[k] = 0.5 * [(x-mu)_k (S^-1 (x-mu))_k + log|S| / D + log(2 pi)]``:
        the exact split of the Mahalanobis term over channels plus the constants
        spread evenly, so it sums to the pixel's NLL; single channels can be
        negative where correlated channels compensate.
        """
        mean, sigma = self._mean_sigma()
        x = forward_transform(np.asarray(si.data[iy, ix], np.float32)[None], self.transform,
                              self.gain_)
        xc = np.asarray(x, np.float64)[0] - self.mean_
        pool = pooling_from(self.pooling)
        if pool.enabled:
            pm = self._pooled(si, pool, region=(iy, iy + 1, ix, ix + 1), want_channels=(iy, ix))
            return mean, sigma, pm["channel_nll"]
        sinv_x = self.whitener_ @ (xc @ self.whitener_)
        if self.basis_ is not None:
            sinv_x += self.iso_precision_ * (xc - self.basis_ @ (xc @ self.basis_))
        chan = 0.5 * (xc * sinv_x + self.logdet_ / xc.size + _LOG2PI)
        return mean, sigma, chan

    # ------------------------------------------------------------------ persistence
    validate_model_file = _schemas.validator(_schemas.rx)  # the model-file schema

    def _get_state(self) -> dict[str, Any]:
        return {"logdet": self.logdet_, "shrinkage": self.shrinkage_, "n_train": self.n_train_,
                "n_trimmed": self.n_trimmed_, "gain": self.gain_,
                "iso_precision": self.iso_precision_,
                "pool_excess": self._excess_state()}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"mean": self.mean_, "whitener": self.whitener_, "var": self.var_}
        if self.basis_ is not None:
            arrays["basis"] = self.basis_
        return arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._set_fitted({"mean": arrays["mean"], "whitener": arrays["whitener"],
                          "logdet": state["logdet"], "shrinkage": state["shrinkage"],
                          "var": arrays["var"], "basis": arrays.get("basis"),
                          "iso_precision": state.get("iso_precision", 0.0)})
        self.n_train_ = int(state.get("n_train", 0))
        self.n_trimmed_ = int(state.get("n_trimmed", 0))
        self.gain_ = float(state.get("gain", 1.0))  # files from before the gain: counts
        self._load_excess(state, self._pool_channels())
