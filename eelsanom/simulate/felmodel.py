"""The Fe L2,3 (BiFeO3-like) spectrum model of :func:`eelsanom.simulate.simulate`.

The spectrum side only: the physics constants, the broadened line shapes
tabulated on a fine energy grid (:func:`_templates`), their evaluation at each
pixel's energy shifts (:func:`_sum_terms`, :func:`_spectra`) under the normal
and the anomalous hypothesis (:func:`_terms`), and plural scattering through a
simulated low-loss spectrum (:func:`_plural`). The image side (nuisance fields,
anomaly geometry) is :mod:`eelsanom.simulate.fields`; the noise and the
assembly are :mod:`eelsanom.simulate.core`. A second, independent family lives
in :mod:`eelsanom.simulate.components`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from ..errors import InputError
from .fields import _row_chunks

#: Energy windows (start, stop) in eV; channels are ``start + 0.3 * i <= stop``.
WINDOWS: dict[str, tuple[float, float]] = {"bfo": (420.0, 820.0), "fe-l": (680.0, 760.0)}
ANOMALY_TYPES = ("shift", "ratio", "impurity")
#: Default ``magnitude`` per anomaly type (see :func:`eelsanom.simulate.simulate`).
DEFAULT_MAGNITUDE = {"shift": 1.5, "ratio": 0.7, "impurity": 0.1}

ENERGY_SCALE = 0.3  # eV per channel
_MAX_ABS_SHIFT = 20.0  # eV
_T_LIMITS = (0.05, 2.0)  # t/lambda
_FINE_STEP = 0.01  # eV, grid on which the broadened line shapes are tabulated

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
    # Bulk valence gradient: tanh profile along x, width as a fraction of nx.
    "valence": {"width_fraction": 0.25},
    # Plural scattering (thickness option): Drude bulk plasmon Im(-1/eps) with this
    # peak energy and damping (FWHM) in eV; the low-loss spectrum is the Poisson
    # series over n-fold plasmon losses; the spectrum is computed from
    # `extension_floor` eV or from as far below the window as n plasmons reach, where
    # more than n plasmons have probability < `tail_probability` at the largest t/lambda.
    "plural": {"plasmon_energy": 22.0, "plasmon_width": 5.0, "tail_probability": 1e-6,
               "extension_floor": 100.0},
}

_MAGNITUDE_MEANING = {
    "shift": "Fe L2,3 energy shift dE in eV (positive = to higher energy loss)",
    "ratio": "multiplicative change of the Fe L3/L2 white-line intensity ratio "
             "(total white-line intensity kept)",
    "impurity": "Mn L3 white-line peak height as a fraction of the Fe L3 white-line height",
}


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


# --------------------------------------------------------------------------- spectrum model


@dataclass
class _Model:
    """What :func:`_spectra` needs to recompute noise-free spectra for given nuisance maps.

    The single-scattering spectrum is evaluated on ``n_lo + ne`` channels, the
    first ``n_lo`` below the window (only with plural scattering, which needs
    the spectrum below each channel); channel ``j`` of that extended range is
    fine-grid point ``m_first + sub * j`` of the templates.
    """

    tpl: dict[str, np.ndarray]
    m_first: int
    sub: int
    ne: int
    n_lo: int
    energy_ext: np.ndarray
    e_ref: float
    scale_k: float
    anomaly: str
    mag: float
    ratio_a3: float
    ratio_a2: float
    plasmon: np.ndarray | None
    t_ref: float | None
    max_shift: float  # eV a pixel's total shift may reach (normal hypothesis)
    dtype: np.dtype
    rows: int  # image rows per chunk

    def check_maps(self, maps: dict[str, np.ndarray]) -> None:
        """Refuse nuisance maps outside what this model can evaluate (InputError)."""
        _check_maps(self, maps)

    def normal_expected(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Noise-free normal electrons (ny, nx, ne) for nuisance maps of shape (ny, nx)."""
        ny, nx = next(iter(maps.values())).shape
        out = np.empty((ny, nx, self.ne), dtype=self.dtype)
        split = bool(np.any(maps["valence_eV"] != 0))
        for sl in _row_chunks(ny, self.rows):
            rows = {k: v[sl].reshape(-1) for k, v in maps.items()}
            out[sl] = _spectra(self, rows, ("normal",), split)[0].reshape(sl.stop - sl.start, nx,
                                                                           self.ne)
        return out


