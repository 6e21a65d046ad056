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

__all__ = ["to_signal", "map_to_signal"]


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


def map_to_signal(arr: Any, si_or_result: Any, *, title: str, quantity: str = "") -> Any:
    """A per-pixel map as a HyperSpy ``Signal2D`` with the navigation calibration.

    Parameters
    ----------
    arr : array of shape (ny, nx)
        The map (bool masks stay bool).
    si_or_result : SpectrumImage or AnomalyResult
        Source of the ``y`` and ``x`` axes (scale, offset, units).
    title, quantity : str
        Stored as ``metadata.General.title`` and ``metadata.Signal.quantity``
        (``quantity`` only when not empty).

    Returns
    -------
    hyperspy.signals.Signal2D
        Data ``arr`` of shape (ny, nx), with the ``y`` and ``x`` axes of ``si_or_result``.

    Raises
    ------
    InputError
        When ``si_or_result`` has no ``y``/``x`` :class:`Axis`, or ``arr`` is not
        of shape (ny, nx).
    """
    y, x = _nav_axes(si_or_result)
    a = _check_map(arr, y, x, title or "map")
    sig = _hs().signals.Signal2D(a, axes=[_axis_dict(y, "y"), _axis_dict(x, "x")])
    sig.metadata.General.title = title
    if quantity:
        sig.metadata.Signal.quantity = quantity
    return sig


def _latent_signal(latent: np.ndarray, res: Any, *, title: str) -> Any:
    y, x = _nav_axes(res)
    lat = np.asarray(latent, dtype=np.float32)
    if lat.ndim != 3 or lat.shape[:2] != (y.size, x.size):
        raise InputError(f"latent codes: expected shape {(y.size, x.size)} + (d,), found "
                         f"{lat.shape}.")
    axes = [_axis_dict(y, "y"), _axis_dict(x, "x"),
            {"size": int(lat.shape[2]), "name": "latent dimension"}]
    sig = _hs().signals.Signal1D(lat, axes=axes)
    sig.metadata.General.title = title
    return sig
