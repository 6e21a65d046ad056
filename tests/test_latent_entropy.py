"""Known answers for DSE/DSMI, von Neumann entropy / effective rank and MCR^2 coding rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ortho_group

from eelsanom.errors import InputError
from eelsanom.latent import (
    coding_rate,
    covariance_spectrum,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    effective_rank,
    rate_reduction,
    von_neumann_entropy,
)


def clusters(k: int, per: int = 100, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight (spread 0.01) clusters 100 apart (kernel width 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 100.0
    z = np.repeat(centres, per, axis=0) + 0.01 * rng.normal(size=(k * per, d))
    return z, np.repeat(np.arange(k), per)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_dse_of_k_tight_clusters_is_log2_k(k):
    # the trivial eigenvalue of each component is kept: k eigenvalues ~1 -> log2 k (+-0.02)
    z, _ = clusters(k)
    assert diffusion_spectral_entropy(z, sigma=1.0) == pytest.approx(math.log2(k), abs=0.02)


def test_dse_with_vanishing_kernel_is_log2_n():
    # sigma -> 0: P = I, all N eigenvalues 1 -> log2 N (to 1e-9)
    z, _ = clusters(3, per=50)
    z = z + np.random.default_rng(1).normal(size=z.shape)  # distinct points
    assert diffusion_spectral_entropy(z, sigma=1e-6) == pytest.approx(math.log2(150), abs=1e-9)


def test_dse_subsamples_to_max_points():
    z = np.random.default_rng(2).normal(size=(3000, 3))
    assert diffusion_spectral_entropy(z, sigma=1e-6, max_points=200) == pytest.approx(
        math.log2(200), abs=1e-9)


def test_dse_default_sigma_is_scale_free():
    z = np.random.default_rng(3).normal(size=(400, 3))
    q = ortho_group.rvs(3, random_state=0)
    assert diffusion_spectral_entropy(z) == pytest.approx(
        diffusion_spectral_entropy(10.0 * z @ q + 1.0), abs=1e-8)


def test_dsmi_true_labels_log2_k_shuffled_zero():
    # DSMI with the cluster labels ~ log2 k (+-0.03); with shuffled labels ~ 0 (+-0.05)
    z, lab = clusters(4, per=80)
    assert diffusion_spectral_mutual_information(z, lab, sigma=1.0) == pytest.approx(2.0,
                                                                                     abs=0.03)
    shuffled = np.random.default_rng(4).permutation(lab)
    assert abs(diffusion_spectral_mutual_information(z, shuffled, sigma=1.0)) < 0.05
    img_labels = lab.reshape(16, 20)  # a (ny, nx) label map works too
    assert diffusion_spectral_mutual_information(
        z.reshape(16, 20, 4), img_labels, sigma=1.0) == pytest.approx(2.0, abs=0.03)


def _orthogonal_codes(n: int, d: int, rank: int, seed: int = 0) -> np.ndarray:
    """Centred codes whose covariance has exactly ``rank`` equal nonzero eigenvalues."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, rank))
    a -= a.mean(0)
    q, _ = np.linalg.qr(a)  # orthonormal, centred columns
    return np.sqrt(n) * q @ ortho_group.rvs(d, random_state=seed)[:rank]


@pytest.mark.parametrize("d, rank", [(6, 6), (6, 3), (6, 1), (8, 2)])
def test_von_neumann_entropy_exact_cases(d, rank):
    # isotropic d: ln d; rank k equal eigenvalues: ln k; rank 1: 0 (all to 1e-10)
    z = _orthogonal_codes(500, d, rank)
    assert von_neumann_entropy(z) == pytest.approx(math.log(rank), abs=1e-10)
    assert effective_rank(z) == pytest.approx(rank, abs=1e-8)
    assert covariance_spectrum(z).sum() == pytest.approx(1.0)


def test_von_neumann_entropy_of_sampled_isotropic_gaussian():
    # sampled isotropic 8-D (n = 20000): within 0.5 % of ln 8
    z = np.random.default_rng(5).normal(size=(20000, 8))
    assert von_neumann_entropy(z) == pytest.approx(math.log(8), rel=0.005)


def test_rate_reduction_two_orthogonal_classes():
    # docs/latent.md: two classes on e1 and e2 in 2-D, eps^2 = 0.5: Delta R = ln 3 - ln(5)/2
    # = 0.29389 in nats with R = 1/2 logdet(I + d/(n eps^2) Z^T Z) (Yu et al. 2020)
    z = np.array([[1.0, 0.0]] * 30 + [[0.0, 1.0]] * 30)
    lab = np.repeat([0, 1], 30)
    rr = rate_reduction(z, lab, eps2=0.5)
    assert rr.delta_r == pytest.approx(0.29389, abs=5e-6)
    assert rr.delta_r == pytest.approx(math.log(3) - 0.5 * math.log(5), abs=1e-12)
    assert rr.r == pytest.approx(coding_rate(z, eps2=0.5), abs=1e-12)
    assert rr.r == pytest.approx(math.log(3), abs=1e-12)
    assert set(rr.class_rates) == {0, 1}


def test_rate_reduction_is_near_zero_for_random_labels():
    z = np.random.default_rng(6).normal(size=(2000, 4))
    lab = np.random.default_rng(7).integers(0, 2, 2000)
    assert abs(rate_reduction(z, lab).delta_r) < 0.02


def test_bad_inputs_are_refused():
    z = np.random.default_rng(8).normal(size=(50, 3))
    with pytest.raises(InputError, match="one label per pixel"):
        diffusion_spectral_mutual_information(z, np.zeros(49))
    with pytest.raises(InputError, match="positive"):
        diffusion_spectral_entropy(z, sigma=0.0)
    with pytest.raises(InputError, match="d >= 2"):
        von_neumann_entropy(z[:, :1])
    with pytest.raises(InputError, match="positive"):
        coding_rate(z, eps2=-1)
    with pytest.raises(InputError, match="no variance"):
        covariance_spectrum(np.ones((10, 3)))
