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
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["MIN_THRESHOLD_PIXELS", "MIN_FIT_PIXELS", "MIN_NN_FIT_PIXELS", "display_name",
           "plural", "threshold_cautions", "fit_cautions", "network_fit_cautions",
           "energy_clip_caution", "training_notes", "disagreement_notes", "add", "collect"]

#: fewer scored pixels than this and an automatic threshold is a guess
MIN_THRESHOLD_PIXELS = 30
#: fewer training pixels than this and a Gaussian bulk model (PCA, RX) is a guess
MIN_FIT_PIXELS = 20
#: fewer training pixels than this and a network (the 3D-CVAE) learns the bulk roughly
MIN_NN_FIT_PIXELS = 200
#: two detectors (or seeds) whose flagged pixels overlap less than this (Jaccard) disagree
DISAGREE_JACCARD = 0.5


def display_name(method: str) -> str:
    """The detector's own name as front ends show it (``"context-pca"`` -> ``"context PCA"``).

    Parameters
    ----------
    method : str
        Detector key (``"cvae"``, ``"pca"``, ``"context-pca"``, ``"rx"``); an unknown key is
        returned as given.

    Returns
    -------
    str
    """
    from ._registry import METHODS

    return METHODS.get(str(method), str(method))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 pixel"``, ``"2 pixels"``: ``n`` and ``word`` in the number ``n`` asks for.

    Parameters
    ----------
    n : int
    word : str
        The singular.
    many : str, optional
        The plural (default ``word + "s"``).

    Returns
    -------
    str
    """
    return f"{n} {word if n == 1 else (many or word + 's')}"


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
    """Cautions on a Gaussian bulk model (PCA, context PCA, RX) fitted on few pixels.

    RX estimates a full ``D x D`` covariance: with fewer training pixels than
    channels it is rank-deficient and mostly the shrinkage target. PPCA with
    ``q`` components needs several pixels per component. Either on fewer than
    :data:`MIN_FIT_PIXELS` pixels is a guess.

    Parameters
    ----------
    method : {"pca", "context-pca", "rx"}
        Detector key; the messages name the detector as :func:`display_name` does.
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
    name = display_name(method)
    fix = ("train on a larger region (more pixels) or model a narrower energy window "
           "(--energy-range) with fewer channels")
    if n_train < MIN_FIT_PIXELS:
        out.append(f"{name} was fitted on only {plural(n_train, 'pixel')} (fewer than "
                   f"{MIN_FIT_PIXELS}): its bulk model and every score are rough; {fix}.")
    elif method == "rx" and n_train < n_channels:
        out.append(f"{name}'s covariance rests on {plural(n_train, 'pixel')} for {n_channels} "
                   "channels (fewer pixels than channels: it is mostly the shrinkage target, and "
                   f"scores differ little between pixels); {fix}, or use PCA (--method pca).")
    if method in ("pca", "context-pca") and n_components is not None \
            and n_train < 5 * (n_components + 2):
        out.append(f"{name} fitted {plural(n_components, 'component')} on "
                   f"{plural(n_train, 'pixel')} (fewer than 5 per parameter direction): use "
                   "fewer components (--components) or a larger region.")
    return out


