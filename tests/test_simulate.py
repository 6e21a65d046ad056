"""Tests for eelsanom.simulate: physics, ground truth, reproducibility, validation, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eelsanom.errors import InputError
from eelsanom.simulate import ANOMALY_TYPES, SHAPES, WINDOWS, simulate
from eelsanom.spectrum import as_spectrum_image

FE_L3, FE_L2 = 709.5, 722.6


def _peak(energy: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Energy of the maximum of ``y`` in [lo, hi], refined by a parabola through 3 channels."""
    sel = np.flatnonzero((energy >= lo) & (energy <= hi))
    i = sel[np.argmax(y[sel])]
    a, b, c = (float(v) for v in y[i - 1:i + 2])
    step = energy[1] - energy[0]
    return float(energy[i] + 0.5 * step * (a - c) / (a - 2 * b + c))


@pytest.fixture(scope="module")
def clean_bfo():
    """Average-pixel spectra (no nuisances, no anomalies) over the bfo window."""
    return simulate(shape=(8, 8), window="bfo", concentration=0.0, nuisances=False, seed=1)


@pytest.mark.parametrize("window, n, start", [("fe-l", 267, 680.0), ("bfo", 1334, 420.0)])
def test_energy_axis_and_calibration(window, n, start):
    sim = simulate(shape=(6, 5), window=window, concentration=0.0, seed=0)
    e = sim.si.energy
    assert (e.size, e.offset, e.scale, e.units, e.name) == (n, start, 0.3, "eV", "Energy loss")
    assert e.end <= WINDOWS[window][1] < e.end + e.scale
    assert sim.si.shape == (6, 5, n) and sim.si.data.dtype == np.float32
    assert sim.expected.dtype == np.float32 and sim.expected_alt.dtype == np.float32
    assert sim.si.x.units == "nm" and sim.si.y.units == "nm" and sim.si.x.scale > 0
    assert sim.si.ground_truth is not None and sim.si.metadata["simulation"] is sim.params
    np.testing.assert_array_equal(sim.si.metadata["bulk_mask"], sim.bulk_mask)


def test_fe_l_edge_positions(clean_bfo):
    e = clean_bfo.si.energy.values
    y = clean_bfo.expected[0, 0].astype(np.float64)
    assert abs(_peak(e, y, 700, 716) - FE_L3) <= 0.3
    assert abs(_peak(e, y, 718, 728) - FE_L2) <= 0.4
    # white lines stand well above the pre-edge background; continuum step after the edges
    pre = y[(e > 695) & (e < 700)].mean()
    assert y[(e > 700) & (e < 716)].max() > 1.8 * pre
    post = y[(e > 735) & (e < 740)].mean()
    pre_fit = np.exp(np.polyval(np.polyfit(np.log(e[(e > 680) & (e < 700)]),
                                           np.log(y[(e > 680) & (e < 700)]), 1), np.log(737.5)))
    assert post > 1.1 * pre_fit


def test_o_k_onset_near_532(clean_bfo):
    e = clean_bfo.si.energy.values
    y = clean_bfo.expected[0, 0].astype(np.float64)
    fit = (e > 460) & (e < 520)
    bg = np.exp(np.polyval(np.polyfit(np.log(e[fit]), np.log(y[fit]), 1), np.log(e)))
    edge = y - bg
    region = (e > 515) & (e < 570)
    onset = e[region][np.argmax(edge[region] > 0.1 * edge[region].max())]
    assert 529.5 <= onset <= 533.0
    assert 538 <= _peak(e, edge, 536, 550) <= 543  # main O K near-edge peak


def test_shift_is_interpolated_without_wraparound():
    sim = simulate(shape=(24, 40), anomaly="shift", magnitude=2.4, concentration=0.05, seed=4)
    e = sim.si.energy.values
    ys, xs = np.nonzero(sim.truth)
    for y, x in zip(ys[:5], xs[:5]):
        shifted = sim.expected[y, x].astype(np.float64)
        unshifted = sim.expected_alt[y, x].astype(np.float64)
        # low-energy end: background only, unchanged (a roll would bring the L2 region here)
        np.testing.assert_allclose(shifted[:20], unshifted[:20], rtol=2e-3)
        np.testing.assert_allclose(shifted[-10:], unshifted[-10:], rtol=1e-2)
        d = _peak(e, shifted, 700, 720) - _peak(e, unshifted, 700, 718)
        assert d == pytest.approx(2.4, abs=0.15)
    # a normal pixel: its alternative carries the shift
    y, x = np.argwhere(~sim.truth)[0]
    d = _peak(e, sim.expected_alt[y, x], 700, 720) - _peak(e, sim.expected[y, x], 700, 718)
    assert d == pytest.approx(2.4, abs=0.15)


