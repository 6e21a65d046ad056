"""Fits on the smaller side of the data equal the dense D x D reference (issue 15, item 1)."""

from __future__ import annotations

import numpy as np
import pytest

from eelsanom.bench import _dense_references, _wide_cube
from eelsanom.detectors import get_detector, load_detector
from eelsanom.detectors._gaussian import Gram, numpy_gram, top_eigh
from eelsanom.spectrum import Axis, SpectrumImage

REFS = _dense_references()


def _cube(ny, nx, ne, seed=0, rank=3):
    """Seeded low-rank Poisson spectra with a few planted outliers, (ny, nx, ne)."""
    rng = np.random.default_rng(seed)
    basis = np.abs(rng.normal(size=(rank, ne))) * 20 + 30
    coef = 1 + 0.3 * rng.random((ny * nx, rank))
    lam = coef @ basis / rank
    lam[:2] *= 1 + 0.5 * (np.arange(ne) > ne // 2)  # two anomalous pixels
    data = rng.poisson(lam).reshape(ny, nx, ne).astype(np.float32)
    return SpectrumImage(data, Axis(ne, 0.5, 400.0, "eV", "Energy loss"))


def _same_subspace(U, V, atol):
    """Columns of U and V span the same space and agree up to sign, column by column."""
    c = np.abs(np.sum(U * V, axis=0))
    np.testing.assert_allclose(c, 1.0, atol=atol)


@pytest.mark.parametrize("shape", [(4, 5, 60), (12, 12, 40)], ids=["n<D", "n>D"])
@pytest.mark.parametrize("kw", [{}, {"n_components": 3}], ids=["auto-q", "q=3"])
@pytest.mark.parametrize("masked", [False, True], ids=["robust", "mask"])
def test_pca_equals_dense_reference(shape, kw, masked):
    si = _cube(*shape)
    mask = None
    if masked:
        mask = np.ones(shape[:2], bool)
        mask.flat[:2] = False
    new = get_detector("pca", device="cpu", **kw).fit(si, mask)
    old = REFS["pca"](device="cpu", **kw).fit(si, mask)
    assert new.selection_["n_components"] == old.selection_["n_components"]
    if "heldout_loglik" in old.selection_:
        np.testing.assert_allclose(new.selection_["heldout_loglik"],
                                   old.selection_["heldout_loglik"], rtol=1e-9)
    np.testing.assert_allclose(new.explained_variance_, old.explained_variance_, rtol=1e-8)
    assert new.noise_variance_ == pytest.approx(old.noise_variance_, rel=1e-8)
    _same_subspace(new.components_, old.components_, 1e-7)
    rn, ro = new.score(si), old.score(si)
    np.testing.assert_allclose(rn.nll, ro.nll, rtol=1e-9)
    np.testing.assert_array_equal(rn.mask, ro.mask)


@pytest.mark.parametrize("shrinkage", ["ledoit-wolf", "oas", 0.3])
@pytest.mark.parametrize("robust", [False, True], ids=["mask", "robust"])
def test_rx_pixel_side_equals_dense_reference(shrinkage, robust):
    """Without a mask: one plain fit on every pixel (``robust_iter=0``). The trimming itself
    ranks pixels by whitened coordinates, which differ between the two sides on a 20-pixel,
    60-channel image (the dense whitener also spans the directions only trimmed pixels
    have), so beyond the first trim the kept sets may differ."""
    si = _cube(4, 5, 60, seed=1)
    mask = None if robust else np.ones((4, 5), bool)
    kw = {"robust_iter": 0} if robust else {}
    new = get_detector("rx", shrinkage=shrinkage, **kw).fit(si, mask)
    old = REFS["rx"](shrinkage=shrinkage, **kw).fit(si, mask)
    assert new.basis_ is not None and old.basis_ is None  # Woodbury form vs D x D whitener
    assert new.whitener_.shape[1] < 20 and old.whitener_.shape == (60, 60)
    assert new.shrinkage_ == pytest.approx(old.shrinkage_, rel=1e-9)
    assert new.logdet_ == pytest.approx(old.logdet_, rel=1e-9)
    np.testing.assert_allclose(new.var_, old.var_, rtol=1e-9)
    rn, ro = new.score(si), old.score(si)
    np.testing.assert_allclose(rn.maps["mahalanobis2"], ro.maps["mahalanobis2"], rtol=1e-7)
    np.testing.assert_allclose(rn.nll, ro.nll, rtol=1e-9)
    pn, po = rn.pixel(1, 2), ro.pixel(1, 2)
    np.testing.assert_allclose(pn.channel_nll, po.channel_nll, rtol=1e-6, atol=1e-9)


def test_rx_channel_side_is_the_dense_path():
    si = _cube(10, 10, 30, seed=2)
    new = get_detector("rx").fit(si)
    old = REFS["rx"]().fit(si)
    assert new.basis_ is None
    np.testing.assert_allclose(new.score(si).nll, old.score(si).nll, rtol=1e-12)


def test_rx_pixel_side_model_saves_and_loads(tmp_path):
    si = _cube(3, 4, 50, seed=3)
    det = get_detector("rx").fit(si)
    path = det.save(tmp_path / "rx.eelsanom")
    back = load_detector(path)
    np.testing.assert_allclose(back.score(si).nll, det.score(si).nll, rtol=1e-12)
    assert back.basis_.shape == det.basis_.shape


@pytest.mark.parametrize("n,d", [(9, 40), (50, 12)])
def test_gram_eig_sides_agree(n, d):
    rng = np.random.default_rng(n)
    X = (10 + rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) * 3
         + rng.normal(size=(n, d))).astype(np.float32)
    keep = np.ones(n, bool)
    keep[[1, 4]] = False
    a = Gram(X, numpy_gram, side="pixel").eig(keep, 5)
    b = Gram(X, numpy_gram, side="channel").eig(keep, 5)
    Xk = X[keep].astype(np.float64)
    S = np.cov(Xk.T, bias=True)
    w = np.linalg.eigvalsh(S)[::-1]
    for sp in (a, b):
        np.testing.assert_allclose(sp.mean, Xk.mean(0), rtol=1e-10)
        np.testing.assert_allclose(sp.evals, w[:5], rtol=1e-9)
        assert sp.total == pytest.approx(np.trace(S), rel=1e-10)
        assert sp.frob2 == pytest.approx(np.sum(S * S), rel=1e-10)
        np.testing.assert_allclose(sp.evecs.T @ sp.evecs, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(a.evecs, b.evecs, atol=1e-7)  # same sign convention


def test_top_eigh_subset_matches_full():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(200, 200))
    A = A @ A.T
    w, v = top_eigh(A, 10)
    wf, vf = np.linalg.eigh(A)
    np.testing.assert_allclose(w, wf[::-1][:10], rtol=1e-10)
    _same_subspace(v, vf[:, ::-1][:, :10], 1e-9)


