"""Matryoshka (nested) latents: the analysis of anomaly maps vs latent prefix size.

Kusupati et al., "Matryoshka representation learning", NeurIPS 2022: train with
the loss summed over nested prefixes ``z[:m]`` of the latent, so that every
prefix is a usable code on its own. For a *linear* autoencoder this recovers
PCA exactly -- each prefix spans the top-``m`` principal subspace (the nested
dropout result of Rippel, Gelbart and Adams, ICML 2014) -- and PCA itself is
prefix-optimal (Eckart-Young for every ``m``). :func:`fit_linear_nested_ae` is a
small reference trainer used to check that claim; the 3D-CVAE's Matryoshka
training option belongs to the detector
(``CVAE3DDetector(nested_prefixes="all")``; ``det.prefix_scorer(si)`` is the
scorer :func:`prefix_curve` takes).

:func:`prefix_curve` reads the result of such training: anomaly-map quality
(ROC-AUC with a ground truth, NLL statistics) as a function of the prefix size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import as_codes, check_int

log = logging.getLogger(__name__)

__all__ = [
    "LinearNestedAE", "fit_linear_nested_ae", "principal_angles", "pca_prefix_errors",
    "prefix_reconstruction_errors", "PrefixCurve", "prefix_curve", "latent_prefix_scorer",
]


def _prefixes(prefixes: Any, d: int) -> tuple[int, ...]:
    if prefixes is None:
        return tuple(range(1, d + 1))
    ps = sorted({check_int(p, "prefixes", 1) for p in np.atleast_1d(prefixes).tolist()})
    if not ps or ps[-1] > d:
        raise InputError(f"prefixes: expected sizes in 1..{d}, found {ps}.")
    return tuple(ps)


def _data(x: Any, name: str = "X") -> np.ndarray:
    c = as_codes(x, name=name, min_points=2)
    return c.z


@dataclass
class LinearNestedAE:
    """A linear autoencoder trained with a Matryoshka (nested-prefix) loss.

    Attributes
    ----------
    encoder : ndarray of shape (D, d)
    decoder : ndarray of shape (d, D)
    mean : ndarray of shape (D,)
    prefixes : tuple of int
    losses : list of float
        Training loss (sum over prefixes of the mean squared error per sample,
        on data scaled to unit total variance) at each optimiser step.
    """

    encoder: np.ndarray
    decoder: np.ndarray
    mean: np.ndarray
    prefixes: tuple[int, ...]
    losses: list[float] = field(default_factory=list)

    def encode(self, x: Any) -> np.ndarray:
        """Codes ``(n, d)`` of data ``(n, D)``.

        Parameters
        ----------
        x : array of shape (n, D) or (ny, nx, D)
            Data in the units the model was fitted on (at least 2 rows; an image
            is flattened row-major).

        Returns
        -------
        ndarray of shape (n, d)
            ``(x - mean) @ encoder``.

        Raises
        ------
        InputError
            When ``x`` is not a finite 2-D/3-D array of at least 2 rows.
        """
        return (_data(x) - self.mean) @ self.encoder

    def reconstruct(self, x: Any, m: int | None = None) -> np.ndarray:
        """Reconstruction ``(n, D)`` from the first ``m`` codes (default all).

        Parameters
        ----------
        x : array of shape (n, D) or (ny, nx, D)
            Data, as for :meth:`encode`.
        m : int, optional
            Prefix size: number of leading codes used (default all ``d``).

        Returns
        -------
        ndarray of shape (n, D)
            ``mean + z[:, :m] @ decoder[:m]``.
        """
        z = self.encode(x)[:, :m]
        return self.mean + z @ self.decoder[:m]

    def prefix_subspace(self, m: int) -> np.ndarray:
        """Orthonormal basis ``(D, m)`` of the span of the first ``m`` decoder rows.

        Parameters
        ----------
        m : int
            Prefix size, ``1 <= m <= d``.

        Returns
        -------
        ndarray of shape (D, m)
            Orthonormal columns (QR of ``decoder[:m].T``), for
            :func:`principal_angles` against PCA's first ``m`` components.
        """
        q, _ = np.linalg.qr(self.decoder[:m].T)
        return q


def fit_linear_nested_ae(x: Any, d: int, prefixes: Any = None, *, max_iter: int = 1000,
                         seed: int = 0) -> LinearNestedAE:
    """Train a linear autoencoder with the Matryoshka loss (full batch, L-BFGS, torch, float64).

    Loss: ``sum_{m in prefixes} mean_i ||x_i - D_m^T E_m^T x_i||^2`` on centred data
    scaled to unit total variance, with ``E_m``, ``D_m`` the first ``m`` columns of
    the encoder and rows of the decoder. At the optimum every prefix reconstructs
    the projection on the top-``m`` principal subspace (Rippel et al. 2014), so the
    prefix subspaces match PCA's (up to rotation within a prefix step, and exactly
    up to sign for consecutive prefixes ``1..d``) when eigenvalues are distinct.

    Parameters
    ----------
    x : array of shape (n, D)
        Data (e.g. spectra or codes).
    d : int
        Latent size, ``1 <= d <= D``.
    prefixes : sequence of int, optional
        Nested sizes summed in the loss (default ``1..d``).
    max_iter : int
        L-BFGS iterations.
    seed : int

    Returns
    -------
    LinearNestedAE
    """
    import torch

    data = _data(x)
    n, dim = data.shape
    d = check_int(d, "d", 1)
    if d > dim:
        raise InputError(f"d = {d}: expected at most the data dimension ({dim}).")
    ps = _prefixes(prefixes, d)
    max_iter = check_int(max_iter, "max_iter", 1)
    mean = data.mean(axis=0)
    xc = data - mean
    scale = float(np.sqrt(np.mean(np.sum(xc * xc, axis=1)))) or 1.0
    gen = torch.Generator().manual_seed(int(seed))
    xt = torch.from_numpy(xc / scale)
    enc = (torch.randn(dim, d, generator=gen, dtype=torch.float64) / np.sqrt(dim))
    dec = (torch.randn(d, dim, generator=gen, dtype=torch.float64) / np.sqrt(d))
    enc.requires_grad_(True)
    dec.requires_grad_(True)
    opt = torch.optim.LBFGS([enc, dec], lr=1.0, max_iter=max_iter, history_size=50,
                            tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    losses: list[float] = []

    def closure() -> Any:
        opt.zero_grad()
        z = xt @ enc
        loss = xt.new_zeros(())
        for m in ps:
            r = xt - z[:, :m] @ dec[:m]
            loss = loss + (r * r).sum() / n
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch problem: threads only add overhead
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    e = enc.detach().numpy().copy()
    dd = dec.detach().numpy().copy() * scale
    e = e / scale
    return LinearNestedAE(encoder=e, decoder=dd, mean=mean, prefixes=ps, losses=losses)


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, descending) between the column spans of ``a`` and ``b``.

    Parameters
    ----------
    a, b : ndarray of shape (D, p), (D, q)
        Bases (columns need not be orthonormal) of two subspaces of the same space.

    Returns
    -------
    ndarray of shape (min(p, q),)
        The angles in radians, largest first (:func:`scipy.linalg.subspace_angles`).

    Raises
    ------
    InputError
        When ``a`` and ``b`` are not 2-D with the same number of rows.
    """
    from scipy.linalg import subspace_angles

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise InputError(f"principal_angles: expected two bases (D, p) and (D, q), found "
                         f"{a.shape} and {b.shape}.")
    return subspace_angles(a, b)


