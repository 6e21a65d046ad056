"""The generalisation suite's images: data we did not design the detectors around.

:func:`general_image` builds one spectrum image from the second spectral
model family (:mod:`eelsanom.simulate.components`: power-law background,
arctan edges, Gaussian or Lorentzian white lines) with its own nuisances and
detector, independent of :func:`eelsanom.simulate.simulate`:

- a thickness field at a chosen correlation length (2-3 px, rougher than any
  detector's window, to 30 px) and amplitude (+-10 % to +-40 %); thickness
  scales the edges, scales the background faster and flattens its exponent;
- per-pixel beam current (a log-normal scale, optionally a scan-row
  component) and per-pixel energy jitter;
- a detector: ``"counting"`` (Poisson electrons) or ``"ccd"`` (Poisson
  electrons spread by a Gaussian point-spread along energy, gain, dark
  offset, read noise, integer read-out);
- anomaly geometries: isolated ``"pixels"``, small ``"clusters"``, a large
  ``"region"`` (particles or grains, 10-30 % of the image) and a ``"line"``
  (an interface);
- anomaly kinds: ``"shift"`` (Fe L2,3 chemical shift), ``"ratio"`` (L3/L2
  white-line ratio), ``"edge"`` (a new Co L2,3 edge), and two changes that
  must *not* be flagged, ``"thickness"`` and ``"intensity"`` in the
  geometry's pixels (their truth is all False); ``"none"``: anomaly-free;
- with a bulk region (the top rows, free of anomalies) or without one.

:func:`quick_general_conditions` lists the CPU-sized conditions of ``eelsanom
bench --suite general --quick`` (:func:`general_conditions` the full ones);
each :class:`GeneralCondition` builds its image with ``cond.simulate(seed)``.
The result is a :class:`~eelsanom.simulate.result.Simulation` like
:func:`~eelsanom.simulate.simulate`'s (``expected``, ``expected_alt``,
``nuisance``, ``normal_expected``), so the benchmark's references work on it.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..spectrum import Axis, SpectrumImage
from .components import (
    COMPONENTS,
    ENERGY_SCALE,
    FLAGGED_KINDS,
    KINDS,
    NOT_FLAGGED_KINDS,
    WINDOW,
    ComponentModel,
    component_spectra,
    psf,
    ratio_factors,
)
from .fields import _place, smooth_field
from .result import Simulation

__all__ = ["GEOMETRIES", "DETECTORS", "DEFAULT_MAGNITUDE", "DEFAULT_FRACTION",
           "GeneralCondition", "general_image", "quick_general_conditions",
           "general_conditions"]

logger = logging.getLogger("eelsanom.simulate")

GEOMETRIES = ("pixels", "clusters", "region", "line")
#: default magnitude per kind: eV (shift), L3/L2 ratio factor (ratio), Co L3 white-line
#: height relative to the Fe L3 one (edge), thickness or intensity factor in the region
DEFAULT_MAGNITUDE = {"shift": 1.0, "ratio": 0.7, "edge": 0.3, "thickness": 1.35,
                     "intensity": 1.4, "none": 0.0}
#: default fraction of all pixels in the geometry
DEFAULT_FRACTION = {"pixels": 0.01, "clusters": 0.02, "region": 0.2, "line": 0.03}
#: detector models: gain (counts per electron), read noise and dark offset (counts),
#: point-spread sigma along energy (channels), integer read-out
DETECTORS: dict[str, dict[str, Any]] = {
    "counting": {"gain": 1.0, "read_noise": 0.0, "dark_offset": 0.0, "psf_sigma": 0.0,
                 "integer": False},
    "ccd": {"gain": 3.0, "read_noise": 6.0, "dark_offset": 100.0, "psf_sigma": 0.8,
            "integer": True},
}
PIXEL_SIZE_NM = 0.5
_CHUNK_ELEMENTS = 1_000_000
_MEANING = {
    "shift": "Fe L2,3 energy shift in eV (positive = to higher energy loss)",
    "ratio": "factor on the Fe L3/L2 white-line area ratio (total white-line area kept)",
    "edge": "Co L3 white-line height as a fraction of the Fe L3 main white line",
    "thickness": "thickness factor in the geometry's pixels (must not be flagged)",
    "intensity": "beam-current factor in the geometry's pixels (must not be flagged)",
    "none": "no anomaly",
}


def _bad(name: str, expected: str, found: Any, fix: str) -> InputError:
    return InputError(f"general_image: {name} expected {expected}, found {found!r}. {fix}")


def _real(name: str, value: Any, lo: float, hi: float, fix: str, *, lo_open: bool = False
          ) -> float:
    expected = f"a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(name, expected, value, fix)
    v = float(value)
    if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
        raise _bad(name, expected, value, fix)
    return v


def _place_region(rng: np.random.Generator, avail: np.ndarray, k: int) -> np.ndarray:
    """``k`` pixels of ``avail`` forming a few large blobs (particles or grains).

    The ``k`` highest values, within ``avail``, of a smooth random field whose
    correlation length is a tenth of the image side.
    """
    ny, nx = avail.shape
    f = smooth_field(rng, ny, nx, 1.0, 0.1)
    f = np.where(avail, f, -np.inf).reshape(-1)
    idx = np.argsort(-f, kind="stable")[:k]
    truth = np.zeros(ny * nx, dtype=bool)
    truth[idx] = True
    return truth.reshape(ny, nx)


def _validate(shape, kind, magnitude, geometry, fraction, bulk, bulk_fraction, dose,
              correlation_px, thickness_amplitude, energy_jitter, scale_jitter, row_jitter,
              white_lines, detector, seed, dtype) -> dict[str, Any]:
    try:
        ok = len(shape) == 2 and all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                     for s in shape)
    except TypeError:
        ok = False
    if not ok or min(int(s) for s in shape) < 8:
        raise _bad("shape", "two integers (ny, nx), each >= 8", shape, "Use e.g. shape=(48, 48).")
    ny, nx = (int(s) for s in shape)
    if kind not in KINDS:
        raise _bad("kind", f"one of {KINDS}", kind, "Choose an anomaly kind.")
    if geometry not in GEOMETRIES:
        raise _bad("geometry", f"one of {GEOMETRIES}", geometry, "Choose a geometry.")
    if magnitude is None:
        magnitude = DEFAULT_MAGNITUDE[kind]
    lim = {"shift": (-10.0, 10.0, "magnitude=1.0 (eV)"), "ratio": (0.0, 10.0, "magnitude=0.7"),
           "edge": (0.0, 5.0, "magnitude=0.3"), "thickness": (0.0, 5.0, "magnitude=1.35"),
           "intensity": (0.0, 10.0, "magnitude=1.4"), "none": (0.0, 0.0, "magnitude=0")}[kind]
    mag = _real("magnitude", magnitude, lim[0], lim[1], f"Use e.g. {lim[2]} for kind={kind!r}.",
                lo_open=kind in ("ratio", "thickness", "intensity"))
    if fraction is None:
        fraction = DEFAULT_FRACTION[geometry]
    frac = _real("fraction", fraction, 0.0, 0.5, "Use e.g. 0.02 (2 % of the pixels), or 0.2 for "
                 "a large region (a fraction, not a percentage).")
    if not isinstance(bulk, (bool, np.bool_)):
        raise _bad("bulk", "True or False", bulk, "Pass bulk=True for a bulk region.")
    bf = _real("bulk_fraction", bulk_fraction, 0.0, 0.9, "Use e.g. 0.3.", lo_open=True)
    n_bulk = int(round(bf * ny)) if bulk else 0
    if bulk and not 1 <= n_bulk <= ny - 2:
        raise _bad("bulk_fraction", f"a fraction of the {ny} rows leaving at least one bulk row "
                   "and two other rows", bulk_fraction, "Use e.g. bulk_fraction=0.3.")
    dose_f = _real("dose", dose, 0.0, 1e7, "Use e.g. dose=600 (electrons at the Fe L3 maximum).",
                   lo_open=True)
    corr = _real("correlation_px", correlation_px, 0.5, 1000.0,
                 "Use e.g. 2.5 (rougher than a detector's window) to 30 pixels.")
    amp = _real("thickness_amplitude", thickness_amplitude, 0.0, 0.8,
                "Use e.g. 0.2 for +-20 % (0.1-0.4 typical).")
    jit = _real("energy_jitter", energy_jitter, 0.0, 1.0, "Use e.g. 0.1 (eV).")
    sj = _real("scale_jitter", scale_jitter, 0.0, 1.0, "Use e.g. 0.05 (5 % beam-current noise).")
    rj = _real("row_jitter", row_jitter, 0.0, 1.0, "Use e.g. 0.05, or 0.")
    if white_lines not in ("gaussian", "lorentzian"):
        raise _bad("white_lines", "'gaussian' or 'lorentzian'", white_lines, "Choose one.")
    if isinstance(detector, str):
        if detector not in DETECTORS:
            raise _bad("detector", f"one of {sorted(DETECTORS)} or a dict like "
                       f"{DETECTORS['ccd']}", detector, "Use 'counting' or 'ccd'.")
        det = dict(DETECTORS[detector])
    elif isinstance(detector, dict) and set(detector) <= set(DETECTORS["ccd"]):
        det = {**DETECTORS["counting"], **detector}
    else:
        raise _bad("detector", f"one of {sorted(DETECTORS)} or a dict with keys among "
                   f"{sorted(DETECTORS['ccd'])}", detector, "Use 'counting' or 'ccd'.")
    det["gain"] = _real("detector gain", det["gain"], 0.0, 1e6, "Use e.g. 3.", lo_open=True)
    det["read_noise"] = _real("detector read_noise", det["read_noise"], 0.0, 1e6, "Use e.g. 6.")
    det["dark_offset"] = _real("detector dark_offset", det["dark_offset"], -1e9, 1e9,
                               "Use e.g. 100.")
    det["psf_sigma"] = _real("detector psf_sigma", det["psf_sigma"], 0.0, 20.0,
                             "Use e.g. 0.8 (channels), or 0.")
    det["integer"] = bool(det["integer"])
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise _bad("seed", "a non-negative integer", seed, "Use e.g. seed=0.")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise _bad("dtype", "float32 or float64", dtype, "Use dtype=np.float32.")
    k = 0 if kind == "none" else int(round(frac * ny * nx))
    n_avail = (ny - n_bulk) * nx
    if kind != "none" and k == 0:
        raise _bad("fraction", f"at least one pixel of {ny} x {nx} for kind={kind!r}", fraction,
                   "Use a larger fraction, or kind='none' for an anomaly-free image.")
    cap = int(0.8 * n_avail) if geometry == "region" else n_avail // 2
    if k > cap:
        raise _bad("fraction", f"at most {cap} pixels ({'80 %' if geometry == 'region' else 'half'}"
                   f" of the {n_avail} pixels outside the bulk region) for geometry "
                   f"{geometry!r}", f"{fraction} -> {k} pixels",
                   "Lower the fraction or the bulk_fraction.")
    return {"ny": ny, "nx": nx, "magnitude": mag, "fraction": frac, "bulk": bool(bulk),
            "bulk_fraction": bf, "n_bulk": n_bulk, "dose": dose_f, "correlation_px": corr,
            "thickness_amplitude": amp, "energy_jitter": jit, "scale_jitter": sj,
            "row_jitter": rj, "detector": det, "seed": int(seed), "dtype": dt, "k": k}


def general_image(*, shape: tuple[int, int] = (48, 48), kind: str = "shift",
                  magnitude: float | None = None, geometry: str = "clusters",
                  fraction: float | None = None, bulk: bool = True, bulk_fraction: float = 0.3,
                  dose: float = 600.0, correlation_px: float = 9.0,
                  thickness_amplitude: float = 0.2, energy_jitter: float = 0.1,
                  scale_jitter: float = 0.05, row_jitter: float = 0.0,
                  white_lines: str = "gaussian", detector: str | dict = "counting",
                  seed: int = 0, dtype: Any = np.float32) -> Simulation:
    """One spectrum image of the generalisation suite, with ground truth.

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)``, each >= 8.
    kind : {"shift", "ratio", "edge", "thickness", "intensity", "none"}
        The anomaly (see the module docstring). ``"thickness"`` and
        ``"intensity"`` change the geometry's pixels by ``magnitude`` and must
        not be flagged: ``truth`` is all False and the changed pixels are in
        ``sim.si.metadata["changed_region"]``. ``"none"``: nothing changes.
    magnitude : float, optional
        Default :data:`DEFAULT_MAGNITUDE` per kind: shift 1.0 eV, L3/L2 ratio
        x0.7, Co L3 white line at 0.3 of the Fe L3 one, thickness x1.35,
        intensity x1.4.
    geometry : {"pixels", "clusters", "region", "line"}
        Isolated pixels, small discs (radius 1.5-3 px), a large region of a
        few blobs (particles or grains), or thin curved lines (an interface).
    fraction : float, optional
        Fraction of all pixels in the geometry (exactly ``round(fraction * ny
        * nx)``); default :data:`DEFAULT_FRACTION` (0.2 for ``"region"``).
    bulk : bool
        True: the top ``round(bulk_fraction * ny)`` rows are the bulk region
        (``bulk_mask``) and hold no anomaly. False: no bulk region
        (``bulk_mask`` all False), the geometry may lie anywhere.
    bulk_fraction : float
        See ``bulk``.
    dose : float
        Expected electrons at the Fe L3 maximum of an average pixel
        (thickness 1, scale 1, before the detector's point-spread).
    correlation_px : float
        Correlation length of the thickness field, pixels (the sigma of the
        Gaussian smoothing of white noise): 2-3 is rougher than a 9 x 9
        window, 30 is smooth across a 64-pixel image.
    thickness_amplitude : float
        The thickness field spans ``1 +- thickness_amplitude`` exactly.
    energy_jitter : float
        Standard deviation (eV) of each pixel's whole-spectrum energy shift.
    scale_jitter, row_jitter : float
        Beam current: each pixel's counts are multiplied by
        ``exp(scale_jitter * N(0, 1))`` and, per scan row, by ``exp(row_jitter
        * N(0, 1))``.
    white_lines : {"gaussian", "lorentzian"}
        White-line shape.
    detector : {"counting", "ccd"} or dict
        See :data:`DETECTORS`; a dict overrides ``"counting"``'s entries.
    seed : int
        Seeds everything; the mask depends only on the shape, geometry,
        fraction, bulk options and seed, each nuisance has its own stream.
    dtype : float32 or float64
        Of the counts and expected arrays.

    Returns
    -------
    Simulation
        ``si`` counts ``(ny, nx, 281)`` (660-800 eV at 0.5 eV/channel),
        ``truth``, ``bulk_mask``, ``params``, noise-free ``expected`` and
        ``expected_alt`` electrons (after the point-spread), ``nuisance``
        maps ``thickness``, ``scale`` and ``jitter_eV`` (the changed region
        included). ``expected_alt``: anomalous pixels without their anomaly,
        normal pixels with it; for ``"thickness"``/``"intensity"`` the image
        without the change; for ``"none"`` equal to ``expected``.

    Raises
    ------
    InputError
        Any invalid argument (the message says what was expected and the fix).

    Examples
    --------
    >>> sim = general_image(shape=(32, 32), kind="shift", geometry="region", seed=1)
    >>> sim.si.shape, int(sim.truth.sum()), bool((sim.truth & sim.bulk_mask).any())
    ((32, 32, 281), 205, False)
    >>> int(general_image(shape=(16, 16), kind="intensity", geometry="region").truth.sum())
    0
    """
    t_start = time.perf_counter()
    v = _validate(shape, kind, magnitude, geometry, fraction, bulk, bulk_fraction, dose,
                  correlation_px, thickness_amplitude, energy_jitter, scale_jitter, row_jitter,
                  white_lines, detector, seed, dtype)
    ny, nx, mag, k, det, dt = v["ny"], v["nx"], v["magnitude"], v["k"], v["detector"], v["dtype"]
    e0, e1 = WINDOW
    ne = int(math.floor((e1 - e0) / ENERGY_SCALE + 1e-9)) + 1
    energy_axis = Axis(ne, ENERGY_SCALE, e0, "eV", "Energy loss")
    energy = energy_axis.values

    ss_mask, ss_thick, ss_scale, ss_jitter, ss_noise = np.random.SeedSequence(
        [v["seed"], 22]).spawn(5)

    # Geometry (the changed pixels), outside the bulk rows when there is a bulk region.
    n_bulk = v["n_bulk"]
    rng_mask = np.random.default_rng(ss_mask)
    if geometry == "region":
        avail = np.zeros((ny, nx), dtype=bool)
        avail[n_bulk:] = True
        changed = _place_region(rng_mask, avail, k) if k else np.zeros((ny, nx), dtype=bool)
    else:
        changed = _place(rng_mask, ny, nx, n_bulk, k, geometry)
    truth = changed.copy() if kind in FLAGGED_KINDS else np.zeros((ny, nx), dtype=bool)
    bulk_mask = np.zeros((ny, nx), dtype=bool)
    bulk_mask[:n_bulk] = True

    # Nuisances: thickness field, beam current, energy jitter.
    thick = 1.0 + smooth_field(np.random.default_rng(ss_thick), ny, nx,
                               v["thickness_amplitude"], v["correlation_px"] / max(ny, nx))
    rng_scale = np.random.default_rng(ss_scale)
    scale = np.exp(v["scale_jitter"] * rng_scale.standard_normal((ny, nx)))
    scale *= np.exp(v["row_jitter"] * rng_scale.standard_normal((ny, 1)))
    jitter = np.random.default_rng(ss_jitter).normal(0.0, v["energy_jitter"], (ny, nx))
    nuisance = {"thickness": thick, "scale": scale, "jitter_eV": jitter}
    unchanged = None
    if kind in NOT_FLAGGED_KINDS:
        unchanged = {key: val.copy() for key, val in nuisance.items()}
        key = "thickness" if kind == "thickness" else "scale"
        nuisance[key] = np.where(changed, nuisance[key] * mag, nuisance[key])

    # Dose: the average pixel's Fe L3 maximum (continuous curve, 0.01 eV grid) = `dose`.
    l3 = COMPONENTS["fe_l3_lines"][0]["energy"]
    fine = np.arange(l3 - 3.0, l3 + 3.0, 0.01)
    nominal = component_spectra(fine, np.ones(1), np.zeros(1), white_lines=white_lines)[0]
    i_max = int(np.argmax(nominal))
    scale_k = v["dose"] / float(nominal[i_max])
    model = ComponentModel(energy=energy, scale_k=scale_k, white_lines=white_lines,
                           psf_sigma=det["psf_sigma"], dtype=np.dtype(np.float64),
                           rows=max(1, _CHUNK_ELEMENTS // (nx * ne)))

    # Noise-free electrons before the detector's point-spread, both hypotheses.
    raw = model.spectra(nuisance, apply_psf=False)
    if kind in FLAGGED_KINDS:
        anom = model.spectra(nuisance, kind=kind, magnitude=mag, anomalous=True,
                             apply_psf=False)
        t3 = truth[..., None]
        raw, alt_raw = np.where(t3, anom, raw), np.where(t3, raw, anom)
        del anom
    elif unchanged is not None:
        alt_raw = model.spectra(unchanged, apply_psf=False)
    else:
        alt_raw = raw
    expected = psf(raw, det["psf_sigma"]).astype(dt)
    expected_alt = psf(alt_raw, det["psf_sigma"]).astype(dt)
    del alt_raw

    # Detector: Poisson electrons, point-spread along energy, gain, read noise, offset.
    rng_noise = np.random.default_rng(ss_noise)
    counts = psf(rng_noise.poisson(raw).astype(np.float64), det["psf_sigma"])
    del raw
    counts *= det["gain"]
    if det["read_noise"] > 0:
        counts += det["read_noise"] * rng_noise.standard_normal(counts.shape)
    counts += det["dark_offset"]
    if det["integer"]:
        np.rint(counts, out=counts)
    counts = counts.astype(dt)

    a3, a2 = ratio_factors(mag, white_lines) if kind == "ratio" else (1.0, 1.0)
    params: dict[str, Any] = {
        "generator": "eelsanom.simulate.general.general_image",
        "family": "components",
        "shape": [ny, nx], "kind": kind, "magnitude": mag, "magnitude_meaning": _MEANING[kind],
        "geometry": geometry, "fraction": v["fraction"], "bulk": v["bulk"],
        "bulk_fraction": v["bulk_fraction"], "dose": v["dose"],
        "correlation_px": v["correlation_px"], "thickness_amplitude": v["thickness_amplitude"],
        "energy_jitter": v["energy_jitter"], "scale_jitter": v["scale_jitter"],
        "row_jitter": v["row_jitter"], "white_lines": white_lines, "detector": det,
        "gain": det["gain"], "dark_offset": det["dark_offset"],
        "read_noise": det["read_noise"], "seed": v["seed"], "dtype": np.dtype(dt).name,
        "units": "expected/expected_alt in electrons (after the point-spread); counts = "
                 "gain * psf(Poisson(electrons)) + read_noise * N(0, 1) + dark_offset "
                 "(rounded when the detector reads integers)",
        "energy_axis": energy_axis.to_dict(), "pixel_size_nm": PIXEL_SIZE_NM,
        "n_anomalous": int(truth.sum()), "n_changed": int(changed.sum()),
        "bulk_rows": [0, n_bulk],
        "derived": {
            "counts_scale": scale_k, "l3_max_energy_eV": float(fine[i_max]),
            "thickness_range": [float(thick.min()), float(thick.max())],
            "scale_range": [float(scale.min()), float(scale.max())],
            "jitter_std_realised_eV": float(jitter.std()),
            "true_fraction": float(truth.mean()),
            "changed_fraction": float(changed.mean()),
            "ratio_factors": [a3, a2],
        },
        "physics": {**COMPONENTS, "window": list(WINDOW), "energy_scale": ENERGY_SCALE},
    }
    bulk_txt = "bulk region" if v["bulk"] else "no bulk region"
    title = (f"General-suite SI (components): {kind} {mag:g} in {geometry}, "
             f"{100 * changed.mean():.3g} % of pixels, dose {v['dose']:g}, {bulk_txt}, "
             f"seed {v['seed']}")
    si = SpectrumImage(
        data=counts, energy=energy_axis,
        y=Axis(ny, PIXEL_SIZE_NM, 0.0, "nm", "y"), x=Axis(nx, PIXEL_SIZE_NM, 0.0, "nm", "x"),
        title=title, ground_truth=truth,
        metadata={"simulation": params, "bulk_mask": bulk_mask.copy(),
                  "changed_region": changed.copy()})
    logger.info("general image %d x %d x %d (%s, %s) in %.2f s", ny, nx, ne, kind, geometry,
                time.perf_counter() - t_start)
    sim = Simulation(si=si, truth=truth, bulk_mask=bulk_mask, params=params, expected=expected,
                     expected_alt=expected_alt, nuisance=nuisance)
    sim._model = _DtypeModel(model, dt)
    return sim


@dataclass
class _DtypeModel:
    """The family's model as :meth:`Simulation.normal_expected` uses it, in the image's dtype."""

    model: ComponentModel
    dtype: np.dtype
    t_ref: float | None = None

    def check_maps(self, maps: dict[str, np.ndarray]) -> None:
        self.model.check_maps(maps)

    def normal_expected(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.spectra(maps).astype(self.dtype)


# --------------------------------------------------------------------------- conditions


@dataclass
class GeneralCondition:
    """One condition of the generalisation suite.

    Attributes
    ----------
    name : str
        Label in tables, e.g. ``"rough thickness 2.5 px +-30 % / shift 1 eV, clusters; bulk"``.
    params : dict
        Keyword arguments of :func:`general_image` (without ``seed``); ``bulk``
        says whether the detectors are fitted on the bulk region (True) or on
        all pixels, robustly (False).
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def supervised(self) -> bool:
        """Fit on the bulk region (True) or on every pixel (False)."""
        return bool(self.params.get("bulk", True))

    @property
    def must_not_flag(self) -> bool:
        """True when the image holds no anomaly (its truth is empty)."""
        return self.params.get("kind", "shift") not in FLAGGED_KINDS

    def simulate(self, seed: int = 0) -> Simulation:
        """The condition's image at ``seed`` (:func:`general_image`).

        Parameters
        ----------
        seed : int

        Returns
        -------
        Simulation
        """
        return general_image(**self.params, seed=seed)


def _both(name: str, params: dict[str, Any]) -> list[GeneralCondition]:
    return [GeneralCondition(f"{name}; bulk region", {**params, "bulk": True}),
            GeneralCondition(f"{name}; no bulk region", {**params, "bulk": False})]


#: the issue-22 reproduction: Fe L2,3 arctan edges + Gaussian white lines, thickness
#: correlation length ~9 px (the size of a 9 x 9 window), energy jitter, clusters
ISSUE_22 = {"shape": (64, 64), "geometry": "clusters", "fraction": 0.015,
            "correlation_px": 9.0, "thickness_amplitude": 0.2, "energy_jitter": 0.1,
            "scale_jitter": 0.05}


def quick_general_conditions() -> list[GeneralCondition]:
    """The CPU-sized generalisation suite (``eelsanom bench --suite general --quick``).

    Ten images, each with and without a bulk region (20 conditions): the two
    issue-22 reproductions (64 x 64: 1.5 eV at dose 1000, 1.0 eV at dose
    600); then at 48 x 48, dose 600: a 0.6 eV shift in clusters under a rough
    (2.5 px, +-30 %) and a smooth (30 px, +-40 %) thickness field, and in
    large particles (20 % of the image), an L3/L2 ratio x0.7 along an
    interface line (CCD detector), a new Co L edge (0.15) in isolated pixels,
    two must-not-flag
    changes in large particles (thickness x1.35, intensity x1.4 with the CCD
    detector) and an anomaly-free image with a rough thickness field and
    10 % beam-current noise (CCD).

    Returns
    -------
    list of GeneralCondition
    """
    q = {"shape": (48, 48), "dose": 600.0, "correlation_px": 9.0, "thickness_amplitude": 0.2,
         "energy_jitter": 0.1, "scale_jitter": 0.05}
    conds = _both("issue 22: shift 1.5 eV, clusters, dose 1000",
                  {**ISSUE_22, "kind": "shift", "magnitude": 1.5, "dose": 1000.0})
    conds += _both("issue 22: shift 1 eV, clusters, dose 600",
                   {**ISSUE_22, "kind": "shift", "magnitude": 1.0, "dose": 600.0})
    conds += _both("rough thickness 2.5 px +-30 % / shift 0.6 eV, clusters",
                   {**q, "kind": "shift", "magnitude": 0.6, "geometry": "clusters",
                    "correlation_px": 2.5, "thickness_amplitude": 0.3})
    conds += _both("smooth thickness 30 px +-40 % / shift 0.6 eV, clusters",
                   {**q, "kind": "shift", "magnitude": 0.6, "geometry": "clusters",
                    "correlation_px": 30.0, "thickness_amplitude": 0.4})
    conds += _both("particles 20 % / shift 0.6 eV",
                   {**q, "kind": "shift", "magnitude": 0.6, "geometry": "region",
                    "fraction": 0.2})
    conds += _both("interface line / L3/L2 x0.7, CCD",
                   {**q, "kind": "ratio", "magnitude": 0.7, "geometry": "line",
                    "detector": "ccd"})
    conds += _both("isolated pixels / Co L edge 0.15",
                   {**q, "kind": "edge", "magnitude": 0.15, "geometry": "pixels"})
    conds += _both("must not flag: particles 25 % thickness x1.35",
                   {**q, "kind": "thickness", "magnitude": 1.35, "geometry": "region",
                    "fraction": 0.25})
    conds += _both("must not flag: particles 25 % intensity x1.4, CCD",
                   {**q, "kind": "intensity", "magnitude": 1.4, "geometry": "region",
                    "fraction": 0.25, "detector": "ccd"})
    conds += _both("anomaly-free, rough thickness 2.5 px +-30 %, beam current 10 %, CCD",
                   {**q, "kind": "none", "correlation_px": 2.5, "thickness_amplitude": 0.3,
                    "scale_jitter": 0.1, "detector": "ccd"})
    return conds


def general_conditions(quick: bool = True) -> list[GeneralCondition]:
    """The generalisation suite's conditions.

    Parameters
    ----------
    quick : bool
        :func:`quick_general_conditions`; else the full sweep at 96 x 96:
        every geometry x flagged kind at the middle nuisance, the thickness
        field at correlation lengths 2.5, 9 and 30 px x amplitudes 10 % and
        40 % (1 eV shift, clusters), the shift sweep 0.5-1.5 eV, Lorentzian
        white lines, both detectors, the must-not-flag kinds in every
        geometry, anomaly-free images at each correlation length, and the
        issue-22 reproductions; each with and without a bulk region.

    Returns
    -------
    list of GeneralCondition
    """
    if quick:
        return quick_general_conditions()
    f = {"shape": (96, 96), "dose": 600.0, "correlation_px": 9.0, "thickness_amplitude": 0.2,
         "energy_jitter": 0.1, "scale_jitter": 0.05}
    mags = {"shift": 1.0, "ratio": 0.7, "edge": 0.3}
    conds = _both("issue 22: shift 1.5 eV, clusters, dose 1000",
                  {**ISSUE_22, "kind": "shift", "magnitude": 1.5, "dose": 1000.0})
    conds += _both("issue 22: shift 1 eV, clusters, dose 600",
                   {**ISSUE_22, "kind": "shift", "magnitude": 1.0, "dose": 600.0})
    for geo in GEOMETRIES:
        for kind, m in mags.items():
            conds += _both(f"{geo} / {kind} {m:g}",
                           {**f, "kind": kind, "magnitude": m, "geometry": geo})
    for corr in (2.5, 9.0, 30.0):
        for amp in (0.1, 0.4):
            conds += _both(f"thickness {corr:g} px +-{100 * amp:g} % / shift 1 eV, clusters",
                           {**f, "kind": "shift", "geometry": "clusters", "correlation_px": corr,
                            "thickness_amplitude": amp})
    for s in (0.5, 1.5):
        conds += _both(f"clusters / shift {s:g} eV",
                       {**f, "kind": "shift", "magnitude": s, "geometry": "clusters"})
    conds += _both("clusters / shift 1 eV, Lorentzian white lines",
                   {**f, "kind": "shift", "geometry": "clusters", "white_lines": "lorentzian"})
    conds += _both("clusters / shift 1 eV, CCD, beam current rows 5 %",
                   {**f, "kind": "shift", "geometry": "clusters", "detector": "ccd",
                    "row_jitter": 0.05})
    for geo in GEOMETRIES:
        for kind in NOT_FLAGGED_KINDS:
            conds += _both(f"must not flag: {geo} {kind} x{DEFAULT_MAGNITUDE[kind]:g}",
                           {**f, "kind": kind, "geometry": geo})
    for corr in (2.5, 9.0, 30.0):
        conds += _both(f"anomaly-free, thickness {corr:g} px +-30 %, beam current 10 %",
                       {**f, "kind": "none", "correlation_px": corr,
                        "thickness_amplitude": 0.3, "scale_jitter": 0.1})
    return conds