@pytest.mark.parametrize("n,ne", [(15, 70), (90, 30)])
def test_cvae_pca_equals_dense_reference(n, ne):
    from eelsanom.detectors.cvae3d import _pca

    rng = np.random.default_rng(ne)
    x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, ne)) * 4 + rng.normal(size=(n, ne))
    comps, var = _pca(x, 5)
    ref_c, ref_v = REFS["pca_axes"](x, 5)
    np.testing.assert_allclose(var, ref_v, rtol=1e-9)
    _same_subspace(comps.T, ref_c.T, 1e-8)
    idx = np.abs(comps).argmax(axis=1)
    assert np.all(comps[np.arange(5), idx] > 0)


def test_wide_fit_finds_the_planted_shift():
    """The Velox-like 16 x 20 x 2048 cube of the benchmark, fitted on the pixel side."""
    si = _wide_cube(16, 20, 2048, seed=0)
    truth = si.ground_truth
    assert 2 <= truth.sum() <= 20
    for method in ("pca", "rx"):
        kw = {"device": "cpu"} if method == "pca" else {}
        res = get_detector(method, **kw).fit(si).score(si)
        assert res.evaluate(truth)["roc_auc"] > 0.9, method


# ----------------------------------------------------------------------------- large images
def _low_rank(n, d, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.array([30.0, 12.0, 6.0, 3.0, 2.0][:rank])
    return (5 + (rng.normal(size=(n, rank)) * scale) @ np.linalg.qr(rng.normal(size=(d, rank)))[0].T
            + rng.normal(size=(n, d))).astype(np.float32)


def test_orth_keeps_leading_spans():
    from eelsanom.detectors._gaussian import _orth

    rng = np.random.default_rng(0)
    A = rng.normal(size=(300, 12)) * np.logspace(0, 5, 12)
    Q = _orth(A)
    np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-12)
    Qr = np.linalg.qr(A)[0]
    np.testing.assert_allclose(np.abs(np.sum(Q * Qr, axis=0)), 1.0, atol=1e-10)
    assert _orth(A.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("refine", [False, True])
def test_sketch_matches_the_exact_eigenpairs(refine):
    from eelsanom.detectors._gaussian import Sketch

    X = _low_rank(700, 300)
    keep = np.ones(700, bool)
    keep[:30] = False
    exact = Gram(X, numpy_gram).eig(keep, 4)
    sk = Sketch(X, 4, np.random.default_rng(0)).eig(keep, 4, refine=refine)
    np.testing.assert_allclose(sk.mean, exact.mean, rtol=1e-5)
    assert sk.total == pytest.approx(exact.total, rel=1e-5)  # the trace is exact
    # signal directions; without refine inside the range of all rows (an approximation)
    tol = 1e-3 if refine else 5e-3
    np.testing.assert_allclose(sk.evals, exact.evals, rtol=tol)
    _same_subspace(sk.evecs, exact.evecs, tol)
    np.testing.assert_allclose(sk.evecs.T @ sk.evecs, np.eye(4), atol=1e-9)


def test_sample_pixels_is_seeded_and_inside_the_mask():
    from eelsanom.detectors._gaussian import sample_pixels

    mask = np.zeros((30, 40), bool)
    mask[5:25, 3:30] = True
    a = sample_pixels(mask.shape, mask, 100, np.random.default_rng(1))
    b = sample_pixels(mask.shape, mask, 100, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.size == 100 and np.all(np.diff(a) > 0) and mask.ravel()[a].all()
    assert sample_pixels(mask.shape, mask, int(mask.sum()), np.random.default_rng(1)) is None
    assert sample_pixels(mask.shape, None, None, np.random.default_rng(1)) is None


@pytest.fixture
def small_limits(monkeypatch):
    """Subsample above 900 pixels and use the randomized solver from 200 channels on."""
    from eelsanom.detectors.pca import PCADetector

    monkeypatch.setattr(PCADetector, "max_fit_pixels", 900)
    monkeypatch.setattr(PCADetector, "randomized_min_side", 200)


def test_large_bulk_is_subsampled_with_the_seed(small_limits, tmp_path):
    from eelsanom.scoring import roc_auc
    from eelsanom.simulate import simulate

    sim = simulate(shape=(40, 40), magnitude=0.9, concentration=0.02, seed=0)
    si, truth = sim.si, sim.truth
    det = get_detector("pca", device="cpu", seed=3).fit(si)
    assert (det.n_bulk_, det.n_sampled_, det.solver_) == (1600, 900, "randomized")
    assert det.n_train_ + det.n_trimmed_ == 900
    again = get_detector("pca", device="cpu", seed=3).fit(si)
    np.testing.assert_array_equal(again.components_, det.components_)
    other = get_detector("pca", device="cpu", seed=4).fit(si)
    assert not np.array_equal(other.mean_, det.mean_)  # another seed draws other pixels
    back = load_detector(det.save(tmp_path / "sub.eelsanom"))
    assert (back.n_bulk_, back.n_sampled_, back.solver_) == (1600, 900, "randomized")
    # quality: as good as the exact fit on every pixel
    res = det.score(si)
    full = get_detector("pca", device="cpu", seed=3)
    full.max_fit_pixels = None  # every pixel, exact
    full.randomized_min_side = 10**9
    full = full.fit(si)
    assert (full.n_sampled_, full.solver_) == (1600, "exact")
    assert roc_auc(res.nll, truth) >= roc_auc(full.score(si).nll, truth) - 0.01
    assert roc_auc(res.nll, truth) > 0.9


def test_subsample_of_a_mask_and_context_pca(small_limits, monkeypatch):
    from eelsanom.detectors.pca import PCADetector
    from eelsanom.scoring import roc_auc
    from eelsanom.simulate import simulate

    monkeypatch.setattr(PCADetector, "max_fit_pixels", 300)
    sim = simulate(shape=(48, 48), magnitude=0.9, concentration=0.02, seed=1)
    bulk = sim.bulk_mask
    n_draw = 2 * sim.si.n_energy  # never fewer pixels than twice the channels
    assert bulk.sum() > n_draw > 300
    for method in ("pca", "context-pca"):
        det = get_detector(method, device="cpu").fit(sim.si, bulk)
        assert det.n_bulk_ == int(bulk.sum()) and det.n_sampled_ == n_draw
        assert det.solver_ == "randomized"
        assert det.n_trimmed_ == 0  # a mask is used as given
        assert roc_auc(det.score(sim.si).nll, sim.truth) > 0.9, method


@pytest.mark.parametrize("gain", [1.0, 0.7])
def test_projection_of_counts_equals_transform_then_project(gain):
    from eelsanom.detectors.pca import _project_rows
    from eelsanom.preprocess import forward_transform

    rng = np.random.default_rng(0)
    X = (rng.poisson(30, (500, 300)) * 0.7).astype(np.float32)
    X[0, :5] = -3.0  # clipped at zero by the transform
    mu = rng.normal(10, 1, 300)
    U = np.linalg.qr(rng.normal(size=(300, 4)))[0]
    a = _project_rows(X, mu, U, "anscombe", gain)
    b = _project_rows(forward_transform(X, "anscombe", gain), mu, U)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
    # many rows: split between two threads, the same results
    big = np.repeat(X, 6, axis=0)
    c = _project_rows(big, mu, U, "anscombe", gain)
    np.testing.assert_allclose(c[0], np.repeat(a[0], 6, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c[1], np.repeat(a[1], 6, axis=0), rtol=1e-12)
