"""Simulated EELS spectrum images with planted anomalies and ground truth.

:func:`simulate` builds a calibrated core-loss spectrum image of a BiFeO3-like
material — power-law background, O K edge with near-edge structure, Fe L2,3
white lines with continuum steps, instrumental broadening — with realistic
nuisances that a detector must *not* flag (smooth thickness and
background-exponent variation, per-pixel energy jitter, Poisson and read
noise) and a known set of anomalous pixels:

- ``"shift"``: the whole Fe L2,3 structure moved by ``magnitude`` eV (a valence
  change), applied by re-evaluating the analytic line shapes at ``E - dE``,
  never by rolling channels (nothing wraps around);
- ``"ratio"``: the Fe L3/L2 white-line intensity ratio multiplied by
  ``magnitude`` (total white-line intensity kept);
- ``"impurity"``: a weak Mn L2,3 edge (L3 near 640 eV) whose L3 white line is
  ``magnitude`` times as high as the Fe L3 white line (``bfo`` window only).

Besides the noisy counts, the returned :class:`Simulation` carries, for every
pixel, the noise-free expected counts *with* the simulated state
(``expected``) and under the other hypothesis (``expected_alt``): that is
what the benchmark's reference detectors (supervised limit, perfect bulk
model) need. Everything is seeded. See ``BENCHMARK.md``, "The simulated
spectrum image".

HyperSpy is imported only inside :meth:`Simulation.to_signal` (and so
:meth:`Simulation.save`); generating data needs numpy and scipy only.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, special

from .errors import InputError
from .spectrum import Axis, SpectrumImage

__all__ = ["WINDOWS", "ANOMALY_TYPES", "SHAPES", "DEFAULT_MAGNITUDE", "Simulation", "simulate"]

logger = logging.getLogger(__name__)

#: Energy windows (start, stop) in eV; channels are ``start + 0.3 * i <= stop``.
WINDOWS: dict[str, tuple[float, float]] = {"bfo": (420.0, 820.0), "fe-l": (680.0, 760.0)}
ANOMALY_TYPES = ("shift", "ratio", "impurity")
SHAPES = ("clusters", "pixels", "line")
#: Default ``magnitude`` per anomaly type (see :func:`simulate`).
DEFAULT_MAGNITUDE = {"shift": 1.5, "ratio": 0.7, "impurity": 0.1}

ENERGY_SCALE = 0.3  # eV per channel
PIXEL_SIZE_NM = 0.2
_MAX_ABS_SHIFT = 20.0  # eV
_FINE_STEP = 0.01  # eV, grid on which the broadened line shapes are tabulated
_CHUNK_ELEMENTS = 1_000_000  # voxels per row chunk (float64 temporaries ~8 MB each)

# The spectrum model, in relative units where the power-law background at the
# Fe L3 energy is 1. Energies in eV; "fwhm" is the Lorentzian (lifetime) FWHM
# before instrumental broadening; steps are arctan (Lorentzian-CDF) steps.
_PHYSICS: dict[str, Any] = {
    "instrument_fwhm": 0.7,  # Gaussian broadening of everything
    "background": {"exponent": 3.0, "reference_energy": 709.5,
                   "exponent_variation": 0.05, "intensity_variation": 0.15,
                   "field_correlation": 0.2},  # smoothing sigma as a fraction of max(ny, nx)
    "o_k": {"pre_peak": {"energy": 531.8, "fwhm": 1.0, "height": 0.9},
            "step": {"energy": 533.5, "hwhm": 1.5, "height": 1.6, "decay": 3.0},
            "peaks": [{"energy": 540.5, "fwhm": 5.0, "height": 1.2},
                      {"energy": 560.0, "fwhm": 10.0, "height": 0.6}]},
    "fe_l": {"l3": {"energy": 709.5, "fwhm": 1.6}, "l2": {"energy": 722.6, "fwhm": 2.0},
             "l3_height": 2.4,  # broadened L3 white-line peak height
             "l3_l2_area_ratio": 4.0,
             "step_l3": 0.5, "step_l2": 0.25, "step_decay": 1.0},
    "mn_l": {"l3": {"energy": 640.0, "fwhm": 1.8}, "l2": {"energy": 651.0, "fwhm": 2.6},
             "l3_l2_area_ratio": 2.8,
             "step_l3_rel": 0.19, "step_l2_rel": 0.095, "step_decay": 1.0},
    "microscope": {"beam_energy_keV": 200.0, "convergence_angle_mrad": 20.0,
                   "collection_angle_mrad": 50.0},
}

_MAGNITUDE_MEANING = {
    "shift": "Fe L2,3 energy shift dE in eV (positive = to higher energy loss)",
    "ratio": "multiplicative change of the Fe L3/L2 white-line intensity ratio "
             "(total white-line intensity kept)",
    "impurity": "Mn L3 white-line peak height as a fraction of the Fe L3 white-line height",
}


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
        Same nuisances (intensity, exponent, jitter) as ``expected``.
    """

    si: SpectrumImage
    truth: np.ndarray
    bulk_mask: np.ndarray
    params: dict
    expected: np.ndarray
    expected_alt: np.ndarray

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
        mic = self.params.get("physics", _PHYSICS)["microscope"]
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
        tag = uuid.uuid4().hex[:8]
        tmp = path.parent / f".{path.stem}.tmp-{tag}{suffix}"
        old = path.parent / f".{path.stem}.old-{tag}{suffix}"
        try:
            sig.save(str(tmp), overwrite=True)
            if path.is_dir() and not path.is_symlink():
                # A directory cannot be atomically replaced: move it aside first.
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                if path.is_symlink() or (path.exists() and tmp.is_dir()):
                    path.unlink()
                os.replace(tmp, path)
        except BaseException:
            if old.exists() and not path.exists():
                os.replace(old, path)
            _remove(tmp)
            raise
        logger.info("saved simulated spectrum image to %s", path)
        return path


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


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


