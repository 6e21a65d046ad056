"""The detection benchmark behind ``eelsanom bench`` (see ``docs/benchmark.md``).

Every condition simulates a seeded spectrum image (:func:`eelsanom.simulate.simulate`),
fits each detector on the bulk region (or on all pixels, robustly, in the
unsupervised conditions), scores the whole image, and compares the NLL map with
the ground truth. Two suites:

- ``paper`` (:func:`quick_conditions`, :func:`full_conditions`): the paper's
  protocol done right (Fe L2,3 shifts of 0.3-2.4 eV, concentrations, doses,
  anomaly types) on a bulk whose only nuisances are a smooth intensity and
  background-exponent variation and white per-pixel energy jitter;
- ``realistic`` (:func:`realistic_conditions`): the same anomalies under the
  nuisances of real scans -- a smooth energy drift larger than the shifts, a
  bulk valence gradient, thickness with plural scattering, gain-scaled counts
  with a dark offset and read noise; isolated pixels; a bulk region that does
  not span the drift; an anomaly-free image (false-positive rate).

Every eelsanom detector appears with and without the shared evidence pooling
(:mod:`eelsanom.pooling`): one fit, scored twice (``+pool`` in the label). The
references bound what is attainable:

- ``supervised-limit``: the Poisson log-likelihood ratio of "anomalous" vs
  "normal" with both noise-free spectra known (Neyman-Pearson optimal);
- ``perfect-bulk``: the Poisson deviance of each pixel's counts from its own
  noise-free *normal* spectrum (a flawless one-class model, no neighbours);
  ``perfect-bulk+pool`` scores that perfect model through the same pooling
  stage as the detectors;
- ``manifold-oracle`` (realistic suite): the best per-pixel Poisson deviance
  over a fine grid of the condition's main nuisance (drift, valence or
  thickness), all else known: the best any *per-pixel* model of the bulk
  family can do when it does not know the local nuisance.

HyperSpy's own ``decomposition()`` (fitted on the whole image, as a
microscopist uses it; score = squared reconstruction error of its model) is the
outside peer; it is skipped when HyperSpy is not installed.

Outputs: ``results.csv`` (one row per condition x detector), ``results.md``
(header with version, commit, device, dtype, seeds, timings; tables; the
3D-CVAE's training record; a verdict; the calibrated false-positive rate),
``calibration.csv`` (realistic suite: the threshold calibrated on held-out bulk
pixels, on the anomaly-free images over :data:`CALIBRATION_SEEDS` seeds,
:func:`calibration_fpr`), and figures (ROC curves, NLL histograms with
thresholds, truth vs maps).

Detector settings are the library's defaults, read from the parameter table
(:mod:`eelsanom.detectors.params`); the bench's own choices are the named
constants :data:`POOLED_SIGMA`, :data:`CALIBRATION_SEEDS`,
:data:`CALIBRATION_ALPHA` and :data:`QUICK_CALIBRATION_EPOCHS`, and
:data:`ALIASES`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import math
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, scoring
from .errors import InputError
from .io._files import atomic_write
from .pooling import DEFAULT_SIGMA, Pooling

log = logging.getLogger(__name__)

__all__ = ["Condition", "quick_conditions", "full_conditions", "reference_scores",
           "run_benchmark", "run_speed", "speed_ratios", "calibration_fpr", "variants"]

SHIFTS = (0.3, 0.6, 0.9, 1.5, 2.4)
CONCENTRATIONS = (0.005, 0.01, 0.02, 0.05, 0.10)
DOSES = (50.0, 200.0, 1000.0)
REFERENCES = ("supervised-limit", "perfect-bulk", "perfect-bulk+pool", "manifold-oracle")
SUITES = ("paper", "realistic")
#: what ``eelsanom bench`` runs by default: every eelsanom detector and the outside peer
DEFAULT_METHODS = ("cvae", "cvae-ctx", "pca", "context-pca", "rx", "hyperspy")
#: benchmark names that are a detector with other settings: name -> (method, params)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cvae-ctx": ("cvae", {"context": "blind-spot"}),  # the 3D-CVAE's blind-spot context mode
}
# The bench's own choices (everything else is the detector's default, read from the
# parameter table eelsanom.detectors.params, so the bench measures what users get):
#: pooling sigma (px) of the ``+pool`` variant of a detector whose default is no pooling
#: (PCA, RX); a detector that pools by default is pooled at its own default
POOLED_SIGMA = DEFAULT_SIGMA
#: anomaly-free images per condition (seeds ``seed .. seed + N - 1``) over which the calibrated
#: threshold's false-positive rate is measured (realistic suite)
CALIBRATION_SEEDS = 5
#: the calibrated threshold's nominal false-positive rate (``threshold="calibrated"``)
CALIBRATION_ALPHA = scoring.DEFAULT_ALPHA
#: 3D-CVAE epochs in the quick suite's calibration measurement (it trains the network
#: ``1 + folds`` times per image and seed), which also measures only the suite's first
#: anomaly-free condition; None: the detector's default
QUICK_CALIBRATION_EPOCHS: int | None = 3


def variants(method: str) -> tuple[tuple[str, float], ...]:
    """The scorings of one fitted detector in the benchmark: ``(label, pooling sigma)``.

    The detector's default scoring first (its default ``pooling`` from the
    parameter table), then the other: unpooled (``sigma = 0``) or pooled
    (label ``+pool``, at the default or, for a detector that does not pool by
    default, at :data:`POOLED_SIGMA`).

    Parameters
    ----------
    method : str
        A benchmark method (a detector key or an :data:`ALIASES` name).

    Returns
    -------
    tuple of (str, float)
        Two ``(label, sigma)`` pairs, default first.

    Raises
    ------
    InputError
        When the method is unknown.
    """
    from .detectors.params import defaults

    base, settings = ALIASES.get(method, (method, {}))
    default = float(settings.get("pooling", defaults(base)["pooling"]))
    pooled = ((f"{method}+pool", default if default > 0 else POOLED_SIGMA), (method, 0.0))
    return pooled if default > 0 else pooled[::-1]


#: realistic nuisances (physical units): energy drift field (eV), valence gradient (eV),
#: t/lambda range with plural scattering, detector gain (counts per electron), dark offset
#: and read noise (counts)
DRIFT = {"drift": 0.8}
VALENCE = {"valence_gradient": 1.0}
THICKNESS = {"thickness": (0.2, 1.0)}
DETECTOR = {"gain": 4.0, "dark_offset": 50.0, "read_noise": 3.0}


@dataclass
class Condition:
    """One simulated test case.

    Attributes
    ----------
    name : str
        Label used in tables and figure titles, e.g. ``"shift 0.9 eV"``.
    sim : dict
        Keyword arguments of :func:`eelsanom.simulate.simulate` (without ``seed``).
    supervised : bool, default True
        Fit the detectors on the simulated bulk mask; ``False`` fits on all
        pixels (robustly), as on real data without a known bulk region.
    oracle : str, optional
        Nuisance map (a key of ``Simulation.nuisance``) the manifold oracle
        searches over; ``None``: no manifold oracle in this condition.
    bulk : {"simulated", "spanning"}, default "simulated"
        The bulk region fitted on: the simulation's (the top rows), or
        ``"spanning"``, every other square of :data:`SPANNING_BLOCK` pixels (a
        checkerboard over the whole image, so the region spans every smooth
        nuisance field, as a user's region should; :func:`bulk_region`).
    """

    name: str
    sim: dict[str, Any]
    supervised: bool = True  # train on the bulk mask (else: all pixels, robustly)
    oracle: str | None = None
    bulk: str = "simulated"

    def label(self) -> str:
        """The condition's display label (its ``name``).

        Returns
        -------
        str
            ``self.name``.
        """
        return self.name


def quick_conditions() -> list[Condition]:
    """Paper suite, CPU subset: 64 x 64, fe-l, dose 200, 2 % clusters, the shift sweep.

    Returns
    -------
    list of Condition
        One condition per edge shift in :data:`SHIFTS` (eV), bulk-trained.
    """
    base = dict(shape=(64, 64), window="fe-l", anomaly="shift", anomaly_shape="clusters",
                concentration=0.02, dose=200.0)
    return [Condition(f"shift {s:g} eV", {**base, "magnitude": s}) for s in SHIFTS]


def full_conditions() -> list[Condition]:
    """Paper suite, full: 192 x 192, bfo window, 1 % clusters; shift, concentration, dose, types.

    Returns
    -------
    list of Condition
        The shift sweep (:data:`SHIFTS`), the concentration sweep
        (:data:`CONCENTRATIONS`) and dose sweep (:data:`DOSES`, counts) at a
        0.9 eV shift, isolated pixels and a line instead of clusters, a
        ratio and an impurity anomaly, and one unsupervised condition.
    """
    base = dict(shape=(192, 192), window="bfo", anomaly="shift", anomaly_shape="clusters",
                concentration=0.01, dose=200.0)
    conds = [Condition(f"shift {s:g} eV", {**base, "magnitude": s}) for s in SHIFTS]
    conds += [Condition(f"conc {100 * c:g} % @0.9 eV", {**base, "magnitude": 0.9,
                                                         "concentration": c})
              for c in CONCENTRATIONS if c != base["concentration"]]
    conds += [Condition(f"dose {d:g} @0.9 eV", {**base, "magnitude": 0.9, "dose": d})
              for d in DOSES if d != base["dose"]]
    conds += [Condition(f"{shp} @0.9 eV", {**base, "magnitude": 0.9, "anomaly_shape": shp})
              for shp in ("pixels", "line")]
    conds += [Condition("ratio x0.7", {**base, "anomaly": "ratio", "magnitude": 0.7}),
              Condition("impurity 0.1", {**base, "anomaly": "impurity", "magnitude": 0.1}),
              Condition("unsupervised shift 0.9 eV", {**base, "magnitude": 0.9}, supervised=False)]
    return conds


def realistic_conditions(quick: bool = True) -> list[Condition]:
    """Realistic suite: Fe L2,3 shifts under the nuisances of real scans.

    0.3, 0.6 and 0.9 eV shifts (2 % clusters) under: a smooth energy-drift field
    of +-0.8 eV (:data:`DRIFT`), a bulk valence gradient of 1 eV across the
    image (:data:`VALENCE`), t/lambda 0.2-1.0 with plural scattering
    (:data:`THICKNESS`), and drift plus thickness with gain-scaled counts, a
    dark offset and read noise (:data:`DETECTOR`). Then, at 0.6 eV under drift:
    isolated pixels (1 %), and a drift that ramps along the slow-scan axis so
    that the bulk rectangle (the top rows) does not span it; and anomaly-free
    images with drift, thickness and detector response (fitted on a bulk
    region spanning the nuisance, a checkerboard of squares, and on the top
    rows, which do not) and with the ramp, which measure each detector's
    false-positive rate at its automatic and calibrated thresholds.

    Parameters
    ----------
    quick : bool
        64 x 64 pixels (CPU, minutes); else 128 x 128.

    Returns
    -------
    list of Condition
        17 conditions, each naming the nuisance its manifold oracle searches.
    """
    shape = (64, 64) if quick else (128, 128)
    base = dict(shape=shape, window="fe-l", anomaly="shift", anomaly_shape="clusters",
                concentration=0.02, dose=200.0)
    combined = {**DRIFT, **THICKNESS, **DETECTOR}
    families = (("drift", DRIFT, "drift_eV"), ("valence", VALENCE, "valence_eV"),
                ("thickness", THICKNESS, "t_over_lambda"),
                ("drift+thickness+gain", combined, "drift_eV"))
    conds = [Condition(f"{name} / shift {s:g} eV", {**base, **nuis, "magnitude": s}, oracle=o)
             for name, nuis, o in families for s in (0.3, 0.6, 0.9)]
    conds += [
        Condition("drift / shift 0.6 eV, isolated pixels",
                  {**base, **DRIFT, "magnitude": 0.6, "anomaly_shape": "pixels",
                   "concentration": 0.01}, oracle="drift_eV"),
        Condition("drift ramp, bulk not spanning it / shift 0.6 eV",
                  {**base, **DRIFT, "drift_pattern": "ramp", "magnitude": 0.6},
                  oracle="drift_eV"),
        Condition("anomaly-free, drift+thickness+gain, bulk spanning it",
                  {**base, **combined, "magnitude": 0.6, "concentration": 0.0},
                  oracle="drift_eV", bulk="spanning"),
        Condition("anomaly-free, drift+thickness+gain",
                  {**base, **combined, "magnitude": 0.6, "concentration": 0.0},
                  oracle="drift_eV"),
        Condition("anomaly-free, drift ramp, bulk not spanning it",
                  {**base, **DRIFT, "drift_pattern": "ramp", "magnitude": 0.6,
                   "concentration": 0.0}, oracle="drift_eV"),
    ]
    return conds


#: side in pixels of the squares of a ``bulk="spanning"`` condition's checkerboard region
SPANNING_BLOCK = 8


def bulk_region(cond: Condition, sim: Any) -> np.ndarray | None:
    """The region a condition's detectors are fitted on.

    Parameters
    ----------
    cond : Condition
    sim : Simulation
        The condition's simulated image.

    Returns
    -------
    ndarray of bool, shape (ny, nx), or None
        None (all pixels, robustly) when ``cond.supervised`` is False; the
        simulation's bulk mask for ``bulk="simulated"``; for ``"spanning"`` the
        squares of :data:`SPANNING_BLOCK` pixels with an even ``row + column``
        square index that hold no anomalous pixel.

    Raises
    ------
    InputError
        When ``cond.bulk`` is not one of the two.
    """
    if not cond.supervised:
        return None
    if cond.bulk == "simulated":
        return sim.bulk_mask
    if cond.bulk != "spanning":
        raise InputError(f"Condition {cond.name!r}: bulk expected 'simulated' or 'spanning', "
                         f"got {cond.bulk!r}.")
    ny, nx = sim.truth.shape
    b = SPANNING_BLOCK
    squares = ((np.arange(ny)[:, None] // b) + (np.arange(nx)[None] // b)) % 2 == 0
    return squares & ~np.asarray(sim.truth, bool)


def suite_conditions(suite: str, quick: bool) -> list[Condition]:
    """The conditions of a suite.

    Parameters
    ----------
    suite : {"paper", "realistic"}
    quick : bool
        The CPU-sized subset.

    Returns
    -------
    list of Condition

    Raises
    ------
    InputError
        When ``suite`` is unknown.
    """
    if suite == "paper":
        return quick_conditions() if quick else full_conditions()
    if suite == "realistic":
        return realistic_conditions(quick)
    raise InputError(f"suite: expected one of {list(SUITES)}, got {suite!r}.")


# ----------------------------------------------------------------------------- references
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
    from .pooling import gaussian_block, pool_image

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


# ----------------------------------------------------------------------------- measuring
class PeakRSS:
    """Sample the process's resident memory in a thread; ``peak_mb`` after the block.

    Use as a context manager: ``with PeakRSS() as mem: ...; mem.peak_mb``.

    Parameters
    ----------
    interval : float, default 0.01
        Seconds between samples.

    Attributes
    ----------
    peak : int
        Highest resident set size seen, in bytes.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        """Resident memory of this process, in bytes.

        Returns
        -------
        int
            Current RSS from ``/proc/self/statm`` on Linux; elsewhere the peak
            RSS so far from ``resource.getrusage`` (``ru_maxrss * 1024``).
        """
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_mb(self) -> float:
        """Peak resident memory in MiB."""
        return self.peak / 2**20


def _cuda_reset(device: str) -> None:
    try:
        import torch

        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001
        pass


def _cuda_peak_mb(device: str) -> float:
    try:
        import torch

        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # noqa: BLE001
        pass
    return float("nan")


def _resolved_device(device: str) -> str:
    from .device import resolve_device

    return str(resolve_device(device))


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "n/a"
    except Exception:  # noqa: BLE001
        return "n/a"


def _hyperspy_available() -> bool:
    try:
        import hyperspy  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def hyperspy_decomposition_score(si) -> tuple[np.ndarray, dict[str, Any]]:
    """HyperSpy's ``decomposition()`` on the whole image; score = squared reconstruction error.

    Poisson-normalised SVD (``normalize_poissonian_noise=True``), number of
    components from HyperSpy's own elbow estimate (at least 2) — the workflow a
    microscopist uses today. Returns ``(score map (ny, nx), info)``.

    Needs HyperSpy (imported here). Negative counts are clipped at 0 before
    the decomposition; the error is computed against the unclipped data.

    Parameters
    ----------
    si : SpectrumImage
        Data of shape ``(ny, nx, n_energy)`` in counts.

    Returns
    -------
    score : ndarray of shape (ny, nx)
        Squared reconstruction error summed over energy (counts^2); higher =
        more anomalous.
    info : dict
        ``{"n_components": k}``, the number of components used (2 to 20; 5
        when the elbow estimate fails).
    """
    import hyperspy.api as hs

    data = np.maximum(np.asarray(si.data, np.float32), 0)
    s = hs.signals.Signal1D(data)
    s.axes_manager[-1].scale = si.energy.scale
    s.axes_manager[-1].offset = si.energy.offset
    s.decomposition(normalize_poissonian_noise=True, print_info=False)
    try:
        k = int(s.estimate_elbow_position()) + 1
    except Exception:  # noqa: BLE001
        k = 5
    k = int(np.clip(k, 2, 20))
    model = s.get_decomposition_model(k)
    err = np.sum((np.asarray(si.data, np.float64) - model.data) ** 2, axis=-1)
    return err, {"n_components": k}


def _detector_params(method: str, device: str, seed: int) -> dict[str, Any]:
    """The bench's run settings (seed, device) for the detectors that take them."""
    from .detectors.params import defaults

    names = defaults(method)
    return {k: v for k, v in (("seed", seed), ("device", device)) if k in names}


def _metrics(nll: np.ndarray, truth: np.ndarray, threshold_spec: Any = "robust") -> dict[str, Any]:
    t, label = scoring.compute_threshold(nll, threshold_spec)
    mask = nll > t
    if truth.any():
        m = scoring.evaluate(nll, mask, truth)
    else:  # an anomaly-free image: only the false-positive rate means something
        m = {k: float("nan") for k in ("roc_auc", "average_precision", "best_f1",
                                       "best_f1_threshold", "precision", "recall", "f1")}
    m.update(scoring.bimodality(nll))
    m["fpr"] = float(np.mean(mask[~truth])) if (~truth).any() else float("nan")
    m["n_flagged"] = int(mask.sum())
    m["threshold"] = t
    m["threshold_method"] = label
    return m


def _training_record(det: Any) -> dict[str, Any]:
    """Held-out bulk NLL of the 3D-CVAE's initialisation and best epoch (from ``history_``)."""
    h = getattr(det, "history_", None) or {}
    return {"init_val": float(h.get("init_val", float("nan"))),
            "best_val": float(h.get("best_val", float("nan"))),
            "best_epoch": int(h.get("best_epoch", -1)), "epochs_run": int(h.get("epochs_run", 0)),
            "init_won": bool(h.get("init_won", False))}


def run_condition(cond: Condition, methods: list[str], *, device: str, seed: int,
                  progress=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Simulate one condition and run every detector and reference on it.

    Each eelsanom detector is fitted once and scored without and with the
    shared pooling stage (:func:`variants`).

    Parameters
    ----------
    cond : Condition
        The test case.
    methods : list of str
        Detectors to run (``"cvae"``, ``"pca"``, ``"rx"``, ``"hyperspy"``); the
        references always run. ``"hyperspy"`` is skipped, with a warning, when
        HyperSpy is not installed.
    device : str
        Torch device for the CVAE and PCA (see :func:`eelsanom.device.resolve_device`).
    seed : int
        Seed of the simulation and of the detectors.
    progress : callable, optional
        Progress callback passed to each detector's ``fit``.

    Returns
    -------
    rows : list of dict
        One row per detector variant and reference: condition, simulation
        parameters, metrics (see :func:`eelsanom.scoring.evaluate`, plus
        bimodality, the false-positive rate ``fpr`` and the automatic threshold),
        fit/score seconds, device, peak memory (MiB); the 3D-CVAE's rows carry
        its training record (``init_val``, ``best_val``, ``best_epoch``,
        ``init_won``).
    maps : dict
        ``"truth"`` (bool, ``(ny, nx)``), ``"nll"`` (detector -> ``(ny, nx)``
        NLL map) and ``"thresholds"`` (detector -> float).
    """
    from .detectors import get_detector
    from .simulate import simulate

    sim = simulate(**cond.sim, seed=seed)
    truth = sim.truth
    train_mask = bulk_region(cond, sim)
    rows: list[dict[str, Any]] = []
    maps: dict[str, Any] = {"truth": truth, "nll": {}, "thresholds": {}}
    base = {"condition": cond.name, "supervised": cond.supervised, "bulk": cond.bulk, "seed": seed,
            **{f"sim_{k}": (list(v) if isinstance(v, tuple) else v) for k, v in cond.sim.items()}}
    t0 = time.perf_counter()
    refs = reference_scores(sim, cond.oracle)
    ref_s = time.perf_counter() - t0
    for name, nll in refs.items():
        m = _metrics(nll, truth)
        rows.append({**base, "detector": name, **m, "fit_s": 0.0, "score_s": ref_s / len(refs),
                     "device": "n/a", "n_parameters": 0})
        maps["nll"][name] = nll
        maps["thresholds"][name] = m["threshold"]
    for method in methods:
        if method == "hyperspy":
            if not _hyperspy_available():
                log.warning("HyperSpy is not installed: skipping its decomposition peer")
                continue
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                nll, info = hyperspy_decomposition_score(sim.si)
                dt = time.perf_counter() - t0
            m = _metrics(nll, truth)
            rows.append({**base, "detector": "hyperspy-decomposition", **m, "fit_s": dt,
                         "score_s": 0.0, "device": "cpu", "peak_rss_mb": mem.peak_mb,
                         "n_parameters": 0, "notes": f"k={info['n_components']}, fit on the image"})
            maps["nll"]["hyperspy-decomposition"] = nll
            maps["thresholds"]["hyperspy-decomposition"] = m["threshold"]
            continue
        base_method, settings = ALIASES.get(method, (method, {}))
        det = get_detector(base_method, **_detector_params(base_method, device, seed), **settings)
        _cuda_reset(device)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            det.fit(sim.si, train_mask, progress=progress)
            fit_s = time.perf_counter() - t0
        extra = _training_record(det) if base_method == "cvae" else {}
        for label, sigma in variants(method):
            det.set_params(pooling=sigma)
            with PeakRSS() as mem_s:
                t1 = time.perf_counter()
                res = det.score(sim.si)
                score_s = time.perf_counter() - t1
            m = _metrics(res.nll, truth, getattr(det, "threshold", "robust"))
            rows.append({**base, "detector": label, **m, "fit_s": fit_s, "score_s": score_s,
                         "device": _resolved_device(device) if "device" in det.get_params()
                         else "cpu", "peak_rss_mb": max(mem.peak_mb, mem_s.peak_mb),
                         "peak_gpu_mb": _cuda_peak_mb(device),
                         "n_parameters": int(getattr(det, "n_parameters", 0) or 0), **extra})
            maps["nll"][label] = res.nll
            maps["thresholds"][label] = m["threshold"]
    return rows, maps


def calibration_conditions(conds: list[Condition]) -> list[Condition]:
    """The anomaly-free, bulk-trained conditions of a suite: where the calibrated FPR is measured.

    Parameters
    ----------
    conds : list of Condition

    Returns
    -------
    list of Condition
        Those with ``concentration == 0`` that train on the bulk region.
    """
    return [c for c in conds if c.supervised and float(c.sim.get("concentration", 1.0)) == 0.0]


def calibration_fpr(conds: list[Condition], methods: list[str], *, device: str = "auto",
                    seed: int = 0, seeds: int = CALIBRATION_SEEDS, folds: int = 4,
                    alpha: float = CALIBRATION_ALPHA, cvae_epochs: int | None = None,
                    quiet: bool = True) -> list[dict[str, Any]]:
    """False-positive rate of the calibrated threshold on anomaly-free images, over seeds.

    For every condition, seed and detector: one fit on the bulk region (the
    detector's defaults, :func:`_detector_params`), the cross-fitted held-out
    bulk scores of :meth:`~eelsanom.detectors.base.BaseDetector.held_out_scores`
    (``folds`` extra fits, each scored with and without pooling,
    :func:`variants`), the ``1 - alpha`` threshold of their null distribution
    (:func:`eelsanom.scoring.null_calibration`; what ``threshold="calibrated"``
    sets), and the pixels of the image it flags, beside the automatic
    ``robust`` threshold of the same map.

    Parameters
    ----------
    conds : list of Condition
        Anomaly-free conditions (every pixel normal), trained on the bulk.
    methods : list of str
        Benchmark methods (``"hyperspy"`` is left out: it has no held-out model).
    device : str, default "auto"
    seed : int, default 0
        First seed; the images are ``seed .. seed + seeds - 1``.
    seeds : int, default :data:`CALIBRATION_SEEDS`
    folds : int, default 4
        Cross-fitting folds (the library's default).
    alpha : float, default :data:`CALIBRATION_ALPHA`
        Nominal false-positive rate.
    cvae_epochs : int, optional
        3D-CVAE epochs (the bench's quick choice); None: the detector's default.
    quiet : bool, default True
        Do not print one line per condition, seed and detector.

    Returns
    -------
    list of dict
        One row per condition, seed and detector label: ``n_pixels``,
        ``n_calibrated`` / ``n_robust`` (pixels flagged), ``fpr_calibrated`` /
        ``fpr_robust``, both thresholds, ``fit_s`` (the detector's fit plus the
        folds', seconds) and ``epochs`` (the 3D-CVAE's; else empty).

    Raises
    ------
    InputError
        When a condition has anomalies or trains without a bulk region, or a method
        is unknown.
    """
    from .detectors import get_detector
    from .simulate import simulate

    rows: list[dict[str, Any]] = []
    for cond in conds:
        if not calibration_conditions([cond]):
            raise InputError(f"calibration_fpr: expected anomaly-free conditions trained on the "
                             f"bulk region, got {cond.name!r}.")
        for s in range(int(seed), int(seed) + int(seeds)):
            sim = simulate(**cond.sim, seed=s)
            bulk, normal = bulk_region(cond, sim), ~np.asarray(sim.truth, bool)
            for method in methods:
                if method == "hyperspy":
                    continue
                base_method, settings = ALIASES.get(method, (method, {}))
                params = {**_detector_params(base_method, device, s), **settings}
                if base_method == "cvae" and cvae_epochs is not None:
                    params["epochs"] = int(cvae_epochs)
                vs = variants(method)
                t0 = time.perf_counter()
                det = get_detector(base_method, **params).fit(sim.si, bulk)
                try:
                    held = det.held_out_scores(sim.si, bulk, folds=folds,
                                               variants=[{"pooling": sg} for _, sg in vs])
                except InputError as exc:  # a bulk region too small to hold out squares
                    log.warning("calibration of %s on %s skipped: %s", method, cond.name, exc)
                    continue
                fit_s = time.perf_counter() - t0
                for (label, sigma), h in zip(vs, held):
                    det.set_params(pooling=sigma)
                    nll = det.score(sim.si).nll
                    t_cal = scoring.calibrated_threshold(scoring.null_calibration(h[bulk]), alpha)
                    t_rob = scoring.compute_threshold(nll, "robust")[0]
                    n_cal, n_rob = int((nll > t_cal)[normal].sum()), int((nll > t_rob)[normal].sum())
                    n = int(normal.sum())
                    rows.append({"condition": cond.name, "seed": s, "detector": label,
                                 "n_pixels": n, "n_calibrated": n_cal, "n_robust": n_rob,
                                 "fpr_calibrated": n_cal / n, "fpr_robust": n_rob / n,
                                 "threshold_calibrated": t_cal, "threshold_robust": t_rob,
                                 "alpha": alpha, "folds": folds, "fit_s": fit_s,
                                 "epochs": params.get("epochs", det.get_params().get("epochs", ""))
                                 if base_method == "cvae" else ""})
                    if not quiet:
                        print(f"  calibration {cond.name:44s} seed {s} {label:18s} calibrated "
                              f"{n_cal:4d} / {n} flagged, robust {n_rob:4d}  ({fit_s:.1f} s)",
                              flush=True)
    return rows


def calibration_table(rows: list[dict[str, Any]]) -> list[str]:
    """The calibrated FPR per condition and detector, pooled over seeds (Markdown lines).

    Parameters
    ----------
    rows : list of dict
        From :func:`calibration_fpr`.

    Returns
    -------
    list of str
        A table: condition, method, calibrated FPR % (flagged / pixels over every
        seed), its worst seed, robust FPR %, pixels, seeds; empty without rows.
    """
    if not rows:
        return []
    out = ["| condition | method | calibrated FPR % | worst seed % | robust FPR % | n pixels "
           "| seeds |", "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["condition"], r["detector"]) for r in rows))
    for c, d in keys:
        rs = [r for r in rows if r["condition"] == c and r["detector"] == d]
        n = sum(r["n_pixels"] for r in rs)
        cal = 100.0 * sum(r["n_calibrated"] for r in rs) / n
        rob = 100.0 * sum(r["n_robust"] for r in rs) / n
        worst = 100.0 * max(r["fpr_calibrated"] for r in rs)
        out.append(f"| {c.replace('|', '/')} | {d} | {cal:.3f} | {worst:.3f} | {rob:.3f} | {n} "
                   f"| {len(rs)} |")
    return out


# ----------------------------------------------------------------------------- reporting
def _header(quick: bool, device: str, seed: int, methods: list[str],
            suite: str = "paper") -> dict[str, Any]:
    import torch

    dev = _resolved_device(device)
    name = dev
    if dev.startswith("cuda") and torch.cuda.is_available():
        name = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
    return {"eelsanom": __version__, "commit": _git_commit(),
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": name, "dtype": "float32",
            "seed": seed, "suite": suite, "mode": "quick" if quick else "full",
            "methods": ",".join(methods)}


def cvae_parameter_count(conds: list[Condition], *, device: str = "auto",
                         seed: int = 0) -> str:
    """Trainable parameters of the 3D-CVAE the benchmark trains on ``conds``.

    The network depends on the number of energy channels, so the count is that
    of the detector built as :func:`run_condition` builds it, for each energy
    window the conditions simulate (``"N"``, or ``"N (window), M (window)"``).

    Parameters
    ----------
    conds : list of Condition
    device : str, default "auto"
    seed : int, default 0

    Returns
    -------
    str
    """
    from .detectors import get_detector
    from .nn.model import CVAE3D, energy_levels_for
    from .simulate import ENERGY_SCALE, WINDOWS

    det = get_detector("cvae", **_detector_params("cvae", device, seed))
    counts = {}
    for cond in conds:
        window = cond.sim.get("window", "fe-l")
        if window in counts:
            continue
        e0, e1 = WINDOWS[window]
        ne = int(math.floor((e1 - e0) / ENERGY_SCALE + 1e-9)) + 1
        net = CVAE3D(ne, int(det.latent_dim), int(det.width), energy_levels_for(ne),
                     int(det.spatial_layers))
        counts[window] = int(net.n_parameters) * max(1, int(getattr(det, "n_seeds", 1) or 1))
    if len(set(counts.values())) == 1:
        return str(next(iter(counts.values())))
    return ", ".join(f"{n} ({w})" for w, n in counts.items())


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    atomic_write(path, write)


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """Conditions as rows, detectors as columns, ``metric`` in the cells.

    Parameters
    ----------
    rows : list of dict
        Benchmark rows with ``"condition"`` and ``"detector"`` keys.
    metric : str
        Row key shown in the cells (floats with 3 decimals; missing or NaN
        values empty).

    Returns
    -------
    str
        A Markdown table, conditions and detectors in first-seen order.
    """
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    dets = list(dict.fromkeys(r["detector"] for r in rows))
    lines = ["| condition | " + " | ".join(dets) + " |", "|---" * (len(dets) + 1) + "|"]
    for c in conds:
        cells = []
        for d in dets:
            v = next((r.get(metric) for r in rows if r["condition"] == c and r["detector"] == d),
                     None)
            cells.append("" if v is None or (isinstance(v, float) and np.isnan(v))
                         else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {str(c).replace('|', '/')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], lead: float = 0.05, trail: float = 0.02) -> list[str]:
    """Plain-language comparison of the 3D-CVAE with the other eelsanom detectors, by AP.

    Per condition with anomalies: the best eelsanom detector by average precision
    and the 3D-CVAE's best variant minus the best other eelsanom detector
    (pooled and context baselines included); then a summary line saying in how
    many conditions the 3D-CVAE leads by at least ``lead`` and trails by more
    than ``trail``, and which detector wins most often.

    Parameters
    ----------
    rows : list of dict
        Benchmark rows.
    lead, trail : float
        AP margins of a clear lead and of a real deficit.

    Returns
    -------
    list of str
        Markdown lines (empty when there is no 3D-CVAE row).
    """
    refs = set(REFERENCES) | {"hyperspy-decomposition"}
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    lines = ["| condition | best eelsanom detector (AP) | best 3D-CVAE (AP) | best other (AP) | "
             "3D-CVAE minus other |", "|---|---|---|---|---|"]
    n_lead = n_trail = n = 0
    for c in conds:
        cr = [r for r in rows if r["condition"] == c and r["detector"] not in refs
              and np.isfinite(r.get("average_precision", float("nan")))]
        cv = [r for r in cr if r["detector"].startswith("cvae")]
        ot = [r for r in cr if not r["detector"].startswith("cvae")]
        if not cv or not ot:
            continue
        bc = max(cv, key=lambda r: r["average_precision"])
        bo = max(ot, key=lambda r: r["average_precision"])
        best = bc if bc["average_precision"] > bo["average_precision"] + 0.005 else bo
        d = bc["average_precision"] - bo["average_precision"]
        n += 1
        n_lead += d >= lead
        n_trail += d < -trail
        lines.append(f"| {c} | {best['detector']} ({best['average_precision']:.3f}) | "
                     f"{bc['detector']} ({bc['average_precision']:.3f}) | {bo['detector']} "
                     f"({bo['average_precision']:.3f}) | {d:+.3f} |")
    if n == 0:
        return []
    mean_ap: dict[str, list[float]] = {}
    for r in rows:
        if r["detector"] not in refs and np.isfinite(r.get("average_precision", float("nan"))):
            mean_ap.setdefault(r["detector"], []).append(float(r["average_precision"]))
    simple = {d: float(np.mean(v)) for d, v in mean_ap.items() if not d.startswith("cvae")}
    best_simple = max(simple, key=simple.get) if simple else "n/a"
    lines += ["", f"The 3D-CVAE leads every other eelsanom detector by >= {lead} AP in {n_lead} of "
              f"{n} conditions and trails the best of them by more than {trail} in {n_trail} "
              f"(ties go to the simpler detector). Best simpler detector by mean AP: "
              f"{best_simple} ({simple.get(best_simple, float('nan')):.3f})."]
    if n_lead == 0 or n_trail > 0:
        lines.append(f"**The 3D-CVAE does not beat the simpler detectors on this suite**: "
                     f"{best_simple} does as well or better at a fraction of the cost.")
    else:
        lines.append("**The 3D-CVAE beats the simpler detectors on this suite.**")
    return lines


def _training_table(rows: list[dict[str, Any]]) -> list[str]:
    rec = [r for r in rows if r["detector"] in ("cvae+pool", "cvae-ctx+pool") and "init_val" in r]
    if not rec:
        return []
    out = ["| condition | network | held-out bulk NLL, initialisation | best epoch | held-out "
           "bulk NLL, best | improvement | initialisation kept |", "|---|---|---|---|---|---|---|"]
    for r in rec:
        net = "blind-spot" if r["detector"].startswith("cvae-ctx") else "per-pixel"
        out.append(f"| {r['condition']} | {net} | {r['init_val']:.3f} | {r['best_epoch']} of "
                   f"{r['epochs_run']} | {r['best_val']:.3f} | {r['init_val'] - r['best_val']:.3f} "
                   f"| {'yes' if r['init_won'] else 'no'} |")
    return out


def _write_markdown(rows: list[dict[str, Any]], header: dict[str, Any], path: Path,
                    total_s: float, calibration: list[dict[str, Any]] | None = None,
                    cvae_epochs: int | None = None) -> None:
    parts = ["# eelsanom detection benchmark", ""]
    parts += [f"- {k}: {v}" for k, v in header.items()]
    parts += [f"- total time: {total_s:.1f} s", ""]
    parts += ["Scores: higher NLL = more anomalous. `+pool` = scored through the shared evidence "
              "pooling stage (one fit, scored twice). F1 and the false-positive rate use each "
              "detector's own automatic threshold (no ground truth); best F1 is at the best "
              "threshold, for reference. supervised-limit, perfect-bulk(+pool) and "
              "manifold-oracle are references that know the noise-free spectra: how to read "
              "them is in docs/benchmark.md.", ""]
    verdict_lines = verdict(rows)
    if verdict_lines:
        parts += ["## Verdict (average precision)", ""] + verdict_lines + [""]
    for metric, title in (("roc_auc", "ROC-AUC"), ("average_precision", "Average precision"),
                          ("f1", "F1 (automatic threshold)"), ("best_f1", "F1 (best threshold)"),
                          ("fpr", "False-positive rate (automatic threshold)"),
                          ("ashman_d", "Bimodality (Ashman's D of the log-NLL)"),
                          ("fit_s", "Fit time (s)"), ("score_s", "Score time (s)")):
        parts += [f"## {title}", "", markdown_table(rows, metric), ""]
    cal = calibration_table(calibration or [])
    if cal:
        n_seeds = len({r["seed"] for r in calibration or []})
        parts += [f"## Calibrated false-positive rate (anomaly-free images, {n_seeds} seeds)", "",
                  "Each detector fitted on the bulk region; `threshold=\"calibrated\"` set from "
                  "the scores of held-out bulk squares (4 folds, each fitted without them), "
                  f"nominal rate {100 * CALIBRATION_ALPHA:g} %; the robust rule of the same map "
                  "beside it. Pooled over seeds: flagged pixels / pixels."
                  + (f" The 3D-CVAE trains {cvae_epochs} epochs here (quick mode; the tables "
                     "above use its default)." if cvae_epochs else ""), ""]
        parts += cal + [""]
    train = _training_table(rows)
    if train:
        parts += ["## 3D-CVAE training: held-out bulk NLL (nats per pixel)", "",
                  "Epoch 0 is the initialisation (PPCA; for the blind-spot network the median of "
                  "the neighbours' PPCA codes); when no epoch beats it, it is kept.", ""]
        parts += train + [""]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(parts)))


def _figures(cond_maps: list[tuple[str, dict[str, Any]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    paths = []
    with_truth = [(name, maps) for name, maps in cond_maps if maps["truth"].any()]
    n = max(1, len(with_truth))
    ncol = min(n, 4)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.8 * nrow), squeeze=False)
    for ax, (name, maps) in zip(axes.ravel(), with_truth):
        for det, nll in maps["nll"].items():
            fpr, tpr, _ = roc_curve(maps["truth"].ravel(), np.asarray(nll).ravel())
            ax.plot(fpr, tpr, label=det, lw=1.2, ls="--" if det in REFERENCES else "-")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    for ax in axes.ravel()[len(with_truth):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    p = out / "roc_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    for name, maps in cond_maps:
        dets = [d for d in maps["nll"] if d not in ("supervised-limit", "hyperspy-decomposition")]
        fig, axes = plt.subplots(2, len(dets) + 1, figsize=(3.0 * (len(dets) + 1), 6.0),
                                 squeeze=False)
        axes[0][0].imshow(maps["truth"], cmap="gray", interpolation="nearest")
        axes[0][0].set_title("ground truth")
        axes[1][0].axis("off")
        for j, det in enumerate(dets, start=1):
            nll = np.asarray(maps["nll"][det], float)
            lo, hi = np.percentile(nll, [1, 99.5])
            im = axes[0][j].imshow(nll, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
            axes[0][j].set_title(det, fontsize=9)
            fig.colorbar(im, ax=axes[0][j], fraction=0.046, pad=0.04, label="NLL")
            t = maps["thresholds"][det]
            bins = np.linspace(np.percentile(nll, 0.1), nll.max(), 80)
            axes[1][j].hist(nll[~maps["truth"]], bins=bins, alpha=0.6, label="normal")
            if maps["truth"].any():
                axes[1][j].hist(nll[maps["truth"]], bins=bins, alpha=0.6, label="anomalous")
            axes[1][j].axvline(t, color="k", lw=1, label="threshold")
            axes[1][j].set_yscale("log")
            axes[1][j].set_xlabel("NLL")
            axes[1][j].set_ylabel("pixels")
        axes[1][1].legend(fontsize=7)
        for a in axes[0]:
            a.set_xticks([])
            a.set_yticks([])
        fig.suptitle(name)
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        p = out / f"maps_{safe}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths


def _tqdm():
    """tqdm when installed (the GPU machine may lack it), else a plain stand-in."""
    try:
        from tqdm.auto import tqdm

        return tqdm
    except ImportError:  # pragma: no cover - depends on the machine
        class _Plain:
            def __init__(self, it=None, **kw):
                self.it = it

            def __iter__(self):
                return iter(self.it)

            @staticmethod
            def write(msg):
                print(msg)

        return _Plain


def run_benchmark(out: Path, *, quick: bool = True, methods: list[str] | None = None,
                  device: str = "auto", quiet: bool = False, seed: int = 0,
                  conditions: list[Condition] | None = None,
                  suite: str = "paper",
                  calibration_seeds: int | None = None) -> list[dict[str, Any]]:
    """Run the benchmark sweep and write CSV, Markdown and figures into ``out``.

    Returns the rows (one per condition x detector).

    ``results.csv`` is rewritten after each condition, so an interrupted run
    keeps what it finished; ``results.md`` and the figures (``roc_curves.png``,
    ``maps_<condition>.png``) are written at the end. Then, on the anomaly-free
    conditions (:func:`calibration_conditions`), the calibrated threshold's
    false-positive rate over ``calibration_seeds`` images
    (:func:`calibration_fpr`; ``calibration.csv`` and a section of
    ``results.md``; the quick suite measures its first anomaly-free condition
    only, and the 3D-CVAE trains :data:`QUICK_CALIBRATION_EPOCHS` epochs there,
    which the section says).

    Parameters
    ----------
    out : path-like
        Output folder (created if missing).
    quick : bool, default True
        The suite's CPU-sized subset (:func:`quick_conditions`,
        :func:`realistic_conditions` at 64 x 64) rather than the full one.
    methods : list of str or None, default None
        Detectors to run: ``"cvae"``, ``"cvae-ctx"`` (its blind-spot context
        mode), ``"pca"``, ``"context-pca"``, ``"rx"`` and ``"hyperspy"``
        (HyperSpy's decomposition peer, skipped when HyperSpy is not
        installed). ``None`` runs all of them (:data:`DEFAULT_METHODS`).
    device : str, default "auto"
        Torch device for the CVAE and PCA.
    quiet : bool, default False
        Do not print the header, per-detector lines, table and progress bar.
    seed : int, default 0
        Seed of every simulation and detector.
    conditions : list of Condition, optional
        Run these instead of the suite's.
    suite : {"paper", "realistic"}, default "paper"
        Which conditions (:func:`suite_conditions`).
    calibration_seeds : int, optional
        Seeds of the calibrated-FPR measurement; ``None``: :data:`CALIBRATION_SEEDS`
        for the realistic suite, none for the paper suite (which has no anomaly-free
        condition); 0 skips it.

    Returns
    -------
    list of dict
        The rows written to ``results.csv`` (see :func:`run_condition`).

    Raises
    ------
    InputError
        When a method, the suite or ``device`` is unknown or unavailable.
    """
    from .detectors import detector_class

    tqdm = _tqdm()
    methods = list(methods or DEFAULT_METHODS)
    for m in methods:
        if m != "hyperspy":
            detector_class(ALIASES.get(m, (m, {}))[0])  # unknown methods refused before any work
    _resolved_device(device)
    conds = conditions if conditions is not None else suite_conditions(suite, quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(quick, device, seed, methods, suite)
    if "cvae" in methods:
        header["cvae_parameters"] = cvae_parameter_count(conds, device=device, seed=seed)
    if not quiet:
        print(" | ".join(f"{k}: {v}" for k, v in header.items()))
    rows: list[dict[str, Any]] = []
    cond_maps = []
    t0 = time.perf_counter()
    for cond in tqdm(conds, desc="conditions", disable=quiet):
        r, maps = run_condition(cond, methods, device=device, seed=seed)
        rows += r
        cond_maps.append((cond.name, maps))
        if not quiet:
            for row in r:
                tqdm.write(f"  {cond.name:44s} {row['detector']:24s} AUC {row['roc_auc']:.3f}  "
                           f"AP {row['average_precision']:.3f}  F1 {row['f1']:.3f}  "
                           f"FPR {row['fpr']:.4f}  fit {row['fit_s']:.1f}s  "
                           f"score {row['score_s']:.2f}s")
        _write_csv(rows, out / "results.csv")  # after each condition: nothing lost on interrupt
    n_cal = (CALIBRATION_SEEDS if suite == "realistic" else 0) if calibration_seeds is None \
        else int(calibration_seeds)
    cal_conds = calibration_conditions(conds) if n_cal > 0 else []
    if quick and conditions is None:  # the quick suite: its first anomaly-free image only
        cal_conds = cal_conds[:1]
    cal_rows: list[dict[str, Any]] = []
    if cal_conds:
        epochs = QUICK_CALIBRATION_EPOCHS if quick else None
        header["calibration"] = (f"{n_cal} seeds from {seed}, alpha {CALIBRATION_ALPHA:g}, "
                                 f"3D-CVAE epochs {epochs or 'default'}")
        cal_rows = calibration_fpr(cal_conds, methods, device=device, seed=seed, seeds=n_cal,
                                   cvae_epochs=epochs, quiet=quiet)
        _write_csv(cal_rows, out / "calibration.csv")
    total = time.perf_counter() - t0
    _write_markdown(rows, header, out / "results.md", total, calibration=cal_rows,
                    cvae_epochs=QUICK_CALIBRATION_EPOCHS if quick else None)
    _figures(cond_maps, out)
    if not quiet:
        print(markdown_table(rows, "roc_auc"))
        print(markdown_table(rows, "average_precision"))
        print("\n".join(verdict(rows)))
        if cal_rows:
            print("\n".join(calibration_table(cal_rows)))
        print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and figures ({total:.0f} s)")
    return rows


# ----------------------------------------------------------------------------- speed
def _dense_references():
    """The fits as they were before they used the smaller side of the data (for ratios).

    ``PCA``/``RX``: the covariance always accumulated as a ``D x D`` matrix and fully
    eigendecomposed (PCA: ``torch.linalg.eigh``, every eigenpair), whatever the
    number of pixels. ``pca_axes``: the 3D-CVAE's former ``_pca`` (``D x D``
    covariance, full ``numpy.linalg.eigh``). Kept here, not in the library, as the
    reference the speed benchmark and the equality tests compare with.
    """
    import torch

    from .detectors._gaussian import Spectrum
    from .detectors.pca import PCADetector
    from .detectors.rx import RXDetector

    class DensePCA(PCADetector):
        _gram_side = "channel"

        @staticmethod
        def _torch_gram(dev, dt):
            def gram(X, rows, m0):
                d = X.shape[1]
                mu = torch.as_tensor(m0, device=dev, dtype=dt)
                G = torch.zeros((d, d), device=dev, dtype=dt)
                s = torch.zeros(d, device=dev, dtype=dt)
                step = max(1, (1 << 22) // d)
                for i in range(0, len(rows), step):
                    xc = torch.as_tensor(X[rows[i:i + step]], device=dev).to(dt) - mu
                    G += xc.T @ xc
                    s += xc.sum(0)
                return G.cpu().double().numpy(), s.cpu().double().numpy()

            return gram

        @staticmethod
        def _eig(gram, keep, k, final=False):
            mean, cov = gram.subset_moments(keep)
            w, v = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
            evals = np.clip(w.flip(0).numpy(), 0.0, None)
            return Spectrum(mean, evals, v.flip(1).numpy(), float(evals.sum()),
                            float(np.sum(evals ** 2)), int(keep.sum()), cov.shape[0])

    class DenseRX(RXDetector):
        _gram_side = "channel"

    def pca_axes(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        x = x - x.mean(axis=0)
        cov = x.T @ x / max(len(x) - 1, 1)
        val, vec = np.linalg.eigh(cov)
        order = np.argsort(val)[::-1][:k]
        return vec[:, order].T, np.maximum(val[order], 0.0)

    return {"pca": DensePCA, "rx": DenseRX, "pca_axes": pca_axes}


def _wide_cube(ny: int, nx: int, ne: int, seed: int):
    """A seeded ``(ny, nx, ne)`` Poisson spectrum image with many channels (a Velox-like SI).

    A power-law background and three edges whose strengths vary smoothly over
    the image (rank ~4 signal plus Poisson noise), 2 % of pixels with a shifted edge.
    """
    from .spectrum import Axis, SpectrumImage

    rng = np.random.default_rng(seed)
    e = 400.0 + 0.25 * np.arange(ne)
    yy, xx = np.mgrid[0:ny, 0:nx] / max(ny, nx, 1)
    a = [1.0 + 0.3 * np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)]
    shift = np.where(rng.random((ny, nx)) < 0.02, 3.0, 0.0)
    spec = 40.0 * (e / 400.0) ** -3.0 * (1 + 0.2 * yy[..., None])
    for k, (c, w) in enumerate([(532.0, 2.0), (708.0, 1.5), (855.0, 2.5)]):
        spec = spec + 30.0 * a[k][..., None] * np.exp(-0.5 * ((e - c - shift[..., None]) / w) ** 2)
    data = rng.poisson(spec).astype(np.float32)
    return SpectrumImage(data, Axis(ne, 0.25, 400.0, "eV", "Energy loss"),
                         ground_truth=shift > 0)


def _timed(fn, *args: Any, repeat: int = 1) -> float:
    """Fastest of ``repeat`` calls ``fn(*args)``, in seconds (the least disturbed by a busy host)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def speed_ratios(*, device: str = "cpu", seed: int = 0, fit_shape=(16, 20, 2048),
                 hyperspy_shape: tuple[int, int] | None = (192, 192),
                 scaling_sides=(64, 128, 256), quiet: bool = False) -> list[dict[str, Any]]:
    """Speed ratios of the fits, each measured within this one run (see ``run_speed``).

    (a) a ``fit_shape`` fit (PCA and RX with their defaults, on all pixels, and the
    3D-CVAE's PCA initialisation) on the smaller side of the data vs the dense
    ``D x D`` reference (:func:`_dense_references`), each the fastest of two
    calls; (b) on a
    ``hyperspy_shape x 1334`` (bfo window) simulation, PCA fit + score vs
    HyperSpy's ``decomposition(algorithm="SVD", output_dimension=8)`` +
    ``get_decomposition_model(8)`` (skipped without HyperSpy, or when
    ``hyperspy_shape`` is None); (c) PCA and RX fit and score times at
    ``side x side`` pixels (fe-l window, 267 channels) for each of ``scaling_sides``.

    Parameters
    ----------
    device : str, default "cpu"
        Torch device of the PCA.
    seed : int, default 0
        Seed of the data.
    fit_shape : (int, int, int), default (16, 20, 2048)
        ``(ny, nx, n_energy)`` of comparison (a).
    hyperspy_shape : (int, int) or None, default (192, 192)
        Image size of comparison (b).
    scaling_sides : sequence of int, default (64, 128, 256)
        Image sides of comparison (c).
    quiet : bool, default False
        Do not print each line.

    Returns
    -------
    list of dict
        One row per measurement: ``comparison`` ("a", "b" or "c"), ``what``,
        ``size``, ``seconds``, ``reference_seconds`` (NaN where there is none),
        ``ratio`` (reference / ours; NaN where there is none) and ``line`` (the
        printed text).
    """
    from .detectors import get_detector
    from .detectors.cvae3d import _pca
    from .preprocess import forward_transform
    from .simulate import simulate

    refs = _dense_references()
    rows: list[dict[str, Any]] = []
    if not quiet:
        hs_shape = hyperspy_shape if _hyperspy_available() else None
        print("\n".join(speed_header(fit_shape, hs_shape, scaling_sides)), flush=True)

    def add(comp: str, what: str, size: str, t: float, t_ref: float = float("nan"),
            ref_name: str = "", note: str = "") -> None:
        ratio = t_ref / max(t, 1e-12) if np.isfinite(t_ref) else float("nan")
        line = f"({comp}) {size:16s} {what:34s} {t:8.3f} s"
        if np.isfinite(t_ref):
            line += f"  vs {ref_name} {t_ref:8.3f} s  -> {ratio:6.1f}x faster"
        if note:
            line += f"  [{note}]"
        rows.append({"comparison": comp, "what": what, "size": size, "seconds": t,
                     "reference_seconds": t_ref, "ratio": ratio, "line": line})
        if not quiet:
            print(line, flush=True)

    # (a) a wide fit: smaller side vs the dense D x D reference
    ny, nx, ne = fit_shape
    si = _wide_cube(ny, nx, ne, seed)
    size = f"{ny}x{nx}x{ne}"
    for method in ("pca", "rx"):
        kw = {"device": device} if method == "pca" else {}
        t = _timed(get_detector(method, seed=seed, **kw).fit, si, repeat=2)
        t_ref = _timed(refs[method](seed=seed, **kw).fit, si, repeat=2)
        add("a", f"{method} fit (all pixels, robust)", size, t, t_ref, "dense D x D")
    x = forward_transform(np.asarray(si.data, np.float32).reshape(-1, ne), "anscombe")
    t = _timed(_pca, x, 8, repeat=2)
    t_ref = _timed(refs["pca_axes"], x, 8, repeat=2)
    add("a", "cvae PCA initialisation (k=8)", size, t, t_ref, "dense D x D")

    # (b) PCA fit + score vs HyperSpy's SVD decomposition + reconstruction
    if hyperspy_shape is not None and _hyperspy_available():
        import hyperspy.api as hs

        sim = simulate(shape=tuple(hyperspy_shape), window="bfo", magnitude=0.9,
                       concentration=0.01, seed=seed)
        size = f"{hyperspy_shape[0]}x{hyperspy_shape[1]}x{sim.si.n_energy}"

        def hyperspy_run() -> None:
            s = hs.signals.Signal1D(np.asarray(sim.si.data, np.float32))
            s.decomposition(algorithm="SVD", output_dimension=8, print_info=False)
            s.get_decomposition_model(8)

        t_hs = _timed(hyperspy_run)
        for label, kw in (("pca fit+score (q=8, no trimming)",
                           {"n_components": 8, "robust_iter": 0}),
                          ("pca fit+score (q=8, robust)", {"n_components": 8}),
                          ("pca fit+score (default: auto q, robust)", {})):
            det = get_detector("pca", device=device, seed=seed, **kw)
            t0 = time.perf_counter()
            det.fit(sim.si).score(sim.si)
            t = time.perf_counter() - t0
            add("b", label, size, t, t_hs, "HyperSpy SVD(8)+model",
                note=f"q={det.n_components_}, fit on {det.n_sampled_} of {det.n_bulk_} px, "
                     f"{det.n_trimmed_} trimmed, {det.solver_} solver")

    # (c) linear in pixels
    for side in scaling_sides:
        sim = simulate(shape=(side, side), window="fe-l", magnitude=0.9, concentration=0.01,
                       seed=seed)
        size = f"{side}x{side}x{sim.si.n_energy}"
        for method in ("pca", "rx"):
            kw = {"device": device} if method == "pca" else {}
            det = get_detector(method, seed=seed, **kw)
            t_fit = _timed(det.fit, sim.si, sim.bulk_mask)
            t_score = _timed(det.score, sim.si)
            n = side * side
            add("c", f"{method} fit", size, t_fit)
            rows[-1]["per_mpixel_s"] = t_fit / n * 1e6
            add("c", f"{method} score", size, t_score)
            rows[-1]["per_mpixel_s"] = t_score / n * 1e6
    return rows


def speed_header(fit_shape=(16, 20, 2048), hyperspy_shape: tuple[int, int] | None = (192, 192),
                 scaling_sides=(64, 128, 256)) -> list[str]:
    """Lines saying what each ratio of :func:`speed_ratios` compares, and on what host.

    Parameters
    ----------
    fit_shape : (int, int, int)
        ``(ny, nx, n_energy)`` of comparison (a).
    hyperspy_shape : (int, int) or None
        Image size of comparison (b); None: not run.
    scaling_sides : sequence of int
        Image sides of comparison (c).

    Returns
    -------
    list of str
    """
    from .detectors.pca import PCADetector

    try:
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        load = "n/a"
    ny, nx, ne = fit_shape
    lines = [
        "what each ratio compares (all measured in this run; ratio = reference s / ours):",
        f"(a) {ny}x{nx}x{ne} Velox-like cube: PCA and RX fit (defaults, all pixels, robust) vs "
        "the same fit on the dense D x D covariance with a full eigendecomposition; the "
        "3D-CVAE's PCA initialisation (k=8) vs a dense D x D eigh",
    ]
    if hyperspy_shape is not None:
        lines.append(
            f"(b) {hyperspy_shape[0]}x{hyperspy_shape[1]}x1334 bfo simulation (float32): "
            "eelsanom PCA fit + score (NLL map, latent, reconstruction error; gain='auto', "
            "robust_fraction='auto', no mask; fit on at most "
            f"{PCADetector.max_fit_pixels} drawn pixels, randomized solver from "
            f"{PCADetector.randomized_min_side} pixels and channels) vs HyperSpy "
            "Signal1D.decomposition(algorithm='SVD', output_dimension=8) + "
            "get_decomposition_model(8) on the same array")
    sides = ", ".join(f"{s}x{s}" for s in scaling_sides)
    lines.append(f"(c) PCA and RX fit (bulk mask) and score at {sides} pixels x 267 channels "
                 "(fe-l): seconds per million pixels")
    lines.append(f"host: {os.cpu_count()} cores, load average {load} (other work on the host "
                 f"slows both sides), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return lines


def run_speed(out: Path, *, methods: list[str] | None = None, device: str = "auto",
              quick: bool = False, quiet: bool = False, seed: int = 0,
              large: bool = False) -> list[dict[str, Any]]:
    """Time fit and score on fixed sizes; spectra per second and peak host/device memory.

    Sizes: the quick CPU cube (64 x 64 x 267) always; on a GPU (unless ``quick``)
    also 192 x 192 x 1334 and 512 x 512 x 1334 (bfo window). All methods run in
    the same process so their ratios hold on a noisy machine.

    The score is timed on a second call, after a warm-up call. Writes
    ``speed.csv`` and ``speed.md`` into ``out``.

    Unless ``quick``, also the fit ratios of :func:`speed_ratios`, each measured in
    this run: (a) a 16 x 20 x 2048 fit vs the dense ``D x D`` reference, (c) PCA
    and RX fit and score at 64^2, 128^2 and 256^2 pixels, and, on a GPU or with
    ``large``, (b) PCA on 192 x 192 x 1334 vs HyperSpy's SVD decomposition
    (``speed_ratios.csv`` and a section of ``speed.md``).

    Parameters
    ----------
    out : path-like
        Output folder (created if missing).
    methods : list of str or None, default None
        Detectors to run: ``"cvae"``, ``"pca"``, ``"rx"`` and ``"hyperspy"``
        (HyperSpy's decomposition peer, skipped when HyperSpy is not
        installed). ``None`` runs all four.
    device : str, default "auto"
        Torch device for the CVAE and PCA; the larger sizes run only on CUDA.
    quick : bool, default False
        Only the 64 x 64 x 267 cube, even on a GPU, and no fit ratios.
    quiet : bool, default False
        Do not print per-run lines and the table.
    seed : int, default 0
        Seed of the simulations and detectors.
    large : bool, default False
        Run the 192 x 192 x 1334 comparison with HyperSpy (b) on the CPU too.

    Returns
    -------
    list of dict
        One row per size and detector: ``size``, ``detector``, ``device``,
        ``fit_s``, ``score_s`` (seconds), ``score_spectra_per_s``,
        ``peak_rss_mb``, ``peak_gpu_mb`` (MiB; NaN off CUDA) and, for the
        eelsanom detectors, ``n_parameters``.

    Raises
    ------
    InputError
        When a method or ``device`` is unknown or unavailable.
    """
    from .detectors import get_detector
    from .simulate import simulate

    methods = list(methods or ["cvae", "pca", "rx", "hyperspy"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = _resolved_device(device)
    sizes = [((64, 64), "fe-l")]
    if dev.startswith("cuda") and not quick:
        sizes += [((192, 192), "bfo"), ((512, 512), "bfo")]
    header = _header(quick, device, seed, methods)
    rows = []
    for shape, window in sizes:
        sim = simulate(shape=shape, window=window, magnitude=0.9, concentration=0.01, seed=seed)
        n = shape[0] * shape[1]
        for method in methods:
            if method == "hyperspy":
                if not _hyperspy_available():
                    continue
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    hyperspy_decomposition_score(sim.si)
                    dt = time.perf_counter() - t0
                rows.append({"size": f"{shape[0]}x{shape[1]}x{sim.si.n_energy}",
                             "detector": "hyperspy-decomposition", "device": "cpu",
                             "fit_s": dt, "score_s": 0.0, "score_spectra_per_s": n / dt,
                             "peak_rss_mb": mem.peak_mb, "peak_gpu_mb": float("nan")})
                continue
            det = get_detector(method, **_detector_params(method, device, seed))
            _cuda_reset(device)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                det.fit(sim.si, sim.bulk_mask)
                t1 = time.perf_counter()
                det.score(sim.si)  # warm-up (compilation, allocator)
                _cuda_reset(device)
                t2 = time.perf_counter()
                det.score(sim.si)
                t3 = time.perf_counter()
            rows.append({"size": f"{shape[0]}x{shape[1]}x{sim.si.n_energy}", "detector": method,
                         "device": dev if method in ("cvae", "pca") else "cpu",
                         "fit_s": t1 - t0, "score_s": t3 - t2,
                         "score_spectra_per_s": n / max(t3 - t2, 1e-9),
                         "peak_rss_mb": mem.peak_mb, "peak_gpu_mb": _cuda_peak_mb(device),
                         "n_parameters": int(getattr(det, "n_parameters", 0) or 0)})
            if not quiet:
                r = rows[-1]
                print(f"{r['size']:16s} {method:8s} fit {r['fit_s']:.2f}s score "
                      f"{r['score_s'] * 1e3:.1f} ms ({r['score_spectra_per_s']:.0f} spectra/s) "
                      f"RSS {r['peak_rss_mb']:.0f} MB GPU {r['peak_gpu_mb']:.0f} MB")
    _write_csv(rows, out / "speed.csv")
    lines = ["# eelsanom speed benchmark", ""] + [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| size | detector | device | fit (s) | score (ms) | spectra/s | peak RSS (MB) "
              "| peak GPU (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['detector']} | {r['device']} | {r['fit_s']:.2f} | "
                     f"{1e3 * r['score_s']:.1f} | {r['score_spectra_per_s']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_gpu_mb']:.0f} |")
    if not quick:
        if not quiet:
            print("fit ratios (each measured in this run):")
        big = large or dev.startswith("cuda")
        ratios = speed_ratios(device=device, seed=seed,
                              hyperspy_shape=(192, 192) if big else None, quiet=quiet)
        _write_csv([{k: v for k, v in r.items() if k != "line"} for r in ratios],
                   out / "speed_ratios.csv")
        lines += ["", "## Fit ratios (one run)", "", "```"]
        lines += speed_header(hyperspy_shape=(192, 192) if big else None)
        lines += [r["line"] for r in ratios]
        for method in ("pca", "rx"):
            for kind in ("fit", "score"):
                per = [(r["size"], r["per_mpixel_s"]) for r in ratios
                       if r["comparison"] == "c" and r["what"] == f"{method} {kind}"]
                if len(per) > 1:
                    lines.append(f"(c) {method} {kind}: seconds per million pixels "
                                 + ", ".join(f"{sz} {v:.3g}" for sz, v in per)
                                 + f" (largest / smallest {per[-1][1] / per[0][1]:.2f})")
        lines.append("```")
        if not big:
            lines.append("(b) PCA vs HyperSpy on 192 x 192 x 1334: not run "
                         "(add --large, or run on a GPU)")
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))
    return rows
