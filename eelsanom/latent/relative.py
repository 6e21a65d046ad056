"""Relative representations: every code described by its similarity to a few anchors.

Moschella, Maiorca, Fumero, Norelli, Locatello and Rodolà, "Relative
representations enable zero-shot latent space communication", ICLR 2023. A
code ``z`` is replaced by its cosine similarities to ``m`` anchor codes; the
result is invariant to any rotation and isotropic scaling of the latent space
(and, with ``center=True``, to shifts), so two detectors trained with
different seeds -- whose latent spaces differ by such transforms -- give
comparable relative codes, pixel by pixel.

Anchors are pixels (random, or the medoids of k-means clusters of the codes)
or user-picked reference regions (each anchor is a region's mean code).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import Codes, as_codes, check_int, check_pair, pair_shape

log = logging.getLogger(__name__)

__all__ = ["select_anchors", "relative_representation", "relative_agreement"]

_ANCHOR_METHODS = ("random", "kmeans")


def select_anchors(z: Any, n_anchors: int = 32, *, method: str = "kmeans",
                   seed: int = 0) -> np.ndarray:
    """Pick anchor pixels for relative representations.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``), ``d >= 2``.
    n_anchors : int, default 32
        How many anchors (at most the number of pixels).
    method : {"kmeans", "random"}, default "kmeans"
        ``"random"``: distinct random pixels (seeded). ``"kmeans"``: k-means
        (``KMeans``, one initialisation, on at most 10,000 randomly chosen codes,
        seeded) and, for
        each centre, the pixel whose code is nearest to it (its medoid); duplicates
        are dropped, so fewer anchors may come back for highly repetitive codes.
    seed : int, default 0
        Seed of the random choice and of k-means.

    Returns
    -------
    ndarray of int, shape (m,)
        Flat pixel indices (row-major over ``(ny, nx)``), sorted, ``m <= n_anchors``.

    Raises
    ------
    InputError
        When ``z`` is not valid latent codes (``d >= 2``, at least 2 pixels),
        ``n_anchors`` is not an integer in ``[1, n]``, or ``method`` is unknown.
    """
    c = as_codes(z, name="Z", min_dim=2)
    m = check_int(n_anchors, "n_anchors", 1)
    if m > c.n:
        raise InputError(f"n_anchors = {m}: expected at most the number of pixels ({c.n}).")
    if method not in _ANCHOR_METHODS:
        raise InputError(f"anchor method: expected one of {_ANCHOR_METHODS}, found {method!r}.")
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.sort(rng.choice(c.n, size=m, replace=False))
    from sklearn.cluster import KMeans

    from ._common import knn

    fit_idx = rng.choice(c.n, size=min(c.n, 10000), replace=False)
    km = KMeans(n_clusters=m, random_state=seed, n_init=1, max_iter=100).fit(c.z[fit_idx])
    _, idx = knn(c.z, 1, query=km.cluster_centers_)
    return np.unique(idx[:, 0])


def _anchor_vectors(c: Codes, anchors: Any) -> np.ndarray:
    """Anchor codes ``(m, d)`` in space ``c`` from pixel indices or region masks."""
    arr = np.asarray(anchors)
    if arr.dtype == bool:
        regions = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr[None]
        if regions.shape[1] != c.n:
            raise InputError(f"anchor regions: expected boolean masks with one value per pixel "
                             f"({c.n}), found masks of shape {arr.shape[1:]}.")
        sizes = regions.sum(axis=1)
        if np.any(sizes == 0):
            raise InputError(f"anchor regions: region(s) {np.nonzero(sizes == 0)[0].tolist()} "
                             "select no pixel; expected non-empty masks.")
        return (regions.astype(np.float64) @ c.z) / sizes[:, None]
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError("anchors: expected flat pixel indices (1-D integers), boolean region "
                         f"masks (m, ny, nx), 'kmeans' or 'random'; found {arr.dtype} array of "
                         f"shape {arr.shape}.")
    if arr.size == 0 or arr.min() < 0 or arr.max() >= c.n:
        raise InputError(f"anchors: expected pixel indices in 0..{c.n - 1}, found "
                         f"{arr.min() if arr.size else 'none'}..{arr.max() if arr.size else ''}.")
    return c.z[arr]


def _relative(c: Codes, anchor_codes: np.ndarray, center: bool) -> np.ndarray:
    z, a = c.z, anchor_codes
    if center:
        mu = z.mean(axis=0)
        z, a = z - mu, a - mu
    zn = np.linalg.norm(z, axis=1, keepdims=True)
    an = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(an == 0):
        raise InputError("anchors: an anchor code is zero (it sits at the mean with "
                         "center=True), so its cosine similarity is undefined. Pick other "
                         "anchors.")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (z / np.where(zn == 0, 1.0, zn)) @ (a / an).T
    r[zn[:, 0] == 0] = np.nan
    return r


def _resolve_anchors(ref: Codes, anchors: Any, n_anchors: int, seed: int) -> Any:
    if isinstance(anchors, str):
        return select_anchors(ref, n_anchors, method=anchors, seed=seed)
    return anchors


def relative_representation(z: Any, anchors: Any = "kmeans", *, n_anchors: int = 32,
                            center: bool = True, seed: int = 0) -> np.ndarray:
    """Cosine similarity of every code to each anchor (Moschella et al., 2023).

    What it tells you: a description of each pixel by how much it resembles a
    few reference pixels or regions (e.g. "bulk", "interface", "precipitate"),
    which does not depend on the arbitrary orientation and scale of the latent
    space; anomalous pixels resemble none of the bulk anchors.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``), ``d >= 2``.
    anchors : {"kmeans", "random"}, array of int (m,) or bool array (m, ny, nx)
        Anchor choice (see :func:`select_anchors`), flat pixel indices, or boolean
        masks of reference regions (anchor = the region's mean code).
    n_anchors : int, default 32
        Number of anchors when ``anchors`` is a method name.
    center : bool, default True
        Subtract the mean code of all pixels first (makes the result invariant to
        shifts of the latent space as well). Moschella et al. use raw codes
        (``center=False``).
    seed : int, default 0
        Seed of the anchor selection when ``anchors`` is a method name.

    Raises
    ------
    InputError
        A one-dimensional latent (cosine similarities of 1-D codes are only signs);
        also invalid codes, anchor indices outside ``0 .. n - 1``, region masks
        that are empty or not one value per pixel, or an anchor code that is
        zero (at the mean with ``center=True``).

    Returns
    -------
    ndarray of shape (ny, nx, m), or (n, m) for flat input
        Values in [-1, 1]; a code exactly at the origin gets NaN.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(200, 3))
    >>> r1 = relative_representation(z, np.arange(5))
    >>> r2 = relative_representation(4.0 * z[:, [2, 0, 1]], np.arange(5))
    >>> bool(np.allclose(r1, r2))
    True
    """
    c = as_codes(z, name="Z", min_dim=2)
    anc = _resolve_anchors(c, anchors, n_anchors, seed)
    r = _relative(c, _anchor_vectors(c, anc), center)
    return r.reshape(*c.shape, -1) if c.shape is not None else r


def relative_agreement(z_a: Any, z_b: Any, anchors: Any = "kmeans", *, n_anchors: int = 32,
                       center: bool = True, seed: int = 0) -> np.ndarray:
    """Per-pixel agreement of the relative representations of two spaces.

    Both spaces are described relative to the *same* anchor pixels (or regions);
    the agreement of pixel ``i`` is the cosine similarity between its relative
    vectors ``r_a(i)`` and ``r_b(i)``. Anchors picked by a method are chosen in
    ``Z_a``.

    What it tells you: near 1 where the two detectors see the pixel in the same
    relation to the references; low values mark pixels whose interpretation
    depends on the model (seed, architecture), so their anomaly scores deserve
    less trust. Invariant to rotations and isotropic scaling of either space
    (and shifts with ``center=True``).

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels in the two spaces, ``d_a, d_b >= 2``.
    anchors, n_anchors, center, seed
        As in :func:`relative_representation`.

    Returns
    -------
    ndarray of shape (ny, nx), or (n,) for flat input
        Cosine similarity in [-1, 1]; NaN where a relative vector is zero.

    Raises
    ------
    InputError
        When the two inputs do not cover the same pixels, or for any reason
        :func:`relative_representation` refuses either of them.
    """
    a = as_codes(z_a, name="Z_a", min_dim=2)
    b = as_codes(z_b, name="Z_b", min_dim=2)
    check_pair(a, b)
    anc = _resolve_anchors(a, anchors, n_anchors, seed)
    ra = _relative(a, _anchor_vectors(a, anc), center)
    rb = _relative(b, _anchor_vectors(b, anc), center)
    num = np.einsum("ij,ij->i", ra, rb)
    den = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agree = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    shape = pair_shape(a, b)
    return agree.reshape(shape) if shape is not None else agree
