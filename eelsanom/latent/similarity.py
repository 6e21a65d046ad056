"""How similar are two latent spaces over the same pixels?

Linear CKA (biased and unbiased), mutual k-nearest-neighbour overlap (with a
per-pixel map), CKNNA, and CCA subspace alignment with cross-space retrieval.

Two spaces are, e.g., the 3D-CVAE latents of two training seeds, the CVAE
against the PCA scores, or one model before and after retraining. Both hold one
code per pixel of the same image: ``Z_a`` of shape ``(n, d_a)`` and ``Z_b`` of
shape ``(n, d_b)`` (``d_a`` and ``d_b`` may differ), or ``(ny, nx, d)``, or
:class:`~eelsanom.result.AnomalyResult` objects.

References
----------
Kornblith, Norouzi, Lee and Hinton, "Similarity of neural network representations
revisited", ICML 2019 (linear CKA). Song, Smola, Gretton, Bedo and Borgwardt,
"Feature selection via dependence maximization", JMLR 2012 (unbiased HSIC).
Huh, Cheung, Wang and Isola, "The Platonic representation hypothesis", ICML 2024
(mutual k-NN, CKNNA); "Escaping Plato's Cave" (CCA subspace alignment and
retrieval between independently trained spaces).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import (
    Codes,
    as_codes,
    centre,
    check_int,
    check_neighbours,
    check_pair,
    knn,
    pair_shape,
    subsample,
)

log = logging.getLogger(__name__)

__all__ = [
    "linear_cka", "mutual_knn", "mutual_knn_map", "cknna", "CCA", "canonical_correlations",
    "CCAAlignment", "cca_alignment",
]

_METRICS = ("euclidean", "cosine")


def _pair(z_a: Any, z_b: Any, *, min_points: int = 2) -> tuple[Codes, Codes]:
    a = as_codes(z_a, name="Z_a", min_points=min_points)
    b = as_codes(z_b, name="Z_b", min_points=min_points)
    check_pair(a, b)
    return a, b


# --------------------------------------------------------------------------- CKA


def _hsic_unbiased_linear(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012) of the linear kernels ``X X^T`` and ``Y Y^T``.

    Evaluated in feature space in O(n d^2): no ``n x n`` Gram matrix is formed.
    """
    n = x.shape[0]
    kd = np.einsum("ij,ij->i", x, x)   # diag K
    ld = np.einsum("ij,ij->i", y, y)   # diag L
    xty = x.T @ y
    tr_kl = float(np.sum(xty * xty) - kd @ ld)          # tr(K~ L~), zero diagonals
    sx, sy = x.sum(axis=0), y.sum(axis=0)
    k1 = x @ sx - kd                                    # K~ 1
    l1 = y @ sy - ld                                    # L~ 1
    sum_k, sum_l = float(k1.sum()), float(l1.sum())     # 1^T K~ 1, 1^T L~ 1
    val = tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * float(k1 @ l1) / (n - 2)
    return val / (n * (n - 3))


