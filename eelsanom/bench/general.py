"""The ``general`` suite: data we did not design the detectors around (issue 22).

The conditions are the declarative table of
:func:`eelsanom.simulate.general.quick_general_conditions` (and
:func:`~eelsanom.simulate.general.general_conditions` for the full sweep): a
second spectral model family with its own noise model, thickness fields at
2.5-30 px correlation lengths and +-10-40 %, per-pixel beam current and energy
jitter, isolated pixels, clusters, large particles and interface lines, edge
shifts, L3/L2 ratios, a new edge and changes that must not be flagged, each
with and without a bulk region. This module turns them into benchmark
:class:`~eelsanom.bench.conditions.Condition` objects (``family="general"``).
"""

from __future__ import annotations

from .conditions import Condition


def general_suite_conditions(quick: bool = True) -> list[Condition]:
    """The general suite's conditions as benchmark conditions.

    Parameters
    ----------
    quick : bool
        The CPU-sized subset (20 conditions, 48 x 48 and 64 x 64); else the
        full sweep at 96 x 96.

    Returns
    -------
    list of Condition
        ``family="general"``; ``supervised`` is the condition's ``bulk``
        (fitted on the bulk region, or on every pixel robustly); no manifold
        oracle.
    """
    from ..simulate.general import general_conditions

    return [Condition(c.name, dict(c.params), supervised=c.supervised, family="general")
            for c in general_conditions(quick)]
