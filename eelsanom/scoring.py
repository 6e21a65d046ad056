"""Thresholds and metrics for NLL maps.

Scores everywhere in eelsanom follow one convention: **higher NLL = more
anomalous**. Thresholds need no ground truth:

- ``"robust"`` (default, also ``"robust:K"``): ``median + K * 1.4826 * MAD`` of the
  NLL (K = 4): an outlier rule that assumes only that most pixels are normal.
  Anomalies are rare, and with a few percent of anomalous pixels Otsu and the
  mixture often split the normal mode itself (the benchmark shows F1 < 0.1
  where this rule gives > 0.99);
- ``"otsu"``: Otsu's method on ``log(nll - min + eps)``, ``eps = median - min``
  (normal-pixel NLLs are roughly chi-square distributed; their log is far more
  symmetric);
- ``"gmm"``: two-component Gaussian mixture on the same log scores; the
  threshold is where the posterior of the high component reaches 0.5;
- a number ``P`` (``0 < P < 100``): contamination, flag the top ``P`` % of pixels;
- ``"value:X"``: a fixed NLL value ``X``;
- ``"calibrated"`` / ``"calibrated:ALPHA"``: not computed from the map being
  scored but from the bulk: the NLL of held-out bulk pixels (spatial blocks
  scored by models fitted on the rest, see
  :meth:`~eelsanom.detectors.base.BaseDetector.calibrate`) gives the null
  distribution, and the threshold is its ``1 - ALPHA`` quantile (ALPHA, the
  false-positive rate, defaults to 1e-3), extrapolated beyond the sample by an
  exponential tail (:func:`null_calibration`). It is fitted once, saved with
  the model, and gives per-pixel p-values (:func:`p_values`).

Metrics that use ground truth (ROC-AUC, average precision, precision/recall/F1,
best-threshold F1) and one that does not (bimodality: Ashman's D of the
two-component mixture on the log scores; D > 2 means clean separation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "parse_threshold", "compute_threshold", "threshold_otsu", "threshold_gmm",
    "threshold_contamination", "threshold_robust", "roc_auc", "average_precision", "precision_recall_f1",
    "best_f1", "bimodality", "evaluate", "null_calibration", "calibrated_threshold", "p_values",
    "DEFAULT_ALPHA", "seed_maps", "held_out_groups",
]

#: default false-positive rate of the ``"calibrated"`` threshold
DEFAULT_ALPHA = 1e-3

_EPS = 1e-6


def _log_scores(nll: np.ndarray) -> tuple[np.ndarray, float]:
    x = np.asarray(nll, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    shift = float(x.min()) if x.size else 0.0
    spread = float(np.ptp(x)) if x.size else 1.0
    # eps of the order of the bulk's spread (median - min), not a tiny number: with a tiny
    # eps the minimum pixel lands far below all others on the log scale and Otsu splits it off.
    eps = max(_EPS, 1e-6 * spread, float(np.median(x)) - shift if x.size else 0.0)
    return np.log(x - shift + eps), shift - eps


def _from_log(t: float, shift: float) -> float:
    return float(np.exp(t) + shift)


def threshold_otsu(nll: np.ndarray, *, log: bool = True, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) on the (log) scores.

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        NLL map (higher = more anomalous). With ``log=True`` non-finite values are
        dropped first.
    log : bool, default True
        Work on ``log(nll - min + eps)`` with ``eps = median - min`` (see the
        module docstring) instead of the raw scores.
    bins : int, default 256
        Number of histogram bins.

    Returns
    -------
    float
        Threshold in NLL units; pixels with ``nll > threshold`` are flagged.
        ``max(nll)`` (nothing flagged) when fewer than 2 values or all equal.
    """
    if log:
        x, shift = _log_scores(nll)
    else:
        x, shift = np.asarray(nll, float).ravel(), 0.0
    if x.size < 2 or np.ptp(x) == 0:
        return float(np.max(nll))
    hist, edges = np.histogram(x, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centers)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1]))
    t = float(edges[k + 1])
    return _from_log(t, shift) if log else t


