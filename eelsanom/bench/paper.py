"""The ``paper`` suite: the paper's protocol (Fe L2,3 shifts, concentrations, doses, types)."""

from __future__ import annotations

from .conditions import Condition

SHIFTS = (0.3, 0.6, 0.9, 1.5, 2.4)
CONCENTRATIONS = (0.005, 0.01, 0.02, 0.05, 0.10)
DOSES = (50.0, 200.0, 1000.0)


def paper_conditions(quick: bool) -> list[Condition]:
    """The paper suite: :func:`quick_conditions` or :func:`full_conditions`.

    Parameters
    ----------
    quick : bool
        The CPU-sized subset.

    Returns
    -------
    list of Condition
    """
    return quick_conditions() if quick else full_conditions()


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
