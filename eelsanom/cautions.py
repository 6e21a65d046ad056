"""Cautions and notes a result carries: what the user should know before trusting it.

*Cautions* flag a result that rests on too little data (a threshold computed
from a handful of scores, a covariance or PCA estimated from fewer pixels than
it has parameters) or that silently differs from what was asked (an energy range
clipped to the data); each says what to do instead. *Notes* state what training
did on its own (stopped early, had no validation split).

The detectors collect them (``fit_cautions_``, :func:`training_notes`);
:meth:`eelsanom.detectors.base.BaseDetector.score` puts them in the result's
``info["cautions"]`` and ``info["notes"]``; the CLI logs them on stderr and writes
them into the summary JSON.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MIN_THRESHOLD_PIXELS", "MIN_FIT_PIXELS", "threshold_cautions", "fit_cautions",
           "energy_clip_caution", "training_notes", "add", "collect"]

#: fewer scored pixels than this and an automatic threshold is a guess
MIN_THRESHOLD_PIXELS = 30
#: fewer training pixels than this and a Gaussian bulk model (PCA, RX) is a guess
MIN_FIT_PIXELS = 20


def threshold_cautions(n_pixels: int, threshold_method: str) -> list[str]:
    """A caution when an automatic threshold rests on fewer than :data:`MIN_THRESHOLD_PIXELS`.

    Parameters
    ----------
    n_pixels : int
        Number of scores the threshold was computed from.
    threshold_method : str
        The threshold's label (``"robust"``, ``"gmm"``, ``"value"``, ...); a given
        value (``"value..."``) gets no caution.

    Returns
    -------
    list of str
        Zero or one message.
    """
    if n_pixels >= MIN_THRESHOLD_PIXELS or str(threshold_method).startswith("value"):
        return []
    return [f"the {threshold_method} threshold rests on only {n_pixels} pixel scores (fewer than "
            f"{MIN_THRESHOLD_PIXELS}), so which pixels are flagged is unreliable: score a larger "
            "region or whole image, or give an explicit threshold (--threshold value:X)."]


def fit_cautions(method: str, n_train: int, n_channels: int,
                 n_components: int | None = None) -> list[str]:
    """Cautions on a Gaussian bulk model (PCA, RX) fitted on few pixels for its channels.

    RX estimates a full ``D x D`` covariance: with fewer training pixels than
    channels it is rank-deficient and mostly the shrinkage target. PPCA with
    ``q`` components needs several pixels per component. Either on fewer than
    :data:`MIN_FIT_PIXELS` pixels is a guess.

    Parameters
    ----------
    method : {"pca", "rx"}
    n_train : int
        Training pixels used by the final fit.
    n_channels : int
        Energy channels modelled.
    n_components : int, optional
        PPCA components ``q``.

    Returns
    -------
    list of str
    """
    out = []
    fix = ("train on a larger region (more pixels) or model a narrower energy window "
           "(--energy-range) with fewer channels")
    if n_train < MIN_FIT_PIXELS:
        out.append(f"{method.upper()} was fitted on only {n_train} pixels (fewer than "
                   f"{MIN_FIT_PIXELS}): its bulk model and every score are rough; {fix}.")
    elif method == "rx" and n_train < n_channels:
        out.append(f"RX's covariance rests on {n_train} pixels for {n_channels} channels (fewer "
                   "pixels than channels: it is mostly the shrinkage target, and scores differ "
                   f"little between pixels); {fix}, or use PCA (--method pca).")
    if method == "pca" and n_components is not None and n_train < 5 * (n_components + 2):
        out.append(f"PCA fitted {n_components} components on {n_train} pixels (fewer than 5 per "
                   "parameter direction): use fewer components (--components) or a larger "
                   "region.")
    return out


def energy_clip_caution(asked: tuple[float | None, float | None], lo: float, hi: float,
                        n_channels: int) -> list[str]:
    """A caution when an energy range reaches beyond the data and was clipped to it.

    Parameters
    ----------
    asked : (float or None, float or None)
        The requested ``(start, stop)`` in eV.
    lo, hi : float
        The data's first and last channel energies (eV).
    n_channels : int
        Channels kept after clipping.

    Returns
    -------
    list of str
        Zero or one message.
    """
    start, stop = asked
    tol = 1e-6 * max(abs(hi - lo), 1.0)
    below = start is not None and start < lo - tol
    above = stop is not None and stop > hi + tol
    if not (below or above):
        return []
    used_lo = lo if below or start is None else start
    used_hi = hi if above or stop is None else stop

    def fmt(v: float | None, end: str) -> str:
        return end if v is None else f"{v:g}"

    return [f"the energy range {fmt(start, 'start')}-{fmt(stop, 'end')} eV reaches beyond the "
            f"data ({lo:g}-{hi:g} eV); used {used_lo:g}-{used_hi:g} eV ({n_channels} channels). "
            "Give a range inside the data to silence this."]


def training_notes(det: Any) -> list[str]:
    """What a neural detector's training did on its own: early stop, no validation split.

    Read from ``det.history_`` (and ``member_histories_`` of a seed ensemble), as
    :func:`eelsanom.nn.train.train_cvae` fills it.

    Parameters
    ----------
    det : detector
        Fitted (or loaded) detector; one without a training history gives no notes.

    Returns
    -------
    list of str
    """
    hists = getattr(det, "member_histories_", None) or (
        [det.history_] if getattr(det, "history_", None) else [])
    notes = []
    n = len(hists)
    for i, h in enumerate(hists):
        who = f"seed member {i + 1}/{n}: " if n > 1 else ""
        if h.get("stopped_early"):
            notes.append(f"{who}training stopped early at epoch {int(h.get('epochs_run', 0))} "
                         f"(best epoch {int(h.get('best_epoch', 0))})")
        vals = [v for v in h.get("val_nll", []) if v is not None]
        if vals and not any(math.isfinite(float(v)) for v in vals):
            npx = getattr(det, "n_fit_pixels_", None)
            notes.append(f"{who}no validation split ({npx} training pixels" if npx is not None
                         else f"{who}no validation split (too few training pixels")
            notes[-1] += "); the best epoch was chosen by the training loss"
    return notes


def add(det: Any, messages: list[str]) -> None:
    """Log each message as a warning and append it to ``det.fit_cautions_``.

    Parameters
    ----------
    det : detector
    messages : list of str
    """
    lst = getattr(det, "fit_cautions_", None)
    if lst is None:
        lst = det.fit_cautions_ = []
    for m in messages:
        log.warning("caution: %s", m)
        lst.append(m)


def collect(det: Any, n_scored: int, threshold_method: str) -> dict[str, list[str]]:
    """``{"cautions": [...], "notes": [...]}`` for a result of ``det`` on ``n_scored`` pixels.

    The detector's fit cautions (``fit_cautions_``), the threshold caution and
    :func:`training_notes`.

    Parameters
    ----------
    det : detector
    n_scored : int
        Pixels scored (the threshold's sample).
    threshold_method : str
        The threshold's label.

    Returns
    -------
    dict
    """
    cautions = list(getattr(det, "fit_cautions_", []) or [])
    cautions += threshold_cautions(int(n_scored), threshold_method)
    return {"cautions": cautions, "notes": training_notes(det)}