def test_negative_shift_moves_to_lower_energy():
    sim = simulate(shape=(16, 16), magnitude=-1.2, concentration=0.05, nuisances=False, seed=0)
    e = sim.si.energy.values
    y, x = np.argwhere(sim.truth)[0]
    d = _peak(e, sim.expected[y, x], 700, 716) - _peak(e, sim.expected_alt[y, x], 700, 716)
    assert d == pytest.approx(-1.2, abs=0.15)


@pytest.mark.parametrize("anomaly_shape", SHAPES)
@pytest.mark.parametrize("shape, concentration", [
    ((32, 32), 0.02),   # round(20.48) = 20
    ((24, 40), 0.005),  # round(4.8) = 5
    ((32, 32), 0.1),    # denser than the sweep needs
])
def test_truth_count_exact_and_outside_bulk(anomaly_shape, shape, concentration):
    sim = simulate(shape=shape, anomaly_shape=anomaly_shape, concentration=concentration, seed=3)
    n = round(concentration * shape[0] * shape[1])
    assert int(sim.truth.sum()) == n == sim.params["n_anomalous"]
    assert not (sim.truth & sim.bulk_mask).any()
    np.testing.assert_array_equal(sim.si.ground_truth, sim.truth)


def test_bulk_mask_is_top_rows_full_width():
    sim = simulate(shape=(20, 30), bulk_fraction=0.3, seed=0)
    assert sim.bulk_mask[:6].all() and not sim.bulk_mask[6:].any()


def test_pixels_are_isolated_and_clusters_are_compact():
    pix = simulate(shape=(32, 32), anomaly_shape="pixels", concentration=0.02, seed=5).truth
    from scipy import ndimage

    labels, n = ndimage.label(pix, structure=np.ones((3, 3)))
    assert n == pix.sum()  # no two anomalous pixels touch, even diagonally
    clu = simulate(shape=(32, 32), anomaly_shape="clusters", concentration=0.05, seed=5).truth
    labels, n = ndimage.label(clu)
    assert n < clu.sum() / 4  # discs of several pixels, not scattered points


def test_concentration_zero_has_no_anomalies_but_an_alternative():
    sim = simulate(shape=(16, 16), concentration=0.0, seed=0)
    assert not sim.truth.any() and sim.params["n_anomalous"] == 0
    assert not np.allclose(sim.expected, sim.expected_alt)


def test_same_seed_identical_different_seed_differs():
    kw = dict(shape=(16, 20), anomaly_shape="line", concentration=0.05)
    a, b, c = simulate(seed=7, **kw), simulate(seed=7, **kw), simulate(seed=8, **kw)
    for name in ("truth", "expected", "expected_alt"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.si.data, b.si.data)
    assert a.params == b.params
    assert not np.array_equal(a.si.data, c.si.data)
    assert not np.array_equal(a.truth, c.truth)


def test_mask_independent_of_magnitude_dose_and_type():
    a = simulate(shape=(16, 16), window="bfo", magnitude=0.3, dose=50, seed=2)
    b = simulate(shape=(16, 16), window="bfo", anomaly="impurity", dose=1000, seed=2)
    np.testing.assert_array_equal(a.truth, b.truth)


@pytest.mark.parametrize("dose", [50.0, 200.0, 1000.0])
def test_dose_sets_l3_maximum_counts(dose):
    sim = simulate(shape=(24, 24), dose=dose, seed=1)
    e = sim.si.energy.values
    ch = int(np.argmin(np.abs(e - FE_L3)))
    level = sim.expected[sim.bulk_mask][:, ch].mean()
    assert level == pytest.approx(dose, rel=0.15)
    assert sim.si.data[sim.bulk_mask][:, ch].mean() == pytest.approx(dose, rel=0.15)


