"""The detector contract shared by every eelsanom detector.

Modelled on scikit-learn and PyOD, adapted to spectrum images:

- hyperparameters are keyword arguments of ``__init__``, stored unchanged and
  validated in :meth:`BaseDetector.fit`; fitted state ends in ``_``;
- ``fit(si, train_mask=None, *, progress=None) -> self``: ``train_mask`` is a
  boolean ``(ny, nx)`` map of bulk pixels; ``None`` trains on all pixels
  *robustly* (each detector down-weights or drops its worst-explained pixels);
  with ``threshold="calibrated[:ALPHA]"`` it also calibrates the threshold on
  held-out bulk blocks (:meth:`BaseDetector.calibrate`);
- ``score(si) -> AnomalyResult``: per-pixel NLL, **higher = more anomalous**;
  it applies the threshold rule to the map but never changes the fitted state
  (``threshold_`` is the fitted, calibrated threshold, NaN for rules that
  depend on the image scored);
- ``save(path)`` / :func:`load_detector` (or ``Class.load``): one HDF5 file with
  weights, hyperparameters, the energy axis and window, the scaler, the
  threshold and the package version; no pickle;
- applying a model to data whose energy axis does not contain the model's axis
  on the same grid raises :class:`~eelsanom.errors.EnergyAxisMismatch` naming both.

Subclasses implement ``_fit``, ``_score``, ``_reconstruct`` and the state hooks;
one whose score depends on neighbouring pixels also sets ``score_context`` (how
many pixels away), so that :meth:`BaseDetector.score_block` (what streaming
calls) reads enough context around a block.

Why this module is long (about 760 lines): it is the one contract every
detector inherits (parameters, windowing, fit, calibration, score, block
scoring, reconstruction, the pixel inspector, save and load), each public
method with its full docstring; splitting it would scatter one class.
Parameter checking lives in :mod:`eelsanom.checks`.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import _registry, cautions, scoring
from ..checks import check_int, check_window
from ..device import resolve_device
from ..errors import EnergyAxisMismatch, InputError, NotFittedError
from ..modelfile import PATH_PARAMS, read_model, write_model
from ..progress import ProgressCallback, emit
from ..result import AnomalyResult, PixelSpectrum
from ..spectrum import Axis, SpectrumImage, as_spectrum_image

log = logging.getLogger(__name__)

__all__ = ["BaseDetector", "load_detector", "check_train_mask", "roi_to_mask"]


def roi_to_mask(roi: Any, y: Any, x: Any) -> np.ndarray:
    """A HyperSpy ROI as a boolean ``(ny, nx)`` map over the axes ``y`` and ``x``.

    A ``RectangularROI`` (``left``, ``right``, ``top``, ``bottom``) selects a
    rectangle of a 2-D image; a ``SpanROI`` (``left``, ``right``) a range of a line
    scan's positions (or of columns, all rows). Values are in the axes' calibrated
    units; pixels are picked as HyperSpy's ``roi(s)`` picks them (each end rounded
    to the nearest pixel, the end excluded).

    Parameters
    ----------
    roi : hyperspy.roi.RectangularROI or SpanROI (anything with those attributes)
    y, x : Axis
        The image's navigation axes.

    Returns
    -------
    ndarray of bool, shape (y.size, x.size)

    Raises
    ------
    InputError
        When an edge is undefined (NaN) or the ROI selects no pixel of the image.
    """
    def span(lo: float, hi: float, ax: Any, name: str) -> slice:
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"bulk ROI: its {name} edges are not set ({lo}, {hi}); give the ROI "
                             "its position, e.g. RectangularROI(left, top, right, bottom).")
        lo, hi = sorted((float(lo), float(hi)))
        a = int(np.floor((lo - ax.offset) / ax.scale + 0.5))
        b = int(np.floor((hi - ax.offset) / ax.scale + 0.5))
        a, b = max(a, 0), min(b, ax.size)
        if b <= a:
            raise InputError(
                f"bulk ROI: {name} {lo:g} to {hi:g} {ax.units} selects no pixel of the image's "
                f"{name} axis ({ax.offset:g} to {ax.offset + ax.scale * (ax.size - 1):g} "
                f"{ax.units}, {ax.scale:g} {ax.units}/px); move or enlarge the ROI.")
        return slice(a, b)

    m = np.zeros((y.size, x.size), bool)
    xs = span(roi.left, roi.right, x, "x")
    if hasattr(roi, "top") and hasattr(roi, "bottom") and y.size > 1:
        m[span(roi.top, roi.bottom, y, "y"), xs] = True
    else:
        m[:, xs] = True
    return m


def _is_roi(obj: Any) -> bool:
    """A HyperSpy ROI (duck-typed: ``left`` and ``right`` edges, not an array)."""
    return hasattr(obj, "left") and hasattr(obj, "right") and not hasattr(obj, "__array__")


def check_train_mask(train_mask: Any, nav_shape: tuple[int, int], *, min_pixels: int = 1,
                     what: str = "train_mask", axes: tuple[Any, Any] | None = None,
                     fix: str | None = None) -> np.ndarray | None:
    """Validate a bulk mask: boolean ``(ny, nx)`` (a line scan's ``(n,)`` is accepted).

    Parameters
    ----------
    train_mask : array-like of bool or 0/1, HyperSpy boolean signal or ROI, or None
        Bulk (defect-free) pixels: a map of shape (ny, nx), or (nx,) for a line scan;
        a boolean HyperSpy signal of that shape; or, when ``axes`` is given, a HyperSpy
        ``RectangularROI`` (``SpanROI`` for a line scan), see :func:`roi_to_mask`.
    nav_shape : (int, int)
        The image's navigation shape ``(ny, nx)``, in pixels.
    min_pixels : int
        Smallest number of ``True`` pixels accepted.
    what : str
        Name of the mask in error messages.
    axes : (Axis, Axis), optional
        The image's ``(y, x)`` axes, to place a ROI.
    fix : str, optional
        What to do when the region is too small (default: a wording for the Python API).

    Returns
    -------
    ndarray of bool, shape (ny, nx), or None
        The mask as booleans; ``None`` when ``train_mask`` is ``None``.

    Raises
    ------
    InputError
        When the shape is not ``nav_shape``, the values are not booleans or 0/1, or
        fewer than ``min_pixels`` pixels are ``True``.
    """
    if train_mask is None:
        return None
    if _is_roi(train_mask):
        if axes is None:
            raise InputError(f"{what}: a ROI needs the image's axes to be placed; pass a boolean "
                             f"map of shape {tuple(nav_shape)} instead.")
        train_mask = roi_to_mask(train_mask, *axes)
    elif hasattr(train_mask, "axes_manager") and hasattr(train_mask, "data"):
        train_mask = train_mask.data  # a HyperSpy signal: its (ny, nx) or (n,) data
    m = np.asarray(train_mask)
    if m.ndim == 1 and nav_shape[0] == 1:
        m = m[None]
    if m.shape != tuple(nav_shape):
        raise InputError(f"{what}: expected a boolean map of shape {tuple(nav_shape)} (the image's "
                         f"navigation shape), got shape {m.shape}.")
    if m.dtype != bool:
        if not np.isin(np.unique(m), [0, 1]).all():
            raise InputError(f"{what}: expected booleans (or 0/1), got values "
                             f"{np.unique(m)[:5].tolist()}...")
        m = m.astype(bool)
    n = int(m.sum())
    if n < min_pixels:
        px = "pixel" if n == 1 else "pixels"
        raise InputError(f"{what}: the bulk region covers {n} {px}; this detector needs at "
                         f"least {min_pixels}. " + (fix or "Give a larger bulk region, or "
                                                    "train_mask=None to train on all pixels "
                                                    "(robustly)."))
    return m


class BaseDetector:
    """Base class of all detectors; see the module docstring for the contract."""

    method: ClassVar[str] = ""
    #: smallest number of training pixels ``fit`` accepts
    min_train_pixels: ClassVar[int] = 2
    #: a network (its few-training-pixels caution is :func:`eelsanom.cautions.network_fit_cautions`)
    network: ClassVar[bool] = False
    #: old parameter names of saved model files -> today's (read by :func:`load_detector`)
    renamed_params: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ params
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__`` (scikit-learn's contract).

        The values are the objects stored, unchanged (``sklearn.base.clone`` checks
        that); :meth:`params_json` gives them JSON-ready (tuples as lists).

        Parameters
        ----------
        deep : bool, default True
            scikit-learn's flag for parameters that are estimators themselves; no
            detector has such a parameter, so both values give the same dict.

        Returns
        -------
        dict of str -> object
            One entry per ``__init__`` keyword, its current value.
        """
        return {k: getattr(self, k) for k in self._param_names()}

    def params_json(self) -> dict[str, Any]:
        """:meth:`get_params` with tuples as lists: what model files and results record.

        Returns
        -------
        dict of str -> object
            One entry per ``__init__`` keyword (JSON-serialisable for the built-in
            parameter types).
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params().items()}

    def set_params(self, **params: Any) -> BaseDetector:
        """Set hyperparameters by name (stored unchanged; validated by the next ``fit``).

        scikit-learn's contract: unknown names are refused before anything is set,
        and the detector is returned.

        Parameters
        ----------
        **params
            ``__init__`` keywords and their new values.

        Returns
        -------
        self

        Raises
        ------
        InputError
            When a name is not an ``__init__`` parameter of this detector (a
            ``ValueError``, as scikit-learn raises); nothing is changed then.
        """
        names = set(self._param_names())
        unknown = sorted(k for k in params if k not in names)
        if unknown:
            raise InputError(f"{type(self).__name__} has no parameter {unknown[0]!r}; valid: "
                             f"{sorted(names)}.")
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params_json().items())
        return f"{type(self).__name__}({ps})"

    def _validate_params(self) -> None:
        """Check hyperparameters (called by ``fit``); subclasses extend it."""
        scoring.parse_threshold(getattr(self, "threshold", "robust"))
        check_window("energy_range", getattr(self, "energy_range", None))

    # ------------------------------------------------------------------ fitted state
    @property
    def is_fitted(self) -> bool:
        """Whether the detector has been fitted or loaded (it has ``energy_axis_``)."""
        return hasattr(self, "energy_axis_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(si, "
                                 "train_mask) or load a saved model first.")

    def window(self, si: Any) -> SpectrumImage:
        """Validate ``si`` and cut it to the fitted energy axis (or refuse, naming both axes).

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            Data whose energy axis contains the model's window on the same channel grid.

        Returns
        -------
        SpectrumImage
            ``si`` with data of shape (ny, nx, n_model) on the model's energy axis
            (``si`` itself when the axes already agree; otherwise a new
            SpectrumImage holding a channel slice of its data).

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        InputError
            When ``si`` is not a valid spectrum image.
        EnergyAxisMismatch
            When the data's energy axis does not contain the model's on the same grid
            (scale within 1e-4 relative, offset within 0.05 channel).
        """
        self._check_fitted()
        si = as_spectrum_image(si, what="data to score")
        ax: Axis = self.energy_axis_
        src = si.energy
        if np.isclose(src.scale, ax.scale, rtol=1e-4):
            start = (ax.offset - src.offset) / src.scale
            k = int(round(start))
            if abs(start - k) < 0.05 and k >= 0 and k + ax.size <= src.size:
                if k == 0 and ax.size == src.size:
                    return si
                return replace(si, data=si.data[:, :, k:k + ax.size],
                               energy=Axis(ax.size, src.scale, src.offset + k * src.scale,
                                           src.units, src.name))
        raise EnergyAxisMismatch(
            f"the model was trained on the energy axis {ax.describe()}, but the data's axis is "
            f"{src.describe()}; the data must contain the model's window on the same "
            "channel grid. Use data from the same spectrometer setting, or retrain on this data.")

    # ------------------------------------------------------------------ public API
    def fit(self, si: Any, train_mask: Any = None, *,
            progress: ProgressCallback | None = None) -> BaseDetector:
        """Learn the bulk from ``si``.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
        train_mask : ndarray of bool, shape (ny, nx), HyperSpy ROI or signal, optional
            Bulk (defect-free) pixels to learn from: a boolean map (a line scan's
            ``(n,)`` too), a boolean HyperSpy signal of that shape, or a HyperSpy
            ``RectangularROI`` (``SpanROI`` on a line scan) in the data's calibrated
            units (see :func:`check_train_mask`). ``None``: all pixels, robustly.
        progress : callable, optional
            Receives :class:`~eelsanom.progress.ProgressEvent`; return ``False`` to cancel.

        Returns
        -------
        self

        Raises
        ------
        InputError
            When the data, the mask or a hyperparameter is invalid, or the
            threshold is ``"calibrated"`` and no ``train_mask`` is given.
        """
        self._validate_params()
        calibrated = scoring.parse_threshold(getattr(self, "threshold", "robust"))[0] \
            == "calibrated"
        if calibrated and train_mask is None:
            raise InputError(
                "threshold 'calibrated' is set from held-out bulk pixels, so it needs a bulk "
                "region: pass train_mask (a boolean (ny, nx) map; in the CLI --train-roi or "
                "--train-mask), or use another threshold rule such as 'robust' to train "
                "without one.")
        si = as_spectrum_image(si, what="training data")
        er = getattr(self, "energy_range", None)
        self.fit_cautions_ = []
        if er is not None:
            lo, hi = float(si.energy.values[0]), float(si.energy.values[-1])
            si = si.crop_energy(er[0], er[1])
            cautions.add(self, cautions.energy_clip_caution(tuple(er), lo, hi, si.n_energy))
        mask = check_train_mask(train_mask, si.nav_shape, min_pixels=self.min_train_pixels,
                                axes=(si.y, si.x))
        if mask is None and si.nav_shape[0] * si.nav_shape[1] < self.min_train_pixels:
            raise InputError(f"training data has {si.nav_shape[0] * si.nav_shape[1]} pixels; "
                             f"{type(self).__name__} needs at least {self.min_train_pixels}.")
        self.n_fit_pixels_ = int(mask.sum()) if mask is not None else int(np.prod(si.nav_shape))
        t0 = time.perf_counter()
        self.score_notes_ = []
        self._fit(si, mask, progress)
        if self.network:
            cautions.add(self, cautions.network_fit_cautions(self.method, self.n_fit_pixels_))
        self.energy_axis_ = si.energy
        self.trained_on_mask_ = mask is not None
        self.fit_seconds_ = time.perf_counter() - t0
        self.threshold_ = float("nan")
        self.__dict__.pop("calibration_", None)
        log.info("%s fitted on %s pixels in %.2f s", type(self).__name__,
                 "all" if mask is None else int(mask.sum()), self.fit_seconds_)
        if calibrated:
            self.calibrate(si, mask, progress=progress)
        return self

    def calibrate(self, si: Any, train_mask: Any, *, folds: int = 4, block: int = 8,
                  progress: ProgressCallback | None = None) -> BaseDetector:
        """Calibrate the threshold on held-out bulk pixels (cross-fitting over spatial blocks).

        :meth:`held_out_scores` (``folds`` groups of ``block x block`` squares,
        each scored with its neighbourhood by a copy fitted on the rest of the
        bulk) gives every bulk pixel a score from a model that did not see it or
        the square around it; their distribution
        (:func:`eelsanom.scoring.null_calibration`) sets ``threshold_`` for
        ``threshold="calibrated:ALPHA"`` (its ``1 - ALPHA`` quantile) and the
        ``p_value`` map of every later result. Saved with the model. Costs
        ``folds`` extra fits. The calibration holds for the score it was made
        with: after changing ``pooling`` (or any other scoring parameter),
        calibrate again.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            The training data (containing the model's energy window).
        train_mask : ndarray of bool, shape (ny, nx)
            The bulk region the detector was fitted on.
        folds, block, progress
            As :meth:`held_out_scores`.

        Returns
        -------
        self

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        InputError
            When the mask is invalid or too small to hold out a group and still
            fit on the rest, or ``folds`` / ``block`` are not integers >= 2 / >= 1.
        """
        held = self.held_out_scores(si, train_mask, folds=folds, block=block,
                                    progress=progress)[0]
        self.calibration_ = scoring.null_calibration(held[np.isfinite(held)])
        self.calibration_.update(folds=int(folds), block=int(block))
        kind, alpha = scoring.parse_threshold(getattr(self, "threshold", "robust"))
        self.threshold_ = scoring.calibrated_threshold(
            self.calibration_, alpha if kind == "calibrated" else scoring.DEFAULT_ALPHA)
        log.info("%s calibrated on %d held-out bulk pixels: threshold %.4g", type(self).__name__,
                 self.calibration_["n"], self.threshold_)
        return self

    def held_out_scores(self, si: Any, train_mask: Any, *, folds: int = 4, block: int = 8,
                        variants: Any = None,
                        progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """Scores of bulk pixels by models that did not see them (:meth:`calibrate`'s folds).

        The bulk region is cut into ``block x block`` squares dealt at random
        (seeded by ``seed``) into ``folds`` groups; for each group a copy of this
        detector (same hyperparameters; path parameters such as a checkpoint
        left out, so a fold never reads or writes the model's files) is fitted
        on the rest of the bulk and scores the group's squares with their
        neighbourhood (:attr:`score_context`). Each fold's copy is fitted once
        and scored once per entry of ``variants`` (scoring settings such as
        ``{"pooling": 0.0}``), so several scores of one model cost one set of
        fits.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            The training data (containing the model's energy window).
        train_mask : ndarray of bool, shape (ny, nx)
            The bulk region the detector was fitted on.
        folds : int
            Number of groups of held-out squares, >= 2.
        block : int
            Side of the held-out squares in pixels, >= 1.
        variants : sequence of dict, optional
            Hyperparameters set on each fold's copy before one scoring (``set_params``);
            default ``[{}]``: this detector's own settings.
        progress : callable, optional
            Receives :class:`~eelsanom.progress.ProgressEvent`; return ``False`` to cancel.

        Returns
        -------
        list of ndarray of shape (ny, nx), float64
            One map per variant: the held-out score of every bulk pixel, NaN elsewhere.

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        InputError
            When the mask is invalid or too small to hold out a group and still
            fit on the rest, ``folds`` / ``block`` are not integers >= 2 / >= 1, or a
            variant names a parameter this detector does not have.
        """
        siw = self.window(si)
        ny, nx = siw.nav_shape
        check_int("calibrate: folds", folds, 2)
        check_int("calibrate: block", block, 1)
        variants = [{}] if variants is None else [dict(v) for v in variants]
        names = set(self._param_names())
        for v in variants:
            bad = sorted(set(v) - names)
            if bad:
                raise InputError(f"held_out_scores: variants name {bad}, which "
                                 f"{type(self).__name__} does not have; valid: {sorted(names)}.")
        mask = check_train_mask(train_mask, (ny, nx), min_pixels=2 * self.min_train_pixels,
                                axes=(siw.y, siw.x))
        n_squares, groups = scoring.held_out_groups(mask, folds=folds, block=block,
                                                    seed=int(getattr(self, "seed", 0)))
        if not groups:
            raise InputError(f"calibrate: the bulk region covers {n_squares} square(s) of "
                             f"{block} x {block} pixels, fewer than folds={folds}; use a larger "
                             "bulk region or pass a smaller block.")
        held_scores = [np.full((ny, nx), np.nan) for _ in variants]
        params = {k: (None if k in PATH_PARAMS else v) for k, v in self.get_params().items()}
        for g, held in enumerate(groups):
            rest = mask & ~held
            if rest.sum() < self.min_train_pixels:
                raise InputError(f"calibrate: holding out a group leaves {int(rest.sum())} bulk "
                                 f"pixels to fit on; use a larger bulk region.")
            twin = type(self)(**params)
            twin._validate_params()
            twin._fit(siw, rest, None)
            twin.energy_axis_ = self.energy_axis_
            # one pass over the box around the group's squares (with its context) per variant
            ys, xs = np.nonzero(held)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            sel = held[y0:y1, x0:x1]
            for v, out in zip(variants, held_scores):
                twin.set_params(**{**params, **v})
                nll, _, _ = twin._score_region(siw, (y0, y1, x0, x1), None)
                nll = np.asarray(nll, np.float64).reshape(y1 - y0, x1 - x0)
                out[y0:y1, x0:x1][sel] = nll[sel]
            emit(progress, "calibrate", g + 1, folds)
            log.debug("calibration fold %d/%d: %d held-out pixels (context %d)", g + 1, folds,
                      int(held.sum()), int(twin.score_context))
        return held_scores

    def score(self, si: Any, *, progress: ProgressCallback | None = None) -> AnomalyResult:
        """Per-pixel NLL of ``si`` under the fitted bulk model (higher = more anomalous).

        The threshold rule (parameter ``threshold``) is applied to this NLL map
        (``"calibrated"``: the threshold fitted on held-out bulk pixels, not this
        map); the detector's fitted state, ``threshold_`` included, is not changed.
        A calibrated model adds ``maps["p_value"]``.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            Data containing the model's energy window.
        progress : callable, optional
            Receives :class:`~eelsanom.progress.ProgressEvent`; return ``False`` to cancel.

        Returns
        -------
        AnomalyResult
            ``nll`` (ny, nx) float64, ``mask`` (ny, nx) bool (``nll > threshold``), the
            threshold, optional ``latent`` (ny, nx, d), extra ``maps``, axes and timings.

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        InputError
            When ``si`` is not a valid spectrum image.
        EnergyAxisMismatch
            When the data's energy axis does not contain the model's.
        """
        siw = self.window(si)
        t0 = time.perf_counter()
        nll, latent, maps = self._score(siw, progress)
        return self._result(siw, nll, latent, maps, score_seconds=time.perf_counter() - t0)

    def _result(self, siw: SpectrumImage, nll: Any, latent: np.ndarray | None,
                maps: dict[str, np.ndarray], *, score_seconds: float | None = None,
                info: dict[str, Any] | None = None, attach: bool = True) -> AnomalyResult:
        """An :class:`AnomalyResult` of a whole NLL map on ``siw`` (the windowed data),
        thresholded by the ``threshold`` rule; what :meth:`score`, streaming
        (:func:`eelsanom.stream.score_streaming`) and per-member results build.

        Parameters
        ----------
        siw : SpectrumImage
            The data as scored (after :meth:`window`); gives the axes.
        nll : array-like of shape (ny, nx) or (ny * nx,)
            Scores, higher = more anomalous.
        latent : ndarray of shape (ny, nx, d), optional
            Latent codes.
        maps : dict of str -> ndarray (ny, nx)
            Extra per-pixel maps.
        score_seconds : float, optional
            Scoring time; with it, ``timings`` holds ``fit`` and ``score`` seconds.
        info : dict, optional
            Added to ``info`` after ``params``.
        attach : bool
            Keep the detector and data in the result (for ``pixel`` / ``reconstruct``).

        Returns
        -------
        AnomalyResult
        """
        nll = np.asarray(nll, dtype=np.float64).reshape(siw.nav_shape)
        cal = getattr(self, "calibration_", None)
        t, label = scoring.compute_threshold(nll, getattr(self, "threshold", "robust"),
                                             calibration=cal)
        if cal is not None:
            maps = {**maps, "p_value": scoring.p_values(nll, cal)}
        timings = {} if score_seconds is None else {
            "fit": float(getattr(self, "fit_seconds_", float("nan"))), "score": score_seconds}
        return AnomalyResult(
            nll=nll, threshold=t, threshold_method=label, mask=nll > t, method=self.method,
            y=siw.y, x=siw.x, energy=siw.energy, latent=latent, maps=maps, timings=timings,
            info={"params": self.params_json(), **(info or {}),
                  **cautions.collect(self, nll.size, label)},
            _detector=self if attach else None, _si=siw if attach else None)

    def score_block(self, si: Any, region: tuple[int, int, int, int], *,
                    progress: ProgressCallback | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """Score one spatial block of ``si`` only (the hook :mod:`eelsanom.stream` streams with).

        The result equals (to float rounding) that block of :meth:`score`'s maps, so
        a large image can be scored block by block, reading lazy (dask) data one
        block at a time: per-pixel models (PCA, RX) read just the block; models whose
        score depends on neighbours (the 3D-CVAE) read :attr:`score_context` pixels
        of context around it. No threshold is applied (it needs the whole NLL map).

        Parameters
        ----------
        si : SpectrumImage (numpy or dask data) or anything ``score`` takes
        region : (y0, y1, x0, x1)
            Pixel block, stop exclusive.
        progress : callable, optional
            Receives :class:`~eelsanom.progress.ProgressEvent`; return ``False`` to cancel.

        Returns
        -------
        nll : ndarray of shape (y1 - y0, x1 - x0), float64
        latent : ndarray of shape (y1 - y0, x1 - x0, d), or None
        maps : dict of name -> ndarray (y1 - y0, x1 - x0)

        Raises
        ------
        InputError
            When ``region`` is empty or not inside the image, or lazy data holds NaN/inf.
        NotFittedError, EnergyAxisMismatch
            As :meth:`window`.
        """
        siw = self.window(si)
        ny, nx = siw.nav_shape
        y0, y1, x0, x1 = (int(v) for v in region)
        if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise InputError(f"region: expected (y0, y1, x0, x1) inside the {ny} x {nx} image, "
                             f"got {tuple(region)}.")
        nll, latent, maps = self._score_region(siw, (y0, y1, x0, x1), progress)
        return np.asarray(nll, dtype=np.float64).reshape(y1 - y0, x1 - x0), latent, maps

    def reconstruct(self, si: Any) -> tuple[np.ndarray, np.ndarray]:
        """Model mean and sigma in counts, each (ny, nx, n_energy) on the model's energy axis.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            Data containing the model's energy window.

        Returns
        -------
        mean, sigma : ndarray of shape (ny, nx, n_model)
            Predicted mean and standard deviation in counts, ``n_model`` channels of
            the model's energy axis.

        Raises
        ------
        NotFittedError, InputError, EnergyAxisMismatch
            As :meth:`window`.
        """
        siw = self.window(si)
        return self._reconstruct(siw)

    def pixel_spectrum(self, si: Any, iy: int, ix: int, *, nll: float | None = None
                       ) -> PixelSpectrum:
        """Observed spectrum of pixel (iy, ix) against the model (see :class:`PixelSpectrum`).

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            Data containing the model's energy window.
        iy, ix : int
            Pixel row and column (indices, in pixels).
        nll : float, optional
            The pixel's score to report (e.g. from :meth:`score`); default: the sum of
            the per-channel NLL.

        Returns
        -------
        PixelSpectrum
            Energy (eV), observed, mean, sigma, residual (counts) and per-channel NLL,
            each of shape (n_model,).

        Raises
        ------
        NotFittedError, InputError, EnergyAxisMismatch
            As :meth:`window`.
        """
        siw = self.window(si)
        mean, sigma, chan = self._pixel(siw, iy, ix)
        obs = np.asarray(siw.data[iy, ix], dtype=np.float64)
        return PixelSpectrum(energy=siw.energy.values, observed=obs, mean=mean, sigma=sigma,
                             residual=obs - mean, channel_nll=chan,
                             nll=float(np.sum(chan) if nll is None else nll))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to one HDF5 model file (atomically); return its path.

        The file holds the hyperparameters, the fitted state and arrays, the energy
        axis, the fitted threshold (``threshold_``: the calibrated one, else NaN),
        the calibration sample when calibrated, and the package version (JSON and
        arrays, no pickle).

        Parameters
        ----------
        path : str or Path
            Output model file (conventionally ``*.h5``); missing folders are created.

        Returns
        -------
        Path
            The path written.

        Raises
        ------
        NotFittedError
            When the detector is not fitted.
        """
        self._check_fitted()
        state = dict(self._get_state())
        state["energy_axis"] = self.energy_axis_.to_dict()
        state["threshold_value"] = float(getattr(self, "threshold_", float("nan")))
        state["trained_on_mask"] = bool(getattr(self, "trained_on_mask_", False))
        state["fit_seconds"] = float(getattr(self, "fit_seconds_", float("nan")))
        arrays = dict(self._get_arrays())
        cal = getattr(self, "calibration_", None)
        if cal is not None:
            state["calibration"] = {k: v for k, v in cal.items() if k != "scores"}
            arrays["calibration_scores"] = np.asarray(cal["scores"], np.float64)
        return write_model(path, detector=self.method, params=self.params_json(), state=state,
                           arrays=arrays)

    @classmethod
    def load(cls, path: str | Path) -> BaseDetector:
        """Read a model file written by :meth:`save` (any detector when called on the base).

        Parameters
        ----------
        path : str or Path
            A model file written by :meth:`save`.

        Returns
        -------
        BaseDetector
            The fitted detector, an instance of the class the file names.

        Raises
        ------
        InputError
            As :func:`load_detector`; also when called on a subclass and the file
            holds another detector.
        """
        return load_detector(path, expected=None if cls is BaseDetector else cls)

    # ------------------------------------------------------------------ subclass hooks
    def _fit(self, si: SpectrumImage, mask: np.ndarray | None,
             progress: ProgressCallback | None) -> None:
        raise NotImplementedError

    def _score(self, si: SpectrumImage, progress: ProgressCallback | None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """Return ``(nll (ny, nx), latent (ny, nx, d) or None, extra maps)``."""
        raise NotImplementedError

    #: pixels on each side of a pixel that its score depends on (0: a per-pixel model);
    #: :meth:`score_block` scores a block with this much context around it
    score_context: int = 0

    def _score_region(self, si: SpectrumImage, region: tuple[int, int, int, int],
                      progress: ProgressCallback | None
                      ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """``_score`` of the block ``region = (y0, y1, x0, x1)`` of the windowed ``si``.

        Reads the block plus ``score_context`` pixels around it (clipped at the
        image border; lazy data is computed, and NaN/inf refused), ``_score``-s that
        crop and keeps the block: the crop's own border then lies at least
        ``score_context`` pixels from every kept pixel, or is the image's border,
        so the kept scores equal the whole image's.
        """
        ny, nx = si.nav_shape
        y0, y1, x0, x1 = region
        c = max(0, int(self.score_context))
        sy0, sy1, sx0, sx1 = max(0, y0 - c), min(ny, y1 + c), max(0, x0 - c), min(nx, x1 + c)
        crop = si.data[sy0:sy1, sx0:sx1]
        if si.is_lazy:
            crop = np.asarray(crop.compute() if hasattr(crop, "compute") else crop,
                              dtype=np.float32)
            bad = ~np.isfinite(crop)
            if bad.any():
                i = np.argwhere(bad)[0]
                raise InputError(
                    f"expected finite values, found NaN/inf in the lazy data (first at pixel "
                    f"y={sy0 + i[0]}, x={sx0 + i[1]}, channel {i[2]}). Replace them first, e.g. "
                    "s.data = np.nan_to_num(s.data).")
        sub = replace(si, data=crop, ground_truth=None,
                      y=replace(si.y, size=sy1 - sy0, offset=si.y.offset + sy0 * si.y.scale),
                      x=replace(si.x, size=sx1 - sx0, offset=si.x.offset + sx0 * si.x.scale))
        nll, latent, maps = self._score(sub, progress)
        if (sy0, sy1, sx0, sx1) == (y0, y1, x0, x1):
            return nll, latent, maps
        shape = (sy1 - sy0, sx1 - sx0)
        core = (slice(y0 - sy0, y1 - sy0), slice(x0 - sx0, x1 - sx0))

        def keep(a: Any) -> Any:
            a = np.asarray(a)
            return a[core] if a.shape[:2] == shape else a

        return (keep(np.asarray(nll).reshape(shape)), None if latent is None else keep(latent),
                {k: keep(v) for k, v in maps.items()})

    def _reconstruct(self, si: SpectrumImage) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _pixel(self, si: SpectrumImage, iy: int, ix: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, sigma, channel_nll)`` of one pixel; default: from the full reconstruction."""
        mean, sigma = self._reconstruct(si)
        m = np.asarray(mean[iy, ix], np.float64)
        s = np.asarray(sigma[iy, ix], np.float64)
        obs = np.asarray(si.data[iy, ix], np.float64)
        chan = 0.5 * ((obs - m) / s) ** 2 + np.log(s) + 0.5 * np.log(2 * np.pi)
        return m, s, chan

    def _get_state(self) -> dict[str, Any]:
        return {}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        pass


def load_detector(path: str | Path, expected: type[BaseDetector] | None = None) -> BaseDetector:
    """Load any eelsanom model file and return the fitted detector.

    A model saved with a ``device`` this machine lacks is loaded with
    ``device="auto"`` (with a warning).

    Parameters
    ----------
    path : str or Path
        A model file written by :meth:`BaseDetector.save`.
    expected : type of BaseDetector, optional
        Refuse files holding a detector that is not this class or a subclass of it.

    Returns
    -------
    BaseDetector
        The fitted detector (``energy_axis_``, ``threshold_``, ``model_header_`` set).

    Raises
    ------
    InputError
        "model file M: expected ..., found ..." when the file is missing, not an eelsanom
        model file, in a newer format, breaks the model-file schema
        (:func:`eelsanom.modelfile.validate_model`), holds a hyperparameter its detector
        refuses (a bad threshold rule or transform), names an unknown detector, or holds
        a detector other than ``expected``. Path hyperparameters (the 3D-CVAE's
        ``checkpoint``) are reset to None: a model file never chooses a file to write.
    """
    header, params, state, arrays = read_model(path)
    cls = _registry.detector_class(header["detector"])  # registered: read_model checked it
    params = {cls.renamed_params.get(k, k): v for k, v in params.items()}
    if expected is not None and not issubclass(cls, expected):
        raise InputError(f"{str(path)!r} holds a {cls.__name__} model, not a {expected.__name__}.")
    dev = params.get("device")
    if dev not in (None, "auto", "cpu"):
        try:
            resolve_device(dev)
        except InputError:
            log.warning("%s was saved with device=%r, which this machine lacks; using 'auto'",
                        path, dev)
            params = {**params, "device": "auto"}
    for k in PATH_PARAMS:  # nothing read from a model file may choose a path to write
        if params.get(k) is not None:
            log.info("%s: ignoring its saved %s=%r (a model file never chooses an output path)",
                     path, k, params[k])
            params = {**params, k: None}
    cal_scores = arrays.pop("calibration_scores", None)
    try:  # validate_model (in read_model) checked the shapes; a bad rule or value is the model's
        det = cls(**params)
        det._validate_params()
        if cal_scores is not None and "calibration" in state:
            det.calibration_ = {**state["calibration"],
                                "scores": np.asarray(cal_scores, np.float64)}
        det._set_state(state, arrays)
    except InputError as exc:
        raise InputError(f"model file {str(path)!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever else a damaged file does is a refusal
        raise InputError(f"model file {str(path)!r}: could not rebuild the {cls.__name__} "
                         f"({type(exc).__name__}: {exc}); the file is damaged. Train the model "
                         "again or use another model file.") from None
    det.energy_axis_ = Axis.from_dict(state["energy_axis"])
    det.threshold_ = state.get("threshold_value", float("nan"))
    det.trained_on_mask_ = state.get("trained_on_mask", False)
    det.fit_seconds_ = state.get("fit_seconds", float("nan"))
    det.model_header_ = header
    return det
