"""Aligning two latent spaces: orthogonal Procrustes, and matching latent units.

- Orthogonal Procrustes (Schönemann, 1966), the basis change that BT²
  backward-compatible training uses to make a new model's space compatible with
  an old one (Zhou, Li, Zhang, Chen and Li, "BT²: Backward-compatible training
  with basis transformation", ICCV 2023): the rotation (plus isotropic scale and
  shift) that best maps ``Z_a`` onto ``Z_b``, and the per-pixel residual map.
- Unit matching across seeds (Li, Yosinski, Clune, Lipson and Hopcroft,
  "Convergent learning: do different neural networks learn the same
  representations?", ICLR 2016): correlation matrix of latent units, one-to-one
  (Hungarian) and semi-matching, sparse (Lasso) prediction of each unit of one
  space from the units of the other, and spectral clustering of the units.
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
    check_pair,
    check_positive,
    pair_shape,
    subsample,
)

log = logging.getLogger(__name__)

__all__ = [
    "ProcrustesResult", "procrustes", "unit_correlation", "UnitMatching", "match_units",
    "SparsePrediction", "sparse_unit_prediction", "cluster_units",
]


def _pair(z_a: Any, z_b: Any, min_points: int = 2) -> tuple[Codes, Codes]:
    a = as_codes(z_a, name="Z_a", min_points=min_points)
    b = as_codes(z_b, name="Z_b", min_points=min_points)
    check_pair(a, b)
    return a, b


# --------------------------------------------------------------------------- Procrustes


@dataclass
class ProcrustesResult:
    """Best map ``Z_b ~ scale * Z_a @ rotation + translation``.

    Attributes
    ----------
    rotation : ndarray of shape (d_a, d_b)
        Orthogonal (``d_a == d_b``) or with orthonormal rows/columns.
    scale : float
        Isotropic scale (1 with ``scale=False``).
    translation : ndarray of shape (d_b,)
        Shift ``t`` added after rotating and scaling, in the units of ``Z_b``.
    residual_map : ndarray of shape (ny, nx), or (n,) for flat input
        ``||z_b - (scale z_a Q + t)||`` per pixel, in the units of ``Z_b``.
    relative_residual : float
        ``||residual||_F / ||Z_b - mean||_F``: 0 for spaces equal up to a similarity
        transform, about 1 (or more) for unrelated ones.
    rms_b : float
        Root-mean-square norm of the centred ``Z_b`` codes (to read the map against).
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    residual_map: np.ndarray
    relative_residual: float
    rms_b: float

    def transform(self, z_a: Any) -> np.ndarray:
        """Map codes of space A into space B: ``scale * z_a @ rotation + translation``.

        Parameters
        ----------
        z_a : AnomalyResult or array of shape (n, d_a) or (ny, nx, d_a)
            Codes in space A (need not be the pixels the map was fitted on).

        Returns
        -------
        ndarray of shape (n, d_b) or (ny, nx, d_b)
            The codes in space B, shaped like the input's pixels.

        Raises
        ------
        InputError
            When ``z_a`` is not a valid code array (see the module docstring).
        """
        c = as_codes(z_a, name="Z_a")
        out = self.scale * c.z @ self.rotation + self.translation
        return out.reshape(*c.shape, -1) if c.shape is not None else out