def test_counts_are_poisson_around_expected_not_alt():
    sim = simulate(shape=(24, 24), magnitude=1.5, concentration=0.05, read_noise=1.0, seed=2)
    y = sim.si.data.astype(np.float64)
    mu, alt = sim.expected.astype(np.float64), sim.expected_alt.astype(np.float64)
    chi2 = ((y - mu) ** 2 / (mu + 1.0)).mean()
    assert chi2 == pytest.approx(1.0, abs=0.03)
    t = sim.truth
    chi2_alt = ((y[t] - alt[t]) ** 2 / (alt[t] + 1.0)).mean()
    assert chi2_alt > 1.5


def test_nuisances_vary_the_bulk_smoothly_and_can_be_switched_off():
    on = simulate(shape=(16, 16), concentration=0.0, seed=0)
    off = simulate(shape=(16, 16), concentration=0.0, nuisances=False, seed=0)
    ref = off.expected[0, 0]
    np.testing.assert_allclose(off.expected, np.broadcast_to(ref, off.expected.shape), rtol=1e-6)
    ch = int(np.argmin(np.abs(on.si.energy.values - FE_L3)))
    level = on.expected[..., ch] / ref[ch]
    assert 0.8 < level.min() < 0.97 and 1.03 < level.max() < 1.2  # +-15 % thickness
    assert np.abs(np.diff(level, axis=1)).max() < 0.05  # smooth: no pixel-to-pixel jumps
    assert on.params["derived"]["jitter_std_realised_eV"] == pytest.approx(0.03, rel=0.2)
    assert off.params["energy_jitter"] == 0.0


def test_ratio_changes_only_the_white_lines():
    sim = simulate(shape=(16, 16), anomaly="ratio", magnitude=0.7, concentration=0.05,
                   nuisances=False, seed=0)
    e = sim.si.energy.values
    y, x = np.argwhere(sim.truth)[0]
    a, n = sim.expected[y, x].astype(np.float64), sim.expected_alt[y, x].astype(np.float64)
    rel = (a - n) / n
    outside = (e < 700) | (e > 735)
    assert np.abs(rel[outside]).max() < 1e-3
    assert rel[np.argmin(np.abs(e - FE_L3))] < -0.02  # L3 weaker
    assert rel[np.argmin(np.abs(e - FE_L2))] > 0.02   # L2 stronger (total kept)
    assert sim.params["derived"]["l3_l2_ratio_anomalous"] == pytest.approx(
        0.7 * sim.params["derived"]["l3_l2_ratio_normal"])


def test_impurity_adds_mn_edge_only_above_it():
    sim = simulate(shape=(16, 16), window="bfo", anomaly="impurity", magnitude=0.1,
                   concentration=0.05, nuisances=False, seed=0)
    e = sim.si.energy.values
    y, x = np.argwhere(sim.truth)[0]
    diff = sim.expected[y, x].astype(np.float64) - sim.expected_alt[y, x]
    assert np.abs(diff[e < 620] / sim.expected_alt[y, x][e < 620]).max() < 1e-3
    assert abs(_peak(e, diff, 630, 648) - 640.0) <= 0.5
    fe_white = sim.params["physics"]["fe_l"]["l3_height"] * sim.params["derived"]["counts_scale"]
    assert diff.max() == pytest.approx(0.1 * fe_white, rel=0.25)  # plus a little Mn continuum


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(64,)), "shape"),
    (dict(shape=(2, 64)), "shape"),
    (dict(window="o-k"), "window"),
    (dict(anomaly="blur"), "anomaly"),
    (dict(anomaly_shape="squares"), "anomaly_shape"),
    (dict(anomaly="impurity"), "outside the 'fe-l' window"),   # Mn L needs bfo
    (dict(magnitude=25.0), "magnitude"),
    (dict(magnitude=float("nan")), "magnitude"),
    (dict(anomaly="ratio", magnitude=0.0), "magnitude"),
    (dict(window="bfo", anomaly="impurity", magnitude=-0.1), "magnitude"),
    (dict(concentration=2.0), "not a percentage"),
    (dict(concentration=-0.1), "concentration"),
    (dict(shape=(8, 8), concentration=0.001), "at least one anomalous pixel"),
    (dict(shape=(10, 10), concentration=0.45), "outside the bulk"),
    (dict(dose=0.0), "dose"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(nuisances="yes"), "nuisances"),
    (dict(read_noise=-1.0), "read_noise"),
    (dict(energy_jitter=5.0), "energy_jitter"),
    (dict(bulk_fraction=1.0), "bulk_fraction"),
    (dict(bulk_fraction=0.01), "bulk_fraction"),
    (dict(dtype=np.int16), "dtype"),
])
def test_bad_arguments_raise_input_error(kwargs, match):
    base = dict(shape=(16, 16))
    base.update(kwargs)
    with pytest.raises(InputError, match=match):
        simulate(**base)


