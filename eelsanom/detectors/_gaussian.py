"""Helpers shared by the Gaussian baseline detectors (:mod:`.pca`, :mod:`.rx`).

- streaming a spectrum image (numpy or dask) in blocks of rows, so scoring keeps
  memory bounded whatever the image size;
- gathering the (transformed) training pixels;
- the trimmed ("robust") refit loop used when no bulk mask is given;
- parameter checks shared by both detectors.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import TRANSFORMS, forward_transform
from ..progress import ProgressCallback, emit
from ..spectrum import SpectrumImage

log = logging.getLogger(__name__)

#: target number of values (pixels x channels) per block when streaming an image
BLOCK_VALUES = 1 << 22
#: ``robust_fraction="auto"``: chance that a clean row's outlyingness exceeds the cut
AUTO_RATE = 0.01
#: ``robust_fraction="auto"``: the most rows ever trimmed
AUTO_MAX_FRACTION = 0.45
#: ``robust_fraction="auto"``: the fewest rows trimmed (the fixed rule's default)
AUTO_MIN_FRACTION = 0.05


def one_blas_thread(method: Callable) -> Callable:
    """Decorator: run a detector's method with BLAS limited to one thread when it computes
    on the CPU (``self._on_cpu()``).

    The projections of spectra on a few components are memory-bound matrix
    products of modest size; split over threads they gain little on an idle
    machine and stall for seconds on a busy one (measured on a loaded 2-core
    host: 2.1 s with two OpenBLAS threads, 0.19 s with one, for the same
    products). Limits the process's BLAS pools for the call (threadpoolctl).
    """
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._on_cpu():
            return method(self, *args, **kwargs)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return method(self, *args, **kwargs)

    return wrapper


def rows_per_block(si: SpectrumImage, block_values: int = BLOCK_VALUES) -> int:
    """How many image rows make one block of about ``block_values`` values."""
    ny, nx = si.nav_shape
    return int(max(1, min(ny, block_values // max(1, nx * si.n_energy))))


def iter_row_blocks(si: SpectrumImage, block_values: int = BLOCK_VALUES
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(y0, y1, block)`` with ``block`` a float32 array of shape (y1-y0, nx, n_energy).

    Lazy (dask) data is computed block by block, and each lazy block is checked
    for NaN/inf (eager data were checked on conversion).
    """
    ny = si.nav_shape[0]
    step = rows_per_block(si, block_values)
    for y0 in range(0, ny, step):
        y1 = min(ny, y0 + step)
        yield y0, y1, read_block(si, slice(y0, y1), slice(None))


def read_block(si: SpectrumImage, rows: slice, cols: slice) -> np.ndarray:
    """``si.data[rows, cols]`` as float32 numpy; lazy (dask) data computed and checked for NaN/inf.

    Eager data were checked on conversion. The error names the first bad pixel in
    image coordinates.
    """
    block = si.data[rows, cols]
    if si.is_lazy:
        block = np.asarray(block.compute() if hasattr(block, "compute") else block,
                           dtype=np.float32)
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise InputError(
                f"expected finite values, found NaN/inf in the lazy data (first at pixel "
                f"y={(rows.start or 0) + bad[0]}, x={(cols.start or 0) + bad[1]}, channel "
                f"{bad[2]}). Replace them first, e.g. s.data = np.nan_to_num(s.data).")
    return np.asarray(block, dtype=np.float32)


def gather_training(si: SpectrumImage, mask: np.ndarray | None, transform: str,
                    gain: float = 1.0, pixels: np.ndarray | None = None) -> np.ndarray:
    """Transformed training spectra, shape (n_pixels, n_energy), float32 (row-major pixel order).

    ``pixels`` (sorted flat pixel indices, e.g. from :func:`sample_pixels`) reads
    only those pixels instead of every pixel of ``mask``.
    """
    if pixels is not None:
        pixels = np.asarray(pixels, np.int64)
        nx = si.nav_shape[1]
    parts = []
    for y0, y1, block in iter_row_blocks(si):
        b = block.reshape(-1, block.shape[-1])
        if pixels is not None:
            lo, hi = np.searchsorted(pixels, [y0 * nx, y1 * nx])
            b = b[pixels[lo:hi] - y0 * nx]
        elif mask is not None:
            b = b[mask[y0:y1].ravel()]
        if b.shape[0]:
            parts.append(forward_transform(b, transform, gain))
    return np.concatenate(parts, axis=0)


