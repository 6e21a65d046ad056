"""The :class:`~eelsanom.result.AnomalyResult` layer: one call per question.

``summarize(result)`` runs the single-space tools on a result's latent codes;
``compare(result_a, result_b)`` runs the two-space tools. Both return small
dataclasses with the numbers, the per-pixel maps, a pandas-free ``table()``, a
Markdown rendering and ``plot()`` (matplotlib, on request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from . import alignment, dimension, entropy, quantize, relative, similarity
from ._common import as_codes, check_neighbours, check_pair, knn, subsample

log = logging.getLogger(__name__)

__all__ = ["intrinsic_dimension", "LatentSummary", "summarize", "LatentComparison", "compare"]



def _timer(timings: dict[str, float]) -> Callable[[str, Callable[[], Any]], Any]:
    """``timed(name, fn)``: call ``fn()``, record its wall time in ``timings[name]``."""

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    return timed

def intrinsic_dimension(z: Any, method: str = "twonn", **kwargs: Any) -> float:
    """Global intrinsic dimension of a result's latent codes (or any codes / spectra).

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``), or
        spectra reshaped to ``(n, n_energy)``.
    method : {"twonn", "mle"}, default "twonn"
        :func:`~eelsanom.latent.dimension.twonn` or
        :func:`~eelsanom.latent.dimension.mle_dimension`.
    **kwargs
        Passed to the estimator.

    Returns
    -------
    float
        The intrinsic dimension.

    Raises
    ------
    InputError
        When ``method`` is unknown, or the estimator refuses the codes or
        ``kwargs`` (see its documentation).
    """
    if method == "twonn":
        return dimension.twonn(z, **kwargs)
    if method == "mle":
        return dimension.mle_dimension(z, **kwargs)
    raise InputError(f"method: expected 'twonn' or 'mle', found {method!r}.")


def _mask_of(obj: Any, mask: Any, n: int) -> np.ndarray | None:
    m = mask if mask is not None else getattr(obj, "mask", None)
    if m is None:
        return None
    m = np.asarray(m, dtype=bool).reshape(-1)
    if m.size != n:
        raise InputError(f"mask: expected one value per pixel ({n}), found {m.size}.")
    return m


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


# --------------------------------------------------------------------------- single space


@dataclass
class LatentSummary:
    """What the single-space tools say about one latent space.

    Attributes
    ----------
    method : str
        Detector of the result (``"array"`` for plain codes).
    shape : tuple of int or None
        ``(ny, nx)`` of the image.
    n_pixels, latent_dim : int
        Number of codes ``n`` and latent dimension ``d``.
    twonn, mle : float
        Global intrinsic dimension (TwoNN; Levina-Bickel MLE, k = 10).
    von_neumann_entropy : float
        Of the normalised covariance, nats (NaN for d = 1).
    effective_rank : float
        ``exp(von_neumann_entropy)``: latent directions really used.
    covariance_spectrum : ndarray of shape (d,)
        Normalised covariance eigenvalues.
    dse : float
        Diffusion spectral entropy, bits (on ``dse_points`` random codes).
    dsmi_mask : float
        DSMI between the codes and the anomaly mask, bits (NaN without a
        two-class mask).
    rate_reduction_mask : float
        MCR^2 rate reduction of the mask partition, nats (eps^2 = 0.5; NaN without a
        two-class mask).
    local_dimension : ndarray of shape (ny, nx) or (n,)
        Local intrinsic dimension map (TwoNN over ``k_local`` neighbours).
    local_dimension_flagged, local_dimension_bulk : float
        Median local dimension of flagged and of unflagged pixels.
    latent_score : ndarray of shape (ny, nx) or (n,)
        Squared Mahalanobis distance of each code from the unflagged codes.
    quantization : QuantizationReport or None
        Storage formats vs map change (``None`` with ``quantization=False``).
    dse_points, k_local : int
        Codes used for DSE/DSMI, and neighbours of the local dimension map.
    timings : dict of str -> float
        Seconds per tool.
    notes : list of str
        Tools skipped and why.
    """

    method: str
    shape: tuple[int, int] | None
    n_pixels: int
    latent_dim: int
    twonn: float
    mle: float
    von_neumann_entropy: float
    effective_rank: float
    covariance_spectrum: np.ndarray
    dse: float
    dsmi_mask: float
    rate_reduction_mask: float
    local_dimension: np.ndarray
    local_dimension_flagged: float
    local_dimension_bulk: float
    latent_score: np.ndarray
    quantization: quantize.QuantizationReport | None
    dse_points: int
    k_local: int
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[tuple[str, Any, str]]:
        """``(quantity, value, what it means)`` rows.

        Returns
        -------
        list of tuple (str, value, str)
            One row per scalar: pixels, dimensions, effective rank, entropies,
            DSMI and rate reduction of the mask, median local dimensions.
        """
        return [
            ("pixels", self.n_pixels, "codes analysed"),
            ("latent dimension d", self.latent_dim, "size of each code"),
            ("intrinsic dimension (TwoNN)", self.twonn,
             "degrees of freedom the codes vary along (Facco et al. 2017)"),
            ("intrinsic dimension (MLE, k=10)", self.mle, "same, Levina-Bickel 2004"),
            ("effective rank", self.effective_rank,
             "latent directions used: exp(von Neumann entropy); << d means partial collapse"),
            ("von Neumann entropy (nats)", self.von_neumann_entropy,
             "of the normalised covariance; ln d when isotropic"),
            ("diffusion spectral entropy (bits)", self.dse,
             f"log2 of the number of distinguishable states ({self.dse_points} codes)"),
            ("DSMI with the anomaly mask (bits)", self.dsmi_mask,
             "how much the latent geometry separates flagged pixels (max 1 bit)"),
            ("rate reduction of the mask (nats)", self.rate_reduction_mask,
             "MCR^2: do flagged pixels occupy their own subspace (eps^2 = 0.5)"),
            ("local dimension, flagged px (median)", self.local_dimension_flagged,
             f"TwoNN over {self.k_local} latent neighbours"),
            ("local dimension, bulk px (median)", self.local_dimension_bulk,
             f"TwoNN over {self.k_local} latent neighbours"),
        ]

    def to_markdown(self) -> str:
        """:meth:`table` as a Markdown table, followed by the notes as a list.

        Returns
        -------
        str
            Markdown text; NaN values read ``n/a``.
        """
        lines = ["| quantity | value | meaning |", "|---|---|---|"]
        lines += [f"| {q} | {_fmt(v)} | {m} |" for q, v, m in self.table()]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines)

    def plot(self) -> Any:
        """Local-dimension map, latent score map and covariance spectrum; returns the Figure.

        Needs matplotlib.

        Returns
        -------
        matplotlib.figure.Figure
            Three panels side by side.
        """
        from ._plot import image, new_figure

        fig = new_figure(size=(14.0, 4.2))
        a1, a2, a3 = fig.subplots(1, 3)
        image(a1, self.local_dimension, title="local intrinsic dimension",
              cbar_label=f"TwoNN over {self.k_local} neighbours")
        image(a2, self.latent_score, title="latent Mahalanobis score",
              cbar_label="squared Mahalanobis distance", cmap="magma")
        lam = self.covariance_spectrum
        a3.bar(np.arange(1, lam.size + 1), lam)
        a3.set_xlabel("latent direction (by variance)")
        a3.set_ylabel("fraction of variance")
        a3.set_title(f"covariance spectrum, effective rank {_fmt(self.effective_rank)}",
                     fontsize=10)
        return fig


def summarize(z: Any, *, mask: Any = None, k_local: int = 50, dse_points: int = 1500,
              quantization: bool = True, seed: int = 0) -> LatentSummary:
    """Run the single-space latent tools on one result (or array of codes).

    Intrinsic dimension (TwoNN, MLE), local dimension map, von Neumann entropy
    and effective rank, diffusion spectral entropy, and -- with an anomaly mask --
    DSMI and MCR^2 rate reduction of the mask, plus the quantization table. A
    192 x 192 image with d = 16 takes a few seconds on two CPU cores.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``), at
        least 4 pixels.
    mask : array of bool, shape (ny, nx) or (n,), optional
        Anomaly mask (default: ``result.mask``).
    k_local : int, default 50
        Neighbours of the local dimension map, ``1 <= k_local < n``.
    dse_points : int, default 1500
        Random codes for DSE/DSMI.
    quantization : bool, default True
        Also compute the quantization table.
    seed : int, default 0
        Seed of every random subsample.

    Returns
    -------
    LatentSummary
        The numbers, the ``(ny, nx)`` maps (``(n,)`` for flat input), timings
        and notes on skipped tools.

    Raises
    ------
    InputError
        When ``z`` is not valid latent codes, ``k_local`` is out of range,
        ``mask`` does not have one value per pixel, or the codes are degenerate
        (e.g. all identical, so no intrinsic dimension or kernel width exists).
    """
    c = as_codes(z, name="latent", min_points=4)
    k_local = check_neighbours(c.n, k_local, name="k_local")
    m = _mask_of(z, mask, c.n)
    two_class = m is not None and 0 < m.sum() < m.size
    notes: list[str] = []
    timings: dict[str, float] = {}
    timed = _timer(timings)

    # one k-NN query serves TwoNN, the MLE and the local dimension map
    k_mle = min(10, c.n - 1)
    dist, idx = timed("knn", lambda: knn(c.z, max(k_local, k_mle, 2)))
    twonn = timed("twonn", lambda: dimension._twonn_from_dist(dist[:, :2], 0.1))
    mle = timed("mle", lambda: dimension._mle_from_dist(dist[:, :k_mle]))
    if c.d >= 2:
        spec = timed("von_neumann", lambda: entropy.covariance_spectrum(c))
        pos = spec[spec > 0]
        vne = float(-np.sum(pos * np.log(pos)))
    else:
        spec, vne = np.ones(1), float("nan")
        notes.append("von Neumann entropy needs d >= 2; skipped")
    sel = subsample(c.n, dse_points, seed)
    zs = c.z if sel is None else c.z[sel]
    sigma = entropy.default_sigma(zs)
    dse = timed("dse", lambda: entropy._dse_points(zs, sigma, 1.0))
    dsmi = rr = float("nan")
    if two_class:
        dsmi = timed("dsmi", lambda: dse - entropy._conditional_dse(
            c.z, m, sigma, 1.0, dse_points, seed))
        rr = timed("rate_reduction", lambda: entropy.rate_reduction(c, m).delta_r)
    else:
        notes.append("no two-class anomaly mask: DSMI and rate reduction of the mask skipped")
    flat = timed("local_dimension",
                 lambda: dimension._local_from(dist[:, :k_local], idx[:, :k_local], "twonn"))
    lid = c.to_map(flat)
    lid_f = float(np.nanmedian(flat[m])) if two_class else float("nan")
    lid_b = float(np.nanmedian(flat[~m])) if two_class else float(np.nanmedian(flat))
    ref = ~m if two_class else None
    score = timed("latent_score", lambda: quantize.latent_anomaly_score(c, ref))
    q = None
    if quantization:
        q = timed("quantization", lambda: quantize.quantization_report(
            c, score_fn=lambda x: quantize._mahalanobis(x, ref, 1e-6), seed=seed))
    return LatentSummary(
        method=str(getattr(z, "method", "array")), shape=c.shape, n_pixels=c.n, latent_dim=c.d,
        twonn=twonn, mle=mle, von_neumann_entropy=vne,
        effective_rank=float(np.exp(vne)) if np.isfinite(vne) else 1.0,
        covariance_spectrum=spec, dse=dse, dsmi_mask=dsmi, rate_reduction_mask=rr,
        local_dimension=lid, local_dimension_flagged=lid_f, local_dimension_bulk=lid_b,
        latent_score=c.to_map(np.asarray(score).reshape(-1)), quantization=q,
        dse_points=min(dse_points, c.n), k_local=k_local, timings=timings, notes=notes)


# --------------------------------------------------------------------------- two spaces


@dataclass
class LatentComparison:
    """What the two-space tools say about two latent spaces of the same pixels.

    Attributes
    ----------
    methods : tuple of str
        Detectors of the two results (``"array"`` for plain codes).
    shape : tuple of int or None
        ``(ny, nx)`` of the image.
    latent_dims : tuple of int
        ``(d_a, d_b)``.
    cka, cka_unbiased : float
        Linear CKA (biased / unbiased HSIC).
    mutual_knn : float
        Mean mutual k-NN overlap; ``mutual_knn_map`` is the per-pixel map.
    mutual_knn_map : ndarray of shape (ny, nx) or (n,)
        Per-pixel fraction of the ``k`` neighbours shared by both spaces.
    cknna : float
        CKA restricted to mutual k-nearest neighbours.
    cca : CCAAlignment
        Canonical correlations, alignment and retrieval vs subspace size.
    procrustes : ProcrustesResult
        Rotation A -> B and its per-pixel residual map.
    relative_agreement : ndarray of shape (ny, nx) or (n,)
        Per-pixel agreement of the relative representations (k-means anchors).
    units : UnitMatching
        One-to-one (Hungarian) matching of latent units.
    nll_spearman : float
        Rank correlation of the two NLL maps (NaN for plain codes).
    mask_jaccard : float
        Intersection over union of the two anomaly masks (NaN without masks).
    k : int
        Neighbours used by the k-NN tools.
    timings : dict of str -> float
        Seconds per tool.
    """

    methods: tuple[str, str]
    shape: tuple[int, int] | None
    latent_dims: tuple[int, int]
    cka: float
    cka_unbiased: float
    mutual_knn: float
    mutual_knn_map: np.ndarray
    cknna: float
    cca: similarity.CCAAlignment
    procrustes: alignment.ProcrustesResult
    relative_agreement: np.ndarray
    units: alignment.UnitMatching
    nll_spearman: float
    mask_jaccard: float
    k: int
    timings: dict[str, float] = field(default_factory=dict)

    def table(self) -> list[tuple[str, Any, str]]:
        """``(quantity, value, what it means)`` rows.

        Returns
        -------
        list of tuple (str, value, str)
            One row per scalar: dimensions, CKA, mutual k-NN, CKNNA, shared
            canonical directions, Procrustes residual, relative agreement, unit
            matching, NLL rank correlation and mask Jaccard.
        """
        top = self.cca.correlations
        n_shared = int(np.sum(top > 0.9))
        return [
            ("latent dimensions", f"{self.latent_dims[0]} / {self.latent_dims[1]}", "A / B"),
            ("linear CKA", self.cka, "1: same geometry up to rotation, scale, shift"),
            ("linear CKA (unbiased)", self.cka_unbiased, "~0 for unrelated spaces"),
            (f"mutual {self.k}-NN overlap", self.mutual_knn,
             "fraction of each pixel's neighbours shared (map in figures)"),
            ("CKNNA", self.cknna, "CKA restricted to mutual neighbours (local structure)"),
            ("canonical correlations > 0.9", n_shared, "directions shared by both spaces"),
            ("Procrustes relative residual", self.procrustes.relative_residual,
             "0: B is a rotated, scaled A"),
            ("relative-representation agreement (mean)",
             float(np.nanmean(self.relative_agreement))
             if np.isfinite(self.relative_agreement).any() else float("nan"),
             "1: same relation to anchor pixels (needs d >= 2)"),
            ("matched units, mean abs. correlation", self.units.mean_abs_correlation,
             "1: the same individual latent units (Hungarian matching)"),
            ("NLL map rank correlation", self.nll_spearman, "Spearman, A vs B"),
            ("anomaly mask Jaccard", self.mask_jaccard, "overlap of the flagged pixels"),
        ]

    def to_markdown(self) -> str:
        """:meth:`table` as a Markdown table.

        Returns
        -------
        str
            Markdown text; NaN values read ``n/a``.
        """
        lines = ["| quantity | value | meaning |", "|---|---|---|"]
        lines += [f"| {q} | {_fmt(v)} | {m} |" for q, v, m in self.table()]
        return "\n".join(lines)

    def plot(self) -> Any:
        """Mutual k-NN, relative-agreement and Procrustes-residual maps; returns the Figure.

        Needs matplotlib.

        Returns
        -------
        matplotlib.figure.Figure
            Three map panels side by side.
        """
        from ._plot import image, new_figure

        fig = new_figure(size=(14.0, 4.2))
        a1, a2, a3 = fig.subplots(1, 3)
        image(a1, self.mutual_knn_map, title=f"mutual {self.k}-NN overlap",
              cbar_label="fraction of shared neighbours", vmin=0, vmax=1)
        image(a2, self.relative_agreement, title="relative-representation agreement",
              cbar_label="cosine of relative codes", vmin=-1, vmax=1, cmap="RdBu")
        image(a3, self.procrustes.residual_map, title="Procrustes residual (A -> B)",
              cbar_label="residual norm (units of B)", cmap="magma")
        return fig


def _nll_of(obj: Any) -> np.ndarray | None:
    v = getattr(obj, "nll", None)
    return None if v is None else np.asarray(v, dtype=np.float64).reshape(-1)


def compare(z_a: Any, z_b: Any, *, k: int = 10, n_anchors: int = 32, cca_points: int = 4000,
            seed: int = 0) -> LatentComparison:
    """Run the two-space latent tools on two results (or arrays) of the same image.

    Linear CKA (biased, unbiased), mutual k-NN overlap with its map, CKNNA, CCA
    alignment and retrieval vs subspace size, orthogonal Procrustes with its
    residual map, relative-representation agreement map, and one-to-one unit
    matching; for results, also the agreement of their NLL maps and masks. The
    k-NN structure of each space is computed once and shared.

    Parameters
    ----------
    z_a, z_b : AnomalyResult or array of shape (n, d_a) / (ny, nx, d_a) and (n, d_b)
        Codes of the same pixels (at least 4) in the two spaces.
    k : int, default 10
        Neighbours for the k-NN tools, ``1 <= k < n``.
    n_anchors : int, default 32
        k-means anchors for the relative representations.
    cca_points : int, default 4000
        Random pixels for CCA alignment and retrieval.
    seed : int, default 0
        Seed of the subsamples and anchor selection.

    Returns
    -------
    LatentComparison
        The numbers, the per-pixel maps (``(ny, nx)``, or ``(n,)`` for flat
        input) and timings.

    Raises
    ------
    InputError
        When either input is not valid latent codes, the two do not cover the
        same pixels, ``k`` is out of range, or a tool refuses the codes (e.g. a
        space with no variance).
    """
    from scipy.stats import spearmanr

    a = as_codes(z_a, name="latent A", min_points=4)
    b = as_codes(z_b, name="latent B", min_points=4)
    check_pair(a, b)
    k = check_neighbours(a.n, k)
    timings: dict[str, float] = {}
    timed = _timer(timings)

    cka = timed("cka", lambda: similarity.linear_cka(a, b))
    ckau = timed("cka_unbiased", lambda: similarity.linear_cka(a, b, unbiased=True))

    def neighbours() -> tuple[np.ndarray, ...]:
        xa = similarity._neighbour_space(a, "euclidean")
        xb = similarity._neighbour_space(b, "euclidean")
        return xa, xb, knn(xa, k)[1], knn(xb, k)[1]

    xa, xb, ia, ib = timed("knn", neighbours)
    mk_flat = similarity._overlap_counts(ia, ib) / k
    shape = a.shape if a.shape is not None else b.shape
    mk_map = mk_flat.reshape(shape) if shape is not None else mk_flat
    ck = timed("cknna", lambda: similarity._cknna_from(xa, xb, ia, ib))
    cca = timed("cca", lambda: similarity.cca_alignment(a, b, k=min(k, cca_points - 1),
                                                        max_points=cca_points, seed=seed))
    pr = timed("procrustes", lambda: alignment.procrustes(a, b))
    if a.d >= 2 and b.d >= 2:
        ra = timed("relative", lambda: relative.relative_agreement(
            a, b, "kmeans", n_anchors=min(n_anchors, a.n), seed=seed))
    else:
        ra = np.full(shape if shape is not None else (a.n,), np.nan)
    units = timed("units", lambda: alignment.match_units(a, b))
    na, nb = _nll_of(z_a), _nll_of(z_b)
    rho = float("nan")
    if na is not None and nb is not None and na.size == nb.size == a.n:
        rho = float(spearmanr(na, nb).statistic)
    ma, mb = getattr(z_a, "mask", None), getattr(z_b, "mask", None)
    jac = float("nan")
    if ma is not None and mb is not None:
        ma, mb = np.asarray(ma, bool).reshape(-1), np.asarray(mb, bool).reshape(-1)
        union = np.sum(ma | mb)
        jac = float(np.sum(ma & mb) / union) if union else float("nan")
    return LatentComparison(
        methods=(str(getattr(z_a, "method", "array")), str(getattr(z_b, "method", "array"))),
        shape=shape, latent_dims=(a.d, b.d), cka=cka, cka_unbiased=ckau,
        mutual_knn=float(mk_flat.mean()), mutual_knn_map=mk_map, cknna=ck, cca=cca,
        procrustes=pr, relative_agreement=ra, units=units, nll_spearman=rho,
        mask_jaccard=jac, k=k, timings=timings)