@pytest.mark.parametrize("anomaly", ANOMALY_TYPES)
def test_params_json_and_defaults(anomaly):
    sim = simulate(shape=(12, 12), window="bfo", anomaly=anomaly, concentration=0.05, seed=0)
    back = json.loads(json.dumps(sim.params))
    assert back["seed"] == 0 and back["anomaly"] == anomaly
    assert back["magnitude"] == {"shift": 1.5, "ratio": 0.7, "impurity": 0.1}[anomaly]
    assert back["n_anomalous"] == 7 and back["shape"] == [12, 12]


def test_float64_option():
    sim = simulate(shape=(8, 8), concentration=0.0, dtype=np.float64)
    assert sim.si.data.dtype == sim.expected.dtype == np.float64


@pytest.fixture(scope="module")
def hs():
    return pytest.importorskip("hyperspy.api", reason="HyperSpy not installed")


def test_to_signal_passes_as_spectrum_image(hs):
    sim = simulate(shape=(12, 20), seed=0)
    sig = sim.to_signal()
    assert sig.metadata.Signal.signal_type == "EELS"
    si = as_spectrum_image(sig)
    assert si.energy.same_as(sim.si.energy) and si.energy.units == "eV"
    assert si.x.same_as(sim.si.x) and si.y.same_as(sim.si.y) and si.x.units == "nm"
    np.testing.assert_array_equal(si.ground_truth, sim.truth)
    np.testing.assert_array_equal(si.data, sim.si.data)


@pytest.mark.parametrize("suffix", [".hspy", ".zspy"])
def test_save_load_round_trip(hs, tmp_path, suffix):
    sim = simulate(shape=(12, 20), concentration=0.05, seed=0)
    path = sim.save(tmp_path / "sub" / f"sim{suffix}")
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    sig = hs.load(str(path))
    ax = sig.axes_manager.signal_axes[0]
    assert (ax.offset, ax.scale, ax.units) == (680.0, pytest.approx(0.3), "eV")
    np.testing.assert_array_equal(np.asarray(sig.metadata.eelsanom.ground_truth), sim.truth)
    np.testing.assert_array_equal(np.asarray(sig.metadata.eelsanom.bulk_mask), sim.bulk_mask)
    assert json.loads(sig.metadata.eelsanom.simulation) == sim.params
    si = as_spectrum_image(sig)
    np.testing.assert_array_equal(si.ground_truth, sim.truth)
    np.testing.assert_array_equal(np.asarray(si.data), sim.si.data)
    assert si.energy.same_as(sim.si.energy)
    # refuses to overwrite; overwrite=True replaces, leaving no temporary behind
    with pytest.raises(InputError, match="already exists"):
        sim.save(path)
    other = simulate(shape=(12, 20), concentration=0.05, seed=1)
    other.save(path, overwrite=True)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    np.testing.assert_array_equal(np.asarray(hs.load(str(path)).data), other.si.data)


def test_save_refuses_other_formats(tmp_path):
    sim = simulate(shape=(8, 8), concentration=0.0)
    with pytest.raises(InputError, match=r"\.hspy or \.zspy"):
        sim.save(tmp_path / "sim.tif")


# --------------------------------------------------------------------------- defaults pinned

# Values of the paper benchmark's default simulation, recorded before the realistic-bulk
# options existed: adding options must not change a single voxel of it.
_PINNED_DEFAULT = [  # (y, x, channel): expected, expected_alt, counts
    ((0, 0, 0), 99.95948791503906, 99.93460845947266, 95.45478057861328),
    ((10, 20, 98), 208.73593139648438, 113.25595092773438, 187.98223876953125),
    ((40, 7, 150), 94.11260986328125, 101.68748474121094, 93.93074035644531),
    ((63, 63, 266), 103.41020202636719, 103.47530364990234, 101.61612701416016),
    ((50, 33, 100), 191.9915008544922, 138.1399688720703, 214.80003356933594),
]
_PINNED_BFO_RATIO = [
    ((0, 0, 0), 228.43260192871094, 228.43260192871094, 223.54714965820312),
    ((5, 6, 960), 111.81486511230469, 109.4612808227539, 113.81275177001953),
    ((11, 3, 1333), 68.84231567382812, 68.84258270263672, 84.3078842163086),
]