def _terms(m: _Model, val: np.ndarray | None) -> dict[str, list[tuple[np.ndarray, Any]]]:
    """(template, extra shift) terms of both hypotheses; ``val``: per-pixel Fe L shift or None."""
    tpl = m.tpl
    fe_lines = tpl["fe_l3"] + tpl["fe_l2"]
    fe_all = fe_lines + tpl["fe_cont"]
    a3, a2 = m.ratio_a3, m.ratio_a2
    if val is None:  # one table per hypothesis where possible (the paper benchmark's arithmetic)
        normal = [(tpl["o_k"] + fe_all, 0.0)]
        if m.anomaly == "shift":
            anom = [(tpl["o_k"], 0.0), (fe_all, m.mag)]
        elif m.anomaly == "ratio":
            anom = [(tpl["o_k"] + a3 * tpl["fe_l3"] + a2 * tpl["fe_l2"] + tpl["fe_cont"], 0.0)]
        else:
            anom = [(tpl["o_k"] + fe_all + m.mag * tpl["mn"], 0.0)]
        return {"normal": normal, "anom": anom}
    normal = [(tpl["o_k"], 0.0), (fe_all, val)]
    if m.anomaly == "shift":
        anom = [(tpl["o_k"], 0.0), (fe_all, m.mag + val)]
    elif m.anomaly == "ratio":
        anom = [(tpl["o_k"], 0.0), (a3 * tpl["fe_l3"] + a2 * tpl["fe_l2"] + tpl["fe_cont"], val)]
    else:
        anom = [(tpl["o_k"] + m.mag * tpl["mn"], 0.0), (fe_all, val)]
    return {"normal": normal, "anom": anom}


def _spectra(m: _Model, maps: dict[str, np.ndarray], which: tuple[str, ...],
             split: bool) -> list[np.ndarray]:
    """Noise-free expected electrons (P, ne) of the hypotheses ``which`` for P pixels.

    ``maps`` holds the pixels' nuisance values, each of shape (P,). Every term is
    evaluated at ``E - jitter - drift`` (Fe L2,3 also ``- valence`` when
    ``split``), convolved with the low-loss spectrum when the model has plural
    scattering, cropped to the window and multiplied by ``scale_k * intensity``.
    """
    dt = m.dtype
    jit = (maps["jitter_eV"] + maps["drift_eV"]).reshape(-1, 1)
    log_e = np.log(m.energy_ext / m.e_ref).astype(dt)
    inv_e = (1.0 / m.energy_ext).astype(dt)
    # (E - j)**-r with log(E - j) = log E - j / E (|j| << E; error ~ (j/E)**2)
    bg = np.exp(-maps["exponent"].reshape(-1, 1).astype(dt) * (log_e - jit.astype(dt) * inv_e))
    terms = _terms(m, maps["valence_eV"] if split else None)
    amp = (m.scale_k * maps["intensity"]).reshape(-1, 1).astype(dt)
    out = []
    for i, h in enumerate(which):
        s = _sum_terms(terms[h], jit, m.m_first, m.sub, m.n_lo + m.ne,
                       out=bg if i == len(which) - 1 else bg.copy())
        if m.plasmon is not None:
            s = _plural(s, maps["t_over_lambda"], m.plasmon)[:, m.n_lo:]
        s *= amp
        out.append(s)
    return out


def _plural_dose_scale(m: _Model, dose: float, exponent: float) -> tuple[float, float]:
    """``(scale_k, energy)`` so the plurally scattered average pixel peaks at ``dose`` near L3.

    The average pixel (t/lambda = t_ref, nominal exponent, no shifts) is
    evaluated at 30 sub-channel offsets (0.01 eV apart), so the maximum over all
    of them is the continuous curve's maximum within 0.01 eV.
    """
    offsets = _FINE_STEP * np.arange(m.sub)
    n = offsets.size
    maps = {"jitter_eV": -offsets, "drift_eV": np.zeros(n), "valence_eV": np.zeros(n),
            "exponent": np.full(n, exponent), "intensity": np.ones(n),
            "t_over_lambda": np.full(n, m.t_ref)}
    calib = _Model(**{**m.__dict__, "scale_k": 1.0, "dtype": np.dtype(np.float64)})
    spec = _spectra(calib, maps, ("normal",), False)[0]
    e = m.energy_ext[m.n_lo:][None, :] + offsets[:, None]  # where each sample sits
    near = np.abs(e - _PHYSICS["fe_l"]["l3"]["energy"]) <= 3.0
    i = int(np.argmax(np.where(near, spec, -np.inf)))
    return dose / float(spec.flat[i]), float(e.flat[i])