def procrustes(z_a: Any, z_b: Any, *, scale: bool = True) -> ProcrustesResult:
    """Orthogonal Procrustes alignment of space A onto space B, with its residual map.

    ``Q = U V^T`` from the SVD ``U S V^T`` of ``(Z_a - mean_a)^T (Z_b - mean_b)``; the
    scale is ``trace(S) / ||Z_a - mean_a||_F^2`` (Schönemann 1966; the basis change
    of BT², Zhou et al. 2023). Spaces of different dimension are allowed (``Q`` then
    has orthonormal rows or columns). O(n d^2).

    What it tells you: if two detectors (seeds, retrainings) differ only by a
    rotation of the latent space, the residual is ~0 and their latents are
    interchangeable; the residual map shows the pixels whose codes cannot be
    carried over -- often the anomalies, which each model encodes its own way.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Latent codes of the same pixels in the two spaces (an array or torch
        tensor, or a result's ``.latent``); ``(ny, nx, d_b)`` works for B too.
    scale : bool, default True
        Fit an isotropic scale as well as the rotation and shift.

    Returns
    -------
    ProcrustesResult
        Rotation ``(d_a, d_b)``, scale, translation ``(d_b,)``, the residual map
        ``(ny, nx)`` (or ``(n,)`` for flat input) and its relative size.

    Raises
    ------
    InputError
        When either input has no latent codes, the wrong number of axes or
        non-finite values, too few pixels (fewer than 2), or the two do not cover the
        same pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import ortho_group
    >>> z = np.random.default_rng(0).normal(size=(100, 3))
    >>> q = ortho_group.rvs(3, random_state=0)
    >>> res = procrustes(z, 2.0 * z @ q + 1.0)
    >>> bool(np.allclose(res.rotation, q)), round(res.scale, 6)
    (True, 2.0)
    """
    a, b = _pair(z_a, z_b)
    xa, xb = centre(a.z), centre(b.z)
    u, s, vt = np.linalg.svd(xa.T @ xb, full_matrices=False)
    q = u @ vt
    na = float(np.sum(xa * xa))
    sc = float(s.sum() / na) if (scale and na > 0) else 1.0
    t = b.z.mean(axis=0) - sc * a.z.mean(axis=0) @ q
    res = xb - sc * xa @ q
    per_px = np.linalg.norm(res, axis=1)
    nb = float(np.linalg.norm(xb))
    rel = float(np.linalg.norm(res) / nb) if nb > 0 else float("nan")
    shape = pair_shape(a, b)
    return ProcrustesResult(rotation=q, scale=sc, translation=t,
                            residual_map=per_px.reshape(shape) if shape is not None else per_px,
                            relative_residual=rel, rms_b=float(nb / np.sqrt(b.n)))


# --------------------------------------------------------------------------- unit matching