def _check_pinned(sim, pinned):
    for idx, exp, alt, cnt in pinned:
        assert float(sim.expected[idx]) == pytest.approx(exp, rel=1e-6)
        assert float(sim.expected_alt[idx]) == pytest.approx(alt, rel=1e-6)
        assert float(sim.si.data[idx]) == pytest.approx(cnt, abs=1e-3)


def test_default_simulation_unchanged():
    sim = simulate()
    assert int(sim.truth.sum()) == 82
    assert np.flatnonzero(sim.truth.ravel())[:8].tolist() == [1221, 1222, 1223, 1224, 1225,
                                                              1285, 1286, 1287]
    _check_pinned(sim, _PINNED_DEFAULT)
    assert float(sim.expected.astype(np.float64).sum()) == pytest.approx(107693818.2122345,
                                                                         rel=1e-7)
    _check_pinned(simulate(shape=(12, 12), window="bfo", anomaly="ratio", concentration=0.05,
                           seed=3), _PINNED_BFO_RATIO)


def test_default_options_are_explicit_no_ops():
    """Passing the new options at their defaults gives the same arrays and nuisance maps."""
    a = simulate(shape=(16, 16), seed=4)
    b = simulate(shape=(16, 16), seed=4, drift=0.0, drift_pattern="ramp", valence_gradient=0.0,
                 thickness=None, gain=1.0, dark_offset=0.0)
    for name in ("truth", "expected", "expected_alt"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.si.data, b.si.data)
    assert sorted(a.nuisance) == ["drift_eV", "exponent", "intensity", "jitter_eV", "valence_eV"]
    assert not a.nuisance["drift_eV"].any() and not a.nuisance["valence_eV"].any()


# --------------------------------------------------------------------------- realistic bulk


def _clean(**kw):
    """No built-in nuisances, no anomalies: only the option under test varies."""
    base = dict(shape=(16, 16), concentration=0.0, nuisances=False, seed=0)
    base.update(kw)
    return simulate(**base)


def test_drift_moves_the_whole_spectrum():
    ref = _clean(window="bfo")
    sim = _clean(window="bfo", drift=0.8)
    d = sim.nuisance["drift_eV"]
    assert np.abs(d).max() == pytest.approx(0.8) and abs(d.mean()) < 1e-12
    assert np.abs(np.diff(d, axis=0)).max() < 0.2  # smooth
    e = sim.si.energy.values
    r = ref.expected[0, 0].astype(np.float64)
    for y, x in [np.unravel_index(np.argmax(d), d.shape), np.unravel_index(np.argmin(d), d.shape),
                 (5, 9)]:
        s = sim.expected[y, x].astype(np.float64)
        assert _peak(e, s, 700, 718) - _peak(e, r, 700, 718) == pytest.approx(d[y, x], abs=0.05)
        # the O K edge moves with it: best shift of the reference onto the pixel, 520-560 eV
        ok_ = (e > 520) & (e < 560)
        grid = np.arange(-1.0, 1.0001, 0.01)
        err = [np.square(s[ok_] - np.interp(e[ok_] - g, e, r)).sum() for g in grid]
        assert grid[int(np.argmin(err))] == pytest.approx(d[y, x], abs=0.02)
        # power-law background: (E - d)**-3 / E**-3 = 1 + 3 d / E to first order
        bg = (e > 440) & (e < 480)
        np.testing.assert_allclose(s[bg] / r[bg], 1 + 3 * d[y, x] / e[bg], atol=5e-4)
    # nothing else moved: the anomaly mask and the other nuisance maps
    for key in ("jitter_eV", "exponent", "intensity", "valence_eV"):
        np.testing.assert_array_equal(sim.nuisance[key], ref.nuisance[key])


