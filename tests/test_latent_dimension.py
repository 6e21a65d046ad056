"""Known answers for intrinsic-dimension estimators (TwoNN, MLE, local map)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from eelsanom.errors import InputError
from eelsanom.latent import intrinsic_dimension, local_dimension_map, mle_dimension, twonn

EMBED = ortho_group.rvs(64, random_state=1)  # random rotation into 64-D


def cube(d: int, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Uniform samples of [0, 1]^d embedded in 64-D by a random rotation."""
    return np.random.default_rng(seed).random((n, d)) @ EMBED[:d]


@pytest.mark.parametrize("d", [1, 2, 4])
@pytest.mark.parametrize("method", ["twonn", "mle"])
def test_uniform_cube_within_ten_percent(d, method):
    # docs/latent.md: estimate within 10 % of d
    assert intrinsic_dimension(cube(d), method) == pytest.approx(d, rel=0.10)


@pytest.mark.parametrize("d", [6, 8])
@pytest.mark.parametrize("method", ["twonn", "mle"])
def test_uniform_cube_high_d_boundary_bias(d, method):
    # Deviation from the design's "10 % for d <= 8" (docs/latent.md): on the *cube* both estimators
    # underestimate at d >= 6 because most of the 4000 points lie near a face (measured:
    # TwoNN 5.4-5.7 at d = 6, 7.25-7.3 at d = 8; MLE(k=10) 5.4 and 6.9-7.0). We assert
    # 15 % and the direction; the boundary-free check below holds 10 % at d = 8.
    est = intrinsic_dimension(cube(d), method)
    assert d * 0.85 <= est <= d * 1.05


@pytest.mark.parametrize("d", [6, 8])
@pytest.mark.parametrize("method", ["twonn", "mle"])
def test_gaussian_without_boundary_within_ten_percent(d, method):
    x = np.random.default_rng(2).normal(size=(4000, d)) @ EMBED[:d]
    assert intrinsic_dimension(x, method) == pytest.approx(d, rel=0.10)


@pytest.mark.parametrize("fn", [twonn, mle_dimension])
def test_invariant_to_rotation_scale_translation(fn):
    # distance ratios only: identical up to float rounding (1e-9)
    x = cube(3, n=1500)
    q = ortho_group.rvs(64, random_state=7)
    assert fn(7.5 * x @ q + 3.0) == pytest.approx(fn(x), abs=1e-9)


def test_local_dimension_map_plane_and_blob():
    # a 2-D plane and a 6-D blob embedded together in 10-D, far apart:
    # median local dimension within 10 % of 2 on the plane, 15 % of 6 in the blob
    rng = np.random.default_rng(3)
    n = 2000
    plane = np.zeros((n, 10))
    plane[:, :2] = rng.random((n, 2))
    blob = np.zeros((n, 10))
    blob[:, 2:8] = 0.3 * rng.normal(size=(n, 6))
    blob[:, 9] = 10.0
    z = np.vstack([plane, blob]) @ ortho_group.rvs(10, random_state=4)
    img = z.reshape(80, 50, 10)  # plane = rows 0-39, blob = rows 40-79
    lid = local_dimension_map(img, k=50)
    assert lid.shape == (80, 50)
    assert np.median(lid[:40]) == pytest.approx(2.0, rel=0.10)
    assert np.median(lid[40:]) == pytest.approx(6.0, rel=0.15)
    lid_mle = local_dimension_map(z, k=50, method="mle")
    assert np.median(lid_mle[:n]) == pytest.approx(2.0, rel=0.10)
    assert np.median(lid_mle[n:]) == pytest.approx(6.0, rel=0.15)


def test_duplicates_are_left_out_not_fatal():
    x = cube(2, n=500)
    x[:20] = x[20:40]  # 40 codes with an exact duplicate
    assert twonn(x) == pytest.approx(2.0, rel=0.15)
    lid = local_dimension_map(x, k=20)
    assert np.isfinite(lid).sum() >= 400


def test_bad_inputs_are_refused():
    x = cube(2, n=30)
    with pytest.raises(InputError, match="neighbours"):
        mle_dimension(x, k=30)
    with pytest.raises(InputError, match="neighbours"):
        local_dimension_map(x, k=40)
    with pytest.raises(InputError, match="discard_fraction"):
        twonn(x, discard_fraction=1.0)
    with pytest.raises(InputError, match="method"):
        intrinsic_dimension(x, "pca")
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InputError, match="finite"):
        twonn(bad)


def test_cross_check_with_scikit_dimension():
    skdim = pytest.importorskip("skdim")
    x = cube(4, n=2000)
    ref = skdim.id.TwoNN().fit(x).dimension_
    assert twonn(x) == pytest.approx(ref, rel=0.05)
    ref_mle = skdim.id.MLE(K=10).fit(x).dimension_
    assert mle_dimension(x, k=10) == pytest.approx(ref_mle, rel=0.10)
