"""A second spectral model family: exSpy-style analytic components.

Independent of :mod:`eelsanom.simulate.felmodel` (other energies, widths,
line shapes, dispersion, and no tabulated templates): the spectrum is a sum of
the components a microscopist fits with exSpy,

- a power-law background ``A (E / E_ref) ** -r`` whose exponent flattens with
  thickness (``r = r0 - r_thickness * (t - 1)``) and whose amplitude grows
  faster than the edges (``A ~ t ** bg_thickness_power``: plural scattering
  adds background);
- hydrogenic-like edges: an arctan onset ``0.5 + atan((E - E0) / w) / pi``
  times a post-edge decay ``max(1, E / E0) ** -s`` (exSpy's ``EELSArctan``
  with a delayed fall-off), Fe L3 and L2 (2:1) and, for the ``"edge"``
  anomaly, Co L3 and L2;
- white lines as Gaussians (or Lorentzians) with the resolution folded into
  their width: Fe L3 split into a main peak and a low-energy shoulder (an
  Fe3+-like crystal-field multiplet), Fe L2 one peak.

Relative units: the background at ``E_ref`` (708 eV) is 1 for a pixel of
unit thickness. :func:`component_spectra` evaluates the normal or the
anomalous hypothesis for P pixels at once, each at its own energy jitter and
thickness; :class:`ComponentModel` keeps what :meth:`Simulation.normal_expected`
needs. The image, the nuisances and the detector are in
:mod:`eelsanom.simulate.general`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .fields import row_chunks

__all__ = ["COMPONENTS", "KINDS", "FLAGGED_KINDS", "NOT_FLAGGED_KINDS", "WINDOW",
           "ENERGY_SCALE", "ComponentModel", "component_spectra"]

#: energy window (start, stop) in eV and dispersion (eV/channel) of the family
WINDOW = (660.0, 800.0)
ENERGY_SCALE = 0.5
#: the anomaly kinds: the first three must be flagged; "thickness" and "intensity"
#: change a region in a way that must *not* be flagged (their truth is empty);
#: "none" changes nothing (an anomaly-free image)
FLAGGED_KINDS = ("shift", "ratio", "edge")
NOT_FLAGGED_KINDS = ("thickness", "intensity")
KINDS = FLAGGED_KINDS + NOT_FLAGGED_KINDS + ("none",)

#: the components (energies and widths in eV, heights relative to the background at E_ref)
COMPONENTS: dict[str, Any] = {
    "background": {"reference_energy": 708.0, "exponent": 3.4, "r_thickness": 0.4,
                   "bg_thickness_power": 1.3},
    "fe_edges": [{"energy": 707.6, "width": 1.1, "height": 0.55, "decay": 1.6},   # L3
                 {"energy": 720.6, "width": 1.4, "height": 0.275, "decay": 1.6}],  # L2
    # Fe white lines: L3 main + shoulder (multiplet), L2; "fwhm" includes the resolution
    "fe_l3_lines": [{"energy": 709.4, "fwhm": 2.0, "height": 2.0},
                    {"energy": 707.9, "fwhm": 1.3, "height": 0.85}],
    "fe_l2_lines": [{"energy": 722.4, "fwhm": 2.8, "height": 0.75}],
    # the "edge" anomaly: Co L2,3, heights relative to the Fe L3 main white line
    "co_edges": [{"energy": 778.3, "width": 1.1, "height": 0.25, "decay": 1.6},
                 {"energy": 793.3, "width": 1.4, "height": 0.125, "decay": 1.6}],
    "co_lines": [{"energy": 779.6, "fwhm": 2.2, "height": 1.0},
                 {"energy": 794.8, "fwhm": 3.0, "height": 0.35}],
    "microscope": {"beam_energy_keV": 300.0, "convergence_angle_mrad": 15.0,
                   "collection_angle_mrad": 35.0},
}


def _edge(e: np.ndarray, c: dict[str, float]) -> np.ndarray:
    """Arctan onset times a post-edge power decay (hydrogenic-like), height ``c["height"]``."""
    e0 = c["energy"]
    onset = 0.5 + np.arctan((e - e0) / c["width"]) / math.pi
    return c["height"] * onset * np.maximum(1.0, e / e0) ** (-c["decay"])


def _line(e: np.ndarray, c: dict[str, float], shape: str) -> np.ndarray:
    """A white line of peak height ``c["height"]``: Gaussian or Lorentzian of FWHM ``c["fwhm"]``."""
    x = (e - c["energy"]) / (0.5 * c["fwhm"])
    if shape == "lorentzian":
        return c["height"] / (1.0 + x * x)
    return c["height"] * np.exp(-math.log(2.0) * x * x)


def _lines_area(lines: list[dict[str, float]], shape: str) -> float:
    k = 0.5 * math.pi if shape == "lorentzian" else 0.5 * math.sqrt(math.pi / math.log(2.0))
    return sum(k * c["height"] * c["fwhm"] for c in lines)


def ratio_factors(factor: float, shape: str) -> tuple[float, float]:
    """Multipliers ``(a3, a2)`` of the L3 and L2 white lines for an L3/L2 ratio times ``factor``.

    The total white-line area is kept.

    Parameters
    ----------
    factor : float
        The change of the L3/L2 area ratio, > 0.
    shape : {"gaussian", "lorentzian"}
        White-line shape.

    Returns
    -------
    (float, float)
        ``a3 / a2 == factor`` and ``a3 * area3 + a2 * area2 == area3 + area2``.
    """
    s3 = _lines_area(COMPONENTS["fe_l3_lines"], shape)
    s2 = _lines_area(COMPONENTS["fe_l2_lines"], shape)
    a2 = (s3 + s2) / (factor * s3 + s2)
    return factor * a2, a2


def component_spectra(energy: np.ndarray, thickness: np.ndarray, jitter: np.ndarray, *,
                      kind: str = "none", magnitude: float = 0.0, anomalous: bool = False,
                      white_lines: str = "gaussian") -> np.ndarray:
    """Noise-free spectra (P, ne), relative units, of P pixels.

    Parameters
    ----------
    energy : ndarray (ne,)
        Channel energies, eV.
    thickness : ndarray (P,)
        Relative thickness (1 = average pixel).
    jitter : ndarray (P,)
        Whole-spectrum energy shift of each pixel, eV (every component is
        evaluated at ``E - jitter``).
    kind, magnitude : str, float
        The anomaly (:data:`KINDS`); applied only when ``anomalous`` is true
        and the kind is one of :data:`FLAGGED_KINDS` (``"thickness"`` and
        ``"intensity"`` act through the nuisance maps, not here).
    anomalous : bool
        Evaluate the anomalous hypothesis.
    white_lines : {"gaussian", "lorentzian"}
        White-line shape.

    Returns
    -------
    ndarray of float64, shape (P, ne)
    """
    c = COMPONENTS
    bgp = c["background"]
    t = np.asarray(thickness, np.float64).reshape(-1, 1)
    e = np.asarray(energy, np.float64)[None, :] - np.asarray(jitter, np.float64).reshape(-1, 1)
    r = bgp["exponent"] - bgp["r_thickness"] * (t - 1.0)
    out = t ** bgp["bg_thickness_power"] * np.exp(-r * np.log(e / bgp["reference_energy"]))
    act = anomalous and kind in FLAGGED_KINDS
    e_fe = e - magnitude if act and kind == "shift" else e
    a3 = a2 = 1.0
    if act and kind == "ratio":
        a3, a2 = ratio_factors(magnitude, white_lines)
    fe = np.zeros_like(out)
    for comp in c["fe_edges"]:
        fe += _edge(e_fe, comp)
    for comp in c["fe_l3_lines"]:
        fe += a3 * _line(e_fe, comp, white_lines)
    for comp in c["fe_l2_lines"]:
        fe += a2 * _line(e_fe, comp, white_lines)
    if act and kind == "edge":
        h = magnitude * c["fe_l3_lines"][0]["height"]
        for comp in c["co_edges"]:
            fe += h * _edge(e, comp)
        for comp in c["co_lines"]:
            fe += h * _line(e, comp, white_lines)
    out += t * fe
    return out


def psf(spec: np.ndarray, sigma: float) -> np.ndarray:
    """The detector's point-spread along energy: a unit-area Gaussian of ``sigma`` channels.

    Parameters
    ----------
    spec : ndarray (..., ne)
        Spectra along the last axis.
    sigma : float
        Channels; 0 returns ``spec`` itself.

    Returns
    -------
    ndarray
        Same shape (edges extended with the nearest channel).
    """
    if sigma <= 0:
        return spec
    return ndimage.gaussian_filter1d(spec, sigma, axis=-1, mode="nearest", truncate=4.0)


@dataclass
class ComponentModel:
    """What :meth:`Simulation.normal_expected` needs to recompute this family's normal spectra.

    ``normal_expected(maps)`` takes the nuisance maps ``thickness``, ``scale``
    (beam current) and ``jitter_eV`` and returns the noise-free normal
    electrons ``psf(scale_k * scale * spectrum(thickness, jitter))``: exactly
    what the generator computed where nothing changed.

    Attributes
    ----------
    energy : ndarray (ne,)
        Channel energies, eV.
    scale_k : float
        Electrons per relative unit (set by the dose).
    white_lines : {"gaussian", "lorentzian"}
    psf_sigma : float
        The detector's point-spread, channels.
    dtype : numpy dtype
        Of the returned spectra.
    rows : int
        Image rows evaluated at once.
    max_jitter : float
        Largest ``|jitter_eV|`` accepted by :meth:`check_maps`.
    t_ref : None
        No t/lambda nuisance in this family.
    """

    energy: np.ndarray
    scale_k: float
    white_lines: str
    psf_sigma: float
    dtype: np.dtype
    rows: int
    max_jitter: float = 5.0
    t_ref: float | None = None  # no t/lambda nuisance in this family

    def spectra(self, maps: dict[str, np.ndarray], *, kind: str = "none",
                magnitude: float = 0.0, anomalous: bool = False,
                apply_psf: bool = True) -> np.ndarray:
        """Noise-free electrons (ny, nx, ne) for nuisance maps of shape (ny, nx).

        Parameters
        ----------
        maps : dict of str to ndarray (ny, nx)
            ``thickness``, ``scale`` and ``jitter_eV``.
        kind, magnitude, anomalous
            The hypothesis (see :func:`component_spectra`).
        apply_psf : bool
            False: before the detector's point-spread (the Poisson means).

        Returns
        -------
        ndarray (ny, nx, ne) of ``dtype``
        """
        ny, nx = maps["thickness"].shape
        ne = self.energy.size
        out = np.empty((ny, nx, ne), dtype=self.dtype)
        for sl in row_chunks(ny, self.rows):
            s = component_spectra(self.energy, maps["thickness"][sl].reshape(-1),
                                  maps["jitter_eV"][sl].reshape(-1), kind=kind,
                                  magnitude=magnitude, anomalous=anomalous,
                                  white_lines=self.white_lines)
            s *= self.scale_k * maps["scale"][sl].reshape(-1, 1)
            if apply_psf:
                s = psf(s, self.psf_sigma)
            out[sl] = s.reshape(sl.stop - sl.start, nx, ne)
        return out

    def check_maps(self, maps: dict[str, np.ndarray]) -> None:
        """Refuse nuisance maps this model cannot evaluate.

        Parameters
        ----------
        maps : dict of str to ndarray (ny, nx)

        Raises
        ------
        InputError
            A jitter beyond :attr:`max_jitter`, or a thickness or scale <= 0.
        """
        if float(np.abs(maps["jitter_eV"]).max()) > self.max_jitter:
            raise InputError(f"normal_expected: expected |jitter_eV| <= {self.max_jitter:g} eV, "
                             f"found {float(np.abs(maps['jitter_eV']).max()):.3g}. Use smaller "
                             "energy shifts.")
        for key in ("thickness", "scale"):
            if float(maps[key].min()) <= 0.0:
                raise InputError(f"normal_expected: {key} expected > 0, found "
                                 f"{float(maps[key].min()):.3g}. Use values near 1.")

    def normal_expected(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Noise-free normal electrons (ny, nx, ne) for nuisance maps of shape (ny, nx).

        Parameters
        ----------
        maps : dict of str to ndarray (ny, nx)
            ``thickness``, ``scale`` and ``jitter_eV``.

        Returns
        -------
        ndarray (ny, nx, ne)
        """
        return self.spectra(maps)