def network_fit_cautions(method: str, n_train: int) -> list[str]:
    """A caution when a network (the 3D-CVAE) was trained on few pixels.

    A network has thousands of weights; on fewer than :data:`MIN_NN_FIT_PIXELS`
    training pixels it learns a rough bulk (often no better than its PPCA
    initialisation, "best epoch 0"), and its validation split is small or absent.

    Parameters
    ----------
    method : str
        Detector key (``"cvae"``).
    n_train : int
        Training pixels.

    Returns
    -------
    list of str
        Zero or one message.
    """
    if n_train >= MIN_NN_FIT_PIXELS:
        return []
    return [f"the {display_name(method)} was trained on only {plural(n_train, 'pixel')} (fewer "
            f"than {MIN_NN_FIT_PIXELS}): a network learns little from so few spectra, so its "
            "scores are rough; train on a larger region, or use context PCA (--method "
            "context-pca), which needs fewer pixels."]


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
    """What training did on its own: early stop, no validation split, an extended bulk region.

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
    ext = int(getattr(det, "extended_pixels_", 0) or 0)
    if ext > 0:  # bulk-context's extend_bulk="smooth" learnt more than the drawn region
        notes.append(f"the bulk region was extended by {plural(ext, 'pixel')} that join it "
                     "without an edge (a drift, thickness or valence gradient reaching beyond "
                     "the drawn region, learnt as bulk rather than flagged); --extend-bulk off "
                     "keeps the region as drawn")
    n = len(hists)
    for i, h in enumerate(hists):
        who = f"seed member {i + 1}/{n}: " if n > 1 else ""
        if h.get("stopped_early"):
            notes.append(f"{who}training stopped early at epoch {int(h.get('epochs_run', 0))} "
                         f"(best epoch {int(h.get('best_epoch', 0))})")
        if h.get("at_noise_floor"):
            notes.append(f"{who}training skipped: the network's starting point (its PPCA "
                         "initialisation) already explains held-out bulk pixels to the noise "
                         "level, so the scores are those of a PPCA-like model; a fixed patience "
                         "(patience=N in the Python API) trains anyway")
        elif h.get("lowest_step") == 0 and int(h.get("best_step", 0) or 0) > 0:
            notes.append(f"{who}no training step beat the network's starting point (its PPCA "
                         "initialisation) on held-out bulk pixels; the weights kept are those "
                         f"of step {int(h['best_step'])}, as good as the start within the noise "
                         "of the held-out estimate, so the scores are close to a PPCA-like "
                         "model's. More bulk pixels or more epochs (--epochs) may let training "
                         "help")
        elif h.get("init_won") or (h.get("best_epoch") == 0
                                   and int(h.get("epochs_run", 0) or 0)):
            notes.append(f"{who}best epoch 0: no training epoch beat the network's starting "
                         "point (its PPCA initialisation) on held-out bulk pixels, so that "
                         "starting point was kept; the scores are those of a PPCA-like model. "
                         "More bulk pixels or more epochs (--epochs) may let training help")
        vals = [v for v in h.get("val_nll", []) if v is not None]
        if vals and not any(math.isfinite(float(v)) for v in vals):
            npx = getattr(det, "n_fit_pixels_", None)
            notes.append(f"{who}no validation split ({npx} training pixels" if npx is not None
                         else f"{who}no validation split (too few training pixels")
            notes[-1] += "); the best epoch was chosen by the training loss"
    return notes


def _where(mask: np.ndarray, limit: int = 8) -> str:
    """Where a mask's pixels are: positions of a line scan, (row, column) of an image."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return ""
    if mask.shape[0] == 1:
        items = [str(int(x)) for x in xs[:limit]]
        label = "position" if xs.size == 1 else "positions"
    else:
        items = [f"({int(y)}, {int(x)})" for y, x in zip(ys[:limit], xs[:limit])]
        label = "pixel" if xs.size == 1 else "pixels"
    more = f", ... ({xs.size - limit} more)" if xs.size > limit else ""
    return f" ({label} {', '.join(items)}{more})"


def disagreement_notes(masks: Mapping[str, Any]) -> list[str]:
    """A note when detectors (or seeds) of one image disagree on which pixels are anomalous.

    Two masks disagree when their flagged pixels overlap less than
    :data:`DISAGREE_JACCARD` (intersection over union). The note lists what
    each flags, what they share, and how far to trust either: on fewer than
    :data:`MIN_THRESHOLD_PIXELS` pixels (or with a handful flagged), which
    pixels cross an automatic threshold is close to chance.

    Parameters
    ----------
    masks : mapping of str to bool array of shape (ny, nx)
        Label (e.g. ``"context PCA"``, ``"3D-CVAE"``, ``"seed 1"``) -> anomaly mask; all
        of one image (the same shape).

    Returns
    -------
    list of str
        Zero or one note.

    Raises
    ------
    InputError
        When the masks do not all have the same shape.
    """
    from .errors import InputError

    items = [(str(k), np.atleast_2d(np.asarray(v, dtype=bool))) for k, v in masks.items()]
    if len(items) < 2:
        return []
    shapes = {m.shape for _, m in items}
    if len(shapes) > 1:
        raise InputError(f"disagreement_notes: expected masks of one image (one shape), got "
                         f"shapes {sorted(shapes)}.")
    union = np.logical_or.reduce([m for _, m in items])
    inter = np.logical_and.reduce([m for _, m in items])
    if not union.any():
        return []
    jac = float(inter.sum() / union.sum())
    if jac >= DISAGREE_JACCARD:
        return []
    n_px = items[0][1].size
    each = "; ".join(f"{k} flags {plural(int(m.sum()), 'pixel')}{_where(m)}" for k, m in items)
    who = " and ".join(k for k, _ in items) if len(items) == 2 else "these runs"
    trust = (f"on {plural(n_px, 'pixel')} each automatic threshold rests on a handful of scores, "
             "so neither list is reliable on its own" if n_px < 4 * MIN_THRESHOLD_PIXELS or
             union.sum() < 5 else
             "the maps rank pixels differently, so neither threshold is reliable on its own")
    return [f"{who} disagree on which pixels are anomalous: {each}; both flag "
            f"{int(inter.sum())} of the {int(union.sum())} (overlap {jac:.2f}). {trust[0].upper()}"
            f"{trust[1:]}: trust the pixels both flag most, look at the others' spectra against "
            "the model before believing them, or give an explicit threshold (--threshold "
            "value:X)."]


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

    The detector's fit cautions (``fit_cautions_``), the threshold caution,
    :func:`training_notes` and the notes of its last scoring (``score_notes_``, e.g. a
    seed ensemble's :func:`disagreement_notes`).

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
    notes = training_notes(det) + list(getattr(det, "score_notes_", []) or [])
    return {"cautions": cautions, "notes": notes}
