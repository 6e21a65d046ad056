"""Known answers for relative representations, Procrustes and unit matching."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from eelsanom.errors import InputError
from eelsanom.latent import (
    cluster_units,
    match_units,
    procrustes,
    relative_agreement,
    relative_representation,
    select_anchors,
    sparse_unit_prediction,
    unit_correlation,
)


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 5)) * np.array([3.0, 2.0, 1.0, 0.7, 0.4]) + 1.0


@pytest.fixture(scope="module")
def rot() -> np.ndarray:
    return ortho_group.rvs(5, random_state=3)


# ----------------------------------------------------------------- relative representations


@pytest.mark.parametrize("method", ["random", "kmeans"])
def test_relative_representation_invariant_to_rotation_and_scale(codes, rot, method):
    # raw cosines (center=False): invariant to rotation and isotropic scaling, to 1e-12
    anchors = select_anchors(codes, 12, method=method, seed=1)
    r1 = relative_representation(codes, anchors, center=False)
    r2 = relative_representation(4.0 * codes @ rot, anchors, center=False)
    assert r1.shape == (400, anchors.size)
    assert np.allclose(r1, r2, atol=1e-12)


def test_centred_relative_representation_also_ignores_shifts(codes, rot):
    # center=True: rotation, isotropic scale and shift leave it unchanged (1e-12)
    r1 = relative_representation(codes, np.arange(10))
    r2 = relative_representation(0.2 * codes @ rot - 5.0, np.arange(10))
    assert np.allclose(r1, r2, atol=1e-12)
    # without centring a shift changes it
    r3 = relative_representation(codes + 5.0, np.arange(10), center=False)
    assert not np.allclose(relative_representation(codes, np.arange(10), center=False), r3)


def test_relative_agreement_map_is_one_for_transformed_space(codes, rot):
    img_a = codes.reshape(20, 20, 5)
    img_b = (3.0 * codes @ rot + 2.0).reshape(20, 20, 5)
    agree = relative_agreement(img_a, img_b, n_anchors=16)
    assert agree.shape == (20, 20)
    assert np.allclose(agree, 1.0, atol=1e-12)
    rng = np.random.default_rng(1)
    other = relative_agreement(img_a, rng.normal(size=(20, 20, 5)), n_anchors=16)
    assert np.nanmean(other) < 0.5


def test_region_anchors_use_region_mean_codes(codes):
    regions = np.zeros((2, 20, 20), bool)
    regions[0, :5] = True
    regions[1, 10:, 10:] = True
    r = relative_representation(codes.reshape(20, 20, 5), regions, center=False)
    assert r.shape == (20, 20, 2)
    mean0 = codes.reshape(20, 20, 5)[:5].reshape(-1, 5).mean(0)
    z = codes[0]
    expect = z @ mean0 / np.linalg.norm(z) / np.linalg.norm(mean0)
    assert r[0, 0, 0] == pytest.approx(expect, abs=1e-12)
    with pytest.raises(InputError, match="no pixel"):
        relative_representation(codes, np.zeros((1, 400), bool))


def test_relative_representation_refuses_one_dimensional_latent(codes):
    with pytest.raises(InputError, match="d >= 2"):
        relative_representation(codes[:, :1], np.arange(3))


# ----------------------------------------------------------------- Procrustes


def test_procrustes_recovers_known_rotation(codes, rot):
    # Q, scale and shift recovered to 1e-10; residual map ~0
    res = procrustes(codes.reshape(20, 20, 5), (2.5 * codes @ rot + 4.0).reshape(20, 20, 5))
    assert np.allclose(res.rotation, rot, atol=1e-10)
    assert res.scale == pytest.approx(2.5, abs=1e-10)
    assert np.allclose(res.translation, 4.0, atol=1e-9)
    assert res.residual_map.shape == (20, 20)
    assert res.residual_map.max() < 1e-9
    assert res.relative_residual < 1e-12
    assert np.allclose(res.transform(codes), 2.5 * codes @ rot + 4.0, atol=1e-9)


def test_procrustes_residual_map_points_at_changed_pixels(codes, rot):
    b = codes @ rot
    b[:10] += 5.0  # ten pixels moved in B only
    res = procrustes(codes, b, scale=False)
    assert set(np.argsort(res.residual_map)[-10:]) == set(range(10))


def test_procrustes_between_spaces_of_different_dimension(codes):
    q = ortho_group.rvs(7, random_state=4)[:5]  # (5, 7), orthonormal rows
    res = procrustes(codes, codes @ q)
    assert res.rotation.shape == (5, 7)
    assert res.relative_residual < 1e-10


# ----------------------------------------------------------------- unit matching


@pytest.fixture(scope="module")
def perm_signs():
    rng = np.random.default_rng(5)
    p = np.eye(5)[rng.permutation(5)]
    s = np.diag([1.0, -1.0, 1.0, -1.0, -1.0])
    return p @ s


@pytest.mark.parametrize("method", ["hungarian", "semi"])
def test_match_units_recovers_permutation_and_signs(codes, perm_signs, method):
    # Z_B = Z_A P S: the signed permutation is recovered exactly, |r| = 1
    m = match_units(codes, codes @ perm_signs, method=method)
    assert np.array_equal(m.permutation(), perm_signs)
    assert np.allclose(np.abs(m.correlations), 1.0, atol=1e-12)
    assert m.mean_abs_correlation == pytest.approx(1.0)
    assert m.plot().axes[0].get_ylabel() == "unit of A"


def test_unit_correlation_shape_and_values(codes, perm_signs):
    c = unit_correlation(codes, codes @ perm_signs)
    assert c.shape == (5, 5)
    assert np.allclose(np.abs(c), np.abs(perm_signs), atol=0.15)


def test_sparse_prediction_uses_one_unit_each(codes, perm_signs):
    sp = sparse_unit_prediction(codes, 2.0 * codes @ perm_signs)
    assert np.all(sp.n_nonzero == 1)
    assert np.all(sp.r2 > 0.99)
    assert np.array_equal(np.sign(sp.coef), perm_signs.T)


def test_cluster_units_pairs_matched_units(codes, perm_signs):
    # independent units: with 5 clusters each holds one unit of A and its image in B
    labels = cluster_units(codes, codes @ perm_signs, 5, seed=0)
    la, lb = labels[:5], labels[5:]
    partner = np.argmax(np.abs(perm_signs), axis=1)
    assert np.array_equal(la, lb[partner])
    assert len(set(la)) == 5


def test_unit_tools_refuse_bad_input(codes):
    with pytest.raises(InputError, match="same pixels"):
        match_units(codes, codes[:100])
    with pytest.raises(InputError, match="method"):
        match_units(codes, codes, method="greedy")
    with pytest.raises(InputError, match="n_clusters"):
        cluster_units(codes, codes, 11)
