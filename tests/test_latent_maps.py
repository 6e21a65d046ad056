"""eelsanom.latent.maps: the latent panel's computations, Qt-free (for notebooks)."""

from __future__ import annotations

import numpy as np
import pytest

from eelsanom.errors import InputError
from eelsanom.latent.maps import (
    MAP_KEYS,
    TWO_SPACE_KEYS,
    compute_latent_maps,
    project_codes,
    scatter_indices,
)


def _codes(seed: int = 0, ny: int = 12, nx: int = 10, d: int = 3) -> np.ndarray:
    """Codes on a 2-D plane in d dimensions, with a patch of 3x3 pixels off the plane."""
    rng = np.random.default_rng(seed)
    plane = rng.normal(size=(ny, nx, 2)) @ rng.normal(size=(2, d))
    z = plane + 0.01 * rng.normal(size=(ny, nx, d))
    z[2:5, 3:6] += 3.0 * rng.normal(size=(3, 3, d))
    return z


def test_project_codes_orders_axes_by_variance_and_keeps_nan_rows() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8, 9, 3)) * np.array([5.0, 1.0, 0.1])
    z[0, 0] = np.nan
    coords, explained = project_codes(z)
    assert coords.shape == (72, 2) and np.all(np.isnan(coords[0]))
    assert explained[0] > explained[1] > 0 and explained.sum() <= 1.0 + 1e-9
    np.testing.assert_allclose(np.abs(coords[1:, 0]).std(), np.abs(z[..., 0].ravel()[1:]).std(),
                               rtol=0.1)
    with pytest.raises(InputError, match=r"expected shape \(ny, nx, d\)"):
        project_codes(np.zeros((5, 3)))


def test_scatter_indices_subsample_is_seeded_and_sorted() -> None:
    vals = np.arange(100.0)[::-1]
    valid = np.ones(100, bool)
    valid[:10] = False
    idx = scatter_indices(valid, vals, 30)
    assert idx.size == 30 and not np.any(idx < 10)
    assert np.all(np.diff(vals[idx]) >= 0)  # the highest score drawn last
    np.testing.assert_array_equal(idx, scatter_indices(valid, vals, 30))
    assert scatter_indices(valid, vals, 1000).size == 90
    with pytest.raises(InputError, match="same length"):
        scatter_indices(valid, vals[:5], 10)


def test_compute_latent_maps_against_a_rotated_copy_and_another_space() -> None:
    z = _codes()
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    same = compute_latent_maps(z, z @ q, reference_label="rotated", k=8, n_anchors=8)
    assert set(same.maps) == {"local_dimension", *TWO_SPACE_KEYS} and same.reference == "rotated"
    assert all(m.shape == (12, 10) and m.dtype == np.float32 for m in same.maps.values())
    assert set(same.maps) <= set(MAP_KEYS)
    # a rotation carries everything over: near-zero Procrustes residual, same neighbours
    assert same.summary["procrustes_relative_residual"] < 1e-3
    assert same.summary["mutual_knn"] > 0.95
    other = compute_latent_maps(z, _codes(seed=7), k=8, n_anchors=8)
    assert other.summary["mutual_knn"] < same.summary["mutual_knn"]
    assert other.summary["procrustes_relative_residual"] > 0.1
    single = compute_latent_maps(z, k=8, seed_disagreement=np.ones((12, 10)))
    assert set(single.maps) == {"local_dimension", "seed_disagreement"} and single.reference == ""


def test_compute_latent_maps_refuses_mismatched_inputs() -> None:
    z = _codes()
    with pytest.raises(InputError, match="same image"):
        compute_latent_maps(z, _codes(ny=6))
    with pytest.raises(InputError, match="seed-disagreement map of shape"):
        compute_latent_maps(z, seed_disagreement=np.ones((3, 3)))
