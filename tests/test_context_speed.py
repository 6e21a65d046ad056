"""The faster context scoring and bulk-context fit (issue 24) score as before.

Exact paths (the context computed once at fit, the spill guards' excess on the
training pixels only, the fitted image's maps kept from the fit) are compared
for equality with the computations they replace; the context Gaussian's pooling
(float32 tiles with one shared sigma) with the former whole-image float64
evaluation.
"""

from __future__ import annotations

import numpy as np
import pytest

from eelsanom.detectors import get_detector
from eelsanom.detectors._gaussian import gather_training
from eelsanom.pooling import excess_stats, gaussian_block, pool_image, pooling_from
from eelsanom.simulate import simulate


@pytest.fixture(scope="module")
def drift():
    """Realistic suite's drift condition (64 x 64, fe-l), bulk in the top rows."""
    return simulate(shape=(64, 64), window="fe-l", anomaly="shift", anomaly_shape="clusters",
                    concentration=0.02, dose=200.0, drift=0.8, magnitude=0.6, seed=0)


def _dense_pooled_context(det, c, pool):
    """The former ``_pooled_context``: whole-image float64 prediction and sigma."""
    g = det._gaussian(c)
    x, pred, sig = det._x(c).reshape(c["x"].shape), g["pred"], np.sqrt(g["var"])
    ny, nx, d = x.shape

    def gauss(rows, cols):
        return gaussian_block(x[rows, cols], pred[rows, cols], sig[rows, cols])

    return pool_image(gauss, ny, nx, pooling=pool, noise2=float(det.noise_variance_),
                      excess=det.pool_excess_, n_energy=d)


@pytest.mark.parametrize("code_variance", ["bulk", "noise", "spread"])
def test_pooled_context_equals_the_float64_whole_image_evaluation(drift, code_variance):
    """Tiles in float32 (one shared sigma where the code variances are learnt or the
    noise's; per-pixel sigmas for "spread"): within 2e-5 relative of float64."""
    sim = drift
    det = get_detector("context-pca", device="cpu", code_variance=code_variance)
    det.fit(sim.si, sim.bulk_mask)
    c = det._context(sim.si)
    pool = pooling_from(0.8)
    new = det._pooled_context(c, pool)
    ref = _dense_pooled_context(det, c, pool)
    for k in ("score", "nb_nll", "own", "expected"):
        np.testing.assert_allclose(new[k], ref[k], rtol=2e-5, atol=1e-3, err_msg=k)
    np.testing.assert_array_equal(new["scale"], ref["scale"])
    # a block with its context equals the whole image's
    blk = det._pooled_context(c, pool, region=(10, 30, 5, 41))
    np.testing.assert_allclose(blk["score"], new["score"][10:30, 5:41], rtol=1e-6)


@pytest.mark.parametrize("masked", [True, False])
def test_fit_context_is_the_context_computed_again(drift, masked):
    """The learnt context built from the raw one equals a fresh ``_context``; the spill
    guards' statistics equal the former whole-image computations."""
    sim = drift
    mask = sim.bulk_mask if masked else None
    # the region as drawn: the statistics below are of the pixels the model was fitted on
    det = get_detector("bulk-context", device="cpu", extend_bulk="off").fit(sim.si, mask)
    raw = det._context(sim.si, raw=True)
    fresh = det._context(sim.si)
    reused = det._context(sim.si, reuse=raw)
    for k in fresh:
        np.testing.assert_array_equal(reused[k], fresh[k], err_msg=k)
    # the context model's excess: the dense Gaussian over every pixel, then the mask
    g = det._gaussian(fresh)
    exc = 0.5 * np.sum(g["dev"] ** 2 / g["var"] - 1.0, axis=-1)
    exc = exc[mask] if mask is not None else exc.ravel()
    np.testing.assert_allclose(det.pool_excess_, excess_stats(exc, np.zeros_like(exc),
                                                              sim.si.n_energy), rtol=1e-12)
    # PCA's excess: the former gather-then-draw of 4096 training rows
    X = gather_training(sim.si, mask, det.transform, det.gain_)
    if X.shape[0] > 4096:
        X = X[np.random.default_rng(det.seed).choice(X.shape[0], 4096, replace=False)]
    np.testing.assert_allclose(det.global_excess_, det._excess(X), rtol=1e-12)


