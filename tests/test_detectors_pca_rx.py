"""PCADetector (probabilistic PCA) and RXDetector (shrunk-covariance Mahalanobis)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from eelsanom import scoring
from eelsanom.detectors import get_detector, load_detector
from eelsanom.detectors.pca import PCADetector
from eelsanom.detectors.rx import ledoit_wolf_shrinkage, oas_shrinkage
from eelsanom.errors import Cancelled, EnergyAxisMismatch, InputError, NotFittedError
from eelsanom.preprocess import forward_transform
from eelsanom.spectrum import Axis, SpectrumImage

AXIS = Axis(120, 0.3, 680.0, "eV", "Energy loss")


def make_cube(shape=(32, 32), shift=2.4, dose=200.0, seed=0, n_clusters=4, ne=120):
    """Gaussian peaks on a power law, smooth thickness/exponent variation, Poisson noise.

    Anomalies: the middle peak moved by ``shift`` eV in ``n_clusters`` 3x3 clusters.
    Returns ``(SpectrumImage, truth)``.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    e = AXIS.offset + AXIS.scale * np.arange(ne)
    yy, xx = np.mgrid[0:ny, 0:nx] / max(ny, nx)
    thick = 1.0 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)
    expo = 30.0 + 5.0 * yy
    truth = np.zeros((ny, nx), bool)
    for _ in range(n_clusters if ny >= 8 else 0):
        cy, cx = rng.integers(1, ny - 4), rng.integers(1, nx - 4)
        truth[cy:cy + 3, cx:cx + 3] = True
    c2 = np.where(truth, 697.0 + shift, 697.0)
    spec = (np.exp(-0.5 * ((e - 688.0) / 1.2) ** 2)
            + 0.7 * np.exp(-0.5 * ((e - c2[..., None]) / 1.0) ** 2)
            + 0.4 * np.exp(-0.5 * ((e - 706.0) / 1.5) ** 2)
            + 0.6 * (e / 680.0) ** -expo[..., None])
    data = rng.poisson(dose * thick[..., None] * spec).astype(np.float32)
    si = SpectrumImage(data, Axis(ne, AXIS.scale, AXIS.offset, "eV", "Energy loss"),
                       ground_truth=truth)
    return si, truth


@pytest.fixture(scope="module")
def cube():
    return make_cube()


def _det(method, **kw):
    if method == "pca":
        kw.setdefault("device", "cpu")
    return get_detector(method, **kw)


METHODS = ["pca", "rx"]


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("method", METHODS)
def test_contract(cube, method):
    si, truth = cube
    det = _det(method)
    assert det.fit(si, ~truth) is det
    res = det.score(si)
    assert res.method == method
    assert res.nll.shape == (32, 32) and res.nll.dtype == np.float64
    assert np.isfinite(res.nll).all()
    assert res.mask.dtype == bool
    np.testing.assert_array_equal(res.mask, res.nll > res.threshold)
    assert res.threshold_method == "robust"  # the default
    if method == "pca":
        assert res.latent.shape == (32, 32, det.n_components_)
        assert res.maps["reconstruction_error"].shape == (32, 32)
    else:
        assert res.latent is None
        np.testing.assert_allclose(res.nll, 0.5 * (res.maps["mahalanobis2"] + det.logdet_
                                                    + 120 * np.log(2 * np.pi)))
    mean, sigma = res.reconstruct()
    assert mean.shape == sigma.shape == si.shape
    assert (sigma > 0).all()
    # the reconstruction explains normal pixels to within their noise (counts)
    z2 = ((si.data - mean) / sigma)[~truth] ** 2
    assert 0.6 < float(np.mean(z2)) < 1.6


@pytest.mark.parametrize("method", METHODS)
def test_pixel_channel_nll_sums_to_nll(cube, method):
    si, truth = cube
    det = _det(method).fit(si, ~truth)
    res = det.score(si)
    iy, ix = np.argwhere(truth)[0]
    px = res.pixel(int(iy), int(ix))
    assert px.observed.shape == px.mean.shape == px.sigma.shape == px.channel_nll.shape == (120,)
    np.testing.assert_allclose(np.sum(px.channel_nll), res.nll[iy, ix], rtol=1e-8)
    # the anomalous channels are around the shifted peak (697 + 2.4 eV)
    lo, hi = px.top_window(5.0)
    assert 690.0 < 0.5 * (lo + hi) < 706.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["bulk", "robust"])