def sample_pixels(nav_shape: tuple[int, int], mask: np.ndarray | None, max_pixels: int | None,
                  rng: np.random.Generator) -> np.ndarray | None:
    """A seeded random subsample of the training pixels, or None when there are few enough.

    Parameters
    ----------
    nav_shape : (int, int)
        ``(ny, nx)`` of the image.
    mask : ndarray of bool, shape (ny, nx), or None
        Training pixels (None: every pixel).
    max_pixels : int or None
        Most pixels to keep (None: no limit).
    rng : numpy.random.Generator
        Draws the subsample (only when one is drawn).

    Returns
    -------
    ndarray of int64, shape (max_pixels,), or None
        Sorted flat pixel indices (``y * nx + x``), or None when the training
        pixels number at most ``max_pixels``.
    """
    cand = (np.flatnonzero(mask) if mask is not None
            else np.arange(int(nav_shape[0]) * int(nav_shape[1])))
    if max_pixels is None or cand.size <= max_pixels:
        return None
    return np.sort(rng.choice(cand, size=int(max_pixels), replace=False))


def training_gain(si: SpectrumImage, mask: np.ndarray | None, gain: Any, transform: str,
                  max_values: int = 1 << 21) -> float:
    """The gain a detector uses: ``gain`` itself, or (``"auto"``) estimated on the training pixels.

    With ``transform="none"`` the gain is not used and 1.0 is returned. The
    estimate (:func:`~eelsanom.preprocess.estimate_gain`) reads at most about
    ``max_values`` values, spread over the image.
    """
    from ..preprocess import estimate_gain

    if transform != "anscombe":
        return 1.0
    if not is_auto(gain):
        return float(gain)
    ny, nx = si.nav_shape
    n_pix = ny * nx if mask is None else int(mask.sum())
    stride = max(1, int(np.ceil(n_pix * si.n_energy / max_values)))
    parts, seen = [], 0
    for y0, y1, block in iter_row_blocks(si):
        b = block.reshape(-1, block.shape[-1])
        if mask is not None:
            b = b[mask[y0:y1].ravel()]
        idx = np.arange((-seen) % stride, b.shape[0], stride)
        seen += b.shape[0]
        if idx.size:
            parts.append(b[idx])
    return estimate_gain(np.concatenate(parts, axis=0)) if parts else 1.0


