"""eelsanom's arrays as HyperSpy signals: a spectrum image, a per-pixel map, the latent codes.

HyperSpy (and exSpy for ``EELSSpectrum``) is imported on use only, so importing
:mod:`eelsanom.io` stays cheap.

Examples
--------
>>> import numpy as np
>>> from eelsanom.spectrum import Axis, SpectrumImage
>>> si = SpectrumImage(np.ones((2, 3, 8), np.float32), Axis(8, 0.5, 280.0, "eV"))
>>> s = to_signal(si)                         # doctest: +SKIP
>>> s.axes_manager.signal_axes[0].offset      # doctest: +SKIP
280.0
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..spectrum import Axis, as_spectrum_image
from .read import _hs

__all__ = ["to_signal", "map_to_signal", "result_signal", "RESULT_MAPS"]


def _axis_dict(ax: Axis, default_name: str, navigate: bool | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"size": int(ax.size), "scale": float(ax.scale),
                         "offset": float(ax.offset), "name": ax.name or default_name}
    if ax.units:
        d["units"] = ax.units
    if navigate is not None:
        d["navigate"] = navigate
    return d


def _nav_axes(obj: Any) -> tuple[Axis, Axis]:
    y, x = getattr(obj, "y", None), getattr(obj, "x", None)
    if not isinstance(y, Axis) or not isinstance(x, Axis):
        raise InputError(f"expected a SpectrumImage or AnomalyResult (with y and x axes), got "
                         f"{type(obj).__name__}.")
    if (y.name or "y") == (x.name or "x"):  # HyperSpy needs distinct names
        y, x = replace(y, name="y"), replace(x, name="x")
    return y, x


def _check_map(arr: Any, y: Axis, x: Axis, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != (y.size, x.size):
        raise InputError(f"{what}: expected a map of shape {(y.size, x.size)} (ny, nx), found "
                         f"{a.shape}.")
    return a


def to_signal(si: Any) -> Any:
    """The spectrum image as an exSpy ``EELSSpectrum`` (lazy when the data is dask).

    Parameters
    ----------
    si : SpectrumImage (or anything :func:`~eelsanom.spectrum.as_spectrum_image` takes)

    Returns
    -------
    exspy.signals.EELSSpectrum or LazyEELSSpectrum
        Data ``(ny, nx, n_energy)`` with calibrated axes ``(y, x | energy)``; a line
        scan (``ny == 1``) becomes a signal with one navigation axis again. The title,
        the acquisition metadata read by :func:`load_spectrum_image` and the ground
        truth (``metadata.eelsanom.ground_truth``) are carried over.
    """
    si = as_spectrum_image(si, what="to_signal")
    hs = _hs()
    y, x = _nav_axes(si)
    axes = [_axis_dict(y, "y"), _axis_dict(x, "x"), _axis_dict(si.energy, "Energy loss")]
    data = si.data
    gt = si.ground_truth
    if si.is_linescan:
        data, axes = data[0], axes[1:]
        gt = None if gt is None else gt[0]
    sig = hs.signals.Signal1D(data, axes=axes)
    if si.is_lazy:
        sig = sig.as_lazy()
    sig.set_signal_type("EELS")
    sig.metadata.General.title = si.title or "spectrum image"
    if si.source:
        sig.metadata.set_item("General.original_filename", Path(si.source).name)
    acq = (si.metadata.get("original_metadata") or {}).get("Acquisition_instrument")
    if isinstance(acq, dict) and acq:
        sig.metadata.add_dictionary({"Acquisition_instrument": acq})
    if gt is not None:
        sig.metadata.set_item("eelsanom.ground_truth", np.asarray(gt, dtype=bool))
    return sig


def map_to_signal(arr: Any, si_or_result: Any, *, title: str, quantity: str = "",
                  profile: bool = False) -> Any:
    """A per-pixel map as a HyperSpy ``Signal2D`` with the navigation calibration.

    This is the form of the maps ``eelsanom detect`` writes (``<stem>_nll.hspy``, a line
    scan as a 1-pixel-high image, so that every run folder reads back the same way).
    From Python, :meth:`eelsanom.result.AnomalyResult.to_signal` is the usual way: it
    calls this with ``profile=True`` and adds the input's metadata.

    Parameters
    ----------
    arr : array of shape (ny, nx)
        The map (bool masks stay bool).
    si_or_result : SpectrumImage or AnomalyResult
        Source of the ``y`` and ``x`` axes (scale, offset, units).
    title, quantity : str
        Stored as ``metadata.General.title`` and ``metadata.Signal.quantity``
        (``quantity`` only when not empty).
    profile : bool, default False
        A line scan's map (``ny == 1``) as a profile: a ``Signal1D`` over the
        position axis ``x`` instead of a 1 x nx image.

    Returns
    -------
    hyperspy.signals.Signal2D or Signal1D
        Data ``arr`` of shape (ny, nx), with the ``y`` and ``x`` axes of ``si_or_result``
        (a ``Signal1D`` of shape (nx,) over ``x`` for a line scan with ``profile=True``).

    Raises
    ------
    InputError
        When ``si_or_result`` has no ``y``/``x`` :class:`Axis`, or ``arr`` is not
        of shape (ny, nx).
    """
    y, x = _nav_axes(si_or_result)
    a = _check_map(arr, y, x, title or "map")
    if profile and y.size == 1:
        sig = _hs().signals.Signal1D(a[0], axes=[_axis_dict(x, "x")])
    else:
        sig = _hs().signals.Signal2D(a, axes=[_axis_dict(y, "y"), _axis_dict(x, "x")])
    sig.metadata.General.title = title
    if quantity:
        sig.metadata.Signal.quantity = quantity
    return sig


def _latent_signal(latent: np.ndarray, res: Any, *, title: str, profile: bool = False) -> Any:
    y, x = _nav_axes(res)
    lat = np.asarray(latent, dtype=np.float32)
    if lat.ndim != 3 or lat.shape[:2] != (y.size, x.size):
        raise InputError(f"latent codes: expected shape {(y.size, x.size)} + (d,), found "
                         f"{lat.shape}.")
    axes = [_axis_dict(y, "y"), _axis_dict(x, "x"),
            {"size": int(lat.shape[2]), "name": "latent dimension"}]
    if profile and y.size == 1:
        lat, axes = lat[0], axes[1:]
    sig = _hs().signals.Signal1D(lat, axes=axes)
    sig.metadata.General.title = title
    return sig


#: the maps every result has, besides its ``maps`` (see :func:`result_signal`)
RESULT_MAPS = ("nll", "mask", "latent")

_QUANTITY = {"nll": "NLL (nats, higher = more anomalous)", "mask": "flagged (NLL > threshold)"}


def result_signal(res: Any, which: str = "nll") -> Any:
    """One map of an :class:`~eelsanom.result.AnomalyResult` as a HyperSpy signal.

    Parameters
    ----------
    res : AnomalyResult
    which : str, default "nll"
        ``"nll"``, ``"mask"``, ``"latent"`` (where the detector has latent codes) or a
        key of ``res.maps`` (e.g. ``"seed_std"``).

    Returns
    -------
    hyperspy signal
        A 2-D image: ``Signal2D`` (ny, nx) with the input's calibrated ``y`` and ``x``
        axes (name, scale, offset, units). A line scan: a ``Signal1D`` profile over its
        position axis. ``"latent"``: a ``Signal1D`` with the latent dimension as signal
        axis over the same navigation axes. ``metadata`` holds the input's title
        (``General.title`` is ``"<title>: <map> (<method>)"``), original file name and
        ``Acquisition_instrument`` when the input had them, ``Signal.quantity``, and an
        ``eelsanom`` node with the method, threshold and threshold rule.

    Raises
    ------
    InputError
        When ``which`` names no map of this result.
    """
    names = ["nll", "mask", *(["latent"] if res.latent is not None else []), *res.maps]
    if which not in names:
        raise InputError(f"to_signal: {which!r} is not a map of this result; expected one of "
                         f"{names}.")
    si = getattr(res, "_si", None)
    src = (getattr(si, "title", "") or "") if si is not None else ""
    what = {"nll": "NLL", "mask": "anomaly mask", "latent": "latent codes"}.get(which, which)
    title = f"{src + ': ' if src else ''}{what} ({res.method})"
    if which == "latent":
        sig = _latent_signal(res.latent, res, title=title, profile=True)
    else:
        arr = res.nll if which == "nll" else res.mask if which == "mask" else res.maps[which]
        sig = map_to_signal(np.asarray(arr), res, title=title,
                            quantity=_QUANTITY.get(which, which), profile=True)
    md = dict(getattr(si, "metadata", {}) or {}) if si is not None else {}
    orig = md.get("original_metadata") or {}
    if isinstance(orig.get("Acquisition_instrument"), dict) and orig["Acquisition_instrument"]:
        sig.metadata.add_dictionary({"Acquisition_instrument": orig["Acquisition_instrument"]})
    fname = (orig.get("General") or {}).get("original_filename") or (
        Path(si.source).name if si is not None and getattr(si, "source", None) else None)
    if fname:
        sig.metadata.set_item("General.original_filename", str(fname))
    thr = float(res.threshold)
    sig.metadata.add_dictionary({"eelsanom": {
        "map": which, "method": str(res.method),
        "threshold": thr,
        "threshold_method": str(res.threshold_method)}})
    return sig