def test_finds_planted_anomalies(cube, method, mode):
    si, truth = cube
    det = _det(method).fit(si, ~truth if mode == "bulk" else None)
    res = det.score(si)
    assert scoring.roc_auc(res.nll, truth) >= 0.95
    if mode == "robust":  # robust_fraction="auto": at least 5 %, at most 45 % trimmed
        assert round(0.05 * truth.size) <= det.n_trimmed_ <= 0.45 * truth.size


def test_robust_trimming_drops_the_anomalies():
    # a weak anomaly that plain PPCA absorbs into a component of its own: the trimmed
    # fit must remove it from the training set (and not model it)
    si, truth = make_cube(shift=0.6, seed=3)
    det = _det("pca").fit(si)
    assert scoring.roc_auc(det.score(si).nll, truth) >= 0.95


@pytest.mark.parametrize("scale, rtol", [("fixed", 1e-8), ("free", 1e-6)])
def test_reconstruction_score_kind(cube, scale, rtol):
    si, truth = cube
    det = _det("pca", score_kind="reconstruction", scale=scale).fit(si, ~truth)
    res = det.score(si)
    np.testing.assert_allclose(res.nll, res.maps["reconstruction_error"])
    assert scoring.roc_auc(res.nll, truth) >= 0.95
    px = res.pixel(0, 0)
    # free: the residual is ||x - mu||^2 less the projections (the scale's the largest),
    # summed by another route than the channels: a relative 1e-8 of cancellation
    np.testing.assert_allclose(np.sum(px.channel_nll), res.nll[0, 0], rtol=rtol)


# ----------------------------------------------------------------------------- PPCA maths
def _low_rank_cube(rank=3, shape=(32, 32), d=60, seed=1):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]
    scales = np.array([12.0, 8.0, 5.0, 4.0, 3.0][:rank])
    z = rng.normal(size=shape + (rank,)) * scales
    data = 50.0 + z @ basis.T + rng.normal(size=shape + (d,))
    return SpectrumImage(data.astype(np.float32), Axis(d, 0.3, 680.0, "eV"))


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_auto_n_components_finds_the_rank(rank):
    si = _low_rank_cube(rank)
    det = _det("pca", transform="none").fit(si, np.ones((32, 32), bool))
    assert det.n_components_ == rank
    assert det.selection_["method"] == "heldout_loglik"
    assert len(det.selection_["heldout_loglik"]) == 20
    assert det.noise_variance_ == pytest.approx(1.0, rel=0.1)


def test_max_components_caps_the_choice():
    det = _det("pca", transform="none", max_components=2).fit(_low_rank_cube(3))
    assert det.n_components_ == 2


def test_ppca_nll_matches_dense_reference():
    rng = np.random.default_rng(5)
    data = (20.0 + rng.normal(size=(5, 8, 12)) @ np.diag(np.linspace(3, 0.5, 12))).astype(
        np.float32)
    si = SpectrumImage(data, Axis(12, 0.3, 680.0, "eV"))
    det = _det("pca", n_components=2, transform="none", scale="fixed").fit(si,
                                                                         np.ones((5, 8), bool))
    res = det.score(si)
    W = det.components_ * np.sqrt(det.explained_variance_ - det.noise_variance_)
    C = W @ W.T + det.noise_variance_ * np.eye(12)
    ref = -multivariate_normal(det.mean_, C).logpdf(data.reshape(-1, 12).astype(np.float64))
    np.testing.assert_allclose(res.nll.ravel(), ref, rtol=1e-6)
    # latent = posterior mean M^-1 W^T (x - mu), M = W^T W + sigma^2 I
    M = W.T @ W + det.noise_variance_ * np.eye(2)
    lat = np.linalg.solve(M, W.T @ (data.reshape(-1, 12) - det.mean_).T).T
    np.testing.assert_allclose(res.latent.reshape(-1, 2), lat, rtol=1e-4, atol=1e-5)