def _gmm_log(nll: np.ndarray, seed: int = 0):
    from sklearn.mixture import GaussianMixture

    x, shift = _log_scores(nll)
    gm = GaussianMixture(n_components=2, random_state=seed, n_init=2).fit(x[:, None])
    return gm, x, shift


def threshold_gmm(nll: np.ndarray, *, seed: int = 0) -> float:
    """Threshold where a two-component Gaussian mixture on log scores assigns 50 % to the upper mode.

    Falls back to Otsu when the mixture does not yield a crossing above the
    lower mode's mean (a unimodal map).

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        NLL map (higher = more anomalous). Non-finite values are dropped.
    seed : int, default 0
        Random state of the mixture fit (scikit-learn ``GaussianMixture``, 2 inits).

    Returns
    -------
    float
        Threshold in NLL units (``nll > threshold`` is flagged). ``max(nll)``
        when fewer than 4 values or all equal.
    """
    x0 = np.asarray(nll, float).ravel()
    if x0.size < 4 or np.ptp(x0) == 0:
        return float(np.max(nll))
    gm, x, shift = _gmm_log(nll, seed)
    hi = int(np.argmax(gm.means_.ravel()))
    lo_mean = float(gm.means_.ravel()[1 - hi])
    grid = np.linspace(lo_mean, x.max(), 2048)
    post = gm.predict_proba(grid[:, None])[:, hi]
    above = np.nonzero(post >= 0.5)[0]
    if above.size == 0:
        return threshold_otsu(nll)
    return _from_log(float(grid[above[0]]), shift)


def threshold_robust(nll: np.ndarray, k: float = 4.0) -> float:
    """``median + k * 1.4826 * MAD`` of the scores (a robust k-sigma outlier rule).

    Falls back to the standard deviation when the MAD is 0 (more than half the
    pixels share one value).

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        NLL map (higher = more anomalous). Non-finite values are ignored.
    k : float, default 4.0
        Number of robust standard deviations above the median.

    Returns
    -------
    float
        Threshold in NLL units (``nll > threshold`` is flagged).
    """
    x = np.asarray(nll, float).ravel()
    x = x[np.isfinite(x)]
    m = float(np.median(x))
    s = 1.4826 * float(np.median(np.abs(x - m)))
    if s <= 0:
        s = float(np.std(x))
    return m + k * s


def threshold_contamination(nll: np.ndarray, percent: float) -> float:
    """Threshold that flags the top ``percent`` % of pixels.

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        NLL map (higher = more anomalous).
    percent : float
        Percent of pixels to flag, ``0 < percent < 100``.

    Returns
    -------
    float
        The ``100 - percent`` percentile of ``nll``.

    Raises
    ------
    InputError
        When ``percent`` is not in (0, 100).
    """
    if not 0 < percent < 100:
        raise InputError(f"contamination must be a percentage in (0, 100), got {percent}.")
    return float(np.percentile(np.asarray(nll, float), 100.0 - percent))


def _number_after_colon(s: str) -> float:
    """The number after the first ``:`` of ``s`` (``"robust:3"`` -> 3.0); NaN when it is none."""
    try:
        return float(s.split(":", 1)[1])
    except ValueError:
        return float("nan")


