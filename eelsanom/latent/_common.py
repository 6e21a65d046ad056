"""Shared input handling for the latent-space tools.

Every tool accepts latent codes as

- an :class:`~eelsanom.result.AnomalyResult` (its ``.latent``, shape ``(ny, nx, d)``),
- a numpy array or torch tensor of shape ``(n, d)`` or ``(ny, nx, d)``,

and turns them into a float64 matrix ``(n, d)`` plus the image shape (or
``None``) so per-pixel outputs come back shaped like the image. Bad input
(NaN codes, mismatched pixel counts, too few pixels for the neighbours asked
for, a one-dimensional latent where a tool needs ``d >= 2``) raises
:class:`~eelsanom.errors.InputError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import checks
from ..errors import InputError

log = logging.getLogger(__name__)

#: Detectors whose results carry per-pixel latent codes.
LATENT_METHODS = ("cvae", "pca")

#: Above this dimension exact k-NN uses blocked brute force (BLAS) instead of a k-d tree.
_KDTREE_MAX_DIM = 8


@dataclass(frozen=True)
class Codes:
    """Validated latent codes: ``z`` of shape ``(n, d)`` float64 and the image ``shape``.

    Attributes
    ----------
    z : ndarray of float64, shape (n, d)
        One code per pixel (row-major over the image).
    shape : tuple of int or None
        ``(ny, nx)`` when the codes came as an image, else ``None``.
    name : str
        How the codes are called in error messages.
    """

    z: np.ndarray
    shape: tuple[int, int] | None
    name: str

    @property
    def n(self) -> int:
        """Number of codes (pixels)."""
        return int(self.z.shape[0])

    @property
    def d(self) -> int:
        """Latent dimension."""
        return int(self.z.shape[1])

    def to_map(self, values: np.ndarray) -> np.ndarray:
        """Per-pixel values ``(n,)`` reshaped to the image ``(ny, nx)`` when there is one.

        Parameters
        ----------
        values : array_like of shape (n,)
            One value per code.

        Returns
        -------
        ndarray of shape (ny, nx), or (n,) when ``shape`` is ``None``
            The values.
        """
        v = np.asarray(values)
        return v.reshape(self.shape) if self.shape is not None else v


def _to_numpy(obj: Any) -> Any:
    if type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    return obj


def as_codes(obj: Any, *, name: str = "Z", min_dim: int = 1, min_points: int = 2) -> Codes:
    """Validate latent codes given as a result, an array ``(n, d)`` / ``(ny, nx, d)`` or a tensor.

    Parameters
    ----------
    obj : AnomalyResult, ndarray or torch.Tensor
        The codes.
    name : str
        How the codes are called in error messages.
    min_dim : int
        Smallest latent dimension ``d`` the calling tool can use.
    min_points : int
        Smallest number of pixels the calling tool can use.

    Returns
    -------
    Codes
        ``z`` as float64 ``(n, d)`` (an image is flattened row-major) and the
        image shape. A :class:`Codes` input is only re-checked.

    Raises
    ------
    InputError
        No latent codes, wrong number of axes, non-finite values, ``d < min_dim`` or
        fewer than ``min_points`` pixels.
    """
    if isinstance(obj, Codes):
        codes = obj
    else:
        shape: tuple[int, int] | None = None
        if hasattr(obj, "nll") and hasattr(obj, "latent"):  # AnomalyResult (duck-typed)
            if obj.latent is None:
                raise InputError(
                    f"{name}: the {getattr(obj, 'method', '?')!r} result has no latent codes; "
                    f"expected a result from a detector that saves them "
                    f"({', '.join(LATENT_METHODS)}). Score the data with one of those methods.")
            arr = np.asarray(_to_numpy(obj.latent))
        else:
            arr = np.asarray(_to_numpy(obj))
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == bool):
            raise InputError(f"{name}: expected a numeric array of latent codes, found dtype "
                             f"{arr.dtype}.")
        if arr.ndim == 3:
            shape = (int(arr.shape[0]), int(arr.shape[1]))
            z = arr.reshape(-1, arr.shape[2])
        elif arr.ndim == 2:
            z = arr
        else:
            raise InputError(f"{name}: expected latent codes of shape (n, d) or (ny, nx, d), "
                             f"found an array of shape {arr.shape}. Reshape it (a single latent "
                             "dimension is (n, 1)).")
        z = np.asarray(z, dtype=np.float64)
        bad = ~np.isfinite(z)
        if bad.any():
            nb = int(bad.any(axis=1).sum())
            raise InputError(f"{name}: expected finite latent codes, found {nb} of {z.shape[0]} "
                             "pixels with NaN or infinite values. Drop or fix those pixels.")
        codes = Codes(np.ascontiguousarray(z), shape, name)
    if codes.d < min_dim:
        raise InputError(f"{codes.name}: this tool needs a latent of dimension d >= {min_dim}, "
                         f"found d = {codes.d}. Use a detector with more latent dimensions.")
    if codes.n < min_points:
        raise InputError(f"{codes.name}: this tool needs at least {min_points} pixels, found "
                         f"{codes.n}.")
    return codes


def check_pair(a: Codes, b: Codes) -> None:
    """Refuse two spaces that do not cover the same pixels.

    Parameters
    ----------
    a, b : Codes
        The two spaces.

    Raises
    ------
    InputError
        When the numbers of pixels differ, or both have image shapes that differ.
    """
    if a.n != b.n:
        raise InputError(f"{a.name} and {b.name} must hold codes of the same pixels: expected "
                         f"equal pixel counts, found {a.n} and {b.n}. Compare results of the "
                         "same image.")
    if a.shape is not None and b.shape is not None and a.shape != b.shape:
        raise InputError(f"{a.name} and {b.name}: expected the same image shape, found "
                         f"{a.shape} and {b.shape}.")


def pair_shape(a: Codes, b: Codes) -> tuple[int, int] | None:
    """Image shape of a pair of spaces: ``a``'s, else ``b``'s.

    Parameters
    ----------
    a, b : Codes
        The two spaces (already checked with :func:`check_pair`).

    Returns
    -------
    tuple of int or None
        ``(ny, nx)``, or ``None`` when neither came as an image.
    """
    return a.shape if a.shape is not None else b.shape


def check_neighbours(n: int, k: int, *, name: str = "k", what: str = "pixels") -> int:
    """``k`` as an int in ``[1, n - 1]``; refuse fewer points than neighbours.

    Parameters
    ----------
    n : int
        Number of points.
    k : int
        Neighbours asked for.
    name : str, default "k"
        Parameter name for error messages.
    what : str, default "pixels"
        What the points are, for error messages.

    Returns
    -------
    int
        ``k``.

    Raises
    ------
    InputError
        When ``k`` is not an integer >= 1 or ``k >= n``.
    """
    k = check_int(k, name, 1)
    if k >= n:
        raise InputError(f"{name} = {k} neighbours asked for, but there are only {n} {what}; "
                         f"expected {name} < {n}. Use fewer neighbours or more pixels.")
    return k


def check_int(v: Any, name: str, lo: int) -> int:
    """``v`` as an int ``>= lo`` (bools refused).

    Parameters
    ----------
    v : int
        The value.
    name : str
        Parameter name for error messages.
    lo : int
        Smallest allowed value.

    Returns
    -------
    int
        ``int(v)``.

    Raises
    ------
    InputError
        When ``v`` is not an integer (Python or numpy; bools refused) or ``v < lo``.
    """
    return checks.check_int(name, v, lo)


def check_positive(v: Any, name: str) -> float:
    """``v`` as a finite float > 0.

    Parameters
    ----------
    v : float
        The value.
    name : str
        Parameter name for error messages.

    Returns
    -------
    float
        ``float(v)``.

    Raises
    ------
    InputError
        When ``v`` is not a number, not finite, or not positive.
    """
    return checks.check_positive(name, v)


def as_labels(labels: Any, n: int, *, name: str = "labels") -> np.ndarray:
    """Per-pixel labels ``(n,)`` from an array ``(n,)`` or a map ``(ny, nx)``.

    Parameters
    ----------
    labels : array_like of shape (n,) or (ny, nx), or torch.Tensor
        Class of each pixel (any dtype).
    n : int
        Number of pixels expected.
    name : str, default "labels"
        Parameter name for error messages.

    Returns
    -------
    ndarray of shape (n,)
        The labels, flattened row-major.

    Raises
    ------
    InputError
        When there is not one label per pixel, or float labels are not finite.
    """
    lab = np.asarray(_to_numpy(labels))
    if lab.size != n:
        raise InputError(f"{name}: expected one label per pixel ({n}), found {lab.size} "
                         f"(shape {lab.shape}).")
    lab = lab.reshape(-1)
    if lab.dtype.kind == "f" and not np.isfinite(lab).all():
        raise InputError(f"{name}: expected finite labels, found NaN/inf.")
    return lab


def subsample(n: int, max_points: int | None, seed: int) -> np.ndarray | None:
    """Sorted random indices of ``max_points`` of ``n`` items, or ``None`` to keep all.

    Parameters
    ----------
    n : int
        Number of items.
    max_points : int or None
        Subsample size; ``None`` or ``>= n`` keeps all.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    ndarray of int, shape (max_points,), or None
        Distinct indices in ascending order, or ``None`` when all items are kept.
    """
    if max_points is None or n <= max_points:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(max_points), replace=False))


def knn(x: np.ndarray, k: int, query: np.ndarray | None = None,
        query_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean ``k`` nearest neighbours.

    With ``query=None`` the rows ``x[query_index]`` (default: all rows) are queried
    against ``x`` and the point itself is excluded (also when it has exact
    duplicates); otherwise the rows of ``query`` are searched in ``x``. A k-d tree
    (``scipy.spatial.cKDTree``) is used for ``d <= 8``, blocked brute force
    (``sklearn.neighbors.NearestNeighbors``) above, where trees lose to BLAS. No
    dense ``n x n`` matrix is formed.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Points searched.
    k : int
        Neighbours per query (``1 <= k < n`` for self-queries).
    query : ndarray of shape (n_query, d), optional
        Points to search for; ``None`` queries rows of ``x`` itself.
    query_index : ndarray of int, shape (n_query,), optional
        With ``query=None``, the rows of ``x`` to query (default: all).

    Returns
    -------
    dist, idx : ndarray of shape (n_query, k)
        Distances (ascending) and indices into ``x``.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    self_query = query is None
    own = np.arange(x.shape[0]) if query_index is None else np.asarray(query_index)
    if self_query:
        q = x if query_index is None else x[own]
    else:
        q = np.ascontiguousarray(query, dtype=np.float64)
    kk = k + 1 if self_query else k
    kk = min(kk, x.shape[0])
    if x.shape[1] <= _KDTREE_MAX_DIM:
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(x).query(q, k=kk, workers=-1)
        if kk == 1:
            dist, idx = dist[:, None], idx[:, None]
    else:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=kk, algorithm="brute", n_jobs=-1).fit(x)
        dist, idx = nn.kneighbors(q)
    if self_query:
        is_self = idx == own[:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
        idx = np.take_along_axis(idx, order, axis=1)
        dist = np.take_along_axis(dist, order, axis=1)
    return dist, idx


def centre(z: np.ndarray) -> np.ndarray:
    """Subtract the column means.

    Parameters
    ----------
    z : ndarray of shape (n, d)
        Codes.

    Returns
    -------
    ndarray of shape (n, d)
        ``z - z.mean(axis=0)``.
    """
    return z - z.mean(axis=0, keepdims=True)
