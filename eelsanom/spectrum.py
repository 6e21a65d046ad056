"""The in-memory spectrum image that flows through eelsanom.

:class:`SpectrumImage` is a plain container — an array of shape
``(ny, nx, n_energy)`` (numpy or dask) plus calibrated axes — so the
simulator, preprocessing, detectors and benchmark never need HyperSpy.
HyperSpy signals are converted at the edges (:func:`as_spectrum_image` does it
by duck typing, :mod:`eelsanom.io` reads and writes files).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Axis", "SpectrumImage", "as_spectrum_image", "validate_energy_axis"]


@dataclass(frozen=True)
class Axis:
    """A uniform, calibrated axis: ``value[i] = offset + i * scale``.

    Frozen (immutable); build a changed copy with :func:`dataclasses.replace`.

    Parameters
    ----------
    size : int
        Number of samples (channels for an energy axis, pixels for a
        navigation axis).
    scale : float, default 1.0
        Step between samples, in ``units`` (eV/channel for an energy axis).
    offset : float, default 0.0
        Coordinate of the first sample, in ``units``.
    units : str, default ""
        Units, e.g. ``"eV"``, ``"nm"``, ``"px"``; ``""`` = uncalibrated.
    name : str, default ""
        Axis name, e.g. ``"Energy loss"``, ``"x"``.
    """

    size: int
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""
    name: str = ""

    @property
    def values(self) -> np.ndarray:
        """Calibrated coordinates, shape ``(size,)``."""
        return self.offset + self.scale * np.arange(self.size, dtype=np.float64)

    @property
    def end(self) -> float:
        """Coordinate of the last sample."""
        return self.offset + self.scale * (self.size - 1)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``'680.0-759.9 eV (267 ch, 0.3 eV/ch)'``.

        Returns
        -------
        str
            ``"<offset>-<end> <units> (<size> ch, <scale> <units>/ch)"``.
        """
        u = f" {self.units}" if self.units else ""
        return (f"{self.offset:g}-{self.end:g}{u} ({self.size} ch, {self.scale:g}{u}/ch)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form of the axis (used in model files).

        Returns
        -------
        dict
            ``{"size": int, "scale": float, "offset": float, "units": str, "name": str}``.
        """
        return {"size": int(self.size), "scale": float(self.scale), "offset": float(self.offset),
                "units": str(self.units), "name": str(self.name)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Axis:
        """Rebuild an axis from :meth:`to_dict` output.

        Parameters
        ----------
        d : dict
            Needs ``"size"``, ``"scale"`` and ``"offset"``; ``"units"`` and
            ``"name"`` default to ``""``.

        Returns
        -------
        Axis
            The axis.
        """
        return cls(size=int(d["size"]), scale=float(d["scale"]), offset=float(d["offset"]),
                   units=str(d.get("units", "")), name=str(d.get("name", "")))

    def same_as(self, other: Axis, rtol: float = 1e-6) -> bool:
        """True when both axes sample the same coordinates (size, offset, scale).

        Units and names are not compared.

        Parameters
        ----------
        other : Axis
            Axis to compare with.
        rtol : float, default 1e-6
            Relative tolerance on ``scale``; offsets may differ by
            ``rtol * |scale|`` (at least 1e-9).

        Returns
        -------
        bool
            Whether the sizes are equal and scale and offset agree within tolerance.
        """
        tol = rtol * max(abs(self.scale), 1e-12)
        return (self.size == other.size and math.isclose(self.scale, other.scale, rel_tol=rtol)
                and abs(self.offset - other.offset) <= max(tol, 1e-9))


def _units_are_ev(units: str) -> bool:
    return str(units).strip().lower() in {"ev", "electron volt", "electronvolt", "electron-volt"}


def validate_energy_axis(axis: Axis, *, what: str = "the data") -> None:
    """Refuse an energy axis that is not increasing or not calibrated in eV.

    Parameters
    ----------
    axis : Axis
        The energy-loss axis to check.
    what : str, default "the data"
        Name of the data, used at the start of error messages.

    Raises
    ------
    InputError
        With a message saying what was expected, what was found and the fix:
        when the axis has fewer than 2 channels, its units are not eV
        (``"eV"``, ``"electron volt"``, ...; case-insensitive), its scale is not a
        finite positive number (eV/channel), or its offset is not finite.
    """
    if axis.size < 2:
        raise InputError(f"{what}: expected an energy axis with at least 2 channels, found "
                         f"{axis.size}. A spectrum image needs a spectrum per pixel.")
    if not _units_are_ev(axis.units):
        found = repr(axis.units) if axis.units else "no units (uncalibrated)"
        raise InputError(
            f"{what}: expected an energy-loss axis calibrated in eV, found {found}. "
            "Calibrate it first, e.g. in HyperSpy: s.axes_manager[-1].units = 'eV'; "
            "s.axes_manager[-1].scale = <eV per channel>; s.axes_manager[-1].offset = <eV>.")
    if np.isfinite(axis.scale) and axis.scale < 0:
        raise InputError(
            f"{what}: expected an increasing energy axis (scale > 0 eV/channel), found scale "
            f"{axis.scale!r}. Reverse the spectra (s = s.isig[::-1]) and set a positive scale.")
    if not (np.isfinite(axis.scale) and axis.scale > 0):
        raise InputError(
            f"{what}: expected a calibrated energy axis (a finite scale > 0 eV/channel), found "
            f"scale {axis.scale!r}. Calibrate it first, e.g. in HyperSpy: "
            "s.axes_manager[-1].scale = <eV per channel>; s.axes_manager[-1].offset = <eV>.")
    if not np.isfinite(axis.offset):
        raise InputError(f"{what}: energy axis offset is {axis.offset!r}; expected a finite value.")


@dataclass
class SpectrumImage:
    """A calibrated EELS spectrum image.

    Parameters
    ----------
    data : ndarray or dask array of shape (ny, nx, n_energy)
        Counts (float32 after loading). A line scan has ``ny == 1``.
    energy : Axis
        The energy-loss axis, in eV, increasing.
    y, x : Axis
        Navigation axes (pixel size and units). Defaults are uncalibrated pixels.
    title : str
        Shown in reports and plots.
    source : str, optional
        Path of the file this came from.
    ground_truth : ndarray of bool, shape (ny, nx), optional
        Known anomaly mask (simulated data); used for metrics only.
    metadata : dict
        Free-form extra information carried to outputs.

    Raises
    ------
    InputError
        When ``data`` is not 3-D, has no pixel, or its shape disagrees with the
        sizes of ``energy``, ``y``, ``x`` or with ``ground_truth`` (which must be
        ``(ny, nx)``).
    """

    data: Any
    energy: Axis
    y: Axis | None = None
    x: Axis | None = None
    title: str = ""
    source: str | None = None
    ground_truth: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(getattr(self.data, "shape", ()))
        if len(shape) != 3:
            raise InputError(
                f"expected a spectrum image of shape (ny, nx, n_energy), found an array of shape "
                f"{shape}. A line scan of shape (n, n_energy) can be passed as data[None].")
        ny, nx, ne = shape
        if ny < 1 or nx < 1:
            raise InputError(f"expected at least one pixel, found navigation shape {(ny, nx)}.")
        if self.energy.size != ne:
            raise InputError(f"energy axis has {self.energy.size} channels but the data has {ne}.")
        if self.y is None:
            self.y = Axis(ny, 1.0, 0.0, "px", "y")
        if self.x is None:
            self.x = Axis(nx, 1.0, 0.0, "px", "x")
        if self.y.size != ny or self.x.size != nx:
            raise InputError(f"navigation axes {self.y.size} x {self.x.size} do not match the "
                             f"data's {ny} x {nx}.")
        if self.ground_truth is not None:
            gt = np.asarray(self.ground_truth, dtype=bool)
            if gt.shape != (ny, nx):
                raise InputError(f"ground truth has shape {gt.shape}, expected {(ny, nx)}.")
            self.ground_truth = gt

    @property
    def shape(self) -> tuple[int, int, int]:
        """Data shape ``(ny, nx, n_energy)``."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def nav_shape(self) -> tuple[int, int]:
        """Navigation shape ``(ny, nx)`` in pixels."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def n_energy(self) -> int:
        """Number of energy channels."""
        return int(self.data.shape[2])

    @property
    def is_lazy(self) -> bool:
        """Whether ``data`` is not a numpy array (e.g. a dask array)."""
        return not isinstance(self.data, np.ndarray)

    @property
    def is_linescan(self) -> bool:
        """Whether the image is one pixel high (``ny == 1``)."""
        return self.nav_shape[0] == 1

    def compute(self) -> SpectrumImage:
        """Return an eager copy (numpy float32) when the data is lazy; ``self`` otherwise.

        Returns
        -------
        SpectrumImage
            With ``data`` a numpy array of shape ``(ny, nx, n_energy)``.
        """
        if not self.is_lazy:
            return self
        return replace(self, data=np.asarray(self.data.compute(), dtype=np.float32))

    def crop_energy(self, start: float | None = None, stop: float | None = None) -> SpectrumImage:
        """Return the channels with ``start <= E <= stop`` (eV) as a new SpectrumImage (a view).

        Parameters
        ----------
        start, stop : float or None, default None
            Energy-loss bounds in eV, inclusive (within ``1e-6`` of a channel);
            ``None`` keeps the data's first / last channel.

        Returns
        -------
        SpectrumImage
            Data of shape ``(ny, nx, n_kept)`` sharing memory with ``self.data``,
            with the energy axis offset to the first kept channel.

        Raises
        ------
        InputError
            When fewer than 2 channels fall inside the window.
        """
        e = self.energy.values
        lo = 0 if start is None else int(np.searchsorted(e, start - 1e-6 * self.energy.scale))
        hi = self.energy.size if stop is None else int(
            np.searchsorted(e, stop + 1e-6 * self.energy.scale, side="right"))
        if hi - lo < 2:
            raise InputError(
                f"energy window {start}-{stop} eV keeps {max(hi - lo, 0)} channels of the data's "
                f"axis {self.energy.describe()}; choose a window inside that range.")
        energy = replace(self.energy, size=hi - lo, offset=float(e[lo]))
        return replace(self, data=self.data[:, :, lo:hi], energy=energy)

    def check_finite(self) -> None:
        """Refuse NaN or infinite values (eager data only; lazy data is checked per chunk).

        Raises
        ------
        InputError
            When the data holds NaN or infinite values; the message gives their
            number and the first one's pixel and channel.
        """
        if self.is_lazy:
            return
        # a quick pass by cache-sized runs of pixels (no image-sized mask), the details
        # only when something is found
        flat = self.data.reshape(-1, self.data.shape[-1])
        step = max(1, (1 << 18) // max(1, flat.shape[1]))
        if all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.shape[0], step)):
            return
        bad = ~np.isfinite(self.data)
        if bad.any():
            idx = np.argwhere(bad)[0]
            raise InputError(
                f"expected finite values, found {int(bad.sum())} NaN/inf values (first at pixel "
                f"y={idx[0]}, x={idx[1]}, channel {idx[2]}). Replace them first, e.g. in HyperSpy: "
                "s.data = np.nan_to_num(s.data), or crop the affected pixels/channels.")


def _axis_from_hyperspy(ax: Any, default_name: str) -> Axis:
    scale = getattr(ax, "scale", None)
    offset = getattr(ax, "offset", None)
    if scale is None or offset is None:  # non-uniform axis
        axis_vals = np.asarray(ax.axis, dtype=float)
        d = np.diff(axis_vals)
        if d.size and not np.allclose(d, d[0], rtol=1e-4):
            raise InputError(f"axis {ax.name!r} is not uniform; eelsanom needs uniformly sampled "
                             "axes. Interpolate onto a uniform axis first.")
        scale = float(d[0]) if d.size else 1.0
        offset = float(axis_vals[0])
    units = getattr(ax, "units", "")
    units = "" if units in (None, "<undefined>") or str(units) == "<undefined>" else str(units)
    name = getattr(ax, "name", "")
    name = default_name if name in (None, "<undefined>") or str(name) == "<undefined>" else str(name)
    return Axis(int(ax.size), float(scale), float(offset), units, name)


def as_spectrum_image(obj: Any, *, what: str = "input") -> SpectrumImage:
    """Convert a SpectrumImage, a HyperSpy signal or a numpy array to a validated SpectrumImage.

    A HyperSpy signal (duck-typed: it has ``axes_manager`` and ``data``) must have
    one signal (energy) axis and one or two navigation axes; a line scan
    becomes a 1-pixel-high image. A bare ``ndarray`` of shape ``(ny, nx, n_energy)``
    is accepted with an energy axis of 1 eV/channel starting at 0 — use
    :class:`SpectrumImage` directly to give its calibration.

    Parameters
    ----------
    obj : SpectrumImage, HyperSpy signal or array_like of shape (ny, nx, n_energy)
        The data. Eager data are converted to float32; lazy (dask) data stay lazy.
    what : str, default "input"
        Name of the data, used at the start of error messages.

    Returns
    -------
    SpectrumImage
        Validated, with data of shape ``(ny, nx, n_energy)`` and an increasing
        energy axis in eV. A HyperSpy signal's ``eelsanom.ground_truth`` and
        ``eelsanom.bulk_mask`` metadata nodes become ``ground_truth`` and
        ``metadata["bulk_mask"]``.

    Raises
    ------
    InputError
        Wrong dimensionality, an energy axis that is not increasing or not in eV,
        non-finite values (eager data), a non-uniform or complex-valued HyperSpy
        signal, or an object of another type.
    """
    if isinstance(obj, SpectrumImage):
        si = obj
    elif hasattr(obj, "axes_manager") and hasattr(obj, "data"):
        si = _from_hyperspy(obj, what=what)
    elif isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and hasattr(obj, "shape"):
        arr = obj
        if getattr(arr, "ndim", 0) == 2:
            raise InputError(f"{what}: expected (ny, nx, n_energy), found a 2-D array of shape "
                             f"{arr.shape}. For a line scan pass arr[None].")
        si = SpectrumImage(data=arr, energy=Axis(arr.shape[-1], 1.0, 0.0, "eV", "Energy loss")
                           if getattr(arr, "ndim", 0) == 3 else Axis(1), title="array")
    else:
        raise InputError(f"{what}: expected a SpectrumImage, a HyperSpy EELS signal or an array of "
                         f"shape (ny, nx, n_energy); got {type(obj).__name__}.")
    validate_energy_axis(si.energy, what=what)
    if not si.is_lazy and np.asarray(si.data).dtype != np.float32:
        si = replace(si, data=np.asarray(si.data, dtype=np.float32))
    si.check_finite()
    return si


def _from_hyperspy(sig: Any, *, what: str) -> SpectrumImage:
    am = sig.axes_manager
    sig_axes = list(am.signal_axes)
    nav_axes = list(am.navigation_axes)
    title = str(getattr(getattr(sig.metadata, "General", None), "title", "") or "")
    if len(sig_axes) != 1:
        raise InputError(
            f"{what}: expected an EELS spectrum image (one energy axis, one or two navigation "
            f"axes), found a signal with {len(sig_axes)} signal axes and {len(nav_axes)} "
            f"navigation axes (shape {tuple(sig.data.shape)}). If this is an image stack, it is "
            "not a spectrum image; if the axes are swapped, use s.as_signal1D(-1).")
    if len(nav_axes) == 0:
        raise InputError(
            f"{what}: expected a spectrum image (spectra on a 1-D or 2-D grid of probe positions), "
            f"found a single spectrum of {sig_axes[0].size} channels. Anomaly maps need many "
            "pixels: acquire a line scan or spectrum image.")
    if len(nav_axes) > 2:
        raise InputError(
            f"{what}: expected one or two navigation axes, found {len(nav_axes)} (data shape "
            f"{tuple(sig.data.shape)}, e.g. a time series of spectrum images). Select one frame "
            "first, e.g. s.inav[:, :, 0].")
    energy = _axis_from_hyperspy(sig_axes[0], "Energy loss")
    data = sig.data
    if len(nav_axes) == 1:
        x = _axis_from_hyperspy(nav_axes[0], "x")
        y = Axis(1, x.scale, 0.0, x.units, "y")
        data = data[None, ...]
    else:
        # HyperSpy navigation_axes are ordered (x, y); data is (y, x, E).
        x = _axis_from_hyperspy(nav_axes[0], "x")
        y = _axis_from_hyperspy(nav_axes[1], "y")
    is_dask = not isinstance(data, np.ndarray)
    if np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{what}: complex data ({data.dtype}) is not an EELS spectrum image.")
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    gt = None
    try:
        gt_node = sig.metadata.get_item("eelsanom.ground_truth")
        if gt_node is not None:
            gt = np.asarray(gt_node, dtype=bool)
            if gt.ndim == 1:
                gt = gt[None]
    except Exception:  # noqa: BLE001 - metadata without the node
        gt = None
    meta: dict[str, Any] = {}
    try:
        bm = sig.metadata.get_item("eelsanom.bulk_mask")
        if bm is not None:
            bm = np.asarray(bm, dtype=bool)
            meta["bulk_mask"] = bm[None] if bm.ndim == 1 else bm
    except Exception:  # noqa: BLE001 - metadata without the node
        pass
    # a signal cut by a ROI or inav keeps the whole image's metadata maps: drop those that no
    # longer fit (they describe the uncut image) instead of refusing the cut signal
    if gt is not None and gt.shape != (y.size, x.size):
        gt = None
    if "bulk_mask" in meta and meta["bulk_mask"].shape != (y.size, x.size):
        del meta["bulk_mask"]
    try:  # the acquisition metadata, carried to the result's signals (res.to_signal)
        acq = _acquisition_info(sig)
        if acq:
            meta["original_metadata"] = acq
    except Exception:  # noqa: BLE001 - a duck-typed signal without HyperSpy metadata
        pass
    return SpectrumImage(data=data if is_dask else np.asarray(data), energy=energy, y=y, x=x,
                         title=title, ground_truth=gt, metadata=meta)


# --------------------------------------------------------------------------- metadata to JSON
def _jsonify(obj: Any, *, max_list: int | None = None, _depth: int = 0) -> Any:
    """Convert ``obj`` to plain JSON types: numpy scalars/arrays, NaN/inf -> None, Path -> str.

    With ``max_list``, sequences longer than that are dropped (returned as ``_DROP``)
    and so are objects of unknown type; without it they become ``str(obj)``.
    """
    if _depth > 20:
        return _DROP
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.complexfloating, complex)):
        return _DROP if max_list is not None else str(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Axis):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            jv = _jsonify(v, max_list=max_list, _depth=_depth + 1)
            if jv is not _DROP:
                out[str(k)] = jv
        return out
    if isinstance(obj, np.ndarray) or isinstance(obj, (list, tuple, set, frozenset)):
        seq = obj.tolist() if isinstance(obj, np.ndarray) else list(obj)
        if isinstance(obj, np.ndarray) and obj.ndim == 0:
            return _jsonify(seq, max_list=max_list, _depth=_depth + 1)
        if max_list is not None and len(seq) > max_list:
            return _DROP
        out_l = [_jsonify(v, max_list=max_list, _depth=_depth + 1) for v in seq]
        return [v for v in out_l if v is not _DROP]
    if hasattr(obj, "as_dictionary"):  # HyperSpy DictionaryTreeBrowser
        return _jsonify(obj.as_dictionary(), max_list=max_list, _depth=_depth + 1)
    return _DROP if max_list is not None else str(obj)


_DROP = object()

#: longest metadata list kept in a digest (longer ones are dropped)
_MAX_META_LIST = 64


def _acquisition_info(sig: Any) -> dict[str, Any]:
    """A small JSON-able digest of the file's metadata (acquisition, sample, date)."""
    md = sig.metadata
    out: dict[str, Any] = {}
    for key in ("Acquisition_instrument", "Sample"):
        if md.has_item(key):
            node = _jsonify(md.get_item(key), max_list=_MAX_META_LIST)
            if node not in (_DROP, {}, None):
                out[key] = node
    general = {}
    for key in ("date", "time", "original_filename", "authors"):
        if md.has_item(f"General.{key}"):
            v = _jsonify(md.get_item(f"General.{key}"), max_list=_MAX_META_LIST)
            if v is not _DROP:
                general[key] = v
    if general:
        out["General"] = general
    if md.has_item("Signal.quantity"):
        out["quantity"] = str(md.get_item("Signal.quantity"))
    return out