def test_ppca_fit_is_the_maximum_likelihood_solution():
    from sklearn.decomposition import PCA

    si = _low_rank_cube(3, shape=(12, 12), d=30)
    det = _det("pca", n_components=3, transform="none", scale="fixed").fit(
        si, np.ones((12, 12), bool))
    X = si.data.reshape(-1, 30).astype(np.float64)
    n = X.shape[0]
    sk = PCA(n_components=3).fit(X)  # unbiased (n - 1) covariance
    np.testing.assert_allclose(det.explained_variance_, sk.explained_variance_ * (n - 1) / n,
                               rtol=1e-6)
    np.testing.assert_allclose(det.noise_variance_, sk.noise_variance_ * (n - 1) / n, rtol=1e-6)
    np.testing.assert_allclose(np.abs(det.components_.T @ sk.components_.T), np.eye(3),
                               atol=1e-6)


def test_free_scale_nll_is_the_profile_likelihood():
    """``scale="free"``: the NLL minimised over a per-pixel scale along ``t`` (the components
    are orthogonal to it, so the minimiser is ``c = t . (x - mu)``), and the fit is the ML
    PPCA of the spectra projected off ``t`` (noise from the ``D - q - 1`` other directions)."""
    from sklearn.decomposition import PCA

    si = _low_rank_cube(3, shape=(12, 12), d=30)
    det = _det("pca", n_components=3, transform="none", scale="free").fit(
        si, np.ones((12, 12), bool))
    X = si.data.reshape(-1, 30).astype(np.float64)
    t = det.scale_direction_
    np.testing.assert_allclose(t, X.mean(0) / np.linalg.norm(X.mean(0)), rtol=1e-6)
    P = X - np.outer((X - X.mean(0)) @ t, t)
    n, q, d = X.shape[0], 3, 30
    sk = PCA(n_components=q).fit(P)
    np.testing.assert_allclose(det.explained_variance_, sk.explained_variance_ * (n - 1) / n,
                               rtol=1e-5)
    ev = np.linalg.eigvalsh(np.cov(P.T, bias=True))[::-1]
    assert det.noise_variance_ == pytest.approx(ev[q:d - 1].mean(), rel=1e-5)
    W = det.components_ * np.sqrt(det.explained_variance_ - det.noise_variance_)
    C = W @ W.T + det.noise_variance_ * np.eye(d)
    c = (X - det.mean_) @ t
    ref = -multivariate_normal(det.mean_, C).logpdf(X - np.outer(c, t))
    np.testing.assert_allclose(det.score(si).nll.ravel(), ref, rtol=1e-6)
    # the scale is free: adding 30 % of the mean spectrum (t, without a transform) to a pixel
    # changes nothing, where the fixed model scores it far out
    data2 = np.asarray(si.data).copy()
    data2[3, 4] += 0.3 * det.mean_.astype(np.float32)
    si2 = SpectrumImage(data2, si.energy)
    assert det.score(si2).nll[3, 4] == pytest.approx(det.score(si).nll[3, 4], rel=1e-5)
    fixed = _det("pca", n_components=3, transform="none", scale="fixed").fit(
        si, np.ones((12, 12), bool))
    assert fixed.score(si2).nll[3, 4] > fixed.score(si).nll[3, 4] + 100


def test_rx_nll_matches_dense_reference():
    from sklearn.covariance import OAS, LedoitWolf

    rng = np.random.default_rng(2)
    data = (30.0 + rng.normal(size=(6, 7, 15)) @ rng.normal(size=(15, 15))).astype(np.float32)
    si = SpectrumImage(data, Axis(15, 0.3, 680.0, "eV"))
    X = data.reshape(-1, 15).astype(np.float64)
    for rule, Est in [("ledoit-wolf", LedoitWolf), ("oas", OAS)]:
        det = _det("rx", shrinkage=rule, transform="none").fit(si, np.ones((6, 7), bool))
        est = Est().fit(X)
        assert det.shrinkage_ == pytest.approx(est.shrinkage_, rel=1e-8)
        ref = -multivariate_normal(est.location_, est.covariance_).logpdf(X)
        np.testing.assert_allclose(det.score(si).nll.ravel(), ref, rtol=1e-6)


def test_shrinkage_formulas_match_sklearn():
    from sklearn.covariance import ledoit_wolf_shrinkage as sk_lw
    from sklearn.covariance import oas as sk_oas

    rng = np.random.default_rng(4)
    for n, d in [(50, 10), (20, 40)]:
        X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        Xc = X - X.mean(0)
        S = Xc.T @ Xc / n
        s4 = float(np.sum(np.sum(Xc ** 2, 1) ** 2))
        assert ledoit_wolf_shrinkage(S, n, s4) == pytest.approx(sk_lw(X), rel=1e-10)
        assert oas_shrinkage(S, n) == pytest.approx(sk_oas(X)[1], rel=1e-10)


