"""The ``realistic`` suite: the paper's anomalies under the nuisances of real scans."""

from __future__ import annotations

from .conditions import DETECTOR, DRIFT, THICKNESS, VALENCE, Condition


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