def test_score_of_the_fitted_image_reuses_the_fit_maps_exactly(drift, monkeypatch):
    """Scoring the image the model was fitted on takes the fit's maps: equal to pooling
    again; other data, another pooling or other parameters pool again."""
    from eelsanom.detectors.bulk_context import BulkContextDetector

    sim = drift
    det = get_detector("bulk-context", device="cpu").fit(sim.si, sim.bulk_mask)
    calls = []
    real = BulkContextDetector._evidence
    monkeypatch.setattr(BulkContextDetector, "_evidence",
                        lambda self, *a: calls.append(1) or real(self, *a))
    cached = det.score(sim.si)
    assert calls == []
    det._fitted_maps = None
    fresh = det.score(sim.si)
    assert calls == [1]
    np.testing.assert_array_equal(cached.nll, fresh.nll)
    np.testing.assert_array_equal(cached.latent, fresh.latent)
    for k in fresh.maps:
        np.testing.assert_array_equal(cached.maps[k], fresh.maps[k], err_msg=k)
    # a changed pixel, another pooling, another neighbourhood: pooled again
    det.fit(sim.si, sim.bulk_mask)
    calls.clear()
    other = sim.si.data.copy()
    other[5, 7] += 1.0
    from dataclasses import replace

    det.score(replace(sim.si, data=other))
    det.set_params(pooling=1.2)
    det.score(sim.si)
    det.set_params(pooling=0.8, neighbourhood=7)
    det.score(sim.si)
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("pooling", [0.0, 0.8])
def test_rx_top_eigenpairs_equal_the_full_decomposition(drift, pooling, monkeypatch):
    """RX's channel-side fit takes only its kept directions' eigenpairs and the rest's mean
    from the trace: scores within 1e-9 of the full eigendecomposition's."""
    import scipy.linalg

    sim = drift
    new = get_detector("rx", seed=0, pooling=pooling).fit(sim.si, sim.bulk_mask).score(sim.si)

    def full(a, subset_by_index):  # every eigenpair, then the same subset
        e, v = np.linalg.eigh(a)
        return e[subset_by_index[0]:], v[:, subset_by_index[0]:]

    monkeypatch.setattr(scipy.linalg, "eigh", full)
    ref = get_detector("rx", seed=0, pooling=pooling).fit(sim.si, sim.bulk_mask).score(sim.si)
    np.testing.assert_allclose(new.nll, ref.nll, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale", ["free", "fixed"])
def test_bulk_context_evidence_in_one_pass_equals_the_two_passes(drift, scale):
    """The global (PCA's decoder Gaussian) and local (context) evidence pooled in one pass
    over the context's data equal PCA's pooled score from the raw counts and the dense
    float64 context pooling (float32 tiles: within 2e-5)."""
    from eelsanom.detectors._gaussian import pooled_scores

    sim = drift
    det = get_detector("bulk-context", device="cpu", scale=scale).fit(sim.si, sim.bulk_mask)
    c = det._context(sim.si)
    pool = pooling_from(0.8)
    both = det._pooled_global(c, pool, with_local=True)
    glob = pooled_scores(sim.si, det._gauss_rows, pooling=pool,
                         noise2=float(det.noise_variance_), excess=det.global_excess_)
    loc = _dense_pooled_context(det, c, pool)
    for got, ref in ((both, glob), (both["variant"], loc)):
        for k in ("score", "nb_nll", "own", "expected", "penalty"):
            np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=1e-3, err_msg=k)
        assert np.mean(got["scale"] != ref["scale"]) < 1e-3
    g, loc_map = det._evidence(sim.si, c, pool)
    np.testing.assert_array_equal(g, both["score"])
    np.testing.assert_array_equal(loc_map, both["variant"]["score"])


