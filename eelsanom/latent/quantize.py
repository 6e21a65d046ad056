"""Latent quantization: how small can the stored codes be before the analysis changes?

Storage formats for per-pixel codes (bytes per pixel are the payload; the few
per-dimension scales are negligible for an image): ``float32`` (reference),
``float16``, ``int8`` (per-dimension affine, 256 levels between the minimum and
the maximum), ``float8`` (``torch.float8_e4m3fn`` with a per-dimension scale, when
the installed torch has it), ``binary`` (one bit per dimension: above or below
the dimension's mean) and ``pca:K`` (the first ``K`` principal components of the
codes, float32).

For each format :func:`quantization_report` measures bytes per pixel against
the change in an anomaly map computed from the codes, the map's ROC-AUC (with a
ground truth) and the k-NN recall (how many of each pixel's neighbours survive).

After "Optimization of embedding storage" (quantization and PCA of retrieval
embeddings; e.g. Hugging Face's embedding-quantization study, 2024) and, for
the binary Hamming / angle relation, Charikar, "Similarity estimation techniques
from rounding algorithms", STOC 2002.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ._common import Codes, as_codes, check_neighbours, knn, subsample

log = logging.getLogger(__name__)

__all__ = [
    "QuantizedCodes", "quantize", "binary_codes", "hamming_fraction", "latent_anomaly_score",
    "QuantizationReport", "quantization_report", "float8_available", "DEFAULT_KINDS",
]

_FLOAT16_MAX = 65504.0
_FLOAT8_MAX = 448.0  # largest finite float8_e4m3fn

#: Formats compared by default (``pca:K`` rows are added for K = d/2 and d/4).
DEFAULT_KINDS = ("float32", "float16", "float8", "int8", "binary")


def float8_available() -> bool:
    """Whether the installed torch has ``float8_e4m3fn``.

    Returns
    -------
    bool
        False also when torch is not installed.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return hasattr(torch, "float8_e4m3fn")


@dataclass
class QuantizedCodes:
    """Codes stored in a smaller format and decoded back to float.

    Attributes
    ----------
    kind : str
        The format, as passed to :func:`quantize` (e.g. ``"int8"``, ``"pca:4"``).
    codes : ndarray of shape (n, d) or (ny, nx, d)
        Decoded (dequantized) codes, same shape as the input, float64.
    bytes_per_pixel : float
        Payload bytes per pixel in the stored format.
    step : ndarray of shape (d,), optional
        ``int8``: the quantization step of each dimension.
    bits : ndarray of bool, shape (n, d), optional
        ``binary``: the stored bits.
    """

    kind: str
    codes: np.ndarray
    bytes_per_pixel: float
    step: np.ndarray | None = None
    bits: np.ndarray | None = None


def binary_codes(z: Any, *, center: bool = True) -> np.ndarray:
    """One bit per latent dimension: ``z_j > mean_j`` (``center=True``) or ``z_j > 0``.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``).
    center : bool, default True
        Compare each dimension with its mean over pixels; ``False`` compares with 0.

    Returns
    -------
    ndarray of bool, shape (n, d)
        The bits, one row per pixel (image input is flattened row-major).

    Raises
    ------
    InputError
        When ``z`` has no latent codes, the wrong number of axes, non-finite
        values or fewer than 2 pixels.
    """
    c = as_codes(z, name="Z")
    ref = c.z.mean(axis=0) if center else 0.0
    return c.z > ref


def hamming_fraction(bits_a: Any, bits_b: Any) -> np.ndarray:
    """Fraction of differing bits between two binary codes, row by row.

    For codes that are signs of random Gaussian projections (SimHash, Charikar
    2002) -- or of coordinates of vectors whose coordinates behave like such
    projections -- the expected fraction equals ``angle(a, b) / pi``.

    Parameters
    ----------
    bits_a, bits_b : array of bool, shape (..., d)
        Binary codes (e.g. from :func:`binary_codes`); converted with ``astype(bool)``.

    Returns
    -------
    ndarray of shape (...)
        Fraction of the ``d`` bits that differ, in [0, 1].

    Raises
    ------
    InputError
        When the shapes differ or the codes have no bit (``d == 0``).
    """
    a, b = np.asarray(bits_a, dtype=bool), np.asarray(bits_b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"hamming_fraction: expected codes of equal shape, found {a.shape} and "
                         f"{b.shape}.")
    if a.shape[-1] == 0:
        raise InputError("hamming_fraction: expected at least one bit per code.")
    return np.mean(a != b, axis=-1)


