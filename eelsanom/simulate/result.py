"""The result of a simulation: :class:`Simulation` (counts, ground truth, references).

Shared by every spectrum model family (:mod:`eelsanom.simulate.felmodel`,
:mod:`eelsanom.simulate.components`). A family's model object, kept in
``Simulation._model``, provides ``check_maps(maps)`` and
``normal_expected(maps)`` (noise-free normal electrons for given nuisance maps)
and ``t_ref`` (the reference t/lambda, or None); that is all
:meth:`Simulation.normal_expected` needs.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io._files import atomic_write
from ..spectrum import SpectrumImage

__all__ = ["Simulation", "MICROSCOPE"]

logger = logging.getLogger("eelsanom.simulate")

#: microscope parameters written into a signal's metadata when the parameters lack them
MICROSCOPE = {"beam_energy_keV": 200.0, "convergence_angle_mrad": 20.0,
              "collection_angle_mrad": 50.0}


# --------------------------------------------------------------------------- result


@dataclass
class Simulation:
    """A simulated spectrum image, its ground truth and the parameters used.

    Attributes
    ----------
    si : SpectrumImage
        Noisy counts, float32 array of shape (ny, nx, n_energy); energy axis in eV
        ("Energy loss"), y/x axes in nm; ``ground_truth`` set; ``metadata =
        {"simulation": params, "bulk_mask": bulk_mask}``.
    truth : ndarray of bool, shape (ny, nx)
        Anomalous pixels.
    bulk_mask : ndarray of bool, shape (ny, nx)
        The rectangle a user would draw as bulk (top rows, full width); never
        contains an anomalous pixel.
    params : dict
        Every parameter used, JSON-serialisable (inputs, seed, physics constants,
        derived numbers such as ``n_anomalous`` and ``counts_scale``).
    expected : ndarray of shape (ny, nx, n_energy)
        Noise-free expected counts as simulated (anomalies where ``truth``).
    expected_alt : ndarray of shape (ny, nx, n_energy)
        The other hypothesis for every pixel: anomalous pixels *without* their
        anomaly, normal pixels *with* the anomaly (same type and magnitude).
        Same nuisances (intensity, exponent, jitter, drift, valence gradient,
        plural scattering) as ``expected``.
    nuisance : dict of str to ndarray of shape (ny, nx)
        The per-pixel nuisance values used (float64): ``drift_eV`` (energy
        drift of the whole spectrum), ``jitter_eV`` (white per-pixel energy
        jitter, adds to the drift), ``valence_eV`` (Fe L2,3 onset shift of the
        valence gradient), ``exponent`` (background power-law exponent),
        ``intensity`` (amplitude factor, 1 for the average pixel) and, when
        ``thickness`` was given, ``t_over_lambda`` (then ``intensity`` is
        ``t_over_lambda / t_ref``).

    Notes
    -----
    ``expected`` and ``expected_alt`` are in electrons (the Poisson means); the
    counts in ``si`` are ``gain * Poisson(expected) + dark_offset +
    read_noise * N(0, 1)`` (detector counts), see :meth:`to_electrons`.
    """

    si: SpectrumImage
    truth: np.ndarray
    bulk_mask: np.ndarray
    params: dict
    expected: np.ndarray
    expected_alt: np.ndarray
    nuisance: dict = field(default_factory=dict)
    _model: Any = field(default=None, init=False, repr=False, compare=False)

    def to_electrons(self, data: Any = None) -> np.ndarray:
        """Convert detector counts to electrons: ``(data - dark_offset) / gain``.

        Parameters
        ----------
        data : array_like, optional
            Counts of any shape (default: ``si.data``).

        Returns
        -------
        ndarray
            Same shape; float32 for float32 input, float64 otherwise.

        Raises
        ------
        InputError
            When ``data`` is not numeric.
        """
        x = np.asarray(self.si.data if data is None else data)
        if x.dtype.kind not in "biuf":
            raise InputError(f"to_electrons: expected a numeric array of counts, found dtype "
                             f"{x.dtype}. Pass the spectrum image's data (e.g. sim.si.data).")
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        gain = float(self.params.get("gain", 1.0))
        dark = float(self.params.get("dark_offset", 0.0))
        return (x - x.dtype.type(dark)) / x.dtype.type(gain)

    def normal_expected(self, **overrides: Any) -> np.ndarray:
        """Noise-free *normal* (anomaly-free) expected electrons, with nuisances replaced.

        Without arguments this is ``expected`` at normal pixels and
        ``expected_alt`` at anomalous ones, exactly. Each keyword replaces one
        nuisance map of :attr:`nuisance` by a scalar or an (ny, nx) map, e.g.
        ``sim.normal_expected(drift_eV=0.3)``: what a perfect bulk model would
        predict if that nuisance had that value (a "manifold oracle" scans it on
        a grid). Overriding ``t_over_lambda`` also rescales ``intensity``
        (``t / t_ref``) unless ``intensity`` is given too. No anomaly and no
        detector (gain, offset, noise) are applied; the arithmetic is that of
        :func:`simulate`, so the result is bit-identical where nothing changed.

        Parameters
        ----------
        **overrides : float or ndarray of shape (ny, nx)
            Keys among :attr:`nuisance`'s: ``drift_eV``, ``jitter_eV``,
            ``valence_eV``, ``exponent``, ``intensity``, ``t_over_lambda``.

        Returns
        -------
        ndarray of shape (ny, nx, n_energy)
            Electrons, in the dtype of ``expected``.

        Raises
        ------
        InputError
            Unknown key, wrong shape, non-finite or out-of-range value, or a
            Simulation not made by :func:`simulate` in this process.
        """
        m = self._model
        if m is None:
            raise InputError("normal_expected: expected a Simulation returned by simulate() in "
                             "this process, found one without its spectrum model (e.g. built by "
                             "hand). Re-run simulate() with the parameters in .params.")
        ny, nx = self.truth.shape
        maps = dict(self.nuisance)
        for key, value in overrides.items():
            if key not in maps:
                raise InputError(f"normal_expected: expected nuisance names among "
                                 f"{sorted(maps)}, found {key!r}. "
                                 + ("t_over_lambda exists only when simulate() was given "
                                    "thickness=(t_min, t_max)." if key == "t_over_lambda"
                                    else "Use one of those names."))
            maps[key] = _override_map(key, value, (ny, nx))
        if "t_over_lambda" in overrides and "intensity" not in overrides:
            maps["intensity"] = maps["t_over_lambda"] / m.t_ref
        m.check_maps(maps)
        return m.normal_expected(maps)

    def to_signal(self) -> Any:
        """Return the counts as a HyperSpy ``EELSSpectrum`` (exSpy), calibrated.

        Metadata: ``General.title``; ``eelsanom.ground_truth`` and
        ``eelsanom.bulk_mask`` (bool arrays of shape (ny, nx));
        ``eelsanom.simulation`` (the parameters as a JSON string); microscope
        parameters (beam energy, angles) in ``Acquisition_instrument.TEM``.

        Returns
        -------
        exspy.signals.EELSSpectrum or hyperspy Signal1D
            Data of shape ``(ny, nx, n_energy)`` in counts; navigation axes x, y
            and the energy axis (eV) calibrated as in ``si``.

        Raises
        ------
        ImportError
            When neither exSpy nor HyperSpy is installed.
        """
        sig = _new_eels_signal(np.asarray(self.si.data))
        am = sig.axes_manager
        for hs_axis, ax in zip((am.navigation_axes[0], am.navigation_axes[1],
                                am.signal_axes[0]), (self.si.x, self.si.y, self.si.energy)):
            hs_axis.name = ax.name
            hs_axis.units = ax.units
            hs_axis.scale = ax.scale
            hs_axis.offset = ax.offset
        sig.metadata.General.title = self.si.title
        sig.metadata.set_item("Signal.quantity", "Intensity (counts)")
        mic = self.params.get("physics", {}).get("microscope", MICROSCOPE)
        tem = "Acquisition_instrument.TEM."
        sig.metadata.set_item(tem + "beam_energy", mic["beam_energy_keV"])
        sig.metadata.set_item(tem + "convergence_angle", mic["convergence_angle_mrad"])
        sig.metadata.set_item(tem + "Detector.EELS.collection_angle",
                              mic["collection_angle_mrad"])
        sig.metadata.set_item("eelsanom.ground_truth", np.array(self.truth, dtype=bool))
        sig.metadata.set_item("eelsanom.bulk_mask", np.array(self.bulk_mask, dtype=bool))
        sig.metadata.set_item("eelsanom.simulation", json.dumps(self.params))
        return sig

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the spectrum image (with ground truth) as ``.hspy`` or ``.zspy``, atomically.

        The file is written under a temporary name in the same folder and then
        renamed, so an interrupted save never leaves a half-written file under
        ``path``. Missing parent folders are created.

        Parameters
        ----------
        path : str or Path
            Ends in ``.hspy`` (HDF5 file) or ``.zspy`` (Zarr directory).
        overwrite : bool
            Replace an existing ``path``; refused otherwise.

        Returns
        -------
        Path
            The path written.

        Raises
        ------
        InputError
            When ``path`` does not end in ``.hspy`` or ``.zspy``, or exists and
            ``overwrite`` is False.
        ImportError
            When neither exSpy nor HyperSpy is installed.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".hspy", ".zspy"):
            raise InputError(f"expected an output path ending in .hspy or .zspy, found {str(path)!r}."
                             " Use e.g. 'simulated.hspy' (HDF5) or 'simulated.zspy' (Zarr).")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise InputError(f"{str(path)!r} already exists; expected a new path. Choose another "
                             "name or pass overwrite=True (CLI: --overwrite).")
        path.parent.mkdir(parents=True, exist_ok=True)
        sig = self.to_signal()
        atomic_write(path, lambda tmp: sig.save(str(tmp), overwrite=True))
        logger.info("saved simulated spectrum image to %s", path)
        return path


def _new_eels_signal(data: np.ndarray) -> Any:
    try:
        from exspy.signals import EELSSpectrum
    except ImportError:
        try:
            import hyperspy.api as hs
        except ImportError as exc:  # pragma: no cover - environment without HyperSpy
            raise ImportError("to_signal()/save() need HyperSpy and exSpy: "
                              "pip install hyperspy exspy") from exc
        sig = hs.signals.Signal1D(data)
        sig.set_signal_type("EELS")
        return sig
    return EELSSpectrum(data)


def _override_map(key: str, value: Any, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(value, bool) or not (isinstance(value, numbers.Real)
                                       or isinstance(value, np.ndarray)):
        raise InputError(f"normal_expected: {key} expected a number or an array of shape "
                         f"{shape}, found {type(value).__name__}. Pass e.g. {key}=0.3.")
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(shape, float(a))
    if a.shape != shape:
        raise InputError(f"normal_expected: {key} expected a number or an array of shape "
                         f"{shape}, found shape {a.shape}. Pass one value per pixel (ny, nx).")
    if not np.isfinite(a).all():
        raise InputError(f"normal_expected: {key} expected finite values, found NaN or inf. "
                         "Replace them.")
    return a