def test_spill_guards_rest_on_at_most_4096_seeded_training_pixels():
    """On a larger image the context model's spill guard is the excess statistics of 4096
    seeded training pixels (as PCA's), within a few percent of all pixels'."""
    from eelsanom.detectors.context_pca import SPILL_PIXELS

    sim = simulate(shape=(72, 72), window="fe-l", concentration=0.01, seed=2)
    det = get_detector("bulk-context", device="cpu", seed=3).fit(sim.si)
    c = det._context(sim.si)
    exc_all = det._context_excess(c, None)
    idx = np.random.default_rng(3).choice(exc_all.size, SPILL_PIXELS, replace=False)
    np.testing.assert_allclose(det.pool_excess_,
                               excess_stats(exc_all[idx], np.zeros(idx.size), sim.si.n_energy),
                               rtol=1e-12)
    full = excess_stats(exc_all, np.zeros_like(exc_all), sim.si.n_energy)
    assert abs(det.pool_excess_[0] - full[0]) < 0.05 * full[1]
    np.testing.assert_allclose(det.pool_excess_[1], full[1], rtol=0.05)


def test_rx_pixel_side_top_eigenvectors_equal_the_full_decomposition(monkeypatch):
    """With fewer training pixels than channels RX decomposes the pixels' Gram matrix: every
    eigenvalue but only the kept directions' eigenvectors; scores within 1e-9 of taking
    every eigenvector."""
    from eelsanom.detectors.rx import RXDetector

    sim = simulate(shape=(40, 40), window="bfo", magnitude=0.9, concentration=0.02, seed=1)
    calls = []
    real = RXDetector._fit_subset_pixels
    monkeypatch.setattr(RXDetector, "_fit_subset_pixels",
                        lambda self, *a: calls.append(1) or real(self, *a))
    det = get_detector("rx", seed=0).fit(sim.si)
    assert calls and det.basis_.shape[1] == det.max_rank  # the pixel side, the rank capped
    new = det.score(sim.si)
    monkeypatch.setattr("eelsanom.detectors.rx.SUBSET_EIGH_RATIO", 10 ** 9)  # every vector
    ref = get_detector("rx", seed=0).fit(sim.si).score(sim.si)
    np.testing.assert_allclose(new.nll, ref.nll, rtol=1e-9, atol=1e-9)


def test_the_context_of_counts_equals_the_transformed_context(drift, monkeypatch):
    """On the CPU the context keeps the counts and transforms them where they are read (no
    transformed copy of the cube): codes, residuals, spill guards and both pooled evidences
    equal those of the transformed cube (codes bit for bit, maps within float32 rounding)."""
    from eelsanom.detectors.context_pca import ContextPCADetector

    sim = drift
    det = get_detector("bulk-context", device="cpu").fit(sim.si, sim.bulk_mask)
    c = det._context(sim.si)
    assert c["counts"] is True and c["x"].dtype == np.float32
    pool = pooling_from(0.8)
    got = det._evidence(sim.si, c, pool)
    exc = det._context_excess(c, sim.bulk_mask)
    glob = det._excess_global(c, sim.bulk_mask)
    monkeypatch.setattr(ContextPCADetector, "_counts_context", lambda self: False)
    ref_c = det._context(sim.si)
    assert ref_c["counts"] is False
    for k in ("p", "m", "v", "r2", "c"):
        np.testing.assert_array_equal(c[k], ref_c[k], err_msg=k)
    np.testing.assert_array_equal(det._x(c), ref_c["x"].reshape(-1, ref_c["x"].shape[-1]))
    ref = det._evidence(sim.si, ref_c, pool)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(exc, det._context_excess(ref_c, sim.bulk_mask))
    assert glob == det._excess_global(ref_c, sim.bulk_mask)


def test_the_counts_context_leaves_the_users_array_as_it_was(drift):
    """The context holds a view of the caller's float32 counts (no copy): fitting, scoring
    (pooled, another image's path too) and a pixel's spectrum never write into it."""
    from dataclasses import replace

    data = np.ascontiguousarray(drift.si.data, np.float32)
    si = replace(drift.si, data=data)
    before = data.copy()
    det = get_detector("bulk-context", device="cpu").fit(si, drift.bulk_mask)
    c = det._context(si)
    assert c["counts"] is True and np.shares_memory(c["x"], data)
    res = det.score(si)
    det._evidence(si, c, pooling_from(0.8))  # the pooling of another image's path
    res.pixel(5, 7)
    np.testing.assert_array_equal(data, before)