def test_fixed_shrinkage():
    si = _low_rank_cube(2, shape=(8, 8), d=20)
    det = _det("rx", shrinkage=0.5, transform="none").fit(si, np.ones((8, 8), bool))
    assert det.shrinkage_ == 0.5


# ----------------------------------------------------------------------------- robust helpers
def test_gram_subset_covariance_matches_direct():
    from eelsanom.detectors._gaussian import Gram, numpy_gram

    rng = np.random.default_rng(0)
    X = (100.0 + rng.normal(size=(300, 7)) @ rng.normal(size=(7, 7))).astype(np.float32)
    gram = Gram(X, numpy_gram)
    keep = rng.random(300) > 0.2
    G_out, s_out = gram.sums(np.flatnonzero(~keep))
    mean, cov = gram.moments(gram.G - G_out, gram.s - s_out, int(keep.sum()))
    Xk = X[keep].astype(np.float64)
    np.testing.assert_allclose(mean, Xk.mean(0), rtol=1e-10)
    np.testing.assert_allclose(cov, np.cov(Xk.T, bias=True), rtol=1e-8, atol=1e-10)


def test_outlyingness_sees_a_rare_direction_the_sum_misses():
    from eelsanom.detectors._gaussian import outlyingness

    rng = np.random.default_rng(1)
    coords = rng.normal(size=(2000, 3))
    coords[:40, 1] += 8.0  # 2 % rare class along one direction
    total = rng.chisquare(1000, 2000)  # residual noise of many channels
    o = outlyingness(coords, total, 0.5)
    assert np.all(np.argsort(o)[-40:] < 40)
    s = (coords ** 2).sum(1) / coords.var(0).sum() * 3 + total  # a plain likelihood-like sum
    assert np.sum(np.argsort(s)[-100:] < 40) < 40


def test_trimming_remembers_outlying_rows():
    from eelsanom.detectors._gaussian import trimmed_fit

    # a score that alternates between two views of which rows are outlying: without
    # memory the kept set would cycle; with it, rows 0-9 are dropped for good
    calls = []

    def fit(keep, final):
        calls.append((keep.copy(), final))
        return len(calls)

    def score(model):
        s = np.zeros(100)
        s[:10 if model % 2 else 5] = 10.0
        return s

    _, keep = trimmed_fit(100, fit, score, robust=True, robust_fraction=0.1, robust_iter=5,
                          min_keep=3, progress=None)
    assert not keep[:10].any() and keep[10:].all()
    assert calls[-1][1] is True and not any(f for _, f in calls[:-1])
    _, keep = trimmed_fit(100, fit, score, robust=False, robust_fraction=0.1, robust_iter=5,
                          min_keep=3, progress=None)
    assert keep.all()


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("method,params", [("pca", {}), ("pca", {"n_components": 2,
                                           "score_kind": "reconstruction"}), ("rx", {}),
                                           ("rx", {"shrinkage": "oas", "energy_range": [685, 710]})])
def test_save_load_round_trip(cube, tmp_path, method, params):
    si, truth = cube
    det = _det(method, threshold="gmm", **params).fit(si)
    res = det.score(si)
    path = det.save(tmp_path / f"{method}.h5")
    loaded = load_detector(path)
    assert type(loaded) is type(det)
    assert loaded.get_params() == det.get_params()
    assert loaded.energy_axis_ == det.energy_axis_
    assert np.isnan(loaded.threshold_)  # an image-relative rule: no fitted threshold
    res2 = loaded.score(si)
    np.testing.assert_allclose(res2.nll, res.nll, rtol=1e-6)
    assert res2.threshold == pytest.approx(res.threshold, rel=1e-6)
    if method == "pca":
        np.testing.assert_allclose(res2.latent, res.latent, rtol=1e-5, atol=1e-6)
        assert loaded.selection_ == det.selection_
    assert type(det).load(path).is_fitted


# ----------------------------------------------------------------------------- energy axes
@pytest.mark.parametrize("method", METHODS)
def test_other_energy_axis_is_refused(cube, method):
    si, truth = cube
    det = _det(method).fit(si, ~truth)
    for axis in [Axis(120, 0.25, 680.0, "eV"), Axis(120, 0.3, 680.1, "eV"),
                 Axis(120, 0.3, 700.0, "eV")]:
        other = replace(si, energy=axis)
        with pytest.raises(EnergyAxisMismatch) as err:
            det.score(other)
        assert det.energy_axis_.describe() in str(err.value)
        assert axis.describe() in str(err.value)