def test_drift_ramp_is_linear_along_slow_scan_axis():
    sim = simulate(shape=(16, 12), drift=0.6, drift_pattern="ramp", seed=1)
    d = sim.nuisance["drift_eV"]
    assert d[0] == pytest.approx(np.full(12, -0.6)) and d[-1] == pytest.approx(np.full(12, 0.6))
    assert (np.diff(d[:, 0]) > 0).all() and (np.diff(d, axis=1) == 0).all()
    # the jitter still adds on top, as before
    other = simulate(shape=(16, 12), seed=1)
    np.testing.assert_array_equal(sim.nuisance["jitter_eV"], other.nuisance["jitter_eV"])
    np.testing.assert_array_equal(sim.truth, other.truth)
    e = sim.si.energy.values
    no_jitter = sim.normal_expected(jitter_eV=0.0)
    peaks = [_peak(e, no_jitter[y, 3], 700, 718) for y in range(16)]
    assert (np.diff(peaks) > 0).all()


def test_valence_gradient_moves_only_fe_l():
    ref = _clean(window="bfo", shape=(8, 20))
    sim = _clean(window="bfo", shape=(8, 20), valence_gradient=1.0)
    v = sim.nuisance["valence_eV"]
    assert v[:, 0] == pytest.approx(np.full(8, -0.5)) and v[:, -1] == pytest.approx(np.full(8, 0.5))
    assert (np.diff(v[0]) > 0).all() and (np.diff(v, axis=0) == 0).all()
    assert v[sim.bulk_mask].min() == v.min() and v[sim.bulk_mask].max() == v.max()
    e = sim.si.energy.values
    r = ref.expected[0, 0].astype(np.float64)
    for x in (0, 7, 19):
        s = sim.expected[3, x].astype(np.float64)
        # background and O K unchanged (up to the Fe L lines' far Lorentzian tails)
        below = e < 660
        np.testing.assert_allclose(s[below], r[below], rtol=1e-4)
        assert _peak(e, s, 700, 718) - _peak(e, r, 700, 718) == pytest.approx(v[3, x], abs=0.05)
        assert _peak(e, s, 718, 728) - _peak(e, r, 718, 728) == pytest.approx(v[3, x], abs=0.08)


def test_valence_gradient_and_shift_anomaly_add():
    sim = simulate(shape=(16, 16), magnitude=0.9, concentration=0.05, nuisances=False,
                   valence_gradient=2.0, seed=0)
    e = sim.si.energy.values
    for y, x in np.argwhere(sim.truth)[:3]:
        d = _peak(e, sim.expected[y, x], 700, 720) - _peak(e, sim.expected_alt[y, x], 700, 720)
        assert d == pytest.approx(0.9, abs=0.05)


