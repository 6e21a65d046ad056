"""Known answers for eelsanom.latent.similarity (CKA, mutual k-NN, CKNNA, CCA).

Tolerances are stated per test; all data are seeded.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from eelsanom.errors import InputError
from eelsanom.latent import (
    canonical_correlations,
    cca_alignment,
    cknna,
    linear_cka,
    mutual_knn,
    mutual_knn_map,
)


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(600, 6)) * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.25])


@pytest.fixture(scope="module")
def rot() -> np.ndarray:
    return ortho_group.rvs(6, random_state=0)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("s, b", [(1.0, 0.0), (2.5, 0.0), (0.3, 7.0)])
def test_cka_invariant_to_similarity_transform(codes, rot, unbiased, s, b):
    # CKA(X, s X Q + b) = 1 for orthogonal Q, s > 0, any shift b: to 1e-10
    assert linear_cka(codes, s * codes @ rot + b, unbiased=unbiased) == pytest.approx(1, abs=1e-10)


def test_cka_below_one_under_anisotropic_scaling(codes):
    # stretching one unit by 10 changes the geometry: CKA clearly < 1 (< 0.9 here)
    aniso = codes * np.array([1.0, 10.0, 1.0, 1.0, 1.0, 1.0])
    assert linear_cka(codes, aniso) < 0.9
    assert linear_cka(codes, aniso, unbiased=True) < 0.9


def test_unbiased_cka_of_independent_gaussians_is_near_zero():
    # independent spaces: unbiased CKA ~ 0 (|.| < 0.02 at n = 2000); the biased one is positive
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    assert abs(linear_cka(x, y, unbiased=True)) < 0.02
    assert linear_cka(x, y) > linear_cka(x, y, unbiased=True)


def test_unbiased_cka_matches_dense_reference():
    # the feature-space formula equals the dense unbiased HSIC of Song et al. (2012) to 1e-10
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 3))
    y = x @ rng.normal(size=(3, 4)) + rng.normal(size=(50, 4))

    def hsic_u(k, l):  # noqa: E741
        n = k.shape[0]
        k, l = k.copy(), l.copy()  # noqa: E741
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        return (np.sum(k * l.T) + k.sum() * l.sum() / ((n - 1) * (n - 2))
                - 2 * np.sum(k.sum(0) * l.sum(1)) / (n - 2)) / (n * (n - 3))

    xc, yc = x - x.mean(0), y - y.mean(0)
    kx, ly = xc @ xc.T, yc @ yc.T
    ref = hsic_u(kx, ly) / np.sqrt(hsic_u(kx, kx) * hsic_u(ly, ly))
    assert linear_cka(x, y, unbiased=True) == pytest.approx(ref, abs=1e-10)


def test_mutual_knn_is_one_under_rotation_and_map_has_image_shape(codes, rot):
    # mutual-kNN(X, XQ) = 1 exactly; a (ny, nx, d) input gives an (ny, nx) map
    img = codes.reshape(20, 30, 6)
    m = mutual_knn_map(img, (codes @ rot).reshape(20, 30, 6), k=8)
    assert m.shape == (20, 30)
    assert np.all(m == 1.0)
    assert mutual_knn(codes, 3.0 * codes @ rot - 1.0, k=8, metric="cosine") == 1.0


def test_mutual_knn_of_unrelated_spaces_is_near_chance():
    # chance level is k / (n - 1) ~ 0.017 here; allow up to 0.05
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(600, 4)), rng.normal(size=(600, 4))
    assert mutual_knn(x, y, k=10) < 0.05


def test_mutual_knn_brute_force_path_matches_kdtree_path():
    # d > 8 uses blocked brute force: same neighbours as a k-d tree on the same data
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 12))
    y = x + 0.3 * rng.normal(size=(400, 12))
    from eelsanom.latent._common import knn

    _, i_brute = knn(x, 5)
    from scipy.spatial import cKDTree

    _, i_tree = cKDTree(x).query(x, 6)
    assert np.array_equal(np.sort(i_brute, 1), np.sort(i_tree[:, 1:], 1))
    assert 0.0 < mutual_knn(x, y, k=5) < 1.0


def test_cknna_known_answers(codes, rot):
    # 1 (to 1e-10) for spaces equal up to rotation, scale and shift; ~0 (< 0.1) for unrelated
    assert cknna(codes, 2.0 * codes @ rot + 3.0, k=10) == pytest.approx(1.0, abs=1e-10)
    rng = np.random.default_rng(5)
    assert abs(cknna(codes, rng.normal(size=codes.shape), k=10)) < 0.1
    noisy = cknna(codes, codes + 0.5 * rng.normal(size=codes.shape), k=10)
    assert 0.1 < noisy < 1.0


@pytest.fixture(scope="module")
def shared_private():
    """Two spaces sharing a 3-D signal, each with private noise directions, randomly rotated."""
    rng = np.random.default_rng(6)
    n, k = 1500, 3
    s = rng.normal(size=(n, k))
    a = np.hstack([s + 0.05 * rng.normal(size=(n, k)), rng.normal(size=(n, 5))])
    b = np.hstack([s + 0.05 * rng.normal(size=(n, k)), rng.normal(size=(n, 4))])
    return a @ ortho_group.rvs(8, random_state=1), b @ ortho_group.rvs(7, random_state=2), k


def test_cca_shared_signal_gives_k_unit_correlations(shared_private):
    # first k correlations > 0.99, the rest < 0.15 (sampling level ~ sqrt(d / n))
    a, b, k = shared_private
    rho = canonical_correlations(a, b).correlations
    assert rho.shape == (7,)
    assert np.all(rho[:k] > 0.99)
    assert np.all(rho[k:] < 0.15)


def test_cca_variates_have_unit_variance_and_given_correlation(shared_private):
    a, b, _ = shared_private
    cca = canonical_correlations(a, b)
    va, vb = cca.transform_a(a), cca.transform_b(b)
    assert np.allclose(va.std(0, ddof=1), 1.0, atol=1e-8)
    r = [np.corrcoef(va[:, i], vb[:, i])[0, 1] for i in range(7)]
    assert np.allclose(r, cca.correlations, atol=1e-8)


def test_cca_retrieval_in_shared_subspace_beats_full_space(shared_private):
    # retrieval with the 3 shared canonical directions beats retrieval with all 7
    a, b, k = shared_private
    al = cca_alignment(a, b, k=10, max_points=1000)
    assert al.n_points == 1000
    i_k, i_full = list(al.ks).index(k), len(al.ks) - 1
    assert al.retrieval_top10[i_k] > al.retrieval_top10[i_full] + 0.3
    assert al.retrieval_top1[i_k] > al.retrieval_top1[i_full]
    assert al.mutual_knn[i_k] > al.mutual_knn[i_full]
    fig = al.plot()
    assert fig.axes[0].get_xlabel()


@pytest.mark.parametrize("fn", [linear_cka, mutual_knn, cknna, canonical_correlations])
def test_mismatched_pixel_counts_are_refused(fn):
    rng = np.random.default_rng(7)
    with pytest.raises(InputError, match="same pixels"):
        fn(rng.normal(size=(50, 3)), rng.normal(size=(40, 3)))


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 3))
    with pytest.raises(InputError, match="neighbours"):
        mutual_knn(x, x, k=20)  # k >= n
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="finite"):
        linear_cka(bad, x)
    with pytest.raises(InputError, match="d >= 2"):
        mutual_knn(x[:, :1], x[:, :1], k=3, metric="cosine")  # 1-D cosines are signs
    with pytest.raises(InputError, match=r"\(n, d\)"):
        linear_cka(np.zeros(20), x)
    with pytest.raises(InputError, match="ks"):
        cca_alignment(x, x, ks=[5])
