"""Seed ensembles, quantization and Matryoshka prefix analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ortho_group

from eelsanom.errors import InputError
from eelsanom.latent import (
    binary_codes,
    ensemble_r2,
    fit_linear_nested_ae,
    hamming_fraction,
    latent_prefix_scorer,
    least_squares_r2,
    pca_prefix_errors,
    prefix_curve,
    prefix_reconstruction_errors,
    principal_angles,
    quantization_report,
    quantize,
    seed_ensemble,
)
from eelsanom.latent.quantize import float8_available
from eelsanom.result import AnomalyResult
from eelsanom.spectrum import Axis


def make_result(nll: np.ndarray, latent: np.ndarray | None, method: str = "cvae",
                thr: float | None = None) -> AnomalyResult:
    ny, nx = nll.shape
    t = float(np.percentile(nll, 95)) if thr is None else thr
    return AnomalyResult(nll=nll, threshold=t, threshold_method="5%", mask=nll > t,
                         method=method, y=Axis(ny, 0.5, 0.0, "nm", "y"),
                         x=Axis(nx, 0.5, 0.0, "nm", "x"), energy=Axis(10, 1.0, 700.0, "eV"),
                         latent=latent)


# ----------------------------------------------------------------- seed ensembles


def test_identical_seeds_give_cka_one_and_no_disagreement():
    rng = np.random.default_rng(0)
    nll = rng.gamma(2.0, size=(12, 15))
    lat = rng.normal(size=(12, 15, 4))
    ens = seed_ensemble([make_result(nll, lat), make_result(nll, lat)])
    assert np.allclose(ens.cka, 1.0)
    assert np.all(ens.disagreement == 0)
    assert np.allclose(ens.mean_nll, nll)
    assert ens.latent.shape == (12, 15, 8)
    assert set(np.unique(ens.vote)) <= {0.0, 1.0}
    assert len(ens.plot().axes) >= 2


def test_disagreement_is_scale_free_and_finds_the_odd_pixel():
    rng = np.random.default_rng(1)
    nll = rng.gamma(2.0, size=(10, 10))
    other = 3.0 * nll + 100.0  # same ranking, different NLL scale
    top = np.unravel_index(np.argmax(nll), nll.shape)
    odd = other.copy()
    odd[top] = other.min() - 1.0  # the most anomalous pixel, ranked last by the third seed
    assert np.all(seed_ensemble([make_result(nll, None),
                                 make_result(other, None)]).disagreement == 0)
    ens = seed_ensemble([make_result(nll, None), make_result(other, None),
                         make_result(odd, None)])
    assert ens.latent is None and np.isnan(ens.cka).all()
    assert np.unravel_index(np.argmax(ens.disagreement), (10, 10)) == top
    assert ens.disagreement[top] == pytest.approx(np.std([1.0, 1.0, 0.0]))
    assert np.sum(ens.disagreement > 0.05) == 1  # the others move by one rank at most


def test_concatenated_seeds_read_out_at_least_as_well_as_best_seed():
    # R^2 on the concatenation >= best single seed (nested least squares); here clearly more
    rng = np.random.default_rng(2)
    n = 1000
    f = rng.normal(size=(n, 4))  # four ground factors, each seed sees two plus noise
    target = f.sum(axis=1)
    seeds = [np.hstack([f[:, [0, 1]], rng.normal(size=(n, 2))]) @ ortho_group.rvs(4, random_state=3),
             np.hstack([f[:, [2, 3]], rng.normal(size=(n, 2))]) @ ortho_group.rvs(4, random_state=4),
             np.hstack([f[:, [1, 2]], rng.normal(size=(n, 2))])]
    r = ensemble_r2(seeds, target)
    assert r.concatenated >= r.per_seed.max() - 1e-12
    assert r.concatenated == pytest.approx(1.0, abs=1e-9)
    assert r.gain > 0.4
    assert least_squares_r2(seeds[0], target) == pytest.approx(r.per_seed[0])


def test_seed_ensemble_refuses_mismatched_results():
    a = make_result(np.ones((4, 5)) + np.arange(20).reshape(4, 5), None)
    b = make_result(np.ones((5, 4)), None)
    with pytest.raises(InputError, match="same image"):
        seed_ensemble([a, b])
    with pytest.raises(InputError, match="at least 2"):
        seed_ensemble([a])
    with pytest.raises(InputError, match="same pixels"):
        ensemble_r2([np.ones((10, 2)), np.ones((11, 2))], np.arange(10.0))


# ----------------------------------------------------------------- quantization


def test_float16_relative_error_at_most_2_to_minus_11():
    z = np.random.default_rng(5).normal(size=(2000, 6)) * 50.0
    z = np.where(np.abs(z) < 1e-3, 1e-3, z)  # keep to float16's normal range
    q = quantize(z, "float16")
    assert q.bytes_per_pixel == 12
    assert np.max(np.abs(q.codes - z) / np.abs(z)) <= 2.0 ** -11


def test_int8_error_at_most_one_step():
    z = np.random.default_rng(6).normal(size=(2000, 6)) * np.arange(1, 7)
    q = quantize(z.reshape(40, 50, 6), "int8")
    assert q.codes.shape == (40, 50, 6)
    err = np.abs(q.codes.reshape(-1, 6) - z)
    assert np.all(err <= q.step[None, :] * 0.5 + 1e-12)  # half a step, within one step
    assert q.bytes_per_pixel == 6


@pytest.mark.skipif(not float8_available(), reason="torch without float8_e4m3fn")
def test_float8_relative_error_bound():
    # e4m3: 3 mantissa bits -> relative error <= 2^-4 for values above 2^-6 of the scale
    z = np.random.default_rng(7).normal(size=(2000, 4))
    q = quantize(z, "float8")
    scale = np.max(np.abs(z), axis=0) / 448.0
    normal = np.abs(z) / scale >= 2.0 ** -6
    rel = np.abs(q.codes - z)[normal] / np.abs(z)[normal]
    assert rel.max() <= 2.0 ** -4


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.0, 3.0])
def test_binary_hamming_fraction_tends_to_angle_over_pi(angle):
    # coordinates of two high-dimensional Gaussian vectors at a given angle are bivariate
    # normal with correlation cos(angle): sign disagreement -> angle / pi (+-0.01 at d = 40000)
    rng = np.random.default_rng(8)
    d = 40000
    u = rng.normal(size=d)
    w = rng.normal(size=d)
    w -= (w @ u) / (u @ u) * u
    v = np.cos(angle) * u / np.linalg.norm(u) + np.sin(angle) * w / np.linalg.norm(w)
    bits = binary_codes(np.stack([u, v]), center=False)
    assert hamming_fraction(bits[0], bits[1]) == pytest.approx(angle / math.pi, abs=0.01)


def test_binary_and_pca_quantize_bytes():
    z = np.random.default_rng(9).normal(size=(300, 12))
    assert quantize(z, "binary").bytes_per_pixel == 2
    p = quantize(z, "pca:12")
    assert p.bytes_per_pixel == 48 and np.allclose(p.codes, z, atol=1e-5)
    with pytest.raises(InputError, match="pca:K"):
        quantize(z, "pca:13")
    with pytest.raises(InputError, match="quantization kind"):
        quantize(z, "int4")


def test_quantization_report_orders_formats_sensibly():
    rng = np.random.default_rng(10)
    z = rng.normal(size=(3000, 8))
    truth = np.zeros(3000, bool)
    truth[:30] = True
    z[:30] += 4.0
    rep = quantization_report(z, truth=truth, max_points=500)
    rows = {r["kind"]: r for r in rep.rows()}
    assert rows["float32"]["knn_recall"] == 1.0 and rows["float32"]["map_change"] < 1e-6
    assert rows["float16"]["knn_recall"] > 0.99
    assert rows["int8"]["knn_recall"] > 0.9
    assert rows["binary"]["knn_recall"] < rows["int8"]["knn_recall"]
    assert abs(rows["float16"]["auc"] - rep.reference_auc) < 1e-3
    assert "pca:4" in rows and "pca:2" in rows
    assert "| float16 | 16 |" in rep.to_markdown()
    assert rep.plot().axes[0].get_xlabel().startswith("bytes per pixel")


# ----------------------------------------------------------------- Matryoshka


@pytest.fixture(scope="module")
def spectra() -> np.ndarray:
    """Data with distinct, geometric principal variances 16, 8, 4, ... (n = 300, D = 8)."""
    rng = np.random.default_rng(11)
    sd = np.sqrt(16.0 * 2.0 ** -np.arange(8))
    return rng.normal(size=(300, 8)) * sd @ ortho_group.rvs(8, random_state=12) + 5.0


def test_linear_nested_autoencoder_recovers_pca_prefix_subspaces(spectra):
    # every prefix m = 1..4 spans PCA's top-m subspace: largest principal angle < 0.01 rad
    ae = fit_linear_nested_ae(spectra, 4, max_iter=500, seed=0)
    _, comps = pca_prefix_errors(spectra)
    for m in range(1, 5):
        assert principal_angles(ae.prefix_subspace(m), comps[:, :m]).max() < 0.01
    # and its prefix errors match the optimum to 1e-4 (relative)
    opt, _ = pca_prefix_errors(spectra, [1, 2, 3, 4])
    got = prefix_reconstruction_errors(spectra, ae.decoder.T, [1, 2, 3, 4])
    assert np.allclose(got, opt, rtol=1e-4)
    recon = ae.reconstruct(spectra, 4)
    assert np.mean(np.sum((recon - spectra) ** 2, 1)) == pytest.approx(opt[-1], rel=1e-4)


def test_plain_autoencoder_does_not_order_its_prefixes(spectra):
    # control: with only the full-size loss the 4-D subspace is right but prefix 1 is not
    ae = fit_linear_nested_ae(spectra, 4, prefixes=[4], max_iter=300, seed=0)
    _, comps = pca_prefix_errors(spectra)
    assert principal_angles(ae.prefix_subspace(4), comps[:, :4]).max() < 0.01
    assert principal_angles(ae.prefix_subspace(1), comps[:, :1]).max() > 0.1


def test_pca_is_prefix_optimal_exactly(spectra):
    # PCA's first m components attain the Eckart-Young bound for every m (to 1e-10) and a
    # random rank-m basis never does better
    opt, comps = pca_prefix_errors(spectra)
    assert np.allclose(prefix_reconstruction_errors(spectra, comps), opt, atol=1e-10)
    rnd = np.random.default_rng(13).normal(size=(8, 8))
    assert np.all(prefix_reconstruction_errors(spectra, rnd) >= opt - 1e-10)


def test_prefix_curve_from_maps_and_from_scorer():
    rng = np.random.default_rng(14)
    truth = np.zeros((20, 20), bool)
    truth[5:8, 5:8] = True
    z = rng.normal(size=(20, 20, 6))
    z[..., 2][truth] += 6.0  # only latent unit 2 carries the anomaly
    curve = prefix_curve(latent_prefix_scorer(z), [1, 2, 3, 6], truth=truth)
    assert curve.auc[0] < 0.8 and curve.auc[2] > 0.99
    assert curve.best_prefix == 3
    maps = [np.where(truth, 1.0, 0.0) * p + rng.normal(size=(20, 20)) for p in (0, 5)]
    c2 = prefix_curve(maps, truth=truth)
    assert list(c2.prefixes) == [1, 2] and c2.auc[1] > c2.auc[0]
    assert c2.plot().axes[0].get_ylabel().startswith("ROC-AUC")
    nt = prefix_curve(maps)
    assert np.isnan(nt.auc).all() and nt.best_prefix is None
    with pytest.raises(InputError, match="one map per prefix"):
        prefix_curve(maps, [1, 2, 3])
    with pytest.raises(InputError, match="prefixes"):
        prefix_curve(lambda m: maps[0])