def _sum_terms(terms: list[tuple[np.ndarray, Any]], jit: np.ndarray, m0: int, sub: int,
               ne: int, out: np.ndarray) -> np.ndarray:
    """Add templates evaluated at ``E - jit - shift`` to ``out`` (P, ne), in place.

    ``jit`` (P, 1) is each pixel's whole-spectrum shift (jitter + drift); a
    term's ``shift`` is a number or one value per pixel (P,). Channel ``k`` is
    fine-grid point ``m0 + sub * k``, so a pixel's shift ``s`` is a whole-grid
    offset ``floor(-s / step)`` plus one interpolation weight common to all its
    channels: the spectrum is a linear interpolation between two strided rows of
    the table. Shifts take few distinct offsets, so those rows are made
    contiguous once and then gathered per pixel.
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


# --------------------------------------------------------------------------- spectrum model



def _plasmon_kernel(n: int, step: float) -> np.ndarray:
    """Single-plasmon loss distribution on ``n`` channel lags (0, step, ...): Drude, unit sum."""
    p = _PHYSICS["plural"]
    ep, w = p["plasmon_energy"], p["plasmon_width"]
    e = step * np.arange(n)
    k = e * w * ep ** 2 / ((e ** 2 - ep ** 2) ** 2 + (e * w) ** 2)
    return k / k.sum()


def _low_loss_margin(t_max: float) -> float:
    """Energy (eV) below a channel that plural scattering at ``t_max`` draws on.

    The Poisson series is kept up to ``n`` plasmons, where the probability of more
    falls below ``tail_probability``; each plasmon costs up to about
    ``plasmon_energy + 2 * plasmon_width``.
    """
    p = _PHYSICS["plural"]
    n, term, tail = 0, math.exp(-t_max), 1.0 - math.exp(-t_max)
    while tail > p["tail_probability"]:
        n += 1
        term *= t_max / n
        tail -= term
    return n * (p["plasmon_energy"] + 2.0 * p["plasmon_width"])


def _plural(spec: np.ndarray, t: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each row of ``spec`` (P, n) with the low-loss spectrum at t/lambda ``t`` (P,).

    The low-loss spectrum (unit area) is the Poisson series
    ``exp(-t) [delta + t p + t**2/2! p*p + ...]`` over the single-plasmon
    distribution ``p``; its Fourier transform is ``exp(t (p^ - 1))``, so the
    whole series is one multiplication in Fourier space. Zero-padded so that
    nothing wraps around into the rows; electrons are conserved (what leaves the
    top end lands in the padding).
    """
    from scipy import fft as sfft

    n = spec.shape[1]
    nfft = sfft.next_fast_len(n + kernel.size, real=True)
    khat = sfft.rfft(kernel, nfft)
    lhat = np.exp(np.asarray(t, np.float64).reshape(-1, 1) * (khat[None, :] - 1.0))
    f = sfft.rfft(np.asarray(spec, np.float64), nfft, axis=1)
    return sfft.irfft(f * lhat, nfft, axis=1)[:, :n].astype(spec.dtype)


def _check_maps(m: _Model, maps: dict[str, np.ndarray]) -> None:
    shift = np.abs(maps["jitter_eV"] + maps["drift_eV"]) + np.abs(maps["valence_eV"])
    if float(shift.max()) > m.max_shift:
        raise InputError(f"normal_expected: expected |jitter_eV + drift_eV| + |valence_eV| <= "
                         f"{m.max_shift:.2f} eV (the tabulated range), found "
                         f"{float(shift.max()):.3g} eV. Use smaller energy shifts.")
    if float(maps["exponent"].min()) <= 0.0:
        raise InputError("normal_expected: exponent expected > 0, found "
                         f"{float(maps['exponent'].min()):.3g}. Use values near 3.")
    if float(maps["intensity"].min()) < 0.0:
        raise InputError("normal_expected: intensity expected >= 0, found "
                         f"{float(maps['intensity'].min()):.3g}. Use values near 1.")
    if "t_over_lambda" in maps:
        t = maps["t_over_lambda"]
        if float(t.min()) < 0.0 or float(t.max()) > _T_LIMITS[1]:
            raise InputError(f"normal_expected: t_over_lambda expected within "
                             f"0..{_T_LIMITS[1]:g}, found "
                             f"{float(t.min()):.3g}..{float(t.max()):.3g}. Use values in range.")
