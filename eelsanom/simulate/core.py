"""The Fe L2,3 spectrum-image simulator :func:`simulate`: validation, assembly, noise.

It evaluates the spectrum model of :mod:`eelsanom.simulate.felmodel` on the
nuisance maps and anomaly mask of :mod:`eelsanom.simulate.fields`, adds the
detector (Poisson, gain, dark offset, read noise) and returns a
:class:`~eelsanom.simulate.result.Simulation`. See :mod:`eelsanom.simulate`.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from ..spectrum import Axis, SpectrumImage
from .felmodel import (
    _FINE_STEP,
    _MAGNITUDE_MEANING,
    _MAX_ABS_SHIFT,
    _PHYSICS,
    _T_LIMITS,
    ANOMALY_TYPES,
    DEFAULT_MAGNITUDE,
    ENERGY_SCALE,
    WINDOWS,
    _fwhm,
    _low_loss_margin,
    _Model,
    _plasmon_kernel,
    _plural_dose_scale,
    _spectra,
    _templates,
)
from .fields import (
    DRIFT_PATTERNS,
    SHAPES,
    _drift_map,
    _place,
    _row_chunks,
    _smooth_field,
    _thickness_map,
    _valence_map,
)
from .result import Simulation

__all__ = ["NUISANCE_KEYS", "PIXEL_SIZE_NM", "simulate"]

logger = logging.getLogger("eelsanom.simulate")

#: Keys of :attr:`Simulation.nuisance` (``t_over_lambda`` only when ``thickness`` is set).
NUISANCE_KEYS = ("drift_eV", "jitter_eV", "valence_eV", "exponent", "intensity", "t_over_lambda")
PIXEL_SIZE_NM = 0.2
_MAX_DRIFT = 2.0  # eV
_MAX_VALENCE = 3.0  # eV
_CHUNK_ELEMENTS = 1_000_000  # voxels per row chunk (float64 temporaries ~8 MB each)


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


def _validate_bulk(drift, drift_pattern, valence_gradient, thickness, gain,
                   dark_offset) -> dict[str, Any]:
    """The realistic-bulk and detector options, validated (see :func:`simulate`)."""
    d = _real("drift", drift, f"an energy drift amplitude in eV, 0 <= drift <= {_MAX_DRIFT:g}",
              "Use e.g. drift=0.8 (eV), or 0 for no drift.",
              ok=lambda v: 0.0 <= v <= _MAX_DRIFT)
    if drift_pattern not in DRIFT_PATTERNS:
        raise _bad("drift_pattern", f"one of {DRIFT_PATTERNS}", drift_pattern,
                   "Use 'field' (a smooth random 2-D field) or 'ramp' (linear along y, the "
                   "slow-scan axis).")
    vg = _real("valence_gradient", valence_gradient,
               f"an Fe L2,3 onset change across x in eV, 0 <= v <= {_MAX_VALENCE:g}",
               "Use e.g. valence_gradient=1.0 (eV), or 0 for none.",
               ok=lambda v: 0.0 <= v <= _MAX_VALENCE)
    lo, hi = _T_LIMITS
    t_range = None
    if thickness is not None:
        expected = (f"None or (t_min, t_max) as t/lambda, each within {lo:g}..{hi:g}, "
                    "t_min < t_max")
        fix = "Use e.g. thickness=(0.2, 1.0), or None for no plural scattering."
        try:
            pair = list(thickness)
        except TypeError:
            raise _bad("thickness", expected, thickness, fix) from None
        if isinstance(thickness, str) or len(pair) != 2:
            raise _bad("thickness", expected, thickness, fix)
        t0, t1 = (_real("thickness", t, expected, fix, ok=lambda v: lo <= v <= hi) for t in pair)
        if not t0 < t1:
            raise _bad("thickness", expected, thickness, fix)
        t_range = (t0, t1)
    g = _real("gain", gain, "detector counts per electron > 0 (and <= 1e6)",
              "Use e.g. gain=1.0 (counting detector) or gain=8 (a gain-scaled CCD).",
              ok=lambda v: 0.0 < v <= 1e6)
    dk = _real("dark_offset", dark_offset, "a finite offset in counts, |offset| <= 1e9",
               "Use e.g. dark_offset=100, or 0.", ok=lambda v: abs(v) <= 1e9)
    return {"drift": d, "drift_pattern": drift_pattern, "valence_gradient": vg,
            "thickness": t_range, "gain": g, "dark_offset": dk}


# --------------------------------------------------------------------------- line shapes


# --------------------------------------------------------------------------- simulate


def simulate(*, shape: tuple[int, int] = (64, 64), window: str = "fe-l", anomaly: str = "shift",
             magnitude: float | None = None, anomaly_shape: str = "clusters",
             concentration: float = 0.02, dose: float = 200.0, seed: int = 0,
             nuisances: bool = True, read_noise: float = 1.0, energy_jitter: float = 0.03,
             bulk_fraction: float = 0.3, dtype: Any = np.float32, drift: float = 0.0,
             drift_pattern: str = "field", valence_gradient: float = 0.0,
             thickness: tuple[float, float] | None = None, gain: float = 1.0,
             dark_offset: float = 0.0) -> Simulation:
    """Simulate a core-loss EELS spectrum image with planted anomalies and ground truth.

    The single-scattering spectrum of a normal pixel is ``K * I * [(E/709.5)**-r
    + O_K(E) + Fe_L3(E) + Fe_L2(E) + Fe_continuum(E)]``, every term evaluated at
    ``E - jitter - drift`` (the Fe L2,3 terms also at ``- valence``) and
    broadened by a 0.7 eV FWHM Gaussian: Voigt white lines (Fe L3 709.5 eV, L2
    722.6 eV, L3/L2 area ratio 4), arctan continuum steps 2:1, an O K edge
    (pre-peak 531.8 eV, step 533.5 eV, peaks 540.5 and 560 eV). The intensity
    ``I`` (+-15 %) and ``r`` (3 +- 0.05) vary smoothly across the field; ``K``
    is set by ``dose``. Detector counts are ``gain * Poisson(expected) +
    dark_offset + read_noise * N(0, 1)``.

    Plural scattering (``thickness``): a fast electron that excites a core edge
    may also lose energy to bulk plasmons; the number of plasmon losses is
    Poisson-distributed with mean ``t/lambda``. The low-loss spectrum (unit
    area) is ``exp(-t) * [delta(E) + t p(E) + t**2/2! (p*p)(E) + ...]``: the
    zero-loss fraction ``exp(-t)`` and the n-fold plasmon terms ``t**n/n!
    exp(-t)`` with ``p`` a Drude plasmon (``Im(-1/eps)``, peak 22 eV, width
    5 eV) self-convolved n times. The measured core-loss spectrum is the
    single-scattering spectrum convolved with it (done in Fourier space, where
    the series sums to ``exp(t (p^ - 1))``), computed on an energy range
    extended below the window (down to 100 eV, or as far as the plasmon series
    reaches at t/lambda = 2) and cropped; the intensity ``I`` is then
    ``t / t_ref`` (``t_ref`` the middle of the range: more material, more
    core-loss electrons) and the convolution conserves the electrons.

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
        Expected electrons at the Fe L3 maximum (background included) of an
        average pixel (with ``thickness``: a pixel at ``t_ref``). Standard 200.
    seed : int
        Seeds everything; same arguments and seed give identical arrays. The
        anomaly mask depends only on ``shape``, ``anomaly_shape``,
        ``concentration``, ``bulk_fraction`` and ``seed`` (so sweeps over
        magnitude, dose, type or the bulk options share one mask); each nuisance
        field has its own random stream.
    nuisances : bool
        The built-in nuisances: smooth intensity and exponent variation and
        per-pixel energy jitter; when False (and no option below is set) every
        pixel has the average spectrum (noise is still added). The options
        ``drift``, ``valence_gradient`` and ``thickness`` apply either way.
    read_noise : float
        Standard deviation of the Gaussian read noise, detector counts.
    energy_jitter : float
        Standard deviation (eV) of the white per-pixel shift of the whole
        spectrum (adds to ``drift``).
    bulk_fraction : float
        The bulk rectangle is the top ``round(bulk_fraction * ny)`` rows, full width.
    dtype : numpy dtype
        float32 (default) or float64 for the counts and expected arrays.
    drift : float
        Energy drift amplitude in eV, ``0 <= drift <= 2``: the whole spectrum
        (background, O K, Fe L) moves by a smooth per-pixel amount.
    drift_pattern : {"field", "ramp"}
        ``"field"``: a smooth random 2-D field (zero mean, max |value| =
        ``drift``, correlation length 0.2 x max(ny, nx) like the other fields);
        ``"ramp"``: linear along the slow-scan axis y, ``-drift`` on row 0 to
        ``+drift`` on the last row.
    valence_gradient : float
        Bulk valence gradient in eV, ``0 <= v <= 3``: the Fe L2,3 edge (white
        lines and continuum; not the background or O K) moves along x by a tanh
        profile from ``-v/2`` (column 0) to ``+v/2`` (last column), centred
        mid-image, width nx/4, as near an interface; the full-width bulk
        rectangle spans it.
    thickness : (float, float), optional
        ``(t_min, t_max)`` t/lambda range, each within 0.05..2, ``t_min <
        t_max``: a smooth field spanning it, with plural scattering (above).
        None (default): single scattering, intensity +-15 % (``nuisances``).
    gain : float
        Detector counts per electron, > 0. Real DM4/LSMO files are gain-scaled
        like this; a detector that assumes Poisson counts should score
        ``sim.to_electrons(counts)``, i.e. ``(counts - dark_offset) / gain``
        (then the read noise is ``read_noise / gain`` electrons).
    dark_offset : float
        Counts added to every channel.

    Returns
    -------
    Simulation
        Noisy counts ``si`` of shape ``(ny, nx, n_energy)``, ``truth`` and
        ``bulk_mask`` of shape ``(ny, nx)``, ``params``, the noise-free
        ``expected`` / ``expected_alt`` electrons of shape ``(ny, nx,
        n_energy)`` and the per-pixel ``nuisance`` maps.

    Raises
    ------
    InputError
        Any invalid argument (the message says what was expected and the fix).

    Examples
    --------
    >>> sim = simulate(shape=(16, 16), concentration=0.05, seed=1)
    >>> sim.si.shape, int(sim.truth.sum()), bool((sim.truth & sim.bulk_mask).any())
    ((16, 16, 267), 13, False)
    >>> sim = simulate(shape=(16, 16), drift=0.8, drift_pattern="ramp", seed=1)
    >>> float(sim.nuisance["drift_eV"][0, 0]), float(sim.nuisance["drift_eV"][-1, 0])
    (-0.8, 0.8)
    """
    t_start = time.perf_counter()
    v = _validate(shape, window, anomaly, magnitude, anomaly_shape, concentration, dose, seed,
                  nuisances, read_noise, energy_jitter, bulk_fraction, dtype)
    b = _validate_bulk(drift, drift_pattern, valence_gradient, thickness, gain, dark_offset)
    ny, nx, mag, n_bulk, k = v["ny"], v["nx"], v["magnitude"], v["n_bulk"], v["k"]
    phys = _PHYSICS
    bgp = phys["background"]
    corr = bgp["field_correlation"]
    e_ref = bgp["reference_energy"]
    t_range = b["thickness"]

    # Energy axis.
    e_start, e_stop = WINDOWS[window]
    ne = int(math.floor((e_stop - e_start) / ENERGY_SCALE + 1e-9)) + 1
    energy_axis = Axis(ne, ENERGY_SCALE, e_start, "eV", "Energy loss")
    energy = energy_axis.values
    # Plural scattering needs the spectrum below the window: n_lo extra channels.
    n_lo = 0
    if t_range is not None:
        floor_e = phys["plural"]["extension_floor"]
        n_lo = max(0, int(math.ceil(min(_low_loss_margin(_T_LIMITS[1]), e_start - floor_e)
                                    / ENERGY_SCALE)))
    energy_ext = (np.concatenate([e_start + ENERGY_SCALE * np.arange(-n_lo, 0), energy])
                  if n_lo else energy)

    # Independent streams, so that e.g. the mask does not depend on the nuisances
    # (the first four as in the paper benchmark; the bulk options' after them).
    ss = np.random.SeedSequence(v["seed"])
    ss_fields, ss_mask, ss_jitter, ss_noise = ss.spawn(4)
    ss_drift, ss_thick = ss.spawn(2)
    rng_fields = np.random.default_rng(ss_fields)

    # Nuisance fields.
    if v["nuisances"]:
        intensity = 1.0 + _smooth_field(rng_fields, ny, nx, bgp["intensity_variation"], corr)
        exponent = bgp["exponent"] + _smooth_field(rng_fields, ny, nx,
                                                   bgp["exponent_variation"], corr)
        jitter = np.random.default_rng(ss_jitter).normal(0.0, v["energy_jitter"], (ny, nx))
    else:
        intensity = np.ones((ny, nx))
        exponent = np.full((ny, nx), bgp["exponent"])
        jitter = np.zeros((ny, nx))
    drift_map = _drift_map(np.random.default_rng(ss_drift), ny, nx, b["drift"],
                           b["drift_pattern"], corr)
    valence = _valence_map(ny, nx, b["valence_gradient"], phys["valence"]["width_fraction"])
    nuisance = {"drift_eV": drift_map, "jitter_eV": jitter, "valence_eV": valence,
                "exponent": exponent, "intensity": intensity}
    t_ref = None
    if t_range is not None:
        t_over_lambda = _thickness_map(np.random.default_rng(ss_thick), ny, nx, t_range, corr)
        t_ref = 0.5 * (t_range[0] + t_range[1])
        nuisance["t_over_lambda"] = t_over_lambda
        nuisance["intensity"] = t_over_lambda / t_ref

    # Ground truth and bulk.
    truth = _place(np.random.default_rng(ss_mask), ny, nx, n_bulk, k, anomaly_shape)
    bulk_mask = np.zeros((ny, nx), dtype=bool)
    bulk_mask[:n_bulk] = True

    # Line shapes on a fine grid wide enough for any shift/jitter/drift/valence.
    # Extended channel j sits exactly on fine-grid point m0_lo - sub * n_lo + sub * j.
    sub = int(round(ENERGY_SCALE / _FINE_STEP))
    extra = b["drift"] + 0.5 * b["valence_gradient"]
    m0 = int(math.ceil((_MAX_ABS_SHIFT + 10.0 * max(v["energy_jitter"], 0.01) + 2.0 + extra)
                       / _FINE_STEP))
    m0_lo = m0 + sub * n_lo
    grid = e_start + _FINE_STEP * np.arange(-m0_lo, sub * (ne - 1) + m0 + 1)
    tpl = _templates(grid)
    fe_lines = tpl["fe_l3"] + tpl["fe_l2"]
    fe_all = fe_lines + tpl["fe_cont"]

    ratio_a3 = ratio_a2 = 1.0
    if anomaly == "ratio":
        r0 = phys["fe_l"]["l3_l2_area_ratio"]
        ratio_a3 = mag * (r0 + 1.0) / (mag * r0 + 1.0)
        ratio_a2 = (r0 + 1.0) / (mag * r0 + 1.0)
    dt = v["dtype"]
    # Chunks of whole rows (same chunking as before the bulk options without thickness,
    # so that the noise streams and the default simulation stay bit-identical).
    n_work = ne if n_lo == 0 else 2 * (n_lo + ne)
    model = _Model(tpl=tpl, m_first=m0_lo - sub * n_lo, sub=sub, ne=ne, n_lo=n_lo,
                   energy_ext=energy_ext, e_ref=e_ref, scale_k=1.0, anomaly=anomaly, mag=mag,
                   ratio_a3=ratio_a3, ratio_a2=ratio_a2,
                   plasmon=(_plasmon_kernel(n_lo + 1, ENERGY_SCALE) if n_lo else None),
                   t_ref=t_ref, max_shift=(m0 - 2) * _FINE_STEP, dtype=dt,
                   rows=max(1, _CHUNK_ELEMENTS // (nx * n_work)))

    # Dose: the average pixel's maximum near Fe L3 (continuous curve) gives `dose` electrons.
    near = np.abs(grid - phys["fe_l"]["l3"]["energy"]) <= 3.0
    if t_range is None:
        nominal = (grid / e_ref) ** (-bgp["exponent"]) + tpl["o_k"] + fe_all
        i_max = int(np.flatnonzero(near)[np.argmax(nominal[near])])
        scale_k = v["dose"] / float(nominal[i_max])
        l3_max_energy = float(grid[i_max])
    else:  # the plurally scattered average pixel (t_ref), sampled every 0.01 eV
        scale_k, l3_max_energy = _plural_dose_scale(model, v["dose"], bgp["exponent"])
    model.scale_k = scale_k

    counts = np.empty((ny, nx, ne), dtype=dt)
    expected = np.empty((ny, nx, ne), dtype=dt)
    expected_alt = np.empty((ny, nx, ne), dtype=dt)
    rng_noise = np.random.default_rng(ss_noise)
    split = bool(np.any(valence != 0))
    for sl in _row_chunks(ny, model.rows):
        rows = {key: val[sl].reshape(-1) for key, val in nuisance.items()}
        normal, anom = _spectra(model, rows, ("normal", "anom"), split)
        is_anom = truth[sl].reshape(-1, 1)
        exp_chunk = np.where(is_anom, anom, normal)
        alt_chunk = np.where(is_anom, normal, anom)
        del normal, anom
        shp = (sl.stop - sl.start, nx, ne)
        expected[sl] = exp_chunk.reshape(shp)
        expected_alt[sl] = alt_chunk.reshape(shp)
        noisy = rng_noise.poisson(exp_chunk).astype(dt)
        if b["gain"] != 1.0:
            noisy *= dt.type(b["gain"])
        if v["read_noise"] > 0:
            noisy += (v["read_noise"] * rng_noise.standard_normal(noisy.shape, dtype=np.float32)
                      ).astype(dt, copy=False)
        if b["dark_offset"] != 0.0:
            noisy += dt.type(b["dark_offset"])
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
        "drift": b["drift"], "drift_pattern": b["drift_pattern"],
        "valence_gradient": b["valence_gradient"],
        "thickness": list(t_range) if t_range is not None else None,
        "gain": b["gain"], "dark_offset": b["dark_offset"],
        "units": "expected/expected_alt in electrons; counts = gain * Poisson(expected) "
                 "+ dark_offset + read_noise * N(0, 1)",
        "energy_axis": energy_axis.to_dict(), "pixel_size_nm": PIXEL_SIZE_NM,
        "n_anomalous": int(k), "bulk_rows": [0, n_bulk],
        "expected_alt": "anomalous pixels without their anomaly; normal pixels with it",
        "derived": {
            "counts_scale": float(scale_k),
            "l3_max_energy_eV": l3_max_energy,
            "l3_max_counts_average_pixel": float(v["dose"]),
            "background_counts_at_l3": bg_l3,
            "l3_white_line_fwhm_eV": _fwhm(grid, tpl["fe_l3"]),
            "l2_white_line_fwhm_eV": _fwhm(grid, tpl["fe_l2"]),
            "intensity_range": [float(nuisance["intensity"].min()),
                                float(nuisance["intensity"].max())],
            "exponent_range": [float(exponent.min()), float(exponent.max())],
            "jitter_std_realised_eV": float(jitter.std()),
            "drift_range_eV": [float(drift_map.min()), float(drift_map.max())],
            "valence_range_eV": [float(valence.min()), float(valence.max())],
            "t_over_lambda_range": ([float(nuisance["t_over_lambda"].min()),
                                     float(nuisance["t_over_lambda"].max())]
                                    if t_range is not None else None),
            "t_over_lambda_reference": t_ref,
            "model_start_eV": float(energy_ext[0]),
            "gain": b["gain"], "dark_offset": b["dark_offset"],
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
    sim = Simulation(si=si, truth=truth, bulk_mask=bulk_mask, params=params,
                     expected=expected, expected_alt=expected_alt, nuisance=nuisance)
    sim._model = model
    return sim
