"""Context PCA: the neighbourhood's PPCA codes predict the pixel (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

from eelsanom.detectors import detector_class, get_detector, load_detector
from eelsanom.detectors.context_pca import ContextPCADetector, context_footprint
from eelsanom.errors import InputError
from eelsanom.pooling import DEFAULT_SIGMA
from eelsanom.scoring import roc_auc
from eelsanom.simulate import simulate
from tests.nuisance import nuisance_image


@pytest.fixture(scope="module")
def drifted():
    """0.6 eV shifted clusters under a 0.8 eV smooth drift field (seeds 0 and 3)."""
    return [nuisance_image(seed=s, shift=0.6, drift=0.8, dose=300.0) for s in (0, 3)]


def test_registered_under_its_method_name():
    assert detector_class("context-pca") is ContextPCADetector
    assert isinstance(get_detector("context-pca", neighbourhood=5), ContextPCADetector)


def test_beats_plain_pca_under_drift(drifted):
    """A per-pixel model cannot tell the shift from the drift; the neighbourhood can.

    Measured (seeds 0, 3): PCA AUC 0.775 / 0.474, context PCA 0.856 / 0.642.
    """
    gains = []
    for si, truth, bulk in drifted:
        pca = get_detector("pca", device="cpu").fit(si, bulk).score(si)
        ctx = get_detector("context-pca", device="cpu", pooling=0.0).fit(si, bulk).score(si)
        a_pca, a_ctx = roc_auc(pca.nll, truth), roc_auc(ctx.nll, truth)
        assert a_pca < 0.8
        assert a_ctx > a_pca + 0.04, (a_pca, a_ctx)
        gains.append(a_ctx - a_pca)
    assert np.mean(gains) >= 0.1


def test_pooled_context_finds_shifts_under_drift(drifted):
    """Issue 12's target: AUC >= 0.9 at 0.6 eV under a 0.8 eV drift, where PCA is < 0.8.

    Measured (seeds 0, 3): context PCA pooled 0.995 / 0.960 (AP 0.945 / 0.690);
    PCA 0.775 / 0.474, pooled PCA 0.817 / 0.668.
    """
    for si, truth, bulk in drifted:
        pca = get_detector("pca", device="cpu").fit(si, bulk).score(si)
        ppca = get_detector("pca", device="cpu", pooling=DEFAULT_SIGMA).fit(si, bulk).score(si)
        ctx = get_detector("context-pca", device="cpu", pooling=DEFAULT_SIGMA).fit(si, bulk)
        res = ctx.score(si)
        a = roc_auc(res.nll, truth)
        assert roc_auc(pca.nll, truth) < 0.8
        assert a >= 0.93 and a >= roc_auc(ppca.nll, truth) + 0.1
        assert "context_nll" in res.maps and "neighbourhood_nll" in res.maps


def test_pooled_context_on_the_realistic_simulator():
    """The project's simulator, 0.8 eV drift field, 0.6 eV clusters (seed 1).

    Measured: context PCA pooled 0.979 (AP 0.836); PCA 0.546, pooled PCA 0.658.
    """
    sim = simulate(shape=(64, 64), magnitude=0.6, drift=0.8, seed=1)
    ctx = get_detector("context-pca", device="cpu", pooling=DEFAULT_SIGMA)
    res = ctx.fit(sim.si, sim.bulk_mask).score(sim.si)
    assert roc_auc(res.nll, sim.truth) >= 0.93


def test_pooling_goes_through_the_shared_stage(drifted, monkeypatch):
    import eelsanom.pooling as pooling

    calls = []
    real = pooling.pool_image

    def spy(*a, **kw):
        calls.append(kw["pooling"])
        return real(*a, **kw)

    monkeypatch.setattr(pooling, "pool_image", spy)
    si, _, bulk = drifted[0]
    det = get_detector("context-pca", device="cpu", pooling=1.2).fit(si, bulk)
    det.score(si)
    assert calls and calls[-1].sigma == 1.2
    assert det.score_context == 4 + pooling.Pooling(sigma=1.2).radius()


def test_pooled_blocks_score_like_the_whole_image(drifted):
    si, _, bulk = drifted[0]
    det = ContextPCADetector(device="cpu", neighbourhood=5, pooling=DEFAULT_SIGMA).fit(si, bulk)
    whole = det.score(si).nll
    nll, _, _ = det.score_block(si, (20, 36, 10, 30))
    np.testing.assert_allclose(nll, whole[20:36, 10:30], rtol=1e-7)


def test_no_drift_no_loss():
    """Without drift the context score stays as good as the per-pixel one."""
    si, truth, bulk = nuisance_image(seed=1, shift=0.6, drift=0.0, dose=300.0)
    pca = get_detector("pca", device="cpu").fit(si, bulk).score(si)
    ctx = get_detector("context-pca", device="cpu").fit(si, bulk).score(si)
    assert roc_auc(ctx.nll, truth) >= 0.97
    assert roc_auc(ctx.nll, truth) >= roc_auc(pca.nll, truth) - 0.02


def test_maps_latent_and_gaussian_terms(drifted):
    si, truth, bulk = drifted[0]
    det = ContextPCADetector(device="cpu", pooling=0.0).fit(si, bulk)
    res = det.score(si)
    ny, nx, e = si.shape
    q = det.n_components_
    assert res.latent.shape == (ny, nx, q)
    assert set(res.maps) == {"reconstruction_error", "code_deviation", "pca_nll"}
    # the per-pixel PCA NLL map equals the PCA detector's with the same fit
    pca = get_detector("pca", device="cpu").fit(si, bulk).score(si)
    np.testing.assert_allclose(res.maps["pca_nll"], pca.nll, rtol=1e-6)
    g = det.gaussian_terms(si)
    assert g["dev"].shape == g["var"].shape == (ny, nx, e)
    assert (g["var"] >= det.noise_variance_ * (1 - 1e-9)).all()
    mean, sigma = det.reconstruct(si)
    assert mean.shape == sigma.shape == (ny, nx, e) and (sigma > 0).all()
    ps = det.pixel_spectrum(si, 30, 30)
    np.testing.assert_allclose(ps.mean, mean[30, 30], rtol=1e-4)


def test_blocks_score_like_the_whole_image(drifted):
    si, _, bulk = drifted[0]
    det = ContextPCADetector(device="cpu", neighbourhood=7, pooling=0.0).fit(si, bulk)
    assert det.score_context == 3
    whole = det.score(si).nll
    nll, _, maps = det.score_block(si, (20, 36, 10, 30))
    np.testing.assert_allclose(nll, whole[20:36, 10:30], rtol=1e-9)


def test_save_load(drifted, tmp_path):
    si, _, bulk = drifted[0]
    det = ContextPCADetector(device="cpu", neighbourhood=7, pooling=0.0).fit(si, bulk)
    path = det.save(tmp_path / "ctx.h5")
    back = load_detector(path)
    assert isinstance(back, ContextPCADetector) and back.neighbourhood == 7
    np.testing.assert_allclose(back.score(si).nll, det.score(si).nll, rtol=1e-9)


@pytest.mark.parametrize("bad", [4, 1, 2.5, "9", True])
def test_bad_neighbourhood_is_refused(drifted, bad):
    si, _, bulk = drifted[0]
    with pytest.raises(InputError, match="neighbourhood"):
        ContextPCADetector(neighbourhood=bad, device="cpu").fit(si, bulk)


def test_footprint_excludes_the_centre():
    fp = context_footprint(5)
    assert fp.shape == (5, 5) and not fp[2, 2] and fp.sum() == 24


def test_pooling_switched_on_after_the_fit_equals_pooling_from_the_start(drifted):
    """The bench fits once and scores twice (set_params(pooling=...)): same scores."""
    si, _, bulk = drifted[0]
    a = ContextPCADetector(device="cpu", pooling=DEFAULT_SIGMA).fit(si, bulk).score(si).nll
    det = ContextPCADetector(device="cpu", pooling=0.0).fit(si, bulk)
    det.set_params(pooling=DEFAULT_SIGMA)
    np.testing.assert_allclose(det.score(si).nll, a, rtol=1e-9)


def test_the_sign_of_a_component_does_not_matter(drifted):
    si, _, bulk = drifted[1]
    det = ContextPCADetector(device="cpu", pooling=DEFAULT_SIGMA).fit(si, bulk)
    a = det.score(si).nll
    det.components_ = det.components_ * np.where(np.arange(det.n_components_) % 2, -1.0, 1.0)
    det._cache = None
    np.testing.assert_allclose(det.score(si).nll, a, rtol=1e-9)