@pytest.mark.parametrize("method", METHODS)
def test_wider_axis_is_cut_to_the_model_window(cube, method):
    si, truth = cube
    det = _det(method).fit(si, ~truth)
    rng = np.random.default_rng(0)
    pad_lo = rng.poisson(300, size=(32, 32, 10)).astype(np.float32)
    pad_hi = rng.poisson(100, size=(32, 32, 5)).astype(np.float32)
    wide = SpectrumImage(np.concatenate([pad_lo, si.data, pad_hi], axis=2),
                         Axis(135, 0.3, 680.0 - 10 * 0.3, "eV"))
    res_wide = det.score(wide)
    np.testing.assert_allclose(res_wide.nll, det.score(si).nll, rtol=1e-6)
    assert res_wide.energy.same_as(det.energy_axis_)


def test_energy_range_param_crops_training_and_scoring(cube):
    si, truth = cube
    det = _det("pca", energy_range=(689.9, 704.9)).fit(si, ~truth)
    assert det.energy_axis_.size == 51 and det.mean_.size == 51
    res = det.score(si)
    assert res.energy.offset == pytest.approx(689.9)
    assert scoring.roc_auc(res.nll, truth) >= 0.95


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("method", METHODS)
def test_not_fitted(cube, method, tmp_path):
    si, _ = cube
    det = _det(method)
    with pytest.raises(NotFittedError):
        det.score(si)
    with pytest.raises(NotFittedError):
        det.reconstruct(si)
    with pytest.raises(NotFittedError):
        det.save(tmp_path / "m.h5")


@pytest.mark.parametrize("method,params,name", [
    ("pca", {"n_components": 0}, "n_components"),          # at least one component
    ("pca", {"n_components": 2.5}, "n_components"),        # not an integer
    ("pca", {"max_components": 0}, "max_components"),
    ("pca", {"score_kind": "mse"}, "score_kind"),
    ("pca", {"transform": "log"}, "transform"),
    ("pca", {"robust_fraction": 0.7}, "robust_fraction"),  # must stay a minority
    ("pca", {"robust_iter": -1}, "robust_iter"),
    ("pca", {"validation_fraction": 0.9}, "validation_fraction"),
    ("pca", {"device": "tpu"}, "device"),
    ("pca", {"threshold": "bogus"}, "threshold"),
    ("pca", {"energy_range": (710.0, 690.0)}, "energy_range"),
    ("rx", {"shrinkage": "median"}, "shrinkage"),
    ("rx", {"shrinkage": 1.5}, "shrinkage"),
    ("rx", {"transform": "sqrt"}, "transform"),
    ("rx", {"robust_fraction": -0.1}, "robust_fraction"),
    ("rx", {"seed": "zero"}, "seed"),
])
def test_bad_params(cube, method, params, name):
    si, _ = cube
    with pytest.raises(InputError, match=name):
        _det(method, **params).fit(si)


def test_unavailable_cuda_is_refused(cube):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="device"):
        PCADetector(device="cuda").fit(cube[0])


@pytest.mark.parametrize("method", METHODS)
def test_too_small_train_mask(cube, method):
    si, _ = cube
    mask = np.zeros((32, 32), bool)
    mask[0, :2] = True
    with pytest.raises(InputError, match="at least 3"):
        _det(method).fit(si, mask)


def test_too_many_components_for_the_mask(cube):
    si, _ = cube
    mask = np.zeros((32, 32), bool)
    mask[0, :12] = True
    with pytest.raises(InputError, match="n_components=15"):
        _det("pca", n_components=15).fit(si, mask)
    # automatic choice adapts to the small mask instead
    assert _det("pca").fit(si, mask).n_components_ <= 10 - 2


# ----------------------------------------------------------------------------- data forms
@pytest.mark.parametrize("method", METHODS)
def test_line_scan(cube, method):
    si, truth = cube
    line = SpectrumImage(si.data.reshape(1, -1, 120)[:, :200], si.energy)
    det = _det(method).fit(line, np.ones(200, bool))
    res = det.score(line)
    assert res.nll.shape == (1, 200)
    assert np.isfinite(res.nll).all()
    assert det.pixel_spectrum(line, 0, 5).channel_nll.shape == (120,)
    assert _det(method).fit(line).score(line).nll.shape == (1, 200)  # robust, no mask