def test_low_loss_spectrum_is_poisson_plasmon_series():
    from eelsanom.simulate import _plasmon_kernel, _plural

    step, n = 0.3, 1200
    kernel = _plasmon_kernel(n // 2, step)
    e = step * np.arange(n)
    assert e[np.argmax(kernel)] == pytest.approx(22.0, abs=0.6)
    half = e[:kernel.size][kernel >= kernel.max() / 2]
    assert 3.5 < half.max() - half.min() < 6.5  # width ~5 eV
    delta = np.zeros((3, n))
    delta[:, 0] = 1.0
    t = np.array([0.2, 0.6, 1.0])
    low = _plural(delta, t, kernel)
    np.testing.assert_allclose(low.sum(axis=1), 1.0, atol=1e-6)  # electrons conserved
    np.testing.assert_allclose(low[:, 0], np.exp(-t), rtol=1e-9)  # zero-loss fraction
    # single and double plasmon bands hold ~ t e^-t and t^2/2 e^-t of the electrons
    one = low[:, (e > 10) & (e < 33)].sum(axis=1)
    two = low[:, (e > 33) & (e < 55)].sum(axis=1)
    assert one == pytest.approx(t * np.exp(-t), rel=0.15)
    assert two == pytest.approx(t ** 2 / 2 * np.exp(-t), rel=0.3)


def test_thickness_plural_scattering_conserves_and_adds_plasmon_tail():
    sim = _clean(thickness=(0.2, 1.0))
    t = sim.nuisance["t_over_lambda"]
    assert t.min() == pytest.approx(0.2) and t.max() == pytest.approx(1.0)
    np.testing.assert_allclose(sim.nuisance["intensity"], t / 0.6)
    assert np.abs(np.diff(t, axis=1)).max() < 0.2  # smooth
    e = sim.si.energy.values
    single = sim.normal_expected(t_over_lambda=0.0, intensity=1.0)[0, 0].astype(np.float64)
    for tv in (0.3, 1.0):
        plural = sim.normal_expected(t_over_lambda=tv, intensity=1.0)[0, 0].astype(np.float64)
        assert plural.sum() == pytest.approx(single.sum(), rel=0.02)  # roughly conserved
        tail = plural - np.exp(-tv) * single  # what the plasmons added
        sel = (e > 715) & (e < 750)
        assert e[sel][np.argmax(tail[sel])] == pytest.approx(709.5 + 22.0, abs=1.5)
        assert plural[np.argmin(np.abs(e - FE_L3))] < single[np.argmin(np.abs(e - FE_L3))]
    # intensity scales with t: the thicker pixel has more core-loss electrons
    thick, thin = np.unravel_index(np.argmax(t), t.shape), np.unravel_index(np.argmin(t), t.shape)
    assert sim.expected[thick].sum() / sim.expected[thin].sum() == pytest.approx(5.0, rel=0.02)


def test_thickness_keeps_dose_meaning():
    sim = _clean(thickness=(0.2, 1.0), dose=300.0)
    ref = sim.normal_expected(t_over_lambda=0.6)  # t_ref: the average pixel
    e = sim.si.energy.values
    near = np.abs(e - FE_L3) <= 3
    assert ref[0, 0][near].max() == pytest.approx(300.0, rel=0.01)


def test_gain_and_dark_offset_statistics():
    kw = dict(shape=(24, 24), concentration=0.0, seed=3)
    ref = simulate(**kw)
    sim = simulate(gain=8.0, dark_offset=100.0, read_noise=4.0, **kw)
    np.testing.assert_array_equal(sim.expected, ref.expected)  # electrons, before the detector
    assert sim.params["derived"]["gain"] == 8.0 and sim.params["dark_offset"] == 100.0
    x = sim.to_electrons().astype(np.float64)
    np.testing.assert_allclose(x, (sim.si.data.astype(np.float64) - 100.0) / 8.0, rtol=1e-6)
    mu = sim.expected.astype(np.float64)
    resid = x - mu
    assert resid.mean() == pytest.approx(0.0, abs=0.05)
    # Poisson variance in electrons plus read noise (4 counts = 0.5 electrons)
    assert (resid ** 2 / (mu + 0.25)).mean() == pytest.approx(1.0, abs=0.03)
    raw = sim.si.data.astype(np.float64)
    assert raw.mean() == pytest.approx(8.0 * mu.mean() + 100.0, rel=0.01)


@pytest.mark.parametrize("option, changed", [
    (dict(drift=0.5), {"drift_eV"}),
    (dict(drift=0.5, drift_pattern="ramp"), {"drift_eV"}),
    (dict(valence_gradient=1.0), {"valence_eV"}),
    (dict(thickness=(0.2, 1.0)), {"intensity", "t_over_lambda"}),
    (dict(gain=4.0, dark_offset=10.0), set()),
])
def test_each_option_changes_only_its_own_nuisance(option, changed):
    kw = dict(shape=(12, 12), concentration=0.05, seed=5)
    ref, sim = simulate(**kw), simulate(**kw, **option)
    np.testing.assert_array_equal(sim.truth, ref.truth)
    for key, value in sim.nuisance.items():
        if key in changed:
            assert key not in ref.nuisance or not np.array_equal(value, ref.nuisance[key])
        else:
            np.testing.assert_array_equal(value, ref.nuisance[key])
    if changed:
        assert not np.allclose(sim.expected, ref.expected, rtol=1e-3)
    else:  # the detector changes the counts only, not the electrons
        np.testing.assert_array_equal(sim.expected, ref.expected)
        np.testing.assert_array_equal(sim.expected_alt, ref.expected_alt)
        assert not np.allclose(sim.si.data, ref.si.data)


def test_nuisance_maps_and_normal_expected_reproduce_expected():
    sim = simulate(shape=(16, 16), magnitude=0.6, concentration=0.05, drift=0.5,
                   valence_gradient=0.8, thickness=(0.3, 0.9), seed=2)
    assert set(sim.nuisance) == {"drift_eV", "jitter_eV", "valence_eV", "exponent",
                                 "intensity", "t_over_lambda"}
    assert all(m.shape == (16, 16) and m.dtype == np.float64 for m in sim.nuisance.values())
    ne = sim.normal_expected()
    assert ne.shape == sim.expected.shape and ne.dtype == sim.expected.dtype
    np.testing.assert_array_equal(ne[~sim.truth], sim.expected[~sim.truth])
    np.testing.assert_array_equal(ne[sim.truth], sim.expected_alt[sim.truth])


def test_normal_expected_override_matches_a_simulation_without_that_nuisance():
    kw = dict(shape=(12, 12), concentration=0.05, seed=6)
    drifted = simulate(drift=0.7, **kw)
    plain = simulate(**kw)
    ne = drifted.normal_expected(drift_eV=0.0)
    ok = ~plain.truth
    np.testing.assert_allclose(ne[ok], plain.expected[ok], rtol=1e-5)
    # a scalar and a map mean the same; a different drift changes the spectra
    np.testing.assert_array_equal(drifted.normal_expected(drift_eV=0.3),
                                  drifted.normal_expected(drift_eV=np.full((12, 12), 0.3)))
    assert not np.allclose(drifted.normal_expected(drift_eV=0.3), ne, rtol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(drift=2.5), "drift expected an energy drift amplitude"),
    (dict(drift=-0.1), "drift"),
    (dict(drift="0.5"), "drift"),
    (dict(drift_pattern="sine"), "drift_pattern"),
    (dict(valence_gradient=3.5), "valence_gradient"),
    (dict(valence_gradient=float("nan")), "valence_gradient"),
    (dict(thickness=(1.0, 0.2)), "t_min < t_max"),
    (dict(thickness=(0.01, 1.0)), "thickness"),
    (dict(thickness=(0.2, 2.5)), "thickness"),
    (dict(thickness="0.2:1.0"), "thickness"),
    (dict(thickness=(0.5,)), "thickness"),
    (dict(thickness=0.5), "thickness"),
    (dict(gain=0.0), "gain"),
    (dict(gain=float("inf")), "gain"),
    (dict(dark_offset=float("nan")), "dark_offset"),
])
def test_bulk_option_validation(kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        simulate(shape=(8, 8), **kwargs)
    msg = str(info.value)
    assert "expected" in msg and "found" in msg and "Use" in msg


def test_normal_expected_validation():
    sim = simulate(shape=(8, 8), concentration=0.0, seed=0)
    with pytest.raises(InputError, match="nuisance names"):
        sim.normal_expected(drift=0.3)
    with pytest.raises(InputError, match="only when simulate"):
        sim.normal_expected(t_over_lambda=0.5)
    with pytest.raises(InputError, match="shape"):
        sim.normal_expected(drift_eV=np.zeros((4, 4)))
    with pytest.raises(InputError, match="finite"):
        sim.normal_expected(exponent=float("nan"))
    with pytest.raises(InputError, match="tabulated range"):
        sim.normal_expected(drift_eV=50.0)
    with pytest.raises(InputError, match="exponent"):
        sim.normal_expected(exponent=-1.0)
    with pytest.raises(InputError, match="numeric"):
        sim.to_electrons(np.array(["a"]))


def test_cli_simulate_bulk_options(tmp_path, capsys):
    pytest.importorskip("hyperspy.api", reason="HyperSpy not installed")
    from eelsanom.cli import main

    out = tmp_path / "real.hspy"
    rc = main(["simulate", "--out", str(out), "--shape", "12", "12", "--drift", "0.8",
               "--drift-pattern", "ramp", "--valence-gradient", "1.0", "--thickness", "0.2:1.0",
               "--gain", "8", "--dark-offset", "100", "--quiet"])
    assert rc == 0 and out.exists()
    import hyperspy.api as hs

    p = json.loads(hs.load(str(out)).metadata.eelsanom.simulation)
    assert (p["drift"], p["drift_pattern"], p["valence_gradient"], p["thickness"], p["gain"],
            p["dark_offset"]) == (0.8, "ramp", 1.0, [0.2, 1.0], 8.0, 100.0)
    for argv, match in [(["--thickness", "1.0"], "T_MIN:T_MAX"),
                        (["--thickness", "1.0:0.2"], "t_min < t_max"),
                        (["--drift", "3"], "drift"), (["--gain", "0"], "gain")]:
        bad = tmp_path / "bad.hspy"
        assert main(["simulate", "--out", str(bad), "--shape", "8", "8", *argv]) == 2
        assert match in capsys.readouterr().err and not bad.exists()