def parse_threshold(spec: Any) -> tuple[str, float | None]:
    """Normalise a threshold spec to ``(kind, number)``.

    Accepted: ``"robust"`` / ``"robust:K"`` (K > 0, default 4), ``"otsu"``, ``"gmm"``, a number or numeric string ``P`` (percent of pixels
    to flag, 0 < P < 100), ``"P%"``, ``"value:X"`` (fixed NLL value),
    ``"calibrated"`` / ``"calibrated:ALPHA"`` (false-positive rate on held-out
    bulk pixels, 0 < ALPHA < 0.5, default 1e-3).
    ``"mad"`` / ``"mad:K"`` are aliases of ``"robust"`` / ``"robust:K"``; strings
    are case-insensitive and stripped.

    Parameters
    ----------
    spec : str or float
        The threshold specification.

    Returns
    -------
    kind : {"robust", "otsu", "gmm", "percent", "value", "calibrated"}
        The threshold rule.
    number : float or None
        K for ``"robust"`` (4.0 by default), the percent for ``"percent"``, the
        NLL value for ``"value"``, the false-positive rate ALPHA for
        ``"calibrated"``; ``None`` for ``"otsu"`` and ``"gmm"``.

    Raises
    ------
    InputError
        When ``spec`` matches none of the accepted forms, a percent is outside
        (0, 100), or ``K`` is not a positive number.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        p = float(spec)
        if not 0 < p < 100:
            raise InputError(f"threshold: a number means the percent of pixels to flag and must be "
                             f"in (0, 100); got {spec}. Use 'value:X' for a fixed NLL value.")
        return "percent", p
    s = str(spec).strip().lower()
    if s in ("otsu", "gmm"):
        return s, None
    if s in ("robust", "mad"):
        return "robust", 4.0
    if s == "calibrated":
        return "calibrated", DEFAULT_ALPHA
    if s.startswith("calibrated:"):
        a = _number_after_colon(s)
        if 0 < a < 0.5:
            return "calibrated", a
        raise InputError(f"threshold: 'calibrated:ALPHA' needs a false-positive rate ALPHA in "
                         f"(0, 0.5), e.g. 'calibrated:0.001'; got {spec!r}.")
    if s.startswith(("robust:", "mad:")):
        k = _number_after_colon(s)
        if 0 < k < float("inf"):
            return "robust", k
    if s.startswith("value:"):
        v = _number_after_colon(s)
        if np.isfinite(v):  # value:nan / value:inf would flag nothing, silently
            return "value", v
    else:
        try:
            return parse_threshold(float(s.rstrip("%")))
        except ValueError:
            pass
    raise InputError(f"threshold: expected 'robust', 'robust:K', 'otsu', 'gmm', a percent of pixels to flag (e.g. 2 or "
                     f"'2%'), 'value:X' or 'calibrated[:ALPHA]'; got {spec!r}.")


def compute_threshold(nll: np.ndarray, spec: Any = "robust",
                      calibration: dict[str, Any] | None = None) -> tuple[float, str]:
    """Threshold of an NLL map by ``spec`` (see :func:`parse_threshold`): ``(value, label)``.

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        NLL map (higher = more anomalous). Only finite values are used.
    spec : str or float, default "robust"
        Threshold specification, see :func:`parse_threshold`.
    calibration : dict, optional
        A :func:`null_calibration` of held-out bulk scores; needed by
        ``"calibrated"`` (the map itself is then not used).

    Returns
    -------
    value : float
        Threshold in NLL units; pixels with ``nll > value`` are anomalous.
    label : str
        Short description for display: ``"robust"``, ``"robust:K"``, ``"otsu"``,
        ``"gmm"``, ``"P%"``, ``"value"`` or ``"calibrated:ALPHA"``.

    Raises
    ------
    InputError
        When ``spec`` is invalid (see :func:`parse_threshold`), ``nll`` has no
        finite value, or ``spec`` is calibrated and no ``calibration`` is given.
    """
    kind, num = parse_threshold(spec)
    if kind == "calibrated":
        if calibration is None:
            raise InputError(
                "threshold 'calibrated' needs a model calibrated on held-out bulk pixels, and "
                "this one is not: fit it with a bulk region (train_mask) and "
                "threshold='calibrated', or call detector.calibrate(si, train_mask); or use "
                "another rule such as 'robust'.")
        return calibrated_threshold(calibration, num), f"calibrated:{num:g}"
    finite = np.asarray(nll, float)[np.isfinite(nll)]
    if finite.size == 0:
        raise InputError("cannot threshold an NLL map with no finite values.")
    if kind == "robust":
        return threshold_robust(finite, num), "robust" if num == 4.0 else f"robust:{num:g}"
    if kind == "otsu":
        return threshold_otsu(finite), "otsu"
    if kind == "gmm":
        return threshold_gmm(finite), "gmm"
    if kind == "percent":
        return threshold_contamination(finite, num), f"{num:g}%"
    return float(num), "value"


# ----------------------------------------------------------------------------- calibration
def null_calibration(scores: np.ndarray, *, tail_fraction: float = 0.1,
                     min_tail: int = 20) -> dict[str, Any]:
    """The null distribution of scores from held-out bulk pixels (for thresholds and p-values).

    The sample's empirical distribution, continued beyond its upper part by an
    exponential tail (peaks over threshold with a zero shape parameter): the
    ``k = max(min_tail, tail_fraction * n)`` largest scores exceed the
    ``(k+1)``-th largest ``u`` by amounts whose mean ``beta`` is the exponential
    scale, so ``P(S > x) = (k / n) exp(-(x - u) / beta)`` for ``x >= u``. A
    Gaussian model's NLL (a scaled chi-square) has a lighter tail than
    exponential, so the extrapolation errs towards fewer false positives.

    Parameters
    ----------
    scores : array_like of shape (n,)
        NLL of held-out bulk pixels, n >= 2 (non-finite values dropped).
    tail_fraction : float
        Fraction of the sample in the fitted tail.
    min_tail : int
        Smallest tail size (capped at ``n - 1``).

    Returns
    -------
    dict
        ``scores`` (sorted, float64, shape (n,)), ``n``, ``tail_k``, ``tail_u``,
        ``tail_beta``.

    Raises
    ------
    InputError
        When fewer than 2 finite scores are given.
    """
    x = np.sort(np.asarray(scores, np.float64).ravel())
    x = x[np.isfinite(x)]
    n = x.size
    if n < 2:
        raise InputError(f"calibration: expected at least 2 finite held-out scores, got {n}. "
                         "Use a larger bulk region.")
    k = int(min(n - 1, max(min_tail, round(tail_fraction * n))))
    u = float(x[n - k - 1])
    beta = max(float(np.mean(x[n - k:] - u)), 1e-12 * max(1.0, abs(u)))
    return {"scores": x, "n": int(n), "tail_k": k, "tail_u": u, "tail_beta": beta}


def calibrated_threshold(calibration: dict[str, Any], alpha: float = DEFAULT_ALPHA) -> float:
    """Score above which a bulk pixel lies with probability ``alpha`` (see :func:`null_calibration`).

    Parameters
    ----------
    calibration : dict
        From :func:`null_calibration`.
    alpha : float
        False-positive rate, ``0 < alpha < 0.5``.

    Returns
    -------
    float
        The empirical ``1 - alpha`` quantile where the sample's tail holds more
        than ``alpha`` of it, else the exponential tail's quantile
        ``u + beta log(k / (n alpha))``.

    Raises
    ------
    InputError
        When ``alpha`` is not in (0, 0.5).
    """
    if not 0 < alpha < 0.5:
        raise InputError(f"calibrated threshold: expected a false-positive rate in (0, 0.5), "
                         f"got {alpha!r}.")
    n, k = calibration["n"], calibration["tail_k"]
    u, beta = calibration["tail_u"], calibration["tail_beta"]
    if alpha * n >= k:
        return float(np.quantile(calibration["scores"], 1.0 - alpha))
    return float(u + beta * np.log(k / (n * alpha)))


def p_values(nll: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Per-pixel p-value: the probability that a bulk pixel scores at least ``nll``.

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        Scores (higher = more anomalous).
    calibration : dict
        From :func:`null_calibration`.

    Returns
    -------
    ndarray of float64, same shape as ``nll``
        ``(#{held-out >= x} + 1) / (n + 1)`` below the tail's start ``u``, the
        exponential tail ``(k / n) exp(-(x - u) / beta)`` above it; in (0, 1].
    """
    x = np.asarray(nll, np.float64)
    s = np.asarray(calibration["scores"], np.float64)
    n, k = calibration["n"], calibration["tail_k"]
    u, beta = calibration["tail_u"], calibration["tail_beta"]
    emp = (n - np.searchsorted(s, x, side="left") + 1.0) / (n + 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        tail = (k / n) * np.exp(-(x - u) / beta)
    p = np.where(x >= u, np.minimum(tail, emp), emp)
    return np.where(np.isnan(x), np.nan, np.clip(p, 0.0, 1.0))


# ----------------------------------------------------------------------------- metrics
def _check_pair(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, float).ravel()
    t = np.asarray(truth, bool).ravel()
    if s.shape != t.shape:
        raise InputError(f"scores ({np.shape(scores)}) and ground truth ({np.shape(truth)}) differ "
                         "in shape.")
    return s, t


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC-AUC of ``scores`` against boolean ``truth`` (NaN when only one class is present).

    Parameters
    ----------
    scores : array_like of shape (ny, nx) or any shape
        Scores, higher = more anomalous (e.g. the NLL map).
    truth : array_like of bool, same size as ``scores``
        Ground-truth anomaly mask.

    Returns
    -------
    float
        Area under the ROC curve in [0, 1] (0.5 = chance), NaN when ``truth`` is
        all True or all False.

    Raises
    ------
    InputError
        When ``scores`` and ``truth`` have different sizes.
    """
    from sklearn.metrics import roc_auc_score

    s, t = _check_pair(scores, truth)
    if t.all() or not t.any():
        return float("nan")
    return float(roc_auc_score(t, s))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve).

    Parameters
    ----------
    scores : array_like of shape (ny, nx) or any shape
        Scores, higher = more anomalous (e.g. the NLL map).
    truth : array_like of bool, same size as ``scores``
        Ground-truth anomaly mask.

    Returns
    -------
    float
        Average precision in [0, 1] (chance level = fraction of anomalous
        pixels), NaN when ``truth`` has no True pixel.

    Raises
    ------
    InputError
        When ``scores`` and ``truth`` have different sizes.
    """
    from sklearn.metrics import average_precision_score

    s, t = _check_pair(scores, truth)
    if not t.any():
        return float("nan")
    return float(average_precision_score(t, s))


def precision_recall_f1(mask: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a boolean mask against boolean truth.

    Parameters
    ----------
    mask : array_like of bool, shape (ny, nx) or any shape
        Predicted anomaly mask.
    truth : array_like of bool, same size as ``mask``
        Ground-truth anomaly mask.

    Returns
    -------
    dict
        ``{"precision", "recall", "f1"}``, each a float in [0, 1] (0.0 where the
        ratio is undefined).

    Raises
    ------
    InputError
        When ``mask`` and ``truth`` have different sizes.
    """
    m, t = _check_pair(mask, truth)
    m = m.astype(bool)
    tp = float(np.sum(m & t))
    fp = float(np.sum(m & ~t))
    fn = float(np.sum(~m & t))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1}


def best_f1(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Best achievable F1 over all thresholds and the threshold reaching it.

    Parameters
    ----------
    scores : array_like of shape (ny, nx) or any shape
        Scores, higher = more anomalous (e.g. the NLL map).
    truth : array_like of bool, same size as ``scores``
        Ground-truth anomaly mask.

    Returns
    -------
    f1 : float
        Best F1 (NaN when ``truth`` has no True pixel).
    threshold : float
        Score at which it is reached (pixels with ``score >= threshold``
        flagged), NaN likewise.

    Raises
    ------
    InputError
        When ``scores`` and ``truth`` have different sizes.
    """
    from sklearn.metrics import precision_recall_curve

    s, t = _check_pair(scores, truth)
    if not t.any():
        return float("nan"), float("nan")
    p, r, th = precision_recall_curve(t, s)
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)[:-1]
    k = int(np.argmax(f))
    return float(f[k]), float(th[k])


def bimodality(nll: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Ashman's D and the upper-mode weight of a 2-component GMM on the log NLL.

    ``D = sqrt(2) |mu1 - mu2| / sqrt(s1^2 + s2^2)``; D > 2 indicates two well
    separated modes (normal and anomalous pixels).

    Parameters
    ----------
    nll : array_like of any shape, e.g. (ny, nx)
        NLL map (higher = more anomalous). Non-finite values are dropped.
    seed : int, default 0
        Random state of the mixture fit.

    Returns
    -------
    dict
        ``{"ashman_d": D, "upper_weight": w}``: Ashman's D and the mixture weight
        of the higher-mean component (the fraction of pixels in the upper mode).
        Both 0.0 when fewer than 4 values or all equal.
    """
    x0 = np.asarray(nll, float).ravel()
    if x0.size < 4 or np.ptp(x0) == 0:
        return {"ashman_d": 0.0, "upper_weight": 0.0}
    gm, _, _ = _gmm_log(nll, seed)
    mu = gm.means_.ravel()
    var = gm.covariances_.ravel()
    d = float(np.sqrt(2.0) * abs(mu[0] - mu[1]) / np.sqrt(var[0] + var[1]))
    return {"ashman_d": d, "upper_weight": float(gm.weights_[int(np.argmax(mu))])}


def evaluate(nll: np.ndarray, mask: np.ndarray | None, truth: np.ndarray) -> dict[str, float]:
    """All ground-truth metrics of an NLL map (and its mask, when given).

    Parameters
    ----------
    nll : array_like of shape (ny, nx)
        NLL map (higher = more anomalous).
    mask : array_like of bool, shape (ny, nx), or None
        Thresholded anomaly mask; ``None`` skips precision/recall/F1.
    truth : array_like of bool, shape (ny, nx)
        Ground-truth anomaly mask.

    Returns
    -------
    dict of str to float
        ``roc_auc``, ``average_precision``, ``best_f1``, ``best_f1_threshold``
        and, when ``mask`` is given, ``precision``, ``recall``, ``f1``.

    Raises
    ------
    InputError
        When the arrays differ in size.
    """
    out = {"roc_auc": roc_auc(nll, truth), "average_precision": average_precision(nll, truth)}
    bf, bt = best_f1(nll, truth)
    out["best_f1"] = bf
    out["best_f1_threshold"] = bt
    if mask is not None:
        out.update(precision_recall_f1(mask, truth))
    return out


# ----------------------------------------------------------------------------- seed ensembles
def _rank_quantile(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(x.ravel(), method="average")
    return ((r - 1.0) / max(x.size - 1, 1)).reshape(x.shape)


def seed_maps(nlls: Sequence[Any]) -> dict[str, np.ndarray]:
    """Mean, standard deviation and disagreement of several seeds' NLL maps.

    The one definition used by the 3D-CVAE's ``n_seeds`` option
    (``result.maps["seed_mean_nll"]``, ``"seed_std_nll"``, ``"seed_disagreement"``)
    and by :func:`eelsanom.latent.ensembles.seed_ensemble`.

    Parameters
    ----------
    nlls : sequence of arrays, each (ny, nx)
        The seeds' NLL maps (finite; the caller checks shapes).

    Returns
    -------
    dict
        ``"mean"`` and ``"std"`` (population std) of the NLL over seeds, and
        ``"disagreement"``: the std over seeds of each pixel's rank quantile in its
        own seed's map (see :class:`eelsanom.latent.ensembles.SeedEnsemble`), all (ny, nx).
    """
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in nlls])
    ranks = np.stack([_rank_quantile(a) for a in stack])
    return {"mean": stack.mean(axis=0), "std": stack.std(axis=0),
            "disagreement": ranks.std(axis=0)}


def held_out_groups(mask: np.ndarray, *, folds: int, block: int, seed: int
                    ) -> tuple[int, list[np.ndarray]]:
    """The calibration's held-out split of a bulk region (:meth:`~eelsanom.detectors.base.BaseDetector.held_out_scores`).

    The region is cut into ``block x block`` squares dealt at random (seeded) into ``folds``
    groups.

    Parameters
    ----------
    mask : ndarray of bool, shape (ny, nx)
        The bulk region.
    folds, block, seed : int
        Number of groups, square side in pixels, and the seed of the deal.

    Returns
    -------
    n_squares : int
        Squares the region touches.
    groups : list of ndarray of bool
        Each group's held-out pixels (within ``mask``); empty when there are fewer squares
        than ``folds``.
    """
    ny, nx = mask.shape
    tiles = (np.arange(ny)[:, None] // block) * (-(-nx // block)) + np.arange(nx)[None] // block
    ids = np.unique(tiles[mask])
    if ids.size < folds:
        return int(ids.size), []
    rng = np.random.default_rng(int(seed))
    group = dict(zip(rng.permutation(ids).tolist(), np.arange(ids.size) % folds))
    return int(ids.size), [mask & np.isin(tiles, [t for t, k in group.items() if k == g])
                           for g in range(folds)]
