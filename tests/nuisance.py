"""Seeded Fe L2,3 spectrum images with realistic nuisances, for the context and calibration tests.

Self-contained (independent of :mod:`eelsanom.simulate`, so that these tests
keep their meaning whatever the simulator grows): every pixel's expected
spectrum is a power-law background plus two white lines (Lorentzian x Gaussian
pseudo-Voigt) and their arctan continuum steps, evaluated exactly at
``E - d(y, x) - shift``, where ``d`` is a smooth energy-drift field and
``shift`` the planted chemical shift of the anomalous pixels. Counts are
Poisson of ``intensity(y, x) * spectrum``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from eelsanom.spectrum import Axis, SpectrumImage

E0, DE, NE = 690.0, 0.3, 150  # 690-734.7 eV: Fe L3 and L2


def _spectrum(e: np.ndarray) -> np.ndarray:
    def line(c, w, h):
        lor = 1.0 / (1.0 + ((e - c) / (0.5 * w)) ** 2)
        gau = np.exp(-0.5 * ((e - c) / (0.5 * w)) ** 2)
        return h * (0.5 * lor + 0.5 * gau)

    def step(c, h):
        return h * (0.5 + np.arctan((e - c) / 0.8) / np.pi)

    bg = (e / 700.0) ** -3.0
    return bg + line(709.5, 1.6, 1.6) + line(722.6, 2.0, 0.5) + step(710.5, 0.3) + step(723.5, 0.15)


def smooth_field(rng: np.random.Generator, ny: int, nx: int, amplitude: float,
                 sigma: float = 10.0) -> np.ndarray:
    """A smooth random field of zero mean scaled to ``max |f| = amplitude``, shape (ny, nx)."""
    f = gaussian_filter(rng.standard_normal((ny, nx)), sigma, mode="reflect")
    f -= f.mean()
    return f * (amplitude / np.abs(f).max())


def clusters(rng: np.random.Generator, ny: int, nx: int, fraction: float,
             avoid: np.ndarray | None = None) -> np.ndarray:
    """Boolean (ny, nx) map of discs of radius 1.5-3 px covering about ``fraction`` of the pixels."""
    truth = np.zeros((ny, nx), bool)
    yy, xx = np.mgrid[:ny, :nx]
    while truth.mean() < fraction:
        cy, cx, r = rng.integers(3, ny - 3), rng.integers(3, nx - 3), rng.uniform(1.5, 3.0)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if avoid is not None and (disc & avoid).any():
            continue
        truth |= disc
    return truth


def nuisance_image(*, shape: tuple[int, int] = (64, 64), shift: float = 0.6, drift: float = 0.8,
                   fraction: float = 0.04, dose: float = 300.0, intensity: float = 0.15,
                   bulk_rows: int | None = None, drift_sigma: float = 10.0,
                   drift_pattern: str = "field", seed: int = 0
                   ) -> tuple[SpectrumImage, np.ndarray, np.ndarray]:
    """A drifted Fe L2,3 spectrum image with planted shifted clusters.

    Parameters
    ----------
    shape : (int, int)
    shift : float
        Chemical shift of the anomalous pixels, eV.
    drift : float
        Amplitude (max |d|) of the smooth energy-drift field, eV.
    fraction : float
        Fraction of pixels in anomalous clusters (0: none).
    dose : float
        Counts at the L3 maximum of an average pixel.
    intensity : float
        Relative amplitude of the smooth intensity (thickness) field.
    bulk_rows : int, optional
        The bulk region is the top ``bulk_rows`` rows (default 30 %); no cluster touches it.
    drift_sigma : float
        Correlation length of the drift field, pixels.
    drift_pattern : {"field", "ramp-x"}
        A smooth random field, or a linear ramp from ``-drift`` to ``+drift``
        along x (then every row, the bulk rows included, spans the whole drift).
    seed : int

    Returns
    -------
    si : SpectrumImage
        Poisson counts (ny, nx, 150) on 690-734.7 eV.
    truth : ndarray of bool (ny, nx)
    bulk : ndarray of bool (ny, nx)
    """
    ny, nx = shape
    rng = np.random.default_rng(seed)
    e = E0 + DE * np.arange(NE)
    d = smooth_field(rng, ny, nx, drift, drift_sigma)
    if drift_pattern == "ramp-x":
        d = np.broadcast_to(np.linspace(-drift, drift, nx), (ny, nx))
    amp = 1.0 + smooth_field(rng, ny, nx, intensity, 12.0)
    nb = int(round(0.3 * ny)) if bulk_rows is None else bulk_rows
    bulk = np.zeros((ny, nx), bool)
    bulk[:nb] = True
    truth = (clusters(rng, ny, nx, fraction, avoid=bulk) if fraction > 0
             else np.zeros((ny, nx), bool))
    s = d + shift * truth
    expected = _spectrum(e[None, None, :] - s[..., None]) * amp[..., None]
    expected *= dose / _spectrum(np.array([709.5]))[0]
    counts = rng.poisson(expected).astype(np.float32)
    si = SpectrumImage(counts, Axis(NE, DE, E0, "eV", "Energy loss"))
    return si, truth, bulk