def unit_correlation(z_a: Any, z_b: Any) -> np.ndarray:
    """Pearson correlation between every latent unit of A and every unit of B.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Latent codes of the same pixels in the two spaces (an array or torch
        tensor, or a result's ``.latent``); ``(ny, nx, d_b)`` works for B too.

    Returns
    -------
    ndarray of shape (d_a, d_b)
        Entry ``(i, j)`` is the correlation over pixels of unit ``i`` of ``Z_a`` with
        unit ``j`` of ``Z_b``; NaN for a constant unit.

    Raises
    ------
    InputError
        When either input has no latent codes, the wrong number of axes or
        non-finite values, too few pixels (fewer than 3), or the two do not cover the
        same pixels.
    """
    a, b = _pair(z_a, z_b, min_points=3)
    xa, xb = centre(a.z), centre(b.z)
    sa, sb = np.linalg.norm(xa, axis=0), np.linalg.norm(xb, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (xa.T @ xb) / np.outer(sa, sb)
    c[~np.isfinite(c)] = np.nan
    return np.clip(c, -1.0, 1.0)


@dataclass
class UnitMatching:
    """A matching of latent units of A to units of B.

    Attributes
    ----------
    method : str
        ``"hungarian"`` (one-to-one, maximising the summed absolute correlation) or
        ``"semi"`` (each unit of A to its most correlated unit of B; several A units
        may share one B unit).
    pairs : ndarray of int, shape (m, 2)
        ``(unit of A, unit of B)``.
    correlations : ndarray of shape (m,)
        Signed correlation of each pair (the sign says whether B's unit is flipped).
    correlation_matrix : ndarray of shape (d_a, d_b)
        Pearson correlation of every unit pair (:func:`unit_correlation`).
    """

    method: str
    pairs: np.ndarray
    correlations: np.ndarray
    correlation_matrix: np.ndarray

    @property
    def mean_abs_correlation(self) -> float:
        """Mean |correlation| over the matched pairs (NaN when there is none); 1 = same units."""
        return float(np.mean(np.abs(self.correlations))) if self.correlations.size else np.nan

    @property
    def signs(self) -> np.ndarray:
        """+1 / -1 per pair."""
        return np.where(self.correlations < 0, -1, 1)

    def permutation(self) -> np.ndarray:
        """Signed permutation matrix ``(d_a, d_b)``: ``Z_a @ P`` approximates ``Z_b`` up to
        scale per unit (one-to-one matchings).

        Returns
        -------
        ndarray of shape (d_a, d_b)
            ``P[i, j] = +1`` or ``-1`` (the sign of the correlation) for each
            matched pair ``(i, j)``, 0 elsewhere.
        """
        d_a, d_b = self.correlation_matrix.shape
        p = np.zeros((d_a, d_b))
        p[self.pairs[:, 0], self.pairs[:, 1]] = self.signs
        return p

    def plot(self, ax: Any = None) -> Any:
        """Heat map of |correlation| with the matched pairs marked; returns the Figure.

        Needs matplotlib.

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
        im = ax.imshow(np.abs(self.correlation_matrix), vmin=0, vmax=1, cmap="viridis")
        ax.plot(self.pairs[:, 1], self.pairs[:, 0], "r+", markersize=10, label=self.method)
        fig.colorbar(im, ax=ax).set_label("|correlation| of latent units")
        ax.set_xlabel("unit of B")
        ax.set_ylabel("unit of A")
        ax.set_title(f"unit matching ({self.method}), mean |r| = "
                     f"{self.mean_abs_correlation:.3f}", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        return fig


_MATCH_METHODS = ("hungarian", "semi")


def match_units(z_a: Any, z_b: Any, *, method: str = "hungarian") -> UnitMatching:
    """Match latent units of two spaces by correlation (Li et al., 2016, Convergent learning).

    ``"hungarian"``: one-to-one assignment maximising the total |correlation|
    (``scipy.optimize.linear_sum_assignment``; ``min(d_a, d_b)`` pairs).
    ``"semi"``: semi-matching, each unit of A paired with its most |correlated|
    unit of B.

    What it tells you: whether two seeds learned the *same individual* latent
    units (|r| near 1 for every pair: the units can be compared one by one, e.g.
    the same unit tracks the edge onset) or only the same subspace (use
    :func:`~eelsanom.latent.procrustes` or CCA then). If ``Z_b = Z_a P S`` for a
    permutation ``P`` and sign flips ``S``, it is recovered exactly.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Latent codes of the same pixels in the two spaces (an array or torch
        tensor, or a result's ``.latent``); ``(ny, nx, d_b)`` works for B too.
    method : {"hungarian", "semi"}, default "hungarian"
        One-to-one assignment or semi-matching (see above).

    Returns
    -------
    UnitMatching
        The pairs ``(m, 2)``, their signed correlations ``(m,)`` and the full
        correlation matrix ``(d_a, d_b)``; ``m = min(d_a, d_b)`` for
        ``"hungarian"``, ``d_a`` for ``"semi"``.

    Raises
    ------
    InputError
        When ``method`` is unknown, or the codes are invalid as for
        :func:`unit_correlation`.
    """
    if method not in _MATCH_METHODS:
        raise InputError(f"method: expected one of {_MATCH_METHODS}, found {method!r}.")
    c = unit_correlation(z_a, z_b)
    w = np.nan_to_num(np.abs(c), nan=0.0)
    if method == "hungarian":
        from scipy.optimize import linear_sum_assignment

        ri, ci = linear_sum_assignment(w, maximize=True)
    else:
        ri = np.arange(c.shape[0])
        ci = np.argmax(w, axis=1)
    pairs = np.stack([ri, ci], axis=1).astype(int)
    return UnitMatching(method=method, pairs=pairs, correlations=c[ri, ci],
                        correlation_matrix=c)


@dataclass
class SparsePrediction:
    """Lasso prediction of each unit of B from the units of A (all standardised).

    Attributes
    ----------
    coef : ndarray of shape (d_b, d_a)
        Row ``j``: weights of A's units predicting B's unit ``j``.
    r2 : ndarray of shape (d_b,)
        In-sample R^2 of each B unit.
    n_nonzero : ndarray of int, shape (d_b,)
        A units used per B unit (1: a one-to-one correspondence; many: B's unit is a
        mixture of A's).
    alpha : float
        The L1 penalty used.
    """

    coef: np.ndarray
    r2: np.ndarray
    n_nonzero: np.ndarray
    alpha: float


def sparse_unit_prediction(z_a: Any, z_b: Any, *, alpha: float = 0.05,
                           max_points: int | None = 20000, seed: int = 0) -> SparsePrediction:
    """Predict each latent unit of B from A's units by L1-regularised regression (Li et al. 2016).

    Both spaces are standardised per unit; ``sklearn.linear_model.Lasso`` with
    penalty ``alpha`` is fitted on at most ``max_points`` random pixels (seeded).

    What it tells you: how many of A's units it takes to express each unit of B --
    one (units correspond), a few (small rotations within groups), or many
    (distributed codes).

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Latent codes of the same pixels in the two spaces (an array or torch
        tensor, or a result's ``.latent``); ``(ny, nx, d_b)`` works for B too.
    alpha : float, default 0.05
        L1 penalty (on standardised units; 0.05 keeps weights above ~0.05).
    max_points : int or None, default 20000
        Fit on at most this many randomly chosen pixels; ``None`` uses all.
    seed : int, default 0
        Seed of the pixel subsample.

    Returns
    -------
    SparsePrediction
        Coefficients ``(d_b, d_a)``, in-sample R^2 ``(d_b,)`` and the number of
        A units used per B unit ``(d_b,)``.

    Raises
    ------
    InputError
        When ``alpha`` is not a positive number, or the codes are invalid as
        for :func:`unit_correlation`.
    """
    from sklearn.linear_model import Lasso

    alpha = check_positive(alpha, "alpha")
    a, b = _pair(z_a, z_b, min_points=3)
    sel = subsample(a.n, max_points, seed)
    xa = a.z if sel is None else a.z[sel]
    xb = b.z if sel is None else b.z[sel]

    def std(x: np.ndarray) -> np.ndarray:
        s = x.std(axis=0)
        return (x - x.mean(axis=0)) / np.where(s > 0, s, 1.0)

    xa, xb = std(xa), std(xb)
    model = Lasso(alpha=alpha, max_iter=5000, tol=1e-6).fit(xa, xb)
    coef = np.atleast_2d(model.coef_)
    pred = xa @ coef.T + model.intercept_
    ss_res = np.sum((xb - pred) ** 2, axis=0)
    ss_tot = np.sum(xb ** 2, axis=0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    return SparsePrediction(coef=coef, r2=r2, n_nonzero=np.sum(np.abs(coef) > 1e-8, axis=1),
                            alpha=alpha)


def cluster_units(z_a: Any, z_b: Any, n_clusters: int, *, seed: int = 0) -> np.ndarray:
    """Spectral clustering of the latent units of both spaces by |correlation| (Li et al. 2016).

    The ``d_a + d_b`` units are clustered with the affinity ``|corr|`` (diagonal 1,
    constant units affinity 0) by ``sklearn.cluster.SpectralClustering``.

    What it tells you: groups of units, across both seeds, that carry the same
    information; a group with units from only one seed is a feature the other
    seed did not learn.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Latent codes of the same pixels in the two spaces (an array or torch
        tensor, or a result's ``.latent``); ``(ny, nx, d_b)`` works for B too.
    n_clusters : int
        ``1 <= n_clusters <= d_a + d_b``.
    seed : int, default 0
        Random state of the spectral clustering.

    Returns
    -------
    ndarray of int, shape (d_a + d_b,)
        Cluster label of each unit: first A's ``d_a`` units, then B's.

    Raises
    ------
    InputError
        When ``n_clusters`` is not an integer in ``[1, d_a + d_b]``, or the
        codes are invalid as for :func:`unit_correlation`.
    """
    from sklearn.cluster import SpectralClustering

    a, b = _pair(z_a, z_b, min_points=3)
    z = np.concatenate([a.z, b.z], axis=1)
    m = z.shape[1]
    k = check_int(n_clusters, "n_clusters", 1)
    if k > m:
        raise InputError(f"n_clusters = {k}: expected at most the number of units ({m}).")
    zc = centre(z)
    s = np.linalg.norm(zc, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        aff = np.abs((zc.T @ zc) / np.outer(s, s))
    aff = np.nan_to_num(aff, nan=0.0)
    np.fill_diagonal(aff, 1.0)
    if k == 1:
        return np.zeros(m, dtype=int)
    sc = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                            assign_labels="cluster_qr")
    return sc.fit_predict(aff).astype(int)