def linear_cka(z_a: Any, z_b: Any, *, unbiased: bool = False) -> float:
    """Linear centred kernel alignment between two latent spaces.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels of the
    centred codes (Kornblith et al., 2019). The biased form is
    ``||Z_b^T Z_a||_F^2 / (||Z_a^T Z_a||_F ||Z_b^T Z_b||_F)``; the unbiased form uses
    the unbiased HSIC estimator of Song et al. (2012), whose value for independent
    spaces is close to 0 at any sample size (the biased one is positive). Both are
    computed in feature space, O(n d^2) memory-free of ``n x n`` matrices.

    What it tells you: 1 means the two detectors organise the pixels in the same way
    up to a rotation, isotropic scaling and shift of the latent space, so their
    anomaly maps rest on the same features; values near 0 mean unrelated codes.
    CKA is invariant to orthogonal transforms and isotropic scaling, not to
    anisotropic scaling of latent units.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels.
    unbiased : bool, default False
        Use the unbiased HSIC estimator (needs n >= 4).

    Returns
    -------
    float
        CKA in [0, 1] (the unbiased form can be slightly negative); NaN, with a
        logged warning, when a space has no variance.

    Raises
    ------
    InputError
        When either input is not valid latent codes (none, wrong axes, non-finite
        values, fewer than 2 pixels, or 4 with ``unbiased=True``), or the two do
        not cover the same pixels.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(500, 4))
    >>> round(linear_cka(z, 3.0 * z[:, ::-1] + 1.0), 6)
    1.0
    """
    a, b = _pair(z_a, z_b, min_points=4 if unbiased else 2)
    x, y = centre(a.z), centre(b.z)
    if unbiased:
        hxy = _hsic_unbiased_linear(x, y)
        hxx = _hsic_unbiased_linear(x, x)
        hyy = _hsic_unbiased_linear(y, y)
    else:
        xty = x.T @ y
        hxy = float(np.sum(xty * xty))
        hxx = float(np.linalg.norm(x.T @ x))
        hyy = float(np.linalg.norm(y.T @ y))
        hxx, hyy = hxx * hxx, hyy * hyy
    den = np.sqrt(hxx * hyy) if hxx > 0 and hyy > 0 else 0.0
    if den == 0.0:
        log.warning("linear CKA undefined (a space has no variance); returning NaN")
        return float("nan")
    return float(hxy / den)


# --------------------------------------------------------------------------- k-NN


def _neighbour_space(c: Codes, metric: str) -> np.ndarray:
    if metric not in _METRICS:
        raise InputError(f"metric: expected one of {_METRICS}, found {metric!r}.")
    z = centre(c.z)
    if metric == "cosine":
        if c.d < 2:
            raise InputError(f"{c.name}: cosine neighbours need a latent of dimension d >= 2, "
                             f"found d = {c.d} (1-D cosines are only signs). Use "
                             "metric='euclidean'.")
        nrm = np.linalg.norm(z, axis=1, keepdims=True)
        if np.any(nrm == 0):
            raise InputError(f"{c.name}: cosine neighbours need non-zero centred codes; "
                             f"{int(np.sum(nrm == 0))} pixels sit exactly at the mean. Use "
                             "metric='euclidean'.")
        z = z / nrm
    return z


