"""Simulated EELS spectrum images with planted anomalies and ground truth.

:func:`simulate` builds a calibrated core-loss spectrum image of a BiFeO3-like
material — power-law background, O K edge with near-edge structure, Fe L2,3
white lines with continuum steps, instrumental broadening — with realistic
nuisances that a detector must *not* flag (smooth thickness and
background-exponent variation, per-pixel energy jitter, Poisson and read
noise) and a known set of anomalous pixels. Optional realistic-bulk nuisances,
in physical units: an energy drift of the whole spectrum (smooth field or
slow-scan ramp), a bulk valence gradient of the Fe L2,3 onset, thickness as
t/lambda with plural scattering (convolution with a Poisson plasmon low-loss
spectrum), and a detector with gain and dark offset. The anomalies:

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
model) need, the per-pixel nuisance maps (:attr:`Simulation.nuisance`), and
:meth:`Simulation.normal_expected`, the normal spectra recomputed with any
nuisance replaced (a "manifold oracle"). Everything is seeded. See
``docs/benchmark.md``.

HyperSpy is imported only inside :meth:`Simulation.to_signal` (and so
:meth:`Simulation.save`); generating data needs numpy and scipy only.

The package keeps the image apart from the spectrum, so a second spectral
model family plugs in beside the first:

- :mod:`eelsanom.simulate.fields`: the image side, shared by every family
  (smooth nuisance fields, anomaly geometries);
- :mod:`eelsanom.simulate.felmodel`: the Fe L2,3 / BiFeO3 spectrum model above
  (tabulated line shapes, plural scattering);
- :mod:`eelsanom.simulate.core`: :func:`simulate` (validation, assembly, noise);
- :mod:`eelsanom.simulate.result`: :class:`Simulation`, what every family returns;
- :mod:`eelsanom.simulate.components`: the second, independent spectral model
  family (exSpy-style components: power-law background, arctan edges,
  Gaussian or Lorentzian white lines);
- :mod:`eelsanom.simulate.general`: the generalisation suite's images from it,
  with their own nuisances and detector noise (:func:`general_image`,
  :func:`quick_general_conditions`).
"""

from __future__ import annotations

from .core import NUISANCE_KEYS, PIXEL_SIZE_NM, simulate
from .felmodel import (
    ANOMALY_TYPES,
    DEFAULT_MAGNITUDE,
    ENERGY_SCALE,
    WINDOWS,
    _plasmon_kernel,
    _plural,
)
from .fields import DRIFT_PATTERNS, SHAPES
from .general import GeneralCondition, general_conditions, general_image, quick_general_conditions
from .result import Simulation

__all__ = ["WINDOWS", "ANOMALY_TYPES", "SHAPES", "DRIFT_PATTERNS", "DEFAULT_MAGNITUDE",
           "NUISANCE_KEYS", "Simulation", "simulate", "general_image", "GeneralCondition",
           "quick_general_conditions", "general_conditions"]

# names older code imported from the single module ``eelsanom.simulate``
_ = (ENERGY_SCALE, PIXEL_SIZE_NM, _plasmon_kernel, _plural)