def _parse_kind(kind: str, d: int) -> tuple[str, int]:
    k = str(kind).lower().strip()
    if k.startswith("pca:"):
        try:
            m = int(k.split(":", 1)[1])
        except ValueError:
            m = -1
        if not 1 <= m <= d:
            raise InputError(f"quantization kind {kind!r}: expected 'pca:K' with 1 <= K <= {d}.")
        return "pca", m
    if k not in ("float32", "float16", "int8", "float8", "binary"):
        raise InputError(f"quantization kind: expected float32, float16, int8, float8, binary or "
                         f"pca:K, found {kind!r}.")
    return k, 0


def quantize(z: Any, kind: str) -> QuantizedCodes:
    """Store codes in a smaller format and decode them back.

    - ``float16``: relative error at most ``2^-11`` (round to nearest) for codes of
      magnitude in float16's normal range (6.1e-5 to 65504; larger codes are refused).
    - ``int8``: per-dimension ``step = (max - min) / 255``; error at most half a step.
    - ``float8``: per-dimension scale so that the largest |code| maps to 448, then
      ``torch.float8_e4m3fn``; relative error at most ``2^-4`` above ``2^-6`` of scale.
    - ``binary``: bit ``z_j > mean_j``; decoded as ``mean_j +/- mean|z_j - mean_j|``.
    - ``pca:K``: first ``K`` principal components (float32) and their reconstruction.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``).
    kind : str
        ``"float32"``, ``"float16"``, ``"int8"``, ``"float8"``, ``"binary"`` or
        ``"pca:K"`` with ``1 <= K <= d`` (case-insensitive).

    Returns
    -------
    QuantizedCodes
        Decoded float64 codes shaped like the input and the payload bytes per
        pixel (``4 d``, ``2 d``, ``d``, ``d``, ``ceil(d / 8)``, ``4 K``).

    Raises
    ------
    InputError
        When ``kind`` is unknown or ``K`` out of range, codes overflow float16,
        the installed torch has no float8, or ``z`` is not valid latent codes.
    """
    c = as_codes(z, name="Z")
    kname, m = _parse_kind(kind, c.d)
    x = c.z
    step = bits = None
    if kname == "float32":
        out, nbytes = x.astype(np.float32).astype(np.float64), 4.0 * c.d
    elif kname == "float16":
        big = float(np.max(np.abs(x)))
        if big > _FLOAT16_MAX:
            raise InputError(f"float16: codes up to {big:.3g} overflow float16 (max 65504); "
                             "rescale the codes or use int8/float8.")
        out, nbytes = x.astype(np.float16).astype(np.float64), 2.0 * c.d
    elif kname == "int8":
        lo, hi = x.min(axis=0), x.max(axis=0)
        step = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
        q = np.clip(np.rint((x - lo) / step), 0, 255).astype(np.uint8)
        out, nbytes = lo + q.astype(np.float64) * step, 1.0 * c.d
    elif kname == "float8":
        if not float8_available():
            raise InputError("float8: the installed torch has no float8_e4m3fn (needs torch >= "
                             "2.1); choose another format.")
        import torch

        scale = np.max(np.abs(x), axis=0) / _FLOAT8_MAX
        scale = np.where(scale > 0, scale, 1.0)
        t = torch.from_numpy((x / scale).astype(np.float32)).to(torch.float8_e4m3fn)
        out, nbytes = t.to(torch.float32).numpy().astype(np.float64) * scale, 1.0 * c.d
    elif kname == "binary":
        mu = x.mean(axis=0)
        bits = x > mu
        mad = np.mean(np.abs(x - mu), axis=0)
        out, nbytes = mu + np.where(bits, mad, -mad), float(math.ceil(c.d / 8))
    else:  # pca
        mu = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
        comps = vt[:m]
        scores = ((x - mu) @ comps.T).astype(np.float32).astype(np.float64)
        out, nbytes = mu + scores @ comps, 4.0 * m
    shaped = out.reshape(*c.shape, c.d) if c.shape is not None else out
    return QuantizedCodes(kind=str(kind), codes=shaped, bytes_per_pixel=nbytes, step=step,
                          bits=bits)


