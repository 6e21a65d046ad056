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

Layout: :mod:`.conditions` (a condition, its nuisances, its fitted region), one module
per suite (:mod:`.paper`, :mod:`.realistic`) registered in :mod:`.suites`,
:mod:`.references`, :mod:`.settings` (the bench's own choices), :mod:`.runner`,
:mod:`.report` (CSV and Markdown), :mod:`.figures`, :mod:`.measure` (memory, device,
commit) and :mod:`.speed` (``eelsanom bench --speed``). Every name stays importable
from ``eelsanom.bench``.
"""

from __future__ import annotations

from .conditions import (  # noqa: F401
    DETECTOR,
    DRIFT,
    SPANNING_BLOCK,
    THICKNESS,
    VALENCE,
    Condition,
    bulk_region,
)
from .figures import (  # noqa: F401
    _figures,
)
from .measure import (  # noqa: F401
    PeakRSS,
    _cuda_peak_mb,
    _cuda_reset,
    _git_commit,
    _hyperspy_available,
    _resolved_device,
    _tqdm,
)
from .paper import (  # noqa: F401
    CONCENTRATIONS,
    DOSES,
    SHIFTS,
    full_conditions,
    paper_conditions,
    quick_conditions,
)
from .realistic import (  # noqa: F401
    realistic_conditions,
)
from .references import (  # noqa: F401
    REFERENCES,
    _deviance,
    _electrons,
    _normal_expected,
    _poisson_terms,
    manifold_oracle,
    perfect_bulk_pooled,
    reference_scores,
)
from .report import (  # noqa: F401
    _header,
    _training_table,
    _write_csv,
    _write_markdown,
    calibration_table,
    markdown_table,
    verdict,
)
from .runner import (  # noqa: F401
    _detector_params,
    _metrics,
    _training_record,
    calibration_conditions,
    calibration_fpr,
    cvae_parameter_count,
    hyperspy_decomposition_score,
    run_benchmark,
    run_condition,
)
from .settings import (  # noqa: F401
    ALIASES,
    CALIBRATION_ALPHA,
    CALIBRATION_SEEDS,
    DEFAULT_METHODS,
    POOLED_SIGMA,
    QUICK_CALIBRATION_EPOCHS,
    variants,
)
from .speed import (  # noqa: F401
    _dense_references,
    _timed,
    _wide_cube,
    run_speed,
    speed_header,
    speed_ratios,
)
from .suites import (  # noqa: F401
    SUITE_BUILDERS,
    SUITES,
    suite_conditions,
)

__all__ = ["Condition", "quick_conditions", "full_conditions", "reference_scores",
           "run_benchmark", "run_speed", "speed_ratios", "calibration_fpr", "variants"]