@pytest.mark.parametrize("method", METHODS)
def test_lazy_data_scores_like_eager(cube, method):
    da = pytest.importorskip("dask.array")
    si, truth = cube
    lazy = replace(si, data=da.from_array(si.data, chunks=(8, 16, -1)))
    det = _det(method).fit(si, ~truth)
    res = det.score(si)
    np.testing.assert_allclose(det.score(lazy).nll, res.nll, rtol=1e-10)
    # fitting on lazy data too
    det2 = _det(method).fit(lazy, ~truth)
    np.testing.assert_allclose(det2.score(lazy).nll, res.nll, rtol=1e-8)
    mean, _ = det.reconstruct(lazy)
    np.testing.assert_allclose(mean, det.reconstruct(si)[0])


def test_lazy_non_finite_values_are_refused(cube):
    da = pytest.importorskip("dask.array")
    si, truth = cube
    det = _det("rx").fit(si, ~truth)
    bad = si.data.copy()
    bad[20, 3, 7] = np.nan
    with pytest.raises(InputError, match="y=20, x=3, channel 7"):
        det.score(replace(si, data=da.from_array(bad, chunks=(8, 8, -1))))


def test_blocks_bound_memory(cube, monkeypatch):
    # scoring in many small blocks gives the same answer as in one
    from eelsanom.detectors import _gaussian

    si, truth = cube
    det = _det("pca").fit(si, ~truth)
    ref = det.score(si)
    monkeypatch.setattr(_gaussian, "BLOCK_VALUES", 1000)
    assert _gaussian.rows_per_block(si, 1000) == 1
    res = det.score(si)
    np.testing.assert_allclose(res.nll, ref.nll, rtol=1e-10)
    np.testing.assert_allclose(res.latent, ref.latent, rtol=1e-5, atol=1e-6)


def test_transform_none_and_progress_cancel(cube):
    si, truth = cube
    events = []
    det = _det("pca", transform="none").fit(si, progress=events.append)
    assert events and events[-1].stage == "fit"
    x = forward_transform(si.data[0, 0], "none")
    assert det.mean_.shape == x.shape
    with pytest.raises(Cancelled):
        det.score(si, progress=lambda ev: False)
    with pytest.raises(Cancelled):
        _det("rx").fit(si, progress=lambda ev: False)


@pytest.mark.gpu
def test_cuda_matches_cpu(cube):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    si, truth = cube
    cpu = PCADetector(device="cpu").fit(si, ~truth)
    gpu = PCADetector(device="cuda").fit(si, ~truth)
    assert gpu.n_components_ == cpu.n_components_
    np.testing.assert_allclose(gpu.score(si).nll, cpu.score(si).nll, rtol=1e-4)


# ----------------------------------------------------------------------------- quality floor
def test_quality_floor_on_the_quick_benchmark():
    """Bulk-trained PCA reaches ROC-AUC >= 0.95 on 2.4 eV shifts (64x64, fe-l, dose 200, 2 %)."""
    simulate = pytest.importorskip("eelsanom.simulate").simulate
    sim = simulate(shape=(64, 64), window="fe-l", anomaly="shift", magnitude=2.4,
                   anomaly_shape="clusters", concentration=0.02, dose=200, seed=0)
    for method in METHODS:
        res = _det(method).fit(sim.si, sim.bulk_mask).score(sim.si)
        assert res.evaluate(sim.truth)["roc_auc"] >= 0.95, method


def test_model_saved_for_a_missing_device_loads_with_auto(cube, tmp_path):
    # A model trained on a GPU box (device="cuda") must still load and score on a CPU-only one.
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    si, _ = cube
    det = PCADetector(n_components=2, device="cpu").fit(si)
    path = det.save(tmp_path / "m.h5")
    import json

    import h5py

    with h5py.File(path, "r+") as f:
        params = json.loads(f.attrs["params"])
        params["device"] = "cuda"
        f.attrs["params"] = json.dumps(params)
    loaded = load_detector(path)
    assert loaded.device == "auto"
    np.testing.assert_allclose(loaded.score(si).nll, det.score(si).nll, rtol=1e-6)