def latent_anomaly_score(z: Any, reference: Any = None, *, ridge: float = 1e-6) -> np.ndarray:
    """Squared Mahalanobis distance of each code from the reference codes' Gaussian.

    Stands in for the detector's NLL when only the codes are at hand (a saved
    run has no decoder): higher = more anomalous. For PPCA latents it is the
    latent part of the PCA detector's score.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``).
    reference : array of bool, shape (n,) or (ny, nx), optional
        Pixels defining "normal" (default: all).
    ridge : float, default 1e-6
        Added to the covariance diagonal, relative to its mean variance.

    Returns
    -------
    ndarray of shape (ny, nx), or (n,)
        Squared Mahalanobis distance per pixel (code units; higher = more
        anomalous), shaped like the input's pixels.

    Raises
    ------
    InputError
        When ``reference`` does not have one value per pixel or selects fewer
        than 2 pixels, or ``z`` is not valid latent codes.
    """
    c = as_codes(z, name="Z")
    return c.to_map(_mahalanobis(c.z, reference, ridge))


def _mahalanobis(x: np.ndarray, reference: Any, ridge: float) -> np.ndarray:
    ref = x
    if reference is not None:
        m = np.asarray(reference, dtype=bool).reshape(-1)
        if m.size != x.shape[0]:
            raise InputError(f"reference: expected one value per pixel ({x.shape[0]}), found "
                             f"{m.size}.")
        if m.sum() < 2:
            raise InputError("reference: expected at least 2 reference pixels.")
        ref = x[m]
    mu = ref.mean(axis=0)
    cov = np.atleast_2d(np.cov(ref, rowvar=False))
    cov = cov + ridge * max(float(np.trace(cov)) / cov.shape[0], 1e-300) * np.eye(cov.shape[0])
    xc = x - mu
    sol = np.linalg.solve(cov, xc.T).T
    return np.einsum("ij,ij->i", xc, sol)


