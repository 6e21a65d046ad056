"""Tests for the second spectral model family and the generalisation suite's images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eelsanom.errors import InputError
from eelsanom.simulate import general_image, quick_general_conditions
from eelsanom.simulate.components import FLAGGED_KINDS, KINDS, NOT_FLAGGED_KINDS, ratio_factors
from eelsanom.simulate.general import GEOMETRIES, general_conditions


def _peak(energy, y, lo, hi):
    sel = np.flatnonzero((energy >= lo) & (energy <= hi))
    return float(energy[sel[np.argmax(y[sel])]])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_shapes_truth_and_bulk(kind, geometry):
    sim = general_image(shape=(24, 20), kind=kind, geometry=geometry, seed=3)
    assert sim.si.shape == (24, 20, 281) and sim.si.data.dtype == np.float32
    assert sim.expected.shape == sim.expected_alt.shape == sim.si.shape
    assert sim.truth.shape == sim.bulk_mask.shape == (24, 20) and sim.truth.dtype == bool
    changed = sim.si.metadata["changed_region"]
    assert not (changed & sim.bulk_mask).any() and sim.bulk_mask[:7].all()
    assert not sim.bulk_mask[7:].any()
    if kind in FLAGGED_KINDS:
        np.testing.assert_array_equal(sim.truth, changed)
        assert sim.truth.sum() > 0
    else:  # must not be flagged: empty truth, though the thickness/intensity kinds change pixels
        assert not sim.truth.any()
        assert changed.any() == (kind != "none")
    assert sim.params["n_anomalous"] == int(sim.truth.sum())
    json.dumps(sim.params)  # JSON-serialisable
    # the normal hypothesis recomputed from the nuisance maps is the simulation's own
    normal = np.where(sim.truth[..., None], sim.expected_alt, sim.expected)
    np.testing.assert_array_equal(sim.normal_expected(), normal)


def test_anomaly_differs_only_where_it_should():
    for kind in FLAGGED_KINDS:
        sim = general_image(shape=(16, 16), kind=kind, geometry="clusters", seed=1,
                            energy_jitter=0.0, scale_jitter=0.0, thickness_amplitude=0.0)
        a = sim.expected[sim.truth].astype(np.float64)
        b = sim.expected_alt[sim.truth].astype(np.float64)
        rel = np.abs(a - b).max(axis=1) / b.max(axis=1)
        assert rel.min() > 0.02, kind
        # with no nuisance, normal pixels are all the same spectrum
        normal = sim.expected[~sim.truth]
        np.testing.assert_allclose(normal, np.broadcast_to(normal[0], normal.shape), rtol=1e-5)


def test_physics_shift_ratio_edge_and_dose():
    kw = dict(shape=(8, 8), geometry="pixels", fraction=0.1, energy_jitter=0.0,
              scale_jitter=0.0, thickness_amplitude=0.0, seed=0)
    sim = general_image(kind="shift", magnitude=1.5, dose=800.0, **kw)
    e = sim.si.energy.values
    assert (sim.si.energy.offset, sim.si.energy.scale) == (660.0, 0.5)
    y0 = sim.expected_alt[sim.truth][0].astype(np.float64)
    y1 = sim.expected[sim.truth][0].astype(np.float64)
    assert abs(_peak(e, y0, 700, 715) - 709.4) <= 0.5
    assert abs(_peak(e, y1, 700, 715) - 709.4 - 1.5) <= 0.5
    # dose: the average pixel's L3 maximum is `dose` electrons (within channel sampling)
    assert 0.9 * 800 <= y0.max() <= 800.0 * 1.001
    # ratio: L3/L2 white-line ratio times the factor, total white-line area kept
    a3, a2 = ratio_factors(0.7, "gaussian")
    assert a3 / a2 == pytest.approx(0.7)
    r = general_image(kind="ratio", magnitude=0.7, **kw)
    base = r.expected_alt[r.truth][0].astype(np.float64)
    anom = r.expected[r.truth][0].astype(np.float64)
    l3, l2 = (e > 703) & (e < 714), (e > 717) & (e < 728)
    assert (anom[l3] - base[l3]).sum() < 0 < (anom[l2] - base[l2]).sum()
    # edge: a new edge near 779 eV; below 760 eV only the arctan onsets' far tails (< 1 %)
    ed = general_image(kind="edge", magnitude=0.3, **kw)
    d = (ed.expected[ed.truth][0] - ed.expected_alt[ed.truth][0]).astype(np.float64)
    assert abs(_peak(e, d, 760, 800) - 779.6) <= 0.5 and np.abs(d[e < 760]).max() < 1e-2 * d.max()


def test_seeds_reproducible_and_independent():
    a = general_image(shape=(16, 16), kind="ratio", geometry="line", detector="ccd", seed=5)
    b = general_image(shape=(16, 16), kind="ratio", geometry="line", detector="ccd", seed=5)
    c = general_image(shape=(16, 16), kind="ratio", geometry="line", detector="ccd", seed=6)
    np.testing.assert_array_equal(a.si.data, b.si.data)
    np.testing.assert_array_equal(a.truth, b.truth)
    for key in a.nuisance:
        np.testing.assert_array_equal(a.nuisance[key], b.nuisance[key])
    assert not np.array_equal(a.si.data, c.si.data)
    # the mask depends on geometry/fraction/bulk/seed only, not on kind, dose or nuisances
    d = general_image(shape=(16, 16), kind="edge", geometry="line", dose=50.0,
                      correlation_px=2.5, seed=5)
    np.testing.assert_array_equal(a.truth, d.truth)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("bulk", [True, False])
def test_large_region_covers_10_to_30_percent(fraction, bulk):
    sim = general_image(shape=(48, 48), kind="shift", geometry="region", fraction=fraction,
                        bulk=bulk, seed=2)
    assert sim.truth.mean() == pytest.approx(fraction, abs=0.5 / 48 ** 2)
    assert 0.1 - 0.5 / 48 ** 2 <= sim.truth.mean() <= 0.3 + 0.5 / 48 ** 2
    # a few large blobs, not scattered pixels
    from scipy import ndimage

    labels, n = ndimage.label(sim.truth)
    sizes = np.bincount(labels.ravel())[1:]
    assert n <= 12 and sizes.max() >= 0.25 * sim.truth.sum()
    if bulk:
        assert not (sim.truth & sim.bulk_mask).any()
    else:
        assert not sim.bulk_mask.any()


def test_must_not_flag_kinds_change_the_data_but_not_the_truth():
    for kind, key in (("thickness", "thickness"), ("intensity", "scale")):
        sim = general_image(shape=(32, 32), kind=kind, geometry="region", fraction=0.25, seed=4)
        changed = sim.si.metadata["changed_region"]
        assert not sim.truth.any() and changed.mean() == pytest.approx(0.25, abs=1e-3)
        ratio = sim.expected.sum(-1) / sim.expected_alt.sum(-1)
        assert ratio[changed].min() > 1.2 and np.allclose(ratio[~changed], 1.0)
        assert sim.nuisance[key][changed].mean() > 1.2 * sim.nuisance[key][~changed].mean()


def test_nuisance_fields_amplitude_and_correlation():
    rough = general_image(shape=(48, 48), kind="none", correlation_px=2.5,
                          thickness_amplitude=0.3, seed=0).nuisance["thickness"]
    smooth = general_image(shape=(48, 48), kind="none", correlation_px=30.0,
                           thickness_amplitude=0.3, seed=0).nuisance["thickness"]
    for t in (rough, smooth):
        assert np.abs(t - 1.0).max() == pytest.approx(0.3, rel=0.05)
    # within a 9 x 9 window the rough field varies far more than the smooth one
    from scipy import ndimage

    def in_window(t):
        return float(np.std(t - ndimage.uniform_filter(t, 9, mode="reflect")))

    assert in_window(rough) > 4 * in_window(smooth)
    s = general_image(shape=(48, 48), kind="none", scale_jitter=0.1, energy_jitter=0.2, seed=0)
    assert np.log(s.nuisance["scale"]).std() == pytest.approx(0.1, rel=0.15)
    assert s.nuisance["jitter_eV"].std() == pytest.approx(0.2, rel=0.15)


def test_ccd_detector_counts_and_electrons():
    sim = general_image(shape=(24, 24), kind="none", detector="ccd", seed=0)
    x = sim.si.data
    assert np.array_equal(x, np.rint(x))  # integer read-out
    el = sim.to_electrons().astype(np.float64)
    # gain and offset undone: the electrons average the expectation
    assert el.mean() == pytest.approx(float(sim.expected.mean()), rel=0.01)
    # the point-spread correlates neighbouring channels' noise
    res = el - sim.expected
    corr = np.corrcoef(res[..., :-1].ravel(), res[..., 1:].ravel())[0, 1]
    assert corr > 0.3
    cnt = general_image(shape=(24, 24), kind="none", seed=0)
    res = cnt.si.data.astype(np.float64) - cnt.expected
    assert abs(np.corrcoef(res[..., :-1].ravel(), res[..., 1:].ravel())[0, 1]) < 0.05


@pytest.mark.parametrize("kw, match", [
    (dict(kind="oxidation"), "kind expected"),
    (dict(geometry="blob"), "geometry expected"),
    (dict(shape=(4, 4)), "shape expected"),
    (dict(fraction=5), "fraction expected"),
    (dict(geometry="clusters", fraction=0.45), "fraction expected at most"),
    (dict(kind="ratio", magnitude=0.0), "magnitude expected"),
    (dict(dose=-1), "dose expected"),
    (dict(detector="cmos"), "detector expected"),
    (dict(detector={"gain": 2.0, "colour": 1}), "detector expected"),
    (dict(seed=-1), "seed expected"),
    (dict(dtype=np.int16), "dtype expected"),
    (dict(bulk="yes"), "bulk expected"),
])
def test_validation(kw, match):
    with pytest.raises(InputError, match=match):
        general_image(**{"shape": (16, 16), **kw})


def test_quick_condition_list():
    conds = quick_general_conditions()
    assert len(conds) == 20 and len({c.name for c in conds}) == 20
    # every condition with and without a bulk region
    assert sum(c.supervised for c in conds) == 10
    names = " ".join(c.name for c in conds)
    assert "issue 22: shift 1.5 eV, clusters, dose 1000" in names
    assert "issue 22: shift 1 eV, clusters, dose 600" in names
    kinds = {c.params["kind"] for c in conds}
    assert set(FLAGGED_KINDS) | set(NOT_FLAGGED_KINDS) | {"none"} <= kinds
    assert set(GEOMETRIES) <= {c.params.get("geometry", "clusters") for c in conds}
    assert {c.params["correlation_px"] for c in conds} >= {2.5, 9.0, 30.0}
    assert {c.params.get("detector", "counting") for c in conds} == {"counting", "ccd"}
    assert {c.must_not_flag for c in conds} == {True, False}
    for c in conds:  # the images are buildable and small enough for a CPU suite
        assert c.params["shape"][0] * c.params["shape"][1] <= 64 * 64
    sim = conds[0].simulate(seed=0)
    assert sim.truth.sum() == round(0.015 * 64 * 64) and sim.params["dose"] == 1000.0
    full = general_conditions(quick=False)
    assert len(full) > len(conds) and len({c.name for c in full}) == len(full)


def test_normal_expected_with_a_nuisance_replaced():
    sim = general_image(shape=(16, 16), kind="shift", geometry="clusters", seed=2)
    flat = sim.normal_expected(thickness=1.0, scale=1.0, jitter_eV=0.0)
    # every pixel the average normal spectrum: the dose sits at the Fe L3 maximum
    np.testing.assert_allclose(flat, np.broadcast_to(flat[0, 0], flat.shape), rtol=1e-6)
    assert 0.9 * sim.params["dose"] <= float(flat[0, 0].max()) <= 1.001 * sim.params["dose"]
    assert not np.array_equal(flat, sim.normal_expected())
    with pytest.raises(InputError, match="nuisance names"):
        sim.normal_expected(drift_eV=0.1)
    with pytest.raises(InputError, match="thickness expected > 0"):
        sim.normal_expected(thickness=0.0)