def _pca(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = data.mean(axis=0)
    xc = data - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return mean, s * s / data.shape[0], vt.T


def pca_prefix_errors(x: Any, prefixes: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Optimal rank-``m`` reconstruction errors (Eckart-Young) and PCA's basis.

    Parameters
    ----------
    x : array of shape (n, D) or (ny, nx, D)
        Data (at least 2 rows).
    prefixes : sequence of int, optional
        Prefix sizes ``m`` in ``1..min(n, D)`` (default all of them).

    Returns
    -------
    errors : ndarray of shape (len(prefixes),)
        ``sum_{i > m} lambda_i`` (mean squared error per sample) for each prefix ``m``;
        no rank-``m`` linear code does better, and PCA's first ``m`` components
        attain it for every ``m`` at once.
    components : ndarray of shape (D, min(n, D))
        Principal directions, by decreasing variance.

    Raises
    ------
    InputError
        When ``x`` is not valid data or a prefix is outside ``1..min(n, D)``.
    """
    data = _data(x)
    _, lam, comps = _pca(data)
    ps = _prefixes(prefixes, lam.size)
    return np.array([lam[m:].sum() for m in ps]), comps


def prefix_reconstruction_errors(x: Any, basis: np.ndarray, prefixes: Any = None
                                 ) -> np.ndarray:
    """Mean squared error of projecting centred data on the span of the first ``m`` basis columns.

    Parameters
    ----------
    x : array of shape (n, D)
    basis : ndarray of shape (D, d)
    prefixes : sequence of int, optional

    Returns
    -------
    ndarray of shape (len(prefixes),)
    """
    data = _data(x)
    xc = data - data.mean(axis=0)
    basis = np.asarray(basis, float)
    if basis.ndim != 2 or basis.shape[0] != data.shape[1]:
        raise InputError(f"basis: expected shape ({data.shape[1]}, d), found {basis.shape}.")
    out = []
    for m in _prefixes(prefixes, basis.shape[1]):
        q, _ = np.linalg.qr(basis[:, :m])
        r = xc - (xc @ q) @ q.T
        out.append(float(np.mean(np.sum(r * r, axis=1))))
    return np.array(out)


@dataclass
class PrefixCurve:
    """Anomaly-map quality as a function of the latent prefix size.

    Attributes
    ----------
    prefixes : ndarray of int
    auc : ndarray
        ROC-AUC of each prefix's map against the truth (NaN without truth).
    mean_nll, median_nll : ndarray
    """

    prefixes: np.ndarray
    auc: np.ndarray
    mean_nll: np.ndarray
    median_nll: np.ndarray

    @property
    def best_prefix(self) -> int | None:
        """Smallest prefix reaching 99 % of the best AUC (``None`` without truth)."""
        if not np.isfinite(self.auc).any():
            return None
        best = np.nanmax(self.auc)
        return int(self.prefixes[np.nonzero(self.auc >= 0.99 * best)[0][0]])

    def rows(self) -> list[dict[str, float]]:
        """One dict per prefix (``prefix``, ``auc``, ``mean_nll``, ``median_nll``), for tables.

        Returns
        -------
        list of dict of str to float
            Plain Python numbers (``prefix`` an int), in the order of ``prefixes``.
        """
        return [{"prefix": int(p), "auc": float(a), "mean_nll": float(m), "median_nll": float(md)}
                for p, a, m, md in zip(self.prefixes, self.auc, self.mean_nll, self.median_nll)]

    def plot(self, ax: Any = None) -> Any:
        """AUC (or the median NLL without truth) vs prefix size; returns the Figure.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on (default: a new figure, no pyplot state).

        Returns
        -------
        matplotlib.figure.Figure
            The figure holding the plot.
        """
        from ._plot import new_axes

        fig, ax = new_axes(ax)
        if np.isfinite(self.auc).any():
            ax.plot(self.prefixes, self.auc, "o-")
            ax.set_ylabel("ROC-AUC of the anomaly map")
        else:
            ax.plot(self.prefixes, self.median_nll, "o-")
            ax.set_ylabel("median NLL")
        ax.set_xlabel("latent prefix size m")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title("anomaly map vs latent prefix (Matryoshka)", fontsize=10)
        return fig


def latent_prefix_scorer(z: Any, reference: Any = None) -> Callable[[int], np.ndarray]:
    """A scorer ``m -> map`` for :func:`prefix_curve` from the codes alone.

    Scores each pixel by the squared Mahalanobis distance of its first ``m``
    codes (see :func:`~eelsanom.latent.quantize.latent_anomaly_score`). Use it when
    the decoder is not at hand; with it, pass the detector's own prefix scorer.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``).
    reference : array of bool, shape (n,) or (ny, nx), optional
        Pixels defining "normal" (default: all).

    Returns
    -------
    callable
        ``scorer(m)`` -> ndarray of shape (ny, nx) (or (n,) for codes given as
        a matrix): the squared Mahalanobis distance of the first ``m`` codes.

    Raises
    ------
    InputError
        When ``z`` is not valid latent codes (raised at once; ``reference`` is
        checked when the scorer is called).
    """
    from .quantize import latent_anomaly_score

    c = as_codes(z, name="Z")

    def scorer(m: int) -> np.ndarray:
        return latent_anomaly_score(c.z[:, :m], reference)

    return scorer


def prefix_curve(scorer_or_maps: Callable[[int], Any] | Sequence[Any],
                 prefixes: Any = None, *, truth: Any = None) -> PrefixCurve:
    """ROC-AUC and NLL of the anomaly map against the latent prefix size.

    What it tells you: how many latent dimensions the detector needs -- where the
    AUC (or the NLL of the bulk) stops improving -- for a model trained with
    nested (Matryoshka) latents, whose every prefix is a working model.

    Parameters
    ----------
    scorer_or_maps : callable ``m -> nll map`` or sequence of maps
        Either a function returning the NLL map (any shape, higher = more
        anomalous) using the first ``m`` latent dimensions -- e.g. the 3D-CVAE's
        ``det.prefix_scorer(si)`` -- or the maps themselves, one per prefix.
    prefixes : sequence of int, optional
        Prefix sizes. With a callable, default its ``prefixes`` attribute (the
        detector's scorer has one: the trained Matryoshka prefixes, else
        ``1..latent_dim``), else required; with maps, default ``1..len(maps)``.
    truth : array of bool, optional
        Ground truth, same number of pixels as the maps.

    Returns
    -------
    PrefixCurve
    """
    from ..scoring import roc_auc

    if callable(scorer_or_maps):
        if prefixes is None:
            prefixes = getattr(scorer_or_maps, "prefixes", None)
        if prefixes is None:
            raise InputError("prefix_curve: with a scorer, expected prefixes=[...] (the prefix "
                             "sizes to evaluate).")
        ps = [check_int(p, "prefixes", 1) for p in np.atleast_1d(prefixes).tolist()]
        maps = [scorer_or_maps(p) for p in ps]
    else:
        maps = list(scorer_or_maps)
        ps = (list(range(1, len(maps) + 1)) if prefixes is None
              else [check_int(p, "prefixes", 1) for p in np.atleast_1d(prefixes).tolist()])
        if len(ps) != len(maps):
            raise InputError(f"prefix_curve: {len(maps)} maps but {len(ps)} prefixes; expected "
                             "one map per prefix.")
    if not maps:
        raise InputError("prefix_curve: expected at least one prefix.")
    arrs = [np.asarray(m, dtype=np.float64).reshape(-1) for m in maps]
    n = arrs[0].size
    for p, a in zip(ps, arrs):
        if a.size != n:
            raise InputError(f"prefix_curve: the map of prefix {p} has {a.size} pixels, the first "
                             f"has {n}; expected maps of one image.")
        if not np.isfinite(a).all():
            raise InputError(f"prefix_curve: the map of prefix {p} has NaN/inf values.")
    tr = None
    if truth is not None:
        tr = np.asarray(truth, dtype=bool).reshape(-1)
        if tr.size != n:
            raise InputError(f"truth: expected {n} pixels, found {tr.size}.")
    return PrefixCurve(prefixes=np.asarray(ps, dtype=int),
                       auc=np.array([roc_auc(a, tr) if tr is not None else np.nan
                                     for a in arrs]),
                       mean_nll=np.array([a.mean() for a in arrs]),
                       median_nll=np.array([np.median(a) for a in arrs]))