# --------------------------------------------------------------------------- validation


def _bad(name: str, expected: str, found: Any, fix: str) -> InputError:
    return InputError(f"simulate: {name} expected {expected}, found {found!r}. {fix}")


def _real(name: str, value: Any, expected: str, fix: str,
          ok: Callable[[float], bool] | None = None) -> float:
    """``value`` as a finite float satisfying ``ok``, else InputError(expected, fix)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(name, expected, value, fix)
    v = float(value)
    if not math.isfinite(v) or (ok is not None and not ok(v)):
        raise _bad(name, expected, value, fix)
    return v


def _validate(shape, window, anomaly, magnitude, anomaly_shape, concentration, dose, seed,
              nuisances, read_noise, energy_jitter, bulk_fraction, dtype) -> dict[str, Any]:
    try:
        ok = len(shape) == 2 and all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                     for s in shape)
    except TypeError:
        ok = False
    if not ok or min(int(s) for s in shape) < 4:
        raise _bad("shape", "two integers (ny, nx), each >= 4", shape,
                   "Use e.g. shape=(64, 64).")
    ny, nx = (int(s) for s in shape)
    if window not in WINDOWS:
        raise _bad("window", f"one of {sorted(WINDOWS)}", window,
                   "'fe-l' (680-760 eV) is quick; 'bfo' (420-820 eV) has the O K edge too.")
    if anomaly not in ANOMALY_TYPES:
        raise _bad("anomaly", f"one of {ANOMALY_TYPES}", anomaly, "Choose an anomaly type.")
    if anomaly_shape not in SHAPES:
        raise _bad("anomaly_shape", f"one of {SHAPES}", anomaly_shape, "Choose a shape.")
    if anomaly == "impurity" and window != "bfo":
        raise _bad("window", "'bfo' for anomaly='impurity'", window,
                   "The Mn L2,3 impurity edge (near 640/651 eV) lies outside the 'fe-l' window "
                   "(680-760 eV); use window='bfo'.")
    if magnitude is None:
        magnitude = DEFAULT_MAGNITUDE[anomaly]
    if anomaly == "shift":
        mag = _real("magnitude", magnitude, f"a shift in eV with |dE| <= {_MAX_ABS_SHIFT:g}",
                    "Use e.g. magnitude=1.5 (eV), typically 0.3-5 eV.",
                    ok=lambda v: abs(v) <= _MAX_ABS_SHIFT)
    elif anomaly == "ratio":
        mag = _real("magnitude", magnitude, "a ratio factor > 0 and <= 10",
                    "Use e.g. magnitude=0.7 (L3/L2 ratio reduced by 30 %).",
                    ok=lambda v: 0.0 < v <= 10.0)
    else:
        mag = _real("magnitude", magnitude, "a relative peak height >= 0 and <= 5",
                    "Use e.g. magnitude=0.1 (Mn L3 at 10 % of the Fe L3 height).",
                    ok=lambda v: 0.0 <= v <= 5.0)
    conc = _real("concentration", concentration, "a fraction 0 <= c < 1 (not a percentage)",
                 "Use e.g. concentration=0.02 for 2 % of the pixels.", ok=lambda v: 0.0 <= v < 1.0)
    dose_f = _real("dose", dose, "counts > 0 (and <= 1e7) at the Fe L3 maximum",
                   "Use e.g. dose=200 (standard), 50 (low) or 1000 (high).",
                   ok=lambda v: 0.0 < v <= 1e7)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise _bad("seed", "a non-negative integer", seed, "Use e.g. seed=0.")
    if not isinstance(nuisances, (bool, np.bool_)):
        raise _bad("nuisances", "True or False", nuisances, "Pass a bool.")
    rn = _real("read_noise", read_noise, "a standard deviation in counts >= 0",
               "Use e.g. read_noise=1.0, or 0 for Poisson noise only.", ok=lambda v: v >= 0)
    jit = _real("energy_jitter", energy_jitter, "a standard deviation in eV, 0 <= s <= 1",
                "Use e.g. energy_jitter=0.03 (a few hundredths of an eV).",
                ok=lambda v: 0.0 <= v <= 1.0)
    bf = _real("bulk_fraction", bulk_fraction, "a fraction 0 < f < 1 of the rows", "Use e.g. 0.3.")
    n_bulk = int(round(bf * ny)) if 0.0 < bf < 1.0 else 0
    if not (0.0 < bf < 1.0) or n_bulk < 1 or n_bulk > ny - 1:
        raise _bad("bulk_fraction", f"a fraction of the {ny} rows leaving at least one bulk row "
                   "and one other row", bulk_fraction, "Use e.g. bulk_fraction=0.3.")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise _bad("dtype", "float32 or float64", dtype, "Use dtype=np.float32.")
    n_pix = ny * nx
    k = round(conc * n_pix)
    n_avail = (ny - n_bulk) * nx
    if conc > 0 and k == 0:
        raise _bad("concentration", f"at least one anomalous pixel of {ny} x {nx} "
                   f"(c >= {0.5 / n_pix:.2g}) or exactly 0", concentration,
                   "Use a larger concentration or a larger shape.")
    if k > n_avail // 2:
        raise _bad("concentration", f"at most {n_avail // 2} anomalous pixels (half of the "
                   f"{n_avail} pixels outside the bulk rectangle, rows {n_bulk}-{ny - 1})",
                   f"{concentration} -> {k} pixels",
                   "Lower the concentration or the bulk_fraction.")
    return {"ny": ny, "nx": nx, "magnitude": mag, "concentration": conc, "dose": dose_f,
            "seed": int(seed), "nuisances": bool(nuisances), "read_noise": rn,
            "energy_jitter": jit, "bulk_fraction": bf, "n_bulk": n_bulk, "k": k, "dtype": dt}


# --------------------------------------------------------------------------- line shapes


def _sigma_instr() -> float:
    return _PHYSICS["instrument_fwhm"] / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _voigt(x: np.ndarray, fwhm_lorentz: float) -> np.ndarray:
    """Area-normalised Lorentzian (given FWHM) broadened by the instrument Gaussian."""
    return special.voigt_profile(x, _sigma_instr(), 0.5 * fwhm_lorentz)


def _step(grid: np.ndarray, energy: float, hwhm: float) -> np.ndarray:
    """Arctan (Lorentzian-CDF) step at ``energy`` broadened by the instrument Gaussian, 0 -> 1."""
    x = grid - energy
    dens = _voigt(x, 2.0 * hwhm)
    cdf = np.empty_like(x)
    cdf[0] = 0.5 + math.atan(x[0] / hwhm) / math.pi  # far tail: the Gaussian does not matter
    cdf[1:] = cdf[0] + np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(x))
    return cdf


def _gauss(x: np.ndarray, fwhm: float) -> np.ndarray:
    """Unit-height Gaussian of the given FWHM, broadened by the instrument (height rescaled)."""
    s0 = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    s = math.hypot(s0, _sigma_instr())
    return (s0 / s) * np.exp(-0.5 * (x / s) ** 2)


def _templates(grid: np.ndarray) -> dict[str, np.ndarray]:
    """Broadened edge shapes on the fine grid, relative units (power law at Fe L3 = 1).

    Returns ``o_k``, ``fe_l3``, ``fe_l2`` (white lines), ``fe_cont`` (both continuum
    steps) and ``mn`` (Mn L2,3 with L3 white-line height equal to the Fe one).
    """
    p = _PHYSICS
    ok = p["o_k"]
    s = ok["step"]
    o_k = s["height"] * _step(grid, s["energy"], s["hwhm"]) * np.maximum(
        1.0, (grid / s["energy"])) ** (-s["decay"])
    pre = ok["pre_peak"]
    v = _voigt(grid - pre["energy"], pre["fwhm"])
    o_k += pre["height"] * v / _voigt(np.zeros(1), pre["fwhm"])[0]
    for pk in ok["peaks"]:
        o_k += pk["height"] * _gauss(grid - pk["energy"], pk["fwhm"])

    fe = p["fe_l"]
    peak3 = _voigt(np.zeros(1), fe["l3"]["fwhm"])[0]
    area3 = fe["l3_height"] / peak3
    fe_l3 = area3 * _voigt(grid - fe["l3"]["energy"], fe["l3"]["fwhm"])
    fe_l2 = area3 / fe["l3_l2_area_ratio"] * _voigt(grid - fe["l2"]["energy"], fe["l2"]["fwhm"])
    fe_cont = np.zeros_like(grid)
    for key, height in (("l3", fe["step_l3"]), ("l2", fe["step_l2"])):
        e0 = fe[key]["energy"]
        fe_cont += height * _step(grid, e0, 0.5 * fe[key]["fwhm"]) * np.maximum(
            1.0, grid / e0) ** (-fe["step_decay"])

    mn = p["mn_l"]
    peak3_mn = _voigt(np.zeros(1), mn["l3"]["fwhm"])[0]
    h = fe["l3_height"]  # Mn L3 white-line height = Fe L3 white-line height (x magnitude later)
    area3_mn = h / peak3_mn
    mn_t = area3_mn * _voigt(grid - mn["l3"]["energy"], mn["l3"]["fwhm"])
    mn_t += area3_mn / mn["l3_l2_area_ratio"] * _voigt(grid - mn["l2"]["energy"],
                                                       mn["l2"]["fwhm"])
    for key, rel in (("l3", mn["step_l3_rel"]), ("l2", mn["step_l2_rel"])):
        e0 = mn[key]["energy"]
        mn_t += rel * h * _step(grid, e0, 0.5 * mn[key]["fwhm"]) * np.maximum(
            1.0, grid / e0) ** (-mn["step_decay"])
    return {"o_k": o_k, "fe_l3": fe_l3, "fe_l2": fe_l2, "fe_cont": fe_cont, "mn": mn_t}


def _fwhm(grid: np.ndarray, y: np.ndarray) -> float:
    i = int(np.argmax(y))
    half = 0.5 * y[i]
    above = np.flatnonzero(y >= half)
    lo, hi = above[0], above[-1]
    # linear interpolation of both half-maximum crossings
    left = grid[lo - 1] + (half - y[lo - 1]) / (y[lo] - y[lo - 1]) * (grid[lo] - grid[lo - 1])
    right = grid[hi] + (y[hi] - half) / (y[hi] - y[hi + 1]) * (grid[hi + 1] - grid[hi])
    return float(right - left)


# --------------------------------------------------------------------------- spatial fields


def _smooth_field(rng: np.random.Generator, ny: int, nx: int, amplitude: float) -> np.ndarray:
    """Low-frequency random field with zero mean and max |value| == amplitude, shape (ny, nx)."""
    sigma = _PHYSICS["background"]["field_correlation"] * max(ny, nx)
    f = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma, mode="reflect")
    f = f - f.mean()
    m = float(np.abs(f).max())
    return f * (amplitude / m) if m > 0 else np.zeros((ny, nx))


# --------------------------------------------------------------------------- anomaly shapes


def _place(rng: np.random.Generator, ny: int, nx: int, n_bulk: int, k: int,
           shape: str) -> np.ndarray:
    """Boolean mask (ny, nx) with exactly ``k`` True pixels, all in rows >= n_bulk."""
    truth = np.zeros((ny, nx), dtype=bool)
    if k == 0:
        return truth
    avail = np.zeros((ny, nx), dtype=bool)
    avail[n_bulk:] = True
    if shape == "pixels":
        _place_pixels(rng, truth, avail, k)
    elif shape == "clusters":
        _place_clusters(rng, truth, avail, k)
    else:
        _place_lines(rng, truth, avail, k)
    assert int(truth.sum()) == k and not truth[:n_bulk].any()
    return truth


def _place_pixels(rng, truth, avail, k) -> None:
    ny, nx = truth.shape
    cand = rng.permutation(np.flatnonzero(avail))
    n = 0
    for c in cand:  # isolated first: no 8-neighbour already anomalous
        y, x = divmod(int(c), nx)
        if not truth[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any():
            truth[y, x] = True
            n += 1
            if n == k:
                return
    for c in cand:  # too many to isolate: fill the rest at random
        y, x = divmod(int(c), nx)
        if not truth[y, x]:
            truth[y, x] = True
            n += 1
            if n == k:
                return


def _place_clusters(rng, truth, avail, k) -> None:
    ny, nx = truth.shape
    n = 0
    while n < k:
        c = int(rng.choice(np.flatnonzero(avail & ~truth)))
        cy, cx = divmod(c, nx)
        r = float(rng.uniform(1.5, 3.0))
        ri = int(math.ceil(r))
        y0, y1, x0, x1 = max(0, cy - ri), min(ny, cy + ri + 1), max(0, cx - ri), min(nx, cx + ri + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        ok = (d2 <= r * r) & avail[y0:y1, x0:x1] & ~truth[y0:y1, x0:x1]
        order = np.argsort(d2[ok], kind="stable")  # closest first: trimming keeps a compact blob
        ys, xs = yy[ok][order], xx[ok][order]
        take = min(len(ys), k - n)
        truth[ys[:take], xs[:take]] = True
        n += take


def _trace_curve(rng, avail, step: float = 0.5) -> list[tuple[int, int]]:
    """Pixels of a gently curving random line through a random available point, in order."""
    ny, nx = avail.shape
    c = int(rng.choice(np.flatnonzero(avail)))
    y0, x0 = divmod(c, nx)
    heading = float(rng.uniform(0.0, 2.0 * math.pi))
    curl = float(rng.normal(0.0, 0.02))
    halves = []
    for direction in (1.0, -1.0):
        y, x, h = float(y0), float(x0), heading if direction > 0 else heading + math.pi
        pts: list[tuple[int, int]] = []
        for _ in range(int(4 * (ny + nx) / step)):
            y += step * math.sin(h)
            x += step * math.cos(h)
            h += direction * curl + float(rng.normal(0.0, 0.03))
            iy, ix = int(round(y)), int(round(x))
            if not (0 <= iy < ny and 0 <= ix < nx) or not avail[iy, ix]:
                break
            if not pts or pts[-1] != (iy, ix):
                pts.append((iy, ix))
        halves.append(pts)
    return halves[1][::-1] + [(y0, x0)] + halves[0]


def _place_lines(rng, truth, avail, k) -> None:
    n = 0
    while n < k:
        pts = _trace_curve(rng, avail & ~truth)
        thick = int(rng.integers(1, 3))
        ordered: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for i, (y, x) in enumerate(pts):
            cells = [(y, x)]
            if thick == 2:  # second pixel across the local direction
                j0, j1 = max(0, i - 1), min(len(pts) - 1, i + 1)
                dy, dx = pts[j1][0] - pts[j0][0], pts[j1][1] - pts[j0][1]
                cells.append((y + 1, x) if abs(dx) >= abs(dy) else (y, x + 1))
            for cy, cx in cells:
                if (0 <= cy < truth.shape[0] and 0 <= cx < truth.shape[1] and avail[cy, cx]
                        and not truth[cy, cx] and (cy, cx) not in seen):
                    seen.add((cy, cx))
                    ordered.append((cy, cx))
        take = ordered[:k - n]
        if take:
            ys, xs = zip(*take)
            truth[list(ys), list(xs)] = True
        n += len(take)


# --------------------------------------------------------------------------- simulate


def simulate(*, shape: tuple[int, int] = (64, 64), window: str = "fe-l", anomaly: str = "shift",
             magnitude: float | None = None, anomaly_shape: str = "clusters",
             concentration: float = 0.02, dose: float = 200.0, seed: int = 0,
             nuisances: bool = True, read_noise: float = 1.0, energy_jitter: float = 0.03,
             bulk_fraction: float = 0.3, dtype: Any = np.float32) -> Simulation:
    """Simulate a core-loss EELS spectrum image with planted anomalies and ground truth.

    The spectrum of a normal pixel is ``K * t * [(E/709.5)**-r + O_K(E) + Fe_L3(E)
    + Fe_L2(E) + Fe_continuum(E)]``, every term evaluated at ``E - jitter`` and
    broadened by a 0.7 eV FWHM Gaussian: Voigt white lines (Fe L3 709.5 eV, L2
    722.6 eV, L3/L2 area ratio 4), arctan continuum steps 2:1, an O K edge
    (pre-peak 531.8 eV, step 533.5 eV, peaks 540.5 and 560 eV). ``t`` (thickness,
    +-15 %) and ``r`` (3 +- 0.05) vary smoothly across the field; ``K`` is set by
    ``dose``. Counts are Poisson(expected) plus Gaussian read noise.

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)`` pixels, each >= 4.
    window : {"fe-l", "bfo"}
        Energy window at 0.3 eV/channel: ``"fe-l"`` 680-759.8 eV (267 channels),
        ``"bfo"`` 420-819.9 eV (1334 channels, O K and Fe L2,3).
    anomaly : {"shift", "ratio", "impurity"}
        What differs in anomalous pixels.
    magnitude : float, optional
        ``shift``: dE in eV, default 1.5, positive = to higher energy loss, |dE| <= 20.
        ``ratio``: factor on the Fe L3/L2 white-line intensity ratio, default 0.7
        (the total white-line intensity is kept). ``impurity``: Mn L3 white-line
        peak height as a fraction of the Fe L3 white-line height, default 0.1
        (needs ``window="bfo"``).
    anomaly_shape : {"clusters", "pixels", "line"}
        Small discs (radius 1.5-3 px), isolated single pixels, or thin (1-2 px)
        curved boundaries; always outside ``bulk_mask``.
    concentration : float
        Fraction of *all* pixels that are anomalous, ``0 <= c < 1``; the count is
        exactly ``round(c * ny * nx)``. 0 gives no anomalies.
    dose : float
        Expected counts at the Fe L3 maximum (background included) of an average
        pixel. Standard 200.
    seed : int
        Seeds everything; same arguments and seed give identical arrays. The
        anomaly mask depends only on ``shape``, ``anomaly_shape``,
        ``concentration``, ``bulk_fraction`` and ``seed`` (so sweeps over
        magnitude, dose or type share one mask).
    nuisances : bool
        Smooth intensity and exponent variation and per-pixel energy jitter; when
        False every pixel has the average spectrum (noise is still added).
    read_noise : float
        Standard deviation of the Gaussian read noise, counts.
    energy_jitter : float
        Standard deviation (eV) of the per-pixel shift of the whole spectrum.
    bulk_fraction : float
        The bulk rectangle is the top ``round(bulk_fraction * ny)`` rows, full width.
    dtype : numpy dtype
        float32 (default) or float64 for the counts and expected arrays.

    Returns
    -------
    Simulation
        Noisy counts ``si`` of shape ``(ny, nx, n_energy)``, ``truth`` and
        ``bulk_mask`` of shape ``(ny, nx)``, ``params``, and the noise-free
        ``expected`` / ``expected_alt`` counts of shape ``(ny, nx, n_energy)``.

    Raises
    ------
    InputError
        Any invalid argument (the message says what was expected and the fix).

    Examples
    --------
    >>> sim = simulate(shape=(16, 16), concentration=0.05, seed=1)
    >>> sim.si.shape, int(sim.truth.sum()), bool((sim.truth & sim.bulk_mask).any())
    ((16, 16, 267), 13, False)
    """
    t_start = time.perf_counter()
    v = _validate(shape, window, anomaly, magnitude, anomaly_shape, concentration, dose, seed,
                  nuisances, read_noise, energy_jitter, bulk_fraction, dtype)
    ny, nx, mag, n_bulk, k = v["ny"], v["nx"], v["magnitude"], v["n_bulk"], v["k"]
    phys = _PHYSICS
    bgp = phys["background"]
    e_ref = bgp["reference_energy"]

    # Energy axis.
    e_start, e_stop = WINDOWS[window]
    ne = int(math.floor((e_stop - e_start) / ENERGY_SCALE + 1e-9)) + 1
    energy_axis = Axis(ne, ENERGY_SCALE, e_start, "eV", "Energy loss")
    energy = energy_axis.values

    # Independent streams, so that e.g. the mask does not depend on the nuisances.
    ss_fields, ss_mask, ss_jitter, ss_noise = np.random.SeedSequence(v["seed"]).spawn(4)
    rng_fields = np.random.default_rng(ss_fields)

    # Nuisance fields.
    if v["nuisances"]:
        thickness = 1.0 + _smooth_field(rng_fields, ny, nx, bgp["intensity_variation"])
        exponent = bgp["exponent"] + _smooth_field(rng_fields, ny, nx,
                                                   bgp["exponent_variation"])
        jitter = np.random.default_rng(ss_jitter).normal(0.0, v["energy_jitter"], (ny, nx))
    else:
        thickness = np.ones((ny, nx))
        exponent = np.full((ny, nx), bgp["exponent"])
        jitter = np.zeros((ny, nx))

    # Ground truth and bulk.
    truth = _place(np.random.default_rng(ss_mask), ny, nx, n_bulk, k, anomaly_shape)
    bulk_mask = np.zeros((ny, nx), dtype=bool)
    bulk_mask[:n_bulk] = True

    # Line shapes on a fine grid wide enough for any shift/jitter.
    # Channel k sits exactly on fine-grid point m0 + sub * k (see _sum_terms).
    sub = int(round(ENERGY_SCALE / _FINE_STEP))
    m0 = int(math.ceil((_MAX_ABS_SHIFT + 10.0 * max(v["energy_jitter"], 0.01) + 2.0)
                       / _FINE_STEP))
    grid = e_start + _FINE_STEP * np.arange(-m0, sub * (ne - 1) + m0 + 1)
    tpl = _templates(grid)
    fe_lines = tpl["fe_l3"] + tpl["fe_l2"]
    fe_all = fe_lines + tpl["fe_cont"]

    # Dose: the average pixel's maximum near Fe L3 (continuous curve) gives `dose` counts.
    near = np.abs(grid - phys["fe_l"]["l3"]["energy"]) <= 3.0
    nominal = (grid / e_ref) ** (-bgp["exponent"]) + tpl["o_k"] + fe_all
    i_max = int(np.flatnonzero(near)[np.argmax(nominal[near])])
    scale_k = v["dose"] / float(nominal[i_max])

    # The two spectral hypotheses, as (template, extra shift) terms on top of the background.
    ratio_a3 = ratio_a2 = 1.0
    if anomaly == "shift":
        normal_terms = [(tpl["o_k"] + fe_all, 0.0)]
        anom_terms = [(tpl["o_k"], 0.0), (fe_all, mag)]
    elif anomaly == "ratio":
        r0 = phys["fe_l"]["l3_l2_area_ratio"]
        ratio_a3 = mag * (r0 + 1.0) / (mag * r0 + 1.0)
        ratio_a2 = (r0 + 1.0) / (mag * r0 + 1.0)
        normal_terms = [(tpl["o_k"] + fe_all, 0.0)]
        anom_terms = [(tpl["o_k"] + ratio_a3 * tpl["fe_l3"] + ratio_a2 * tpl["fe_l2"]
                       + tpl["fe_cont"], 0.0)]
    else:
        normal_terms = [(tpl["o_k"] + fe_all, 0.0)]
        anom_terms = [(tpl["o_k"] + fe_all + mag * tpl["mn"], 0.0)]

    dt = v["dtype"]
    counts = np.empty((ny, nx, ne), dtype=dt)
    expected = np.empty((ny, nx, ne), dtype=dt)
    expected_alt = np.empty((ny, nx, ne), dtype=dt)
    rng_noise = np.random.default_rng(ss_noise)
    log_e = np.log(energy / e_ref).astype(dt)
    inv_e = (1.0 / energy).astype(dt)
    rows = max(1, _CHUNK_ELEMENTS // (nx * ne))
    for r0_ in range(0, ny, rows):
        sl = slice(r0_, min(ny, r0_ + rows))
        jit = jitter[sl].reshape(-1, 1)
        # (E - j)**-r with log(E - j) = log E - j / E (|j| << E; error ~ (j/E)**2)
        bg = np.exp(-exponent[sl].reshape(-1, 1).astype(dt)
                    * (log_e - jit.astype(dt) * inv_e))
        normal = _sum_terms(normal_terms, jit, m0, sub, ne, out=bg.copy())
        anom = _sum_terms(anom_terms, jit, m0, sub, ne, out=bg)
        amp = (scale_k * thickness[sl]).reshape(-1, 1).astype(dt)
        normal *= amp
        anom *= amp
        is_anom = truth[sl].reshape(-1, 1)
        exp_chunk = np.where(is_anom, anom, normal)
        alt_chunk = np.where(is_anom, normal, anom)
        del normal, anom
        shp = (sl.stop - sl.start, nx, ne)
        expected[sl] = exp_chunk.reshape(shp)
        expected_alt[sl] = alt_chunk.reshape(shp)
        noisy = rng_noise.poisson(exp_chunk).astype(dt)
        if v["read_noise"] > 0:
            noisy += (v["read_noise"] * rng_noise.standard_normal(noisy.shape, dtype=np.float32)
                      ).astype(dt, copy=False)
        counts[sl] = noisy.reshape(shp)

    # Derived numbers for the record.
    e_l3 = phys["fe_l"]["l3"]["energy"]
    bg_l3 = float(scale_k * ((e_l3 / e_ref) ** (-bgp["exponent"])
                             + np.interp(e_l3, grid, tpl["o_k"])))
    params: dict[str, Any] = {
        "generator": "eelsanom.simulate.simulate",
        "shape": [ny, nx], "window": window, "anomaly": anomaly, "magnitude": mag,
        "magnitude_meaning": _MAGNITUDE_MEANING[anomaly], "anomaly_shape": anomaly_shape,
        "concentration": v["concentration"], "dose": v["dose"], "seed": v["seed"],
        "nuisances": v["nuisances"], "read_noise": v["read_noise"],
        "energy_jitter": v["energy_jitter"] if v["nuisances"] else 0.0,
        "energy_jitter_requested": v["energy_jitter"],
        "bulk_fraction": v["bulk_fraction"], "dtype": np.dtype(dt).name,
        "energy_axis": energy_axis.to_dict(), "pixel_size_nm": PIXEL_SIZE_NM,
        "n_anomalous": int(k), "bulk_rows": [0, n_bulk],
        "expected_alt": "anomalous pixels without their anomaly; normal pixels with it",
        "derived": {
            "counts_scale": float(scale_k),
            "l3_max_energy_eV": float(grid[i_max]),
            "l3_max_counts_average_pixel": float(v["dose"]),
            "background_counts_at_l3": bg_l3,
            "l3_white_line_fwhm_eV": _fwhm(grid, tpl["fe_l3"]),
            "l2_white_line_fwhm_eV": _fwhm(grid, tpl["fe_l2"]),
            "intensity_range": [float(thickness.min()), float(thickness.max())],
            "exponent_range": [float(exponent.min()), float(exponent.max())],
            "jitter_std_realised_eV": float(jitter.std()),
            "l3_l2_ratio_normal": float(phys["fe_l"]["l3_l2_area_ratio"]),
            "l3_l2_ratio_anomalous": float(phys["fe_l"]["l3_l2_area_ratio"] * ratio_a3
                                           / ratio_a2),
        },
        "physics": json.loads(json.dumps(_PHYSICS)),
    }
    title = (f"Simulated EELS SI ({window}): {anomaly} {mag:g} in {anomaly_shape}, "
             f"{100 * v['concentration']:g} % of pixels, dose {v['dose']:g}, seed {v['seed']}")
    si = SpectrumImage(
        data=counts, energy=energy_axis,
        y=Axis(ny, PIXEL_SIZE_NM, 0.0, "nm", "y"), x=Axis(nx, PIXEL_SIZE_NM, 0.0, "nm", "x"),
        title=title, ground_truth=truth,
        metadata={"simulation": params, "bulk_mask": bulk_mask.copy()})
    logger.info("simulated %d x %d x %d (%s, %s) in %.2f s", ny, nx, ne, window, anomaly,
                time.perf_counter() - t_start)
    return Simulation(si=si, truth=truth, bulk_mask=bulk_mask, params=params,
                      expected=expected, expected_alt=expected_alt)


def _sum_terms(terms: list[tuple[np.ndarray, float]], jit: np.ndarray, m0: int, sub: int,
               ne: int, out: np.ndarray) -> np.ndarray:
    """Add templates evaluated at ``E - jitter - shift`` to ``out`` (P, ne), in place.

    Channel ``k`` is fine-grid point ``m0 + sub * k``, so a pixel's shift ``s``
    is a whole-grid offset ``floor(-s / step)`` plus one interpolation weight
    common to all its channels: the spectrum is a linear interpolation between
    two strided rows of the table. Jitter takes few distinct offsets, so those
    rows are made contiguous once and then gathered per pixel.
    """
    for table, shift in terms:
        table = table.astype(out.dtype)
        q = -(jit[:, 0] + shift) / _FINE_STEP
        off = np.floor(q)
        w = (q - off)[:, None].astype(out.dtype)
        off = off.astype(np.intp) + m0
        if off.min() < 0 or off.max() + 1 + sub * (ne - 1) >= table.size:  # pragma: no cover
            raise AssertionError("shift outside the tabulated range")
        rows = np.lib.stride_tricks.as_strided(
            table, shape=(table.size - sub * (ne - 1), ne),
            strides=(table.strides[0], sub * table.strides[0]), writeable=False)
        uniq, inv = np.unique(off, return_inverse=True)
        lo_rows = np.ascontiguousarray(rows[uniq])
        slope_rows = rows[uniq + 1] - lo_rows
        out += lo_rows[inv]
        out += slope_rows[inv] * w
    return out
