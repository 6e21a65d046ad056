"""The bulk region extended along smooth paths (bulk-context's ``extend_bulk="smooth"``).

A region drawn in the top rows of a scan whose drift ramps beyond it: the far rows are
unlike the region, and without the extension the default flagged 1.7 % of an
anomaly-free image (issue 22's bound: 1 %). A particle next to the region is bounded by
an edge and must not be learnt as bulk (one anomalous part in the training set teaches
the model its direction: AP fell from 0.93 to 0.40 when it leaked in an early version).
"""

from __future__ import annotations

import numpy as np
import pytest

from eelsanom.bench.conditions import bulk_region
from eelsanom.bench.general import general_suite_conditions
from eelsanom.bench.realistic import realistic_conditions
from eelsanom.detectors import get_detector, load_detector
from eelsanom.detectors._bulk_growth import grow_bulk
from eelsanom.errors import InputError
from eelsanom.scoring import average_precision


def _maps(shape=(64, 64)):
    rng = np.random.default_rng(0)
    zg = rng.normal(0.0, 1.0, shape)
    zl = rng.normal(0.0, 1.0, shape)
    mask = np.zeros(shape, bool)
    mask[:16] = True
    return zg, zl, mask


def test_a_smooth_ramp_beyond_the_region_is_added():
    zg, zl, mask = _maps()
    rows = np.arange(64)[:, None] * np.ones((1, 64))
    zg = zg * 0.3 + np.clip((rows - 24) * 0.25, 0, None)  # rises 0.25 per row past row 24
    grown, info = grow_bulk(zg, zl, mask)
    assert info["added"] > 0 and info["parts"] >= 1
    assert grown[mask].all()
    assert grown[56:].mean() > 0.9  # the far rows, 8+ units above the bulk, are learnt


def test_a_bounded_particle_is_not_added():
    """A bright disc next to the region: its boundary is an edge (steep global rise, high
    local evidence), so nothing in it is added, however large."""
    zg, zl, mask = _maps()
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 36) ** 2 + (xx - 30) ** 2 < 14 ** 2
    zg = zg * 0.3 + 6.0 * disc
    ring = disc ^ np.roll(disc, 2, 0) | disc ^ np.roll(disc, 2, 1)
    zl = zl * 0.3 + 6.0 * ring
    grown, info = grow_bulk(zg, zl, mask)
    assert not grown[disc].any()
    assert info["added"] == 0


def test_small_parts_are_not_added():
    zg, zl, mask = _maps()
    zg = zg * 0.3
    zg[40:44, 40:44] = 3.0  # 16 px, smoothly reachable but below the smallest part
    grown, info = grow_bulk(zg, zl, mask)
    assert info["added"] == 0 and np.array_equal(grown, mask)


def _condition(name):
    return next(c for c in realistic_conditions(True) if c.name == name)


@pytest.mark.parametrize("extend,bound", [("smooth", 0.01), ("off", None)])
def test_anomaly_free_drift_ramp_beyond_the_region(extend, bound):
    """Measured (seed 0): 1.71 % flagged with the region as drawn, 0.00 % extended (the
    pixels added: the ramp's far rows)."""
    cond = _condition("anomaly-free, drift ramp, bulk not spanning it")
    sim = cond.simulate(0)
    det = get_detector("bulk-context", device="cpu", extend_bulk=extend)
    res = det.fit(sim.si, bulk_region(cond, sim)).score(sim.si)
    if bound is None:  # the failure the extension fixes
        assert det.extended_pixels_ == 0 and res.mask.mean() > 0.01
    else:
        assert det.extended_pixels_ > 0 and res.mask.mean() <= bound


def test_particles_next_to_the_region_are_not_learnt():
    """General suite, particles 20 % (0.6 eV shift) beside the region, seeds 0 and 2 (in
    seed 2 a faint particle reaches the region through a soft boundary): AP unchanged by
    the extension (measured 0.931 and 0.925)."""
    cond = next(c for c in general_suite_conditions(True)
                if c.name == "particles 20 % / shift 0.6 eV; bulk region")
    for seed in (0, 2):
        sim = cond.simulate(seed)
        det = get_detector("bulk-context", device="cpu").fit(sim.si, bulk_region(cond, sim))
        assert average_precision(det.score(sim.si).nll, sim.truth) >= 0.9


def test_extension_is_saved_and_validated(tmp_path):
    cond = _condition("anomaly-free, drift ramp, bulk not spanning it")
    sim = cond.simulate(0)
    det = get_detector("bulk-context", device="cpu").fit(sim.si, bulk_region(cond, sim))
    back = load_detector(det.save(tmp_path / "m.h5"))
    assert back.extended_pixels_ == det.extended_pixels_ > 0
    np.testing.assert_allclose(back.score(sim.si).nll, det.score(sim.si).nll, rtol=1e-9,
                               atol=1e-9)
    with pytest.raises(InputError, match="extend_bulk"):
        get_detector("bulk-context", extend_bulk="yes")._validate_params()


def test_the_extension_is_told_to_the_user():
    from eelsanom.cautions import training_notes

    cond = _condition("anomaly-free, drift ramp, bulk not spanning it")
    sim = cond.simulate(0)
    det = get_detector("bulk-context", device="cpu").fit(sim.si, bulk_region(cond, sim))
    notes = training_notes(det)
    assert any("bulk region was extended" in n and "--extend-bulk off" in n for n in notes)
    det.extended_pixels_ = 0
    assert not any("extended" in n for n in training_notes(det))
