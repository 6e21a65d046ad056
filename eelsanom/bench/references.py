"""The references that bound what is attainable (supervised limit, perfect bulk, manifold oracle)."""

from __future__ import annotations

import numpy as np

from ..pooling import Pooling

REFERENCES = ("supervised-limit", "perfect-bulk", "perfect-bulk+pool", "manifold-oracle")


def _poisson_terms(x: np.ndarray, lam: np.ndarray) -> np.ndarray:
    lam = np.maximum(lam.astype(np.float64), 1e-9)
    return x * np.log(lam) - lam


def _deviance(x: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Poisson deviance of counts ``x`` from means ``lam``, summed over the last axis."""
    lam = np.maximum(np.asarray(lam, np.float64), 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / lam), 0.0)
    return 2.0 * np.sum(xlogx - (x - lam), axis=-1)


def _electrons(sim) -> np.ndarray:
    """The observed data in electrons (gain and dark offset undone), clipped at 0."""
    data = np.asarray(sim.si.data, np.float64)
    if hasattr(sim, "to_electrons"):
        data = np.asarray(sim.to_electrons(data), np.float64)
    return np.maximum(data, 0.0)


def _normal_expected(sim) -> np.ndarray:
    t = np.asarray(sim.truth, bool)[..., None]
    return np.where(t, np.asarray(sim.expected_alt, np.float64),
                    np.asarray(sim.expected, np.float64))


def perfect_bulk_pooled(sim, pooling: Pooling | None = None) -> np.ndarray:
    """The perfect bulk model scored through the shared pooling stage.

    Each pixel's Gaussian in Anscombe units: mean ``2 sqrt(lam0 + 1/8)`` (the
    Anscombe transform's expectation for Poisson counts of mean ``lam0``, the
    pixel's noise-free *normal* spectrum), sigma 1; the observed counts (in
    electrons) transformed the same way; then :func:`eelsanom.pooling.pool_image`.

    Parameters
    ----------
    sim : Simulation
    pooling : Pooling, optional
        Default: the detectors' default pooling.

    Returns
    -------
    ndarray of shape (ny, nx)
    """
    from ..pooling import gaussian_block, pool_image

    pooling = pooling or Pooling()
    x = _electrons(sim)
    lam0 = _normal_expected(sim)
    target = 2.0 * np.sqrt(x + 0.375)
    mean = 2.0 * np.sqrt(np.maximum(lam0, 0.0) + 0.125)
    ny, nx, ne = x.shape

    def gauss(rows: slice, cols: slice):
        return gaussian_block(target[rows, cols], mean[rows, cols], 1.0)

    out = pool_image(gauss, ny, nx, pooling=pooling, noise2=1.0,
                     excess=(0.0, float(np.sqrt(0.5 * ne))), n_energy=ne)
    return out["score"]


def manifold_oracle(sim, nuisance: str, n_grid: int = 61) -> np.ndarray:
    """Best per-pixel Poisson deviance over a grid of one nuisance's values.

    For every value ``g`` on a grid spanning the nuisance map's range (plus a
    margin), the noise-free normal spectra with that nuisance set to ``g``
    everywhere (all other nuisances as simulated,
    ``Simulation.normal_expected``); each pixel keeps its smallest deviance.
    What a flawless per-pixel model of the bulk family scores when it does not
    know the local nuisance value.

    Parameters
    ----------
    sim : Simulation
    nuisance : str
        Key of ``sim.nuisance`` (e.g. ``"drift_eV"``).
    n_grid : int
        Grid points.

    Returns
    -------
    ndarray of shape (ny, nx)
    """
    x = _electrons(sim)
    vals = np.asarray(sim.nuisance[nuisance], np.float64)
    lo, hi = float(vals.min()), float(vals.max())
    margin = 0.1 * max(hi - lo, 0.1)
    best = np.full(x.shape[:2], np.inf)
    for g in np.linspace(lo - margin, hi + margin, n_grid):
        lam = sim.normal_expected(**{nuisance: float(g)})
        best = np.minimum(best, _deviance(x, lam))
    return best


def reference_scores(sim, oracle: str | None = None) -> dict[str, np.ndarray]:
    """NLL-like maps of the reference detectors (higher = more anomalous).

    ``x`` are the observed counts in electrons (read noise is ignored; negative
    counts are clipped at 0). Under H1 (anomalous) the expectation is ``lam1``
    and under H0 ``lam0``: for anomalous pixels ``lam1 = expected`` and ``lam0 =
    expected_alt``; for normal pixels the reverse.

    Parameters
    ----------
    sim : Simulation
        Output of :func:`eelsanom.simulate.simulate`; uses ``si.data``,
        ``expected``, ``expected_alt`` (counts, shape ``(ny, nx, n_energy)``)
        and ``truth`` (bool, ``(ny, nx)``).
    oracle : str, optional
        Nuisance the manifold oracle searches (no oracle when ``None``).

    Returns
    -------
    dict of str to ndarray of shape (ny, nx)
        ``"supervised-limit"`` (Poisson log-likelihood ratio), ``"perfect-bulk"``
        (Poisson deviance from the normal spectrum), ``"perfect-bulk+pool"``
        (:func:`perfect_bulk_pooled`) and, with ``oracle``, ``"manifold-oracle"``
        (:func:`manifold_oracle`).
    """
    x = _electrons(sim)
    exp = np.asarray(sim.expected, np.float64)
    alt = np.asarray(sim.expected_alt, np.float64)
    t = np.asarray(sim.truth, bool)[..., None]
    lam1 = np.where(t, exp, alt)
    lam0 = np.where(t, alt, exp)
    llr = np.sum(_poisson_terms(x, lam1) - _poisson_terms(x, lam0), axis=-1)
    out = {"supervised-limit": llr, "perfect-bulk": _deviance(x, lam0),
           "perfect-bulk+pool": perfect_bulk_pooled(sim)}
    if oracle is not None:
        out["manifold-oracle"] = manifold_oracle(sim, oracle)
    return out