@dataclass
class QuantizationReport:
    """Bytes per pixel against what the quantization changes.

    Attributes
    ----------
    kinds : list of str
        The evaluated formats, in order; every array below has shape ``(len(kinds),)``.
    bytes_per_pixel : ndarray
        Payload bytes per pixel of each format.
    rms_error : ndarray
        RMS code error relative to the RMS spread of the centred codes.
    max_abs_error : ndarray
        Largest absolute code error.
    map_change : ndarray
        ``||s_q - s|| / ||s - mean(s)||`` of the anomaly map computed from the
        quantized codes against the float64 one.
    top_overlap : ndarray
        Fraction of the float64 map's top-1 % pixels still in the top 1 %.
    auc : ndarray
        ROC-AUC of the quantized map against ``truth`` (NaN without truth).
    knn_recall : ndarray
        Mean fraction of each pixel's ``k`` float64 neighbours among its ``k``
        neighbours in the quantized codes (on a random subsample of query pixels).
    reference_auc : float
        ROC-AUC of the unquantized map (NaN without truth).
    k : int
        Neighbours used for the recall.
    n_queries : int
        Query pixels used for the recall.
    skipped : dict of str -> str
        Formats that could not be evaluated, with the reason.
    """

    kinds: list[str]
    bytes_per_pixel: np.ndarray
    rms_error: np.ndarray
    max_abs_error: np.ndarray
    map_change: np.ndarray
    top_overlap: np.ndarray
    auc: np.ndarray
    knn_recall: np.ndarray
    reference_auc: float
    k: int
    n_queries: int
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per format (a pandas-free table).

        Returns
        -------
        list of dict
            Keys ``kind``, ``bytes_per_pixel``, ``rms_error``, ``max_abs_error``,
            ``map_change``, ``top_overlap``, ``auc``, ``knn_recall``.
        """
        return [{"kind": k, "bytes_per_pixel": float(b), "rms_error": float(r),
                 "max_abs_error": float(m), "map_change": float(c), "top_overlap": float(t),
                 "auc": float(a), "knn_recall": float(kr)}
                for k, b, r, m, c, t, a, kr in zip(
                    self.kinds, self.bytes_per_pixel, self.rms_error, self.max_abs_error,
                    self.map_change, self.top_overlap, self.auc, self.knn_recall)]

    def to_markdown(self) -> str:
        """The report as a Markdown table, skipped formats listed below it.

        Returns
        -------
        str
            One row per format: bytes/px, RMS code error, map change, top-1 %
            kept, ROC-AUC (``n/a`` without truth) and k-NN recall.
        """
        head = ("| format | bytes/px | RMS code error | map change | top-1 % kept | ROC-AUC | "
                f"{self.k}-NN recall |\n|---|---|---|---|---|---|---|\n")
        body = "".join(
            f"| {r['kind']} | {r['bytes_per_pixel']:g} | {r['rms_error']:.2e} | "
            f"{r['map_change']:.2e} | {r['top_overlap']:.3f} | "
            f"{'n/a' if not np.isfinite(r['auc']) else format(r['auc'], '.4f')} | "
            f"{r['knn_recall']:.3f} |\n" for r in self.rows())
        extra = "".join(f"\n{k}: skipped ({v})" for k, v in self.skipped.items())
        return head + body + extra

    def plot(self, ax: Any = None) -> Any:
        """k-NN recall and map change against bytes per pixel; returns the Figure.

        Plots the k-NN recall and the top-1 % overlap against bytes per pixel
        (log2 axis). Needs matplotlib.

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
        ax.plot(self.bytes_per_pixel, self.knn_recall, "o", label=f"{self.k}-NN recall")
        ax.plot(self.bytes_per_pixel, self.top_overlap, "s", label="top-1 % pixels kept")
        for b, r, k in zip(self.bytes_per_pixel, self.knn_recall, self.kinds):
            ax.annotate(k, (b, r), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per pixel (log scale)")
        ax.set_ylabel("fraction kept")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title("latent quantization: storage vs neighbours and anomaly map", fontsize=10)
        ax.legend(fontsize=8)
        return fig


def _top_set(s: np.ndarray, frac: float = 0.01) -> np.ndarray:
    m = max(1, int(round(frac * s.size)))
    return np.argpartition(-s, m - 1)[:m]


def quantization_report(z: Any, *, kinds: Sequence[str] | None = None,
                        score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                        truth: Any = None, k: int = 10, max_points: int | None = 2000,
                        seed: int = 0) -> QuantizationReport:
    """Bytes per pixel vs change in the anomaly map, its AUC and k-NN recall, per format.

    What it tells you: how compactly the latent codes of a large acquisition can
    be stored (or sent to a viewer) without changing which pixels look
    anomalous or which pixels are neighbours.

    Parameters
    ----------
    z : AnomalyResult or array of shape (n, d) / (ny, nx, d)
        Latent codes (an array or torch tensor, or a result's ``.latent``).
    kinds : sequence of str, optional
        Formats (see :func:`quantize`). Default: :data:`DEFAULT_KINDS` plus
        ``pca:K`` for ``K = ceil(d/2)`` and ``ceil(d/4)`` (those below ``d``).
    score_fn : callable, optional
        Maps codes ``(n, d)`` to an anomaly score ``(n,)`` (higher = more
        anomalous). Default: :func:`latent_anomaly_score` (Mahalanobis distance in
        latent space; pixels outside ``result.mask`` as reference when ``z`` is a
        result).
    truth : array of bool, shape (n,) or (ny, nx), optional
        Ground truth for the AUC (default: none, AUC is NaN).
    k : int, default 10
        Neighbours for the recall.
    max_points : int or None, default 2000
        Query pixels for the k-NN recall (random subsample, seeded; neighbours are
        searched among all pixels).
    seed : int, default 0
        Seed of the query subsample.

    Returns
    -------
    QuantizationReport
        One entry per format; formats that fail to quantize (float16 overflow,
        no float8 in torch) are listed in ``skipped`` instead.

    Raises
    ------
    InputError
        When ``z`` is not valid latent codes (at least 3 pixels), ``k`` is not
        an integer in ``[1, n - 1]``, a kind is unknown, or ``truth`` /
        ``score_fn``'s output does not have one value per pixel.
    """
    from ..scoring import roc_auc

    c = as_codes(z, name="Z", min_points=3)
    k = check_neighbours(c.n, k)
    if kinds is None:
        ks = sorted({math.ceil(c.d / 2), math.ceil(c.d / 4)} - {c.d}, reverse=True)
        kinds = list(DEFAULT_KINDS) + [f"pca:{m}" for m in ks]
    for kd in kinds:
        _parse_kind(kd, c.d)
    if score_fn is None:
        mask = getattr(z, "mask", None) if hasattr(z, "nll") else None
        ref = None if mask is None or np.asarray(mask).all() else ~np.asarray(mask, bool)

        def score_fn(x: np.ndarray) -> np.ndarray:
            return _mahalanobis(x, ref, 1e-6)

    tr = None
    if truth is not None:
        tr = np.asarray(truth, dtype=bool).reshape(-1)
        if tr.size != c.n:
            raise InputError(f"truth: expected one value per pixel ({c.n}), found {tr.size}.")
    s_ref = np.asarray(score_fn(c.z), dtype=np.float64).reshape(-1)
    if s_ref.size != c.n:
        raise InputError(f"score_fn: expected one score per pixel ({c.n}), found {s_ref.size}.")
    ref_auc = roc_auc(s_ref, tr) if tr is not None else float("nan")
    top_ref = set(_top_set(s_ref).tolist())
    qi = subsample(c.n, max_points, seed)
    qi = np.arange(c.n) if qi is None else qi
    _, nn_ref = knn(c.z, k, query_index=qi)
    spread = float(np.sqrt(np.mean(np.sum((c.z - c.z.mean(axis=0)) ** 2, axis=1))))
    den = float(np.linalg.norm(s_ref - s_ref.mean())) or 1.0
    rows: dict[str, list[float]] = {key: [] for key in (
        "bytes", "rms", "max", "change", "top", "auc", "recall")}
    done, skipped = [], {}
    for kd in kinds:
        try:
            qc = quantize(Codes(c.z, None, c.name), kd)
        except InputError as exc:
            skipped[str(kd)] = str(exc)
            continue
        xq = qc.codes
        err = xq - c.z
        s_q = np.asarray(score_fn(xq), dtype=np.float64).reshape(-1)
        _, nn_q = knn(xq, k, query_index=qi)
        inter = [len(set(a).intersection(b)) for a, b in zip(nn_ref.tolist(), nn_q.tolist())]
        rows["bytes"].append(qc.bytes_per_pixel)
        rows["rms"].append(float(np.sqrt(np.mean(np.sum(err ** 2, axis=1)))) / (spread or 1.0))
        rows["max"].append(float(np.max(np.abs(err))))
        rows["change"].append(float(np.linalg.norm(s_q - s_ref)) / den)
        rows["top"].append(len(top_ref.intersection(_top_set(s_q).tolist())) / len(top_ref))
        rows["auc"].append(roc_auc(s_q, tr) if tr is not None else float("nan"))
        rows["recall"].append(float(np.mean(inter)) / k)
        done.append(str(kd))
    arr = {key: np.asarray(v, dtype=np.float64) for key, v in rows.items()}
    return QuantizationReport(kinds=done, bytes_per_pixel=arr["bytes"], rms_error=arr["rms"],
                              max_abs_error=arr["max"], map_change=arr["change"],
                              top_overlap=arr["top"], auc=arr["auc"], knn_recall=arr["recall"],
                              reference_auc=ref_auc, k=k, n_queries=int(qi.size),
                              skipped=skipped)