class Gram:
    """Second moments of ``X`` about a fixed reference, for cheap covariances of row subsets.

    The covariance of a subset of rows is decomposed on the smaller side of the data:

    - ``n >= D`` (channel side): ``G = sum_i (x_i - m0)(x_i - m0)^T`` (D x D) and
      ``s = sum_i (x_i - m0)`` over all rows (``m0`` = mean of all rows) are computed
      once; the covariance of a subset that leaves out a few rows then costs a pass
      over the left-out rows only (``G_keep = G - G_left_out``), and its leading
      eigenpairs a ``D x D`` eigendecomposition.
    - ``n < D`` (pixel side): the ``n x n`` pixel Gram matrix
      ``K_ij = (x_i - m0) . (x_j - m0)`` is computed once; a subset's covariance
      ``S = Y^T Y / n_s`` (``Y`` its rows centred on their own mean) has the same
      non-zero eigenvalues as the doubly centred ``K[rows, rows] / n_s``, and its
      eigenvectors are ``Y^T v / sqrt(n_s lambda)``: an ``n_s x n_s`` problem instead
      of a ``D x D`` one (the covariance is never formed).

    Centring on ``m0`` keeps the subtractions free of cancellation.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    gram : callable
        ``gram(X, rows, m0) -> (G (D, D), s (D,))`` as float64 numpy arrays, summed
        over ``X[rows]`` (the detector decides how: numpy, torch on a GPU, ...); used
        on the channel side only.
    side : {"auto", "channel", "pixel"}
        ``"auto"``: ``"pixel"`` when ``n < D``, else ``"channel"``.
    eigh : callable, optional
        ``eigh(A, k) -> (evals (k,), evecs (m, k))`` of the channel-side covariance
        (default :func:`top_eigh`; a detector may run it on its device).
    """

    def __init__(self, X: np.ndarray, gram: Callable[[np.ndarray, np.ndarray, np.ndarray],
                                                     tuple[np.ndarray, np.ndarray]],
                 side: str = "auto",
                 eigh: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
                 ) -> None:
        self.X = X
        self._eigh = eigh or top_eigh
        self.n, self.d = X.shape
        self.m0 = X.mean(axis=0, dtype=np.float64)
        self._gram = gram
        if side == "auto":
            side = "pixel" if self.n < self.d else "channel"
        self.side = side
        if side == "pixel":
            Y = np.asarray(X, np.float64) - self.m0
            self.K = Y @ Y.T
            self.G = self.s = None
        else:
            self.K = None
            self.G, self.s = gram(X, np.arange(self.n), self.m0)

    def sums(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(G, s)`` over ``X[rows]`` (zeros for no rows); channel side."""
        if len(rows) == 0:
            return np.zeros((self.d, self.d)), np.zeros(self.d)
        return self._gram(self.X, np.asarray(rows), self.m0)

    def moments(self, G: np.ndarray, s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean (D,) and maximum-likelihood covariance (D, D) of ``n`` rows with sums ``G, s``."""
        d = s / n
        cov = G / n - np.outer(d, d)
        return self.m0 + d, 0.5 * (cov + cov.T)

    def subset_moments(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (D,) and covariance (D, D) of the rows ``keep`` (bool, (n,)); channel side."""
        G_out, s_out = self.sums(np.flatnonzero(~keep))
        return self.moments(self.G - G_out, self.s - s_out, int(keep.sum()))

    def eig(self, keep: np.ndarray, k: int) -> Spectrum:
        """Leading ``k`` eigenpairs of the covariance of the rows ``keep`` (bool, (n,)).

        Exact (LAPACK) on either side; ``k`` is capped at ``D`` (channel side) or
        the number of rows (pixel side).

        Parameters
        ----------
        keep : ndarray of bool, shape (n,)
        k : int

        Returns
        -------
        Spectrum
        """
        n_s = int(keep.sum())
        if self.side == "channel":
            mean, cov = self.subset_moments(keep)
            evals, evecs = self._eigh(cov, k)
            return Spectrum(mean, evals, evecs, float(np.trace(cov)), float(np.sum(cov * cov)),
                            n_s, self.d)
        rows = np.flatnonzero(keep)
        Kc, off = self.centred_gram(rows)
        mu, V = top_eigh(Kc, min(k, n_s))
        mean = self.m0 + off
        Yc = np.asarray(self.X[rows], np.float64) - mean
        U = (Yc.T @ V) / np.sqrt(np.maximum(mu, 1e-300))
        return Spectrum(mean, mu / n_s, _fix_signs(U), float(np.trace(Kc)) / n_s,
                        float(np.sum(Kc * Kc)) / n_s ** 2, n_s, self.d)

    def centred_gram(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel side: ``(Kc (n_s, n_s), d (D,))``, the Gram matrix of ``X[rows]`` centred on
        their own mean ``m0 + d``."""
        Ks = self.K[np.ix_(rows, rows)]
        a = Ks.mean(axis=0)
        Kc = Ks - a[:, None] - a[None, :] + a.mean()
        off = np.asarray(self.X[rows], np.float64).mean(axis=0) - self.m0
        return 0.5 * (Kc + Kc.T), off


class Sketch:
    """Leading eigenpairs of row-subset covariances by randomized subspace iteration.

    For many pixels and many channels (both sides large) the exact decompositions
    of :class:`Gram` cost ``O(n D min(n, D))`` per fit; this one costs
    ``O(n D l)`` with ``l = rank + oversample`` (Halko, Martinsson & Tropp 2011,
    algorithm 4.4: a Gaussian start, ``n_iter`` power iterations with
    re-orthonormalisation, then Rayleigh-Ritz).

    The range ``Q`` (D, l) of the centred rows ``X - m0`` is found once, with
    their coordinates ``Z = (X - m0) Q`` (n, l). The covariance of any subset of
    rows is then taken inside ``span(Q)`` (an ``l x l`` eigenproblem, no pass over
    the data): a cheap approximation for the intermediate fits of the trimming
    loop. With ``refine=True`` (the final fit) the subset's own rows are
    iterated ``n_refine`` more times, starting from ``Q``, so the result is that
    subset's randomized decomposition, not the whole set's. The eigenvalues
    beyond the signal (noise-level directions) are slightly underestimated, as
    with any truncated solver; ``total`` (the trace) is exact. Products run in
    float32 (the data's precision), the small eigenproblems in float64.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Rows (float32).
    rank : int
        Most eigenpairs that will be asked for.
    rng : numpy.random.Generator
        Draws the Gaussian start.
    oversample : int
        Extra columns beyond ``rank``.
    n_iter : int
        Power iterations of the first range.
    n_refine : int
        Power iterations of a refined (final) fit.
    holdout : ndarray of bool, shape (n,), optional
        Rows left out of the range ``Q`` (a validation set: were they in it, the
        range would follow their noise and their held-out likelihood would
        favour too many components).
    """

    side = "randomized"

    def __init__(self, X: np.ndarray, rank: int, rng: np.random.Generator, *,
                 oversample: int = 10, n_iter: int = 4, n_refine: int = 2,
                 holdout: np.ndarray | None = None) -> None:
        self.X = X
        self.n, self.d = X.shape
        self.m0 = X.mean(axis=0, dtype=np.float64)
        self.Xc = np.asarray(X, np.float32) - self.m0.astype(np.float32)
        self.sq = np.einsum("ij,ij->i", self.Xc, self.Xc, dtype=np.float64)
        self.colsum = self.Xc.sum(axis=0, dtype=np.float64)
        self.n_refine = int(n_refine)
        self.holdout = holdout
        self.l = int(max(1, min(rank + oversample, self.n, self.d)))
        Y = self.Xc if holdout is None else self.Xc[~holdout]
        Q = _orth(rng.standard_normal((self.d, self.l)).astype(np.float32))
        for _ in range(int(n_iter)):
            Q = _orth(Y.T @ (Y @ Q))
        self.Q = Q
        self.Z = np.asarray(self.Xc @ Q, np.float64)

    def eig(self, keep: np.ndarray, k: int, refine: bool = False) -> Spectrum:
        """Leading ``k`` eigenpairs of the covariance of the rows ``keep`` (bool, (n,)).

        ``k`` is capped at ``l``. Without ``refine`` the covariance is taken
        inside the range found for all rows; with it, the rows ``keep`` are
        iterated further (see the class docstring).

        Parameters
        ----------
        keep : ndarray of bool, shape (n,)
        k : int
        refine : bool

        Returns
        -------
        Spectrum
            ``frob2`` is NaN (not estimated).
        """
        n_s = int(keep.sum())
        # the subset's mean from the column sums less the (few) rows left out
        off = (self.colsum - self.Xc[~keep].sum(axis=0, dtype=np.float64)) / n_s
        total = float(self.sq[keep].mean() - off @ off)
        if refine:
            Y = self.Xc[keep] - off.astype(np.float32)
            Q = self.Q
            for _ in range(self.n_refine):
                Q = _orth(Y.T @ (Y @ Q))
            B = np.asarray(Y @ Q, np.float64)
            B -= B.mean(axis=0)
        else:
            Q = self.Q
            B = self.Z[keep]
            B = B - B.mean(axis=0)
        C = B.T @ B / n_s
        w, V = top_eigh(0.5 * (C + C.T), min(k, self.l))
        U = _fix_signs(_orth(np.asarray(Q, np.float64) @ V))  # orthonormal in float64
        return Spectrum(self.m0 + off, w, U, total, float("nan"), n_s, self.d)


def _orth(A: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of ``A`` (m, l), same dtype.

    Two passes of Cholesky orthonormalisation (CholeskyQR2, in float64, columns
    scaled to unit norm first): only matrix products and an ``l x l`` Cholesky
    factor, where a LAPACK QR of a tall matrix stalls on a busy multi-threaded
    host. Like a QR it keeps the span of every leading set of columns (column
    ``j`` of the result is column ``j`` of ``A`` made orthogonal to the ones
    before it). A Householder QR when the columns are (nearly) dependent.
    """
    Q = np.asarray(A, np.float64)
    for _ in range(2):
        Q = Q / np.maximum(np.linalg.norm(Q, axis=0), 1e-300)
        try:
            L = np.linalg.cholesky(Q.T @ Q)
        except np.linalg.LinAlgError:
            L = None
        if L is None or np.min(np.diag(L)) <= 1e-6:
            from scipy.linalg import qr

            Q = qr(np.asarray(A, np.float64), mode="economic", check_finite=False)[0]
            break
        Q = Q @ np.linalg.inv(L).T
    return Q.astype(A.dtype, copy=False)


@dataclass
class Spectrum:
    """Leading eigenpairs of a (D x D) covariance, with the totals of all its eigenvalues."""

    mean: np.ndarray    # (D,) mean of the rows
    evals: np.ndarray   # (k,) descending, >= 0
    evecs: np.ndarray   # (D, k) orthonormal columns, same order (largest loading positive)
    total: float        # trace = sum of all D eigenvalues
    frob2: float        # squared Frobenius norm = sum of all squared eigenvalues
    n: int              # rows
    d: int              # channels


def _fix_signs(V: np.ndarray) -> np.ndarray:
    """Flip columns so each one's largest-magnitude entry is positive (LAPACK-independent)."""
    if V.size == 0:
        return V
    idx = np.abs(V).argmax(axis=0)
    return V * np.where(V[idx, np.arange(V.shape[1])] < 0, -1.0, 1.0)


def top_eigh(A: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``k`` eigenpairs of the symmetric ``A`` (m, m), descending, eigenvalues >= 0.

    A full LAPACK ``syevd`` when ``k`` is more than a quarter of ``m`` (or ``m`` is
    small), else ``syevr`` restricted to the top ``k`` (same accuracy, computes only
    the wanted eigenvectors). Eigenvector signs are fixed (largest loading positive).

    Parameters
    ----------
    A : ndarray of shape (m, m)
    k : int

    Returns
    -------
    evals : ndarray of shape (k,)
    evecs : ndarray of shape (m, k)
    """
    m = A.shape[0]
    k = int(max(0, min(k, m)))
    if k == 0:
        return np.zeros(0), np.zeros((m, 0))
    if m <= 64 or 4 * k > m:
        w, v = np.linalg.eigh(A)
        w, v = w[::-1][:k], v[:, ::-1][:, :k]
    else:
        from scipy.linalg import eigh

        w, v = eigh(A, subset_by_index=[m - k, m - 1], driver="evr")
        w, v = w[::-1], v[:, ::-1]
    return np.clip(w, 0.0, None), _fix_signs(np.ascontiguousarray(v))


def numpy_gram(X: np.ndarray, rows: np.ndarray, m0: np.ndarray,
               block_values: int = BLOCK_VALUES) -> tuple[np.ndarray, np.ndarray]:
    """``(sum (x - m0)(x - m0)^T, sum (x - m0))`` over ``X[rows]`` in float64, by blocks."""
    d = X.shape[1]
    G = np.zeros((d, d))
    s = np.zeros(d)
    step = max(1, block_values // d)
    for i in range(0, len(rows), step):
        xc = X[rows[i:i + step]].astype(np.float64) - m0
        G += xc.T @ xc
        s += xc.sum(axis=0)
    return G, s


def trimmed_fit(n: int, fit: Callable[[np.ndarray, bool], Any],
                score: Callable[[Any], np.ndarray], *, robust: bool, robust_fraction: float,
                robust_iter: int, min_keep: int, progress: ProgressCallback | None,
                stage: str = "fit", cutoff: Callable[[Any], float] | None = None,
                max_fraction: float = AUTO_MAX_FRACTION) -> tuple[Any, np.ndarray]:
    """Fit on ``n`` rows; when ``robust``, trim the most outlying fraction and refit (C-steps).

    A C-step / trimmed-likelihood loop (as in MCD and least trimmed squares):
    fit on all rows (``fit(keep, final=False)``), score every row by
    ``score(model)`` (outlyingness of all ``n`` rows, on a scale comparable
    between fits, e.g. robust z-scores), keep all rows but the
    ``robust_fraction`` most outlying, and repeat, at most ``robust_iter`` times
    or until the kept rows stop changing; then ``fit(keep, final=True)``. A row's
    outlyingness is the largest it had under any fit so far: without that memory
    the loop can cycle (a clean fit misses an anomaly class that only a fit
    containing it singles out, and back). Without ``robust`` it is one
    ``fit(all, final=True)``. Intermediate fits may be cheaper approximations
    (``final=False``).

    With ``cutoff`` (the adaptive rule, ``robust_fraction="auto"`` of the
    detectors; ``cutoff(model)`` gives the cut in the score's units, e.g.
    :func:`auto_cutoff`) the number trimmed is chosen from the scores at each
    step: every row whose outlyingness exceeds the cut, at least the
    ``robust_fraction`` most outlying and at most ``max_fraction`` of the rows,
    so an anomaly class covering 10-20 % of the image is trimmed whole instead
    of a fixed 5 % of it.

    Returns
    -------
    model : whatever ``fit`` returns (the final fit)
    keep : ndarray of bool, shape (n,)
        Rows used by the final fit.
    """
    keep = np.ones(n, dtype=bool)
    n_drop = int(round(robust_fraction * n)) if robust else 0
    n_drop = min(n_drop, max(0, n - min_keep))
    n_trims = robust_iter if n_drop > 0 or (robust and cutoff is not None) else 0
    worst = np.full(n, -np.inf)
    n_min = n_drop
    for it in range(n_trims):
        model = fit(keep, False)
        emit(progress, stage, it + 1, n_trims + 1, n_pixels=int(keep.sum()))
        worst = np.maximum(worst, np.asarray(score(model), dtype=np.float64))
        if cutoff is not None:
            n_drop = int(np.sum(worst > cutoff(model)))
            n_drop = min(max(n_drop, n_min), int(max_fraction * n), max(0, n - min_keep))
        order = np.argsort(worst, kind="stable")
        new_keep = np.zeros(n, dtype=bool)
        new_keep[order[:n - n_drop]] = True
        changed = int(np.sum(new_keep != keep))
        keep = new_keep
        log.debug("trim %d: dropped %d of %d pixels (%d changed)", it + 1, n_drop, n, changed)
        if changed == 0:  # converged: another fit would repeat the last one
            break
    model = fit(keep, True)
    emit(progress, stage, n_trims + 1, n_trims + 1, n_pixels=int(keep.sum()))
    return model, keep


def _robust_z(v: np.ndarray, floor: float | np.ndarray = 0.0) -> np.ndarray:
    """``(v - median) / (1.4826 MAD)`` per column (scale at least ``floor``, and > 0)."""
    med = np.median(v, axis=0)
    d = v - med
    s = np.maximum(1.4826 * np.median(np.abs(d), axis=0), floor)
    return d / np.maximum(s, 1e-300)


def outlyingness(coords: np.ndarray, total: np.ndarray, coord_floor: float) -> np.ndarray:
    """Robust outlyingness of each row, used to choose the rows to trim.

    ``max(max_j |z_j|, z_total)``, where ``z_j`` is coordinate ``j`` robustly
    standardised (median, 1.4826 x MAD, scale at least ``coord_floor``) and
    ``z_total`` the same for ``total`` (the residual or Mahalanobis term), as in
    Stahel-Donoho / ROBPCA outlyingness. Robust scales matter: a rare anomaly class
    that pulled a principal direction towards itself inflates that direction's
    variance, which hides it from a plain likelihood, but hardly its MAD. The
    maximum (not a sum) matters in many dimensions: a large deviation along one
    direction is not drowned by the chi-square noise of the other channels.

    Parameters
    ----------
    coords : ndarray of shape (n, k)
        Coordinates in the model's principal (or whitened) directions.
    total : ndarray of shape (n,)
        A summary the coordinates miss (residual norm, Mahalanobis distance).
    coord_floor : float
        Smallest scale for the coordinates (e.g. the noise standard deviation).

    Returns
    -------
    ndarray of shape (n,)
    """
    z = np.abs(_robust_z(np.asarray(coords, np.float64), coord_floor))
    zt = _robust_z(np.asarray(total, np.float64)[:, None])[:, 0]
    return np.maximum(z.max(axis=1) if z.shape[1] else -np.inf, zt)


#: smallest robust spread of a spatially smoothed z-score (:func:`spatial_outlyingness`; white
#: noise smoothed over the window keeps about 0.28 of its spread)
SMOOTH_Z_FLOOR = 0.1


def training_where(det: Any, pixels: np.ndarray | None, nav_shape: tuple[int, int]
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """The image places of training rows, for :func:`spatial_outlyingness`: ``(flat pixel
    indices, image shape)``.

    ``pixels``: the rows' flat indices in the fitted image (None: every pixel). A
    streamed fit (:func:`eelsanom.stream.fit_streaming`) hands the detector its
    training pixels as a 1 x n image and sets ``det._train_positions`` to their places
    in the real image (flat indices, shape), so their neighbourhoods are the image's,
    as in the eager fit.
    """
    ny, nx = nav_shape
    idx = np.asarray(pixels) if pixels is not None else np.arange(ny * nx)
    pos = getattr(det, "_train_positions", None)
    if pos is not None and np.size(pos[0]) == ny * nx:
        return np.asarray(pos[0])[idx], tuple(pos[1])
    return idx, (ny, nx)


def spatial_outlyingness(coords: np.ndarray, total: np.ndarray, coord_floor: float,
                         pixels: np.ndarray, nav_shape: tuple[int, int]) -> np.ndarray:
    """:func:`outlyingness` of each row's neighbourhood: what a region of anomalies shows.

    The robust z-scores of :func:`outlyingness` (each coordinate and the summary)
    are averaged over each pixel's neighbourhood among the rows (a Gaussian of
    ``max(1, sqrt(ny nx / n))`` pixels, so that it holds about a dozen rows however
    sparse a subsample), each average is robustly standardised again (median,
    1.4826 MAD, at least :data:`SMOOTH_Z_FLOOR`), and the largest absolute
    coordinate (or the summary) is the row's score. The noise of a single pixel
    averages out while a change shared by its neighbours does not, so a particle
    or grain whose pixels are each only 2-3 sigma out (a small shift at a modest
    dose, which per-pixel trimming leaves half in the fit) stands out by 5-10;
    a smooth bulk nuisance (a thickness field) is not amplified, because each
    average is standardised by its own spread.

    Parameters
    ----------
    coords : ndarray of shape (n, k)
    total : ndarray of shape (n,)
    coord_floor : float
        As :func:`outlyingness`.
    pixels : ndarray of int, shape (n,)
        Flat image index (``y * nx + x``) of each row.
    nav_shape : (int, int)
        ``(ny, nx)`` of the image.

    Returns
    -------
    ndarray of shape (n,)
    """
    from scipy.ndimage import gaussian_filter

    ny, nx = int(nav_shape[0]), int(nav_shape[1])
    pixels = np.asarray(pixels, np.int64)
    n = pixels.size
    z = np.concatenate([_robust_z(np.asarray(coords, np.float64), coord_floor),
                        _robust_z(np.asarray(total, np.float64)[:, None])], axis=1)
    sigma = max(1.0, math.sqrt(ny * nx / max(n, 1)))
    sig = (sigma if ny > 1 else 0.0, sigma)  # a line scan is smoothed along its line only
    w = np.zeros(ny * nx)
    w[pixels] = 1.0
    wf = gaussian_filter(w.reshape(ny, nx), sig, mode="reflect", truncate=2.0).ravel()[pixels]
    sm = np.empty_like(z)
    g = np.zeros(ny * nx)
    for j in range(z.shape[1]):
        g[pixels] = z[:, j]
        sm[:, j] = gaussian_filter(g.reshape(ny, nx), sig, mode="reflect",
                                   truncate=2.0).ravel()[pixels] / np.maximum(wf, 1e-12)
    zs = _robust_z(sm, SMOOTH_Z_FLOOR)
    k = z.shape[1] - 1
    return np.maximum(np.abs(zs[:, :k]).max(axis=1) if k else -np.inf, zs[:, k])


def trim_outlyingness(coords: np.ndarray, total: np.ndarray, coord_floor: float,
                      where: tuple[np.ndarray, tuple[int, int]] | None) -> np.ndarray:
    """The outlyingness robust training trims by: :func:`outlyingness` of each row, and
    with ``where`` (:func:`training_where`: the rows' places in the image) the larger of
    that and the row's neighbourhood's (:func:`spatial_outlyingness`)."""
    own = outlyingness(coords, total, coord_floor)
    if where is None:
        return own
    return np.maximum(own, spatial_outlyingness(coords, total, coord_floor, where[0], where[1]))


def tail_scale(z: np.ndarray, quantile: float = 0.9) -> np.ndarray:
    """Robust standard deviation per column from the ``quantile`` of absolute deviations.

    ``Q_quantile(|z - median|) / Phi^-1((1 + quantile) / 2)`` (the standard deviation
    for Gaussian data). With ``quantile=0.9`` it ignores up to ~10 % of outlying
    values along a direction, yet a phase occupying more of the pixels still counts.

    Parameters
    ----------
    z : ndarray of shape (n, k)

    Returns
    -------
    ndarray of shape (k,)
    """
    from scipy.stats import norm

    z = np.asarray(z, np.float64)
    dev = np.abs(z - np.median(z, axis=0))
    return np.quantile(dev, quantile, axis=0) / float(norm.ppf(0.5 + 0.5 * quantile))


# ----------------------------------------------------------------------------- parameter checks
def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name}: expected one of {list(allowed)}, got {value!r}.")


def check_int(name: str, value: Any, *, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        none = "None or " if allow_none else ""
        raise InputError(f"{name}: expected {none}an integer >= {low}, got {value!r}.")


def auto_cutoff(n_coords: int, rate: float = AUTO_RATE) -> float:
    """Cut on :func:`outlyingness` that a clean Gaussian row exceeds with chance ``rate``.

    The outlyingness is the largest of ``n_coords`` absolute robust z-scores
    (coordinates plus the summary), so the cut is the two-sided normal quantile
    at ``rate / n_coords`` (Bonferroni): about 2.8 for 2 coordinates, 4.1 for 268.

    Parameters
    ----------
    n_coords : int
        Number of z-scores the outlyingness is the maximum of.
    rate : float
        Chance that a clean row is trimmed.

    Returns
    -------
    float
    """
    from scipy.stats import norm

    return float(norm.isf(0.5 * rate / max(1, int(n_coords))))


def is_auto(value: Any) -> bool:
    """Whether a parameter is the string ``"auto"`` (any case)."""
    return isinstance(value, str) and value.lower() == "auto"


def robust_rule(robust_fraction: Any) -> tuple[float, bool]:
    """``(fraction, adaptive)`` from a ``robust_fraction`` parameter.

    ``"auto"``: trim at least ``AUTO_MIN_FRACTION``, plus every row beyond
    :func:`auto_cutoff` (``adaptive=True``); a number: that fixed fraction.
    """
    if is_auto(robust_fraction):
        return AUTO_MIN_FRACTION, True
    return float(robust_fraction), False


def check_common(det: Any) -> None:
    """Checks of ``transform``, ``robust_fraction``, ``robust_iter`` and ``seed``."""
    check_choice("transform", det.transform, TRANSFORMS)
    rf = det.robust_fraction
    if not is_auto(rf) and (isinstance(rf, bool) or not isinstance(rf, (int, float))
                            or not 0 <= rf < 0.5):
        raise InputError(f"robust_fraction: expected 'auto' or a fraction of pixels to drop in "
                         f"[0, 0.5) (0 disables trimming), got {rf!r}.")
    check_int("robust_iter", det.robust_iter, low=0)
    check_int("seed", det.seed, low=0)


# ----------------------------------------------------------------------------- pooled scoring
#: values (pixels x channels) per call of a detector's ``gauss_rows`` in :func:`pooled_scores`
POOL_ROW_VALUES = 1 << 17


def pooled_scores(si: SpectrumImage, gauss_rows: Callable[[np.ndarray], tuple[Any, ...]], *,
                  pooling: Any, noise2: float, excess: tuple[float, float] | None,
                  region: tuple[int, int, int, int] | None = None,
                  want_channels: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Scores of a per-pixel Gaussian detector through the shared pooling stage.

    ``gauss_rows(x)`` maps counts ``x (n, E)`` to ``(target, mean, sigma, penalty)``
    torch tensors of shapes ``(n, E')`` and ``(n,)`` (transformed units; ``E'`` may
    differ from ``E``, e.g. whitened coordinates; ``penalty`` may be ``None``; a
    sigma shared by every pixel may come as an expanded, stride-0 tensor). It is
    called on cache-sized runs of pixels and its outputs are kept in float32;
    :func:`eelsanom.pooling.pool_image` reads each tile with the context the
    pooling needs (lazy data computed block by block and checked for NaN/inf).

    Parameters
    ----------
    si : SpectrumImage
        Data on the model's energy axis.
    gauss_rows : callable
        ``x (n, E) float32 -> (target, mean, sigma, penalty)``.
    pooling : eelsanom.pooling.Pooling
    noise2 : float
        Noise variance per channel (transformed units).
    excess : (float, float) or None
        Training pixels' excess-NLL statistics (:func:`eelsanom.pooling.excess_stats`).
    region : (y0, y1, x0, x1), optional
        Score only this block.
    want_channels : (iy, ix), optional
        Also return that pixel's per-channel NLL.

    Returns
    -------
    dict of str -> ndarray
        As :func:`eelsanom.pooling.pool_image`.
    """
    from ..pooling import pool_image

    ny, nx = si.nav_shape

    import torch

    def gauss(rows: slice, cols: slice):
        block = read_block(si, rows, cols)
        h, w = block.shape[:2]
        flat = block.reshape(h * w, -1)
        # cache-sized runs of pixels through the detector, written into float32 arrays
        # (channel-last): the block-sized intermediates of one call would run from memory
        step = max(1, POOL_ROW_VALUES // max(1, flat.shape[1]))
        t_all = m_all = s_all = p_all = None
        s_uniform = None
        for i in range(0, h * w, step):
            t, m, s, p = gauss_rows(flat[i:i + step])
            if t_all is None:
                n_ch = t.shape[1]
                t_all = torch.empty((h * w, n_ch), dtype=torch.float32)
                m_all = torch.empty_like(t_all)
                if s.dim() == 2 and s.shape[0] > 1 and s.stride(0) == 0:
                    s_uniform = s[0].to(torch.float32)  # the same sigma for every pixel
                else:
                    s_all = torch.empty_like(t_all)
                p_all = None if p is None else torch.empty(h * w, dtype=torch.float64)
            j = i + t.shape[0]
            t_all[i:j] = t
            m_all[i:j] = m
            if s_all is not None:
                s_all[i:j] = s
            if p_all is not None:
                p_all[i:j] = p

        def img(a: Any) -> Any:
            return a.T.reshape(-1, h, w)

        s_img = (s_uniform[:, None, None].expand(-1, h, w) if s_uniform is not None
                 else img(s_all))
        return img(t_all), img(m_all), s_img, None if p_all is None else p_all.reshape(h, w)

    return pool_image(gauss, ny, nx, pooling=pooling, noise2=noise2, excess=excess,
                      region=region, n_energy=si.n_energy, want_channels=want_channels)


class PooledGaussian:
    """Mixin of the per-pixel Gaussian detectors (PCA, RX) for the shared pooling stage.

    The detector supplies ``_gauss_rows`` (counts -> target, mean, sigma, penalty),
    ``_pool_noise2()`` (noise variance per channel) and ``pool_excess_`` (fitted);
    this mixin gives the context a pooled score reads (:attr:`score_context`) and
    the pooled maps of an image or a region (:meth:`_pooled`).
    """

    @property
    def score_context(self) -> int:
        """Pixels on each side a pixel's score depends on: the pooling radius (0 unpooled)."""
        from ..pooling import pooling_from

        return pooling_from(self.pooling).radius()

    def _pooled(self, si: SpectrumImage, pool: Any, **kw: Any) -> dict[str, np.ndarray]:
        return pooled_scores(si, self._gauss_rows, pooling=pool, noise2=self._pool_noise2(),
                             excess=getattr(self, "pool_excess_", None), **kw)

    def _excess_state(self) -> list[float]:
        """``pool_excess_`` as saved in a model file."""
        return [float(v) for v in self.pool_excess_]

    def _load_excess(self, state: dict[str, Any], n_channels: int) -> None:
        """``pool_excess_`` from a model file; files from before the pooling stage get
        ``(0, sqrt(n_channels / 2))``."""
        pe = state.get("pool_excess")
        self.pool_excess_ = (tuple(float(v) for v in pe) if pe is not None
                             else (0.0, math.sqrt(0.5 * n_channels)))