def _overlap_counts(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Per row, how many indices ``ia[i]`` and ``ib[i]`` share (rows hold distinct indices)."""
    s = np.sort(np.concatenate([ia, ib], axis=1), axis=1)
    return np.sum(s[:, 1:] == s[:, :-1], axis=1)


def mutual_knn_map(z_a: Any, z_b: Any, *, k: int = 10, metric: str = "euclidean") -> np.ndarray:
    """Per-pixel mutual k-NN overlap of two latent spaces.

    For each pixel, the fraction of its ``k`` nearest neighbours in ``Z_a`` that are
    also among its ``k`` nearest neighbours in ``Z_b`` (Huh et al., 2024). Exact
    neighbours from a k-d tree or blocked brute force, never an ``n x n`` matrix.

    What it tells you: pixels near 1 have the same neighbourhood (the same kind of
    spectra around them) in both spaces; low pixels are where the two detectors
    disagree about what the pixel resembles, which is where their anomaly maps
    can differ.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels in the two spaces (arrays, torch tensors or
        results' ``.latent``).
    k : int, default 10
        Neighbours per pixel, ``1 <= k < n``.
    metric : {"euclidean", "cosine"}, default "euclidean"
        Euclidean distance between codes, or cosine distance between centred codes.

    Returns
    -------
    ndarray of shape (ny, nx), or (n,) for flat input
        Overlap fraction in [0, 1].

    Raises
    ------
    InputError
        When either input is not valid latent codes (none, wrong axes, non-finite
        values, fewer than 2 pixels), the two do not cover the same pixels,
        ``k`` is not an integer in ``[1, n - 1]``, ``metric`` is unknown, or
        ``metric="cosine"`` meets ``d < 2`` or a code equal to the mean.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(300, 3))
    >>> float(mutual_knn_map(z, -2 * z, k=5).mean())
    1.0
    """
    a, b = _pair(z_a, z_b)
    k = check_neighbours(a.n, k)
    _, ia = knn(_neighbour_space(a, metric), k)
    _, ib = knn(_neighbour_space(b, metric), k)
    frac = _overlap_counts(ia, ib) / k
    shape = pair_shape(a, b)
    return frac.reshape(shape) if shape is not None else frac


def mutual_knn(z_a: Any, z_b: Any, *, k: int = 10, metric: str = "euclidean") -> float:
    """Mean mutual k-NN overlap of two latent spaces (Huh et al., 2024), in [0, 1].

    The image mean of :func:`mutual_knn_map`. 1: identical neighbourhoods; for
    unrelated spaces about ``k / n``.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels in the two spaces (arrays, torch tensors or
        results' ``.latent``).
    k : int, default 10
        Neighbours per pixel, ``1 <= k < n``.
    metric : {"euclidean", "cosine"}, default "euclidean"
        As in :func:`mutual_knn_map`.

    Returns
    -------
    float
        Mean overlap fraction in [0, 1].

    Raises
    ------
    InputError
        When either input is not valid latent codes (none, wrong axes, non-finite
        values, fewer than 2 pixels), the two do not cover the same pixels,
        ``k`` is not an integer in ``[1, n - 1]``, ``metric`` is unknown, or
        ``metric="cosine"`` meets ``d < 2`` or a code equal to the mean.
    """
    return float(np.mean(mutual_knn_map(z_a, z_b, k=k, metric=metric)))


def _masked_hsic(rows: np.ndarray, cols: np.ndarray, kv: np.ndarray, lv: np.ndarray,
                 n: int) -> float:
    """Unbiased HSIC of two sparse kernels sharing one support ``(rows, cols)``.

    Same formula as Huh et al.'s ``hsic_unbiased(mask * K, mask * L)``:
    ``[sum(K~ * L~^T) + sum(K~) sum(L~) / ((n-1)(n-2)) - 2 sum_j colsum_K~(j) rowsum_L~(j)
    / (n-2)] / (n (n-3))``.
    """
    from scipy.sparse import csr_matrix

    km = csr_matrix((kv, (rows, cols)), shape=(n, n))
    lm = csr_matrix((lv, (rows, cols)), shape=(n, n))
    t1 = float(km.multiply(lm.T).sum())
    t2 = float(km.sum()) * float(lm.sum()) / ((n - 1) * (n - 2))
    t3 = 2.0 * float(np.asarray(km.sum(axis=0)).ravel() @ np.asarray(lm.sum(axis=1)).ravel())
    return (t1 + t2 - t3 / (n - 2)) / (n * (n - 3))


def cknna(z_a: Any, z_b: Any, *, k: int = 10, metric: str = "euclidean") -> float:
    """Centred kernel nearest-neighbour alignment (CKNNA) of two latent spaces.

    CKA restricted to pairs of pixels that are mutual k-nearest neighbours in both
    spaces (Huh et al., 2024)::

        CKNNA = Align(K, L) / sqrt(Align(K, K) Align(L, L)),
        Align(K, L) = HSIC_unbiased(alpha * K, alpha * L),
        alpha_ij = 1[i != j, j in kNN_a(i) and j in kNN_b(i)]

    with linear kernels ``K = Z_a Z_a^T``, ``L = Z_b Z_b^T`` of the centred codes
    (``metric="cosine"``: of the centred, unit-normalised codes, which reproduces
    Huh et al.'s inner-product neighbours of normalised features). Sparse in
    O(n k): only the kernel values of neighbour pairs are computed.

    What it tells you: like CKA, but only about *local* structure, so it is not
    dominated by the largest directions of variation; 1 for spaces equal up to a
    rotation, scale and shift.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels in the two spaces (arrays, torch tensors or
        results' ``.latent``).
    k : int, default 10
        Neighbours per pixel, ``1 <= k < n``; needs ``n >= 4``.
    metric : {"euclidean", "cosine"}, default "euclidean"
        Neighbours and kernels from the centred codes, or from the centred,
        unit-normalised codes.

    Returns
    -------
    float
        CKNNA, at most 1; 0.0 when no pair is a neighbour in both spaces, NaN
        (with a logged warning) when a self-alignment is not positive.

    Raises
    ------
    InputError
        When either input is not valid latent codes (none, wrong axes, non-finite
        values, fewer than 4 pixels), the two do not cover the same pixels,
        ``k`` is not an integer in ``[1, n - 1]``, ``metric`` is unknown, or
        ``metric="cosine"`` meets ``d < 2`` or a code equal to the mean.
    """
    a, b = _pair(z_a, z_b, min_points=4)
    k = check_neighbours(a.n, k)
    xa, xb = _neighbour_space(a, metric), _neighbour_space(b, metric)
    _, ia = knn(xa, k)
    _, ib = knn(xb, k)
    return _cknna_from(xa, xb, ia, ib)


def _cknna_from(xa: np.ndarray, xb: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> float:
    """CKNNA from the (neighbour-space) codes and their k-NN indices ``(n, k)``."""
    n, k = ia.shape
    rows = np.repeat(np.arange(n), k)

    def kern(x: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x[r], x[c])

    # pairs (i, j) that are neighbours in both spaces, as flat keys i * n + j
    ca, cb = ia.ravel(), ib.ravel()
    keys_a = rows.astype(np.int64) * n + ca
    keys_b = rows.astype(np.int64) * n + cb
    both = np.isin(keys_a, keys_b)
    rm, cm = rows[both], ca[both]
    if rm.size == 0:
        return 0.0
    sim_ab = _masked_hsic(rm, cm, kern(xa, rm, cm), kern(xb, rm, cm), n)
    ka = kern(xa, rows, ca)
    sim_aa = _masked_hsic(rows, ca, ka, ka, n)
    kb = kern(xb, rows, cb)
    sim_bb = _masked_hsic(rows, cb, kb, kb, n)
    den = np.sqrt(sim_aa * sim_bb) if sim_aa > 0 and sim_bb > 0 else 0.0
    if den == 0.0:
        log.warning("CKNNA undefined (non-positive self-alignment); returning NaN")
        return float("nan")
    return float(sim_ab / den)


# --------------------------------------------------------------------------- CCA


@dataclass
class CCA:
    """Canonical correlation analysis of two spaces (fitted on all pixels).

    Attributes
    ----------
    correlations : ndarray of shape (r,)
        Canonical correlations, descending, ``r = min(rank Z_a, rank Z_b)``.
    weights_a, weights_b : ndarray of shape (d_a, r), (d_b, r)
        Canonical directions: ``(Z_a - mean_a) @ weights_a`` are the canonical
        variates of ``Z_a``, each with unit variance.
    mean_a, mean_b : ndarray of shape (d_a,), (d_b,)
        Mean code of each space, subtracted before projecting.
    """

    correlations: np.ndarray
    weights_a: np.ndarray
    weights_b: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray

    def transform_a(self, z: np.ndarray, k: int | None = None) -> np.ndarray:
        """First ``k`` canonical variates of codes ``z`` ``(n, d_a)`` of space A.

        Parameters
        ----------
        z : array_like of shape (n, d_a)
            Codes of space A (flat; reshape an image ``(ny, nx, d_a)`` first).
        k : int or None, default None
            Number of variates; ``None`` keeps all ``r``.

        Returns
        -------
        ndarray of shape (n, k)
            ``(z - mean_a) @ weights_a[:, :k]``.
        """
        return (np.asarray(z, float) - self.mean_a) @ self.weights_a[:, :k]

    def transform_b(self, z: np.ndarray, k: int | None = None) -> np.ndarray:
        """First ``k`` canonical variates of codes ``z`` ``(n, d_b)`` of space B.

        Parameters
        ----------
        z : array_like of shape (n, d_b)
            Codes of space B (flat; reshape an image ``(ny, nx, d_b)`` first).
        k : int or None, default None
            Number of variates; ``None`` keeps all ``r``.

        Returns
        -------
        ndarray of shape (n, k)
            ``(z - mean_b) @ weights_b[:, :k]``.
        """
        return (np.asarray(z, float) - self.mean_b) @ self.weights_b[:, :k]


def _whiten(z: np.ndarray, rank_tol: float) -> tuple[np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > rank_tol * (s[0] if s.size else 0.0)
    return u[:, keep], vt[keep].T / s[keep]


def canonical_correlations(z_a: Any, z_b: Any, *, rank_tol: float = 1e-8) -> CCA:
    """Canonical correlation analysis between two latent spaces.

    SVD of the product of the orthonormal bases of the centred codes; directions
    whose singular value is below ``rank_tol`` times the largest are dropped (no
    ridge term). O(n d^2).

    What it tells you: how many directions of one latent space are linearly
    predictable from the other (correlations near 1) and how many are private to
    each space (near 0) -- e.g. whether two seeds share the anomaly-relevant
    features and differ only in nuisance directions ("Escaping Plato's Cave").

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels in the two spaces (arrays, torch tensors or
        results' ``.latent``).
    rank_tol : float, default 1e-8
        Relative singular-value cut-off of each space's rank.

    Returns
    -------
    CCA
        Canonical correlations ``(r,)``, directions ``(d_a, r)`` / ``(d_b, r)``
        and the means.

    Raises
    ------
    InputError
        When either input is not valid latent codes (none, wrong axes, non-finite
        values, fewer than 3 pixels), the two do not cover the same pixels, or a
        space has no variance.
    """
    a, b = _pair(z_a, z_b, min_points=3)
    xa, xb = centre(a.z), centre(b.z)
    ua, wa = _whiten(xa, rank_tol)
    ub, wb = _whiten(xb, rank_tol)
    if ua.shape[1] == 0 or ub.shape[1] == 0:
        raise InputError("CCA: a latent space has no variance (all codes equal); expected "
                         "codes that vary across pixels.")
    p, rho, rt = np.linalg.svd(ua.T @ ub, full_matrices=False)
    scale = np.sqrt(a.n - 1.0)
    return CCA(correlations=np.clip(rho, 0.0, 1.0), weights_a=wa @ p * scale,
               weights_b=wb @ rt.T * scale, mean_a=a.z.mean(axis=0), mean_b=b.z.mean(axis=0))


@dataclass
class CCAAlignment:
    """Alignment and retrieval of two spaces projected on their top-k canonical subspace.

    Attributes
    ----------
    correlations : ndarray of shape (r,)
        All canonical correlations.
    ks : ndarray of int, shape (m,)
        Subspace sizes evaluated.
    mutual_knn : ndarray of shape (m,)
        Mutual k-NN overlap of the two projected spaces for each ``k`` in ``ks``.
    retrieval_top1 : ndarray of shape (m,)
        Fraction of pixels whose nearest code in projected B is the same pixel's
        code, querying with its projected A code.
    retrieval_top10 : ndarray of shape (m,)
        Same, the pixel being among the 10 nearest.
    n_points : int
        Pixels used for alignment and retrieval (a random subsample).
    n_neighbours : int
        ``k`` used for the mutual k-NN overlap.
    """

    correlations: np.ndarray
    ks: np.ndarray
    mutual_knn: np.ndarray
    retrieval_top1: np.ndarray
    retrieval_top10: np.ndarray
    n_points: int
    n_neighbours: int

    def plot(self, ax: Any = None) -> Any:
        """Correlations and retrieval vs subspace size; returns the matplotlib Figure.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw into; a new figure is made when ``None``.

        Returns
        -------
        matplotlib.figure.Figure
            The figure holding the axes.
        """
        from ._plot import new_axes

        fig, ax = new_axes(ax)
        r = np.arange(1, self.correlations.size + 1)
        ax.plot(r, self.correlations, "o-", label="canonical correlation")
        ax.plot(self.ks, self.mutual_knn, "s-", label=f"mutual {self.n_neighbours}-NN overlap")
        ax.plot(self.ks, self.retrieval_top1, "^-", label="retrieval top-1")
        ax.plot(self.ks, self.retrieval_top10, "v-", label="retrieval top-10")
        ax.set_xlabel("canonical subspace size k")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("correlation / fraction")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"CCA subspace alignment ({self.n_points} px)")
        ax.legend(fontsize=8)
        return fig


def cca_alignment(z_a: Any, z_b: Any, *, ks: Any = None, k: int = 10,
                  max_points: int | None = 4000, seed: int = 0) -> CCAAlignment:
    """Alignment and cross-space retrieval after projecting on the top-k canonical subspace.

    CCA is fitted on all pixels; both spaces are then projected on their first
    ``k_sub`` canonical variates (unit variance each) for each ``k_sub`` in ``ks``,
    and on a random subsample of ``max_points`` pixels (seeded) we measure the
    mutual ``k``-NN overlap of the projections and retrieval: query with a pixel's
    projected A code, search the projected B codes, count a hit when the nearest
    (top-1) or one of the 10 nearest (top-10) is the same pixel.

    What it tells you: if the two spaces share a few directions and the rest is
    seed-specific noise, retrieval in the shared subspace beats retrieval in the
    full space, and the ``k`` where it peaks is the size of the shared part.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels in the two spaces (arrays, torch tensors or
        results' ``.latent``).
    ks : sequence of int, optional
        Subspace sizes; default: up to 8 sizes spaced geometrically from 1 to ``r``
        (all of ``1 .. r`` when ``r <= 8``).
    k : int, default 10
        Neighbours for the mutual k-NN overlap.
    max_points : int or None, default 4000
        Subsample size for alignment and retrieval (``None``: all pixels).
    seed : int, default 0
        Seed of the subsample.

    Returns
    -------
    CCAAlignment
        Canonical correlations and, per size in ``ks``, the mutual k-NN overlap
        and top-1 / top-10 retrieval rates.

    Raises
    ------
    InputError
        When either input is not valid latent codes (none, wrong axes, non-finite
        values, fewer than 3 pixels), the two do not cover the same pixels, a
        space has no variance, ``ks`` holds a size outside ``1 .. r``, or ``k`` is
        not an integer in ``[1, m - 1]`` for the ``m`` subsampled pixels.
    """
    a, b = _pair(z_a, z_b, min_points=3)
    cca = canonical_correlations(a, b)
    r = cca.correlations.size
    auto = np.arange(1, r + 1) if r <= 8 else np.unique(np.round(np.geomspace(1, r, 8)))
    ks_arr = (auto.astype(int) if ks is None
              else np.asarray(
        [check_int(v, "ks", 1) for v in np.atleast_1d(ks)], dtype=int))
    if ks_arr.size == 0 or ks_arr.max() > r:
        raise InputError(f"ks: expected subspace sizes in 1..{r} (the number of canonical "
                         f"directions), found {ks_arr.tolist()}.")
    sel = subsample(a.n, max_points, seed)
    za = a.z if sel is None else a.z[sel]
    zb = b.z if sel is None else b.z[sel]
    m = za.shape[0]
    kk = check_neighbours(m, k)
    t10 = min(10, m)
    mk, top1, top10 = [], [], []
    for ksub in ks_arr:
        pa, pb = cca.transform_a(za, int(ksub)), cca.transform_b(zb, int(ksub))
        _, ia = knn(pa, kk)
        _, ib = knn(pb, kk)
        mk.append(float(np.mean(_overlap_counts(ia, ib) / kk)))
        _, hits = knn(pb, t10, query=pa)
        own = np.arange(m)[:, None]
        top1.append(float(np.mean(hits[:, 0] == own[:, 0])))
        top10.append(float(np.mean(np.any(hits == own, axis=1))))
    return CCAAlignment(correlations=cca.correlations, ks=ks_arr, mutual_knn=np.array(mk),
                        retrieval_top1=np.array(top1), retrieval_top10=np.array(top10),
                        n_points=m, n_neighbours=kk)
