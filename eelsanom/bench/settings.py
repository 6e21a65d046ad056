"""The bench's own settings: its default methods, aliases, pooling and calibration choices."""

from __future__ import annotations

from typing import Any

from .. import scoring
from ..pooling import DEFAULT_SIGMA

#: what ``eelsanom bench`` runs by default: every eelsanom detector and the outside peer
DEFAULT_METHODS = ("cvae", "cvae-ctx", "pca", "context-pca", "bulk-context", "rx", "hyperspy")
#: benchmark names that are a detector with other settings: name -> (method, params)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cvae-ctx": ("cvae", {"context": "blind-spot"}),  # the 3D-CVAE's blind-spot context mode
    # the per-pixel scale settings of the PPCA family (eelsanom.detectors.pca, "Per-pixel
    # scale"): "-sum" is the classical reference (unit-sum-normalised counts, as before a
    # scikit-learn PCA) with everything else the detector's
    **{f"{m}-{sc}": (m, {"scale": sc}) for m in ("pca", "context-pca", "bulk-context")
       for sc in ("fixed", "free", "sum")},
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
#: 3D-CVAE epochs in every condition of a quick suite (at most: its stop rule may end sooner);
#: the full suites use the detector's default (40). The same for every condition, stated in
#: ``results.md``; None: the detector's default
QUICK_CVAE_EPOCHS: int | None = 10


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
    from ..detectors.params import defaults

    base, settings = ALIASES.get(method, (method, {}))
    default = float(settings.get("pooling", defaults(base)["pooling"]))
    pooled = ((f"{method}+pool", default if default > 0 else POOLED_SIGMA), (method, 0.0))
    return pooled if default > 0 else pooled[::-1]
