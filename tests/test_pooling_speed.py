"""The vectorised pooling stage (issue 24) scores as the dense per-tile reference did."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eelsanom import pooling

from .pooling_reference import pool_region as reference_region

KEYS = ("score", "nb_nll", "scale", "own", "expected", "penalty")


def _case(seed, ny, nx, ne, *, uniform, dtype, coherent=False):
    """Gaussian deviations with a few strong and a cluster of weak anomalies."""
    rng = np.random.default_rng(seed)
    target = rng.standard_normal((ne, ny, nx))
    target[:, 3:6, 4:7] += 0.6          # a weak cluster
    target[:, ny - 4, nx - 3] += 4.0    # strong single pixels (outlier levels 1-2)
    target[:, 1, nx // 2] += 2.0
    target[:, ny // 2, 0] += 8.0
    mean = 0.1 * rng.standard_normal((ne, ny, nx))
    if uniform:
        sigma = np.broadcast_to(rng.uniform(0.8, 1.3, (ne, 1, 1)), target.shape).copy()
    else:
        sigma = rng.uniform(0.7, 1.4 if coherent else 1.0, target.shape)
    pen = rng.uniform(0.0, 2.0, (ny, nx))
    return [torch.as_tensor(a, dtype=dtype) for a in (target, mean, sigma, pen)]


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("background", [10.0, 0.0])
def test_pool_region_equals_the_dense_reference(uniform, dtype, background):
    """Whole image and an inner block with its context, levels 0-2 present, penalty on:
    float64 within 1e-9 relative, float32 within 2e-5 relative of the reference's float64."""
    ny, nx, ne = 30, 34, 23
    t, m, s, p = _case(0, ny, nx, ne, uniform=uniform, dtype=dtype, coherent=not uniform)
    pool = pooling.Pooling(background=background)
    rn = pool.radius()
    excess = (0.0, math.sqrt(ne / 2) / 3)
    for out_box in ((0, ny, 0, nx), (9, 17, 12, 21)):
        a0, a1, b0, b1 = out_box
        src = (max(0, a0 - rn), min(ny, a1 + rn), max(0, b0 - rn), min(nx, b1 + rn))
        cut = (slice(None), slice(src[0], src[1]), slice(src[2], src[3]))
        kw = dict(out_box=out_box, src_box=src, image_shape=(ny, nx), pooling=pool,
                  noise2=0.9, excess=excess, want_channels=(a0 + 2, b0 + 3))
        new = pooling.pool_region(t[cut], m[cut], s[cut], p[cut[1:]], **kw)
        ref = reference_region(*(x[cut].double() for x in (t, m, s)), p[cut[1:]].double(), **kw)
        assert len(set(ref["scale"].flatten().tolist())) == 2  # both scales win somewhere
        rtol = 1e-9 if dtype == torch.float64 else 2e-5
        for k in KEYS + ("channel_nll",):
            np.testing.assert_allclose(new[k].double().numpy(), ref[k].numpy(), rtol=rtol,
                                       atol=rtol * ne, err_msg=k)


def test_pool_image_equals_the_reference_with_and_without_the_spill_guard():
    ny, nx, ne = 41, 27, 17
    t, m, s, _ = _case(3, ny, nx, ne, uniform=True, dtype=torch.float64)
    for excess in (None, (0.0, 1.0)):
        kw = dict(pooling=pooling.Pooling(), noise2=1.0, excess=excess)

        def gauss(rows, cols):
            return t[:, rows, cols], m[:, rows, cols], s[:, rows, cols], None

        new = pooling.pool_image(gauss, ny, nx, tile=9, **kw)
        ref = reference_region(t, m, s, None, out_box=(0, ny, 0, nx), src_box=(0, ny, 0, nx),
                               image_shape=(ny, nx), **kw)
        for k in KEYS:
            np.testing.assert_allclose(new[k], ref[k].numpy(), rtol=1e-9, atol=1e-9, err_msg=k)


def test_a_region_of_pool_image_is_cut_from_the_whole():
    ny, nx, ne = 50, 44, 9
    t, m, s, _ = _case(4, ny, nx, ne, uniform=False, dtype=torch.float64)

    def gauss(rows, cols):
        return t[:, rows, cols], m[:, rows, cols], s[:, rows, cols], None

    kw = dict(pooling=pooling.Pooling(), noise2=1.0, excess=(0.0, 1.0))
    whole = pooling.pool_image(gauss, ny, nx, **kw)
    part = pooling.pool_image(gauss, ny, nx, region=(20, 31, 5, 40), **kw)
    np.testing.assert_allclose(part["score"], whole["score"][20:31, 5:40], rtol=1e-10)
