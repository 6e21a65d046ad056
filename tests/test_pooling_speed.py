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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("background", [10.0, 0.0])
@pytest.mark.parametrize("given_own", [False, True])
def test_a_variant_scores_as_its_own_pass(dtype, background, given_own):
    """A :class:`~eelsanom.pooling.Variant` (deviations plus a low-rank term, its own
    sigma, penalty and spill guard) scored in the first model's pass equals scoring it
    alone, and the first model's scores do not move; the spill levels (0-2) differ between
    the two models, so masks used by a few pixels only (scored at those alone) are met;
    own NLLs handed over skip their pass and give the same scores."""
    ny, nx, ne, q = 30, 34, 23, 3
    t, m, _, p = _case(5, ny, nx, ne, uniform=True, dtype=dtype)
    rng = np.random.default_rng(6)
    sig = torch.full((ne,), 1.1, dtype=dtype)
    sig_v = torch.as_tensor(rng.uniform(0.9, 1.5, ne), dtype=dtype)  # coherent part > noise2
    basis = torch.as_tensor(np.linalg.qr(rng.standard_normal((ne, q)))[0], dtype=dtype)
    delta = torch.as_tensor(0.3 * rng.standard_normal((q, ny, nx)), dtype=dtype)
    delta[:, 18:25, 4:11] += 2.0  # a cluster only the variant sees
    pen_v = torch.as_tensor(rng.uniform(0.0, 1.0, (ny, nx)), dtype=dtype)
    t_v = t + torch.einsum("eq,qyx->eyx", basis, delta)
    pool = pooling.Pooling(background=background)
    exc, exc_v = (0.0, math.sqrt(ne / 2) / 3), (0.5, math.sqrt(ne / 2) / 4)
    kw = dict(pooling=pool, noise2=1.0)
    box = dict(out_box=(0, ny, 0, nx), src_box=(0, ny, 0, nx), image_shape=(ny, nx))
    s_b = sig[:, None, None].expand(ne, ny, nx)
    # each model alone, by the dense reference
    alone = reference_region(t.double(), m.double(), s_b.double(), p.double(), excess=exc,
                             **box, **kw)
    alone_v = reference_region(t_v.double(), m.double(),
                               sig_v[:, None, None].expand(ne, ny, nx).double(), pen_v.double(),
                               excess=exc_v, **box, **kw)
    lev = pooling.outlier_level(alone_v["own"] - alone_v["expected"], exc_v[0],
                                pool.spill * exc_v[1]).numpy()
    # outliers (levels 1-2: masks few pixels use) whose neighbourhood statistic wins
    assert ((lev >= 1) & (alone_v["scale"].numpy() > 0)).sum() >= 5
    own = own_v = None
    if given_own:
        own, own_v = alone["own"].to(dtype), alone_v["own"].to(dtype)
    both = pooling.pool_region(t, m, s_b, p, excess=exc, own=own, **box, **kw,
                               variant=pooling.Variant(basis=basis, delta=delta, sigma=sig_v,
                                                       penalty=pen_v, excess=exc_v, own=own_v))
    rtol = 1e-9 if dtype == torch.float64 else 2e-5
    for got, ref in ((both, alone), (both["variant"], alone_v)):
        for k in KEYS:
            np.testing.assert_allclose(got[k].double().numpy(), ref[k].double().numpy(),
                                       rtol=rtol, atol=rtol * ne, err_msg=k)


def test_pool_image_passes_the_tiles_variant_and_own():
    """``gauss`` giving a fifth element (the tile's own NLL and variant): ``pool_image``
    returns the variant's maps, tile by tile as for the whole image."""
    ny, nx, ne, q = 37, 29, 11, 2
    t, m, _, _ = _case(7, ny, nx, ne, uniform=True, dtype=torch.float64)
    rng = np.random.default_rng(8)
    sig = torch.full((ne,), 1.0, dtype=torch.float64)
    basis = torch.as_tensor(np.linalg.qr(rng.standard_normal((ne, q)))[0])
    delta = torch.as_tensor(0.5 * rng.standard_normal((q, ny, nx)))
    sig_v = torch.full((ne,), 1.2, dtype=torch.float64)
    kw = dict(pooling=pooling.Pooling(), noise2=1.0, excess=(0.0, 1.0))

    def gauss(rows, cols):
        h, w = t[:, rows, cols].shape[1:]
        return (t[:, rows, cols], m[:, rows, cols], sig[:, None, None].expand(ne, h, w), None,
                {"variant": pooling.Variant(basis=basis, delta=delta[:, rows, cols],
                                            sigma=sig_v, excess=(0.0, 1.0))})

    tiled = pooling.pool_image(gauss, ny, nx, tile=10, **kw)
    whole = pooling.pool_image(gauss, ny, nx, tile=100, **kw)
    t_v = t + torch.einsum("eq,qyx->eyx", basis, delta)

    def gauss_v(rows, cols):
        h, w = t[:, rows, cols].shape[1:]
        return t_v[:, rows, cols], m[:, rows, cols], sig_v[:, None, None].expand(ne, h, w), None

    alone_v = pooling.pool_image(gauss_v, ny, nx, tile=100, **kw)
    for k in KEYS:
        np.testing.assert_allclose(tiled["variant"][k], whole["variant"][k], rtol=1e-10)
        np.testing.assert_allclose(whole["variant"][k], alone_v[k], rtol=1e-9, atol=1e-9)


def test_pca_pooled_fast_path_equals_the_generic_rows():
    """PCA's pooled scores on the CPU (each tile transformed and projected once, float32
    deviations, own NLLs by runs) equal the generic per-row path (``_gauss_rows``) within
    float32 rounding, with a free and a fixed scale, and for one pixel's channels."""
    from eelsanom.detectors import get_detector
    from eelsanom.detectors._gaussian import pooled_scores
    from eelsanom.simulate import simulate

    sim = simulate(shape=(40, 36), window="fe-l", magnitude=0.9, concentration=0.05, seed=3)
    pool = pooling.Pooling()
    for scale in ("free", "fixed"):
        det = get_detector("pca", device="cpu", pooling=0.8, scale=scale).fit(sim.si)
        kw = dict(pooling=pool, noise2=float(det.noise_variance_), excess=det.pool_excess_)
        new = det._pooled(sim.si, pool)
        ref = pooled_scores(sim.si, det._gauss_rows, **kw)
        for k in KEYS:
            np.testing.assert_allclose(new[k], ref[k], rtol=2e-5, atol=1e-3, err_msg=k)
        px = det._pooled(sim.si, pool, region=(5, 6, 7, 8), want_channels=(5, 7))
        pr = pooled_scores(sim.si, det._gauss_rows, region=(5, 6, 7, 8), want_channels=(5, 7),
                           **kw)
        np.testing.assert_allclose(px["channel_nll"], pr["channel_nll"], rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("uniform", [True, False])
def test_the_transposed_neighbourhood_sums_equal_the_reference(uniform, monkeypatch):
    """Large blocks apply the columns' weights to the transposed block: forced on a small
    image, float64 scores within 1e-9 of the dense reference (spill levels 0-2, penalty)."""
    from eelsanom import _pool_sums

    monkeypatch.setattr(_pool_sums, "_TRANSPOSED_PIXELS", 1)
    ny, nx, ne = 30, 34, 23
    t, m, s, p = _case(0, ny, nx, ne, uniform=uniform, dtype=torch.float64,
                       coherent=not uniform)
    pool = pooling.Pooling()
    kw = dict(out_box=(0, ny, 0, nx), src_box=(0, ny, 0, nx), image_shape=(ny, nx),
              pooling=pool, noise2=0.9, excess=(0.0, math.sqrt(ne / 2) / 3))
    new = pooling.pool_region(t, m, s, p, **kw)
    ref = reference_region(t, m, s, p, **kw)
    for k in KEYS:
        np.testing.assert_allclose(new[k].numpy(), ref[k].numpy(), rtol=1e-9, atol=1e-9 * ne,
                                   err_msg=k)


@pytest.mark.parametrize("out_view", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_channel_middle_sums_equal_the_channel_last_ones(dtype, out_view, monkeypatch):
    """The chunks' neighbourhood sums in the channel-middle layout (columns' weights from the
    right, rows' from the left, later terms added by the product) equal the channel-last
    ones: the statistic's and its variance's maps, over the whole block and over the
    outputs a dropped group reaches (banded panels and single products); the panels written
    into a view of the columns (CPU) or copied in (other devices)."""
    from eelsanom import _pool_sums

    monkeypatch.setattr(_pool_sums, "_OUT_VIEW_DEVICES", ("cpu",) if out_view else ())

    rng = np.random.default_rng(5)
    ny, nx, ne = 70, 45, 6
    x = torch.as_tensor(rng.standard_normal((ny, nx, ne)), dtype=dtype)
    g, gb = pooling.neighbourhood_kernel(0.8), pooling.neighbourhood_kernel(10.0)
    mats = [pooling._pool_matrix(0, n, 0, n, n, k) for n, k in ((ny, g), (nx, g), (ny, gb),
                                                                 (nx, gb))]
    stat = pooling._Stat(*mats, "cpu", dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for lin in (stat.d, stat.v):
        last = pooling._apply(x, lin)
        mid = _pool_sums._apply_mid(x.permute(0, 2, 1).contiguous(), lin)
        np.testing.assert_allclose(mid.permute(0, 2, 1).numpy(), last.numpy(), rtol=tol,
                                   atol=tol)
        sub, (o0, o1, p0, p1) = _pool_sums._sub(lin, (30, 33, 40, 45))
        part = x[30:33, 40:45]
        last = pooling._apply(part, sub)
        mid = _pool_sums._apply_mid(part.permute(0, 2, 1).contiguous(), sub)
        assert mid.shape == (o1 - o0, ne, p1 - p0)
        np.testing.assert_allclose(mid.permute(0, 2, 1).numpy(), last.numpy(), rtol=tol,
                                   atol=tol)


def _runs_case(seed=4, h=9, w=14, d=37, q=3):
    from eelsanom.detectors._ppca_rows import DeviationRuns

    rng = np.random.default_rng(seed)
    mu = rng.uniform(5.0, 9.0, d)
    comps = np.linalg.qr(rng.standard_normal((d, q)))[0]
    runs = DeviationRuns(mu, comps, rng.standard_normal(d) / math.sqrt(d),
                         np.full(d, 0.9), rng.uniform(0.8, 1.2, d), run_values=5 * d)
    x = (mu + rng.standard_normal((h, w + 5, d))).astype(np.float32)[:, 2:2 + w]  # strided
    codes = rng.standard_normal((h * w, q))
    return runs, x, codes, rng.standard_normal(h * w), rng.standard_normal((h * w, q))


@pytest.mark.parametrize("band", [1 << 16, 50])
def test_chunked_deviations_are_the_runs_deviations(band, monkeypatch):
    """The deviations built chunk of channels by chunk (channel-middle layout) equal those
    :class:`DeviationRuns` keeps for the tile, within a float32 rounding; the own NLLs summed
    without keeping them are the same (within the BLAS rounding of runs of other lengths);
    one pixel's column likewise; a strided tile (a block of columns) is read row by row
    without a copy of its own; blocks of several chunks, turned channel-middle in bands of
    rows (one row each with ``band=50``)."""
    from eelsanom.detectors import _ppca_rows

    monkeypatch.setattr(_ppca_rows, "BAND_VALUES", band)  # 50: a band of one row
    runs, x, codes, scale, delta = _runs_case()
    h, w, d = x.shape
    dev, own = runs(np.ascontiguousarray(x).reshape(h * w, d), codes, scale, delta)
    dev = dev.copy()
    lazy, own2 = runs.chunked(x, codes, scale, delta)
    np.testing.assert_allclose(own2, own, rtol=1e-7)  # runs of other lengths: BLAS rounding
    assert lazy.shape == (d, h, w) and lazy.chunked_deviations is True
    full = np.concatenate([lazy.chunk(c0, min(d, c0 + 8)).numpy()
                           for c0 in range(0, d, 8)], axis=1)  # (h, d, w)
    np.testing.assert_allclose(full.transpose(0, 2, 1).reshape(h * w, d), dev, rtol=0,
                               atol=5e-6)
    np.testing.assert_allclose(lazy.column(4, 6).numpy(), dev[4 * w + 6], rtol=0, atol=5e-6)


def test_chunked_projected_deviations_transform_each_chunk_again():
    """PCA's tiles of counts: each chunk is transformed again as it is read; the projections,
    own NLLs and deviations equal the kept tile's."""
    from eelsanom.preprocess import forward_transform

    runs, x, _, _, _ = _runs_case()
    counts = np.maximum(x, 0.0) ** 2  # strided, in counts
    h, w, d = counts.shape
    shrink = np.array([0.9, 0.5, 0.2])

    def tf(a, out=None):
        return forward_transform(a, "anscombe", 1.7, out=out)

    dev, own, proj = runs.projected(np.ascontiguousarray(counts).reshape(h * w, d), shrink, tf)
    dev = dev.copy()
    lazy, own2, proj2 = runs.projected_chunked(counts, shrink, tf)
    np.testing.assert_allclose(own2, own, rtol=1e-7)
    np.testing.assert_allclose(proj2, proj, rtol=1e-6, atol=1e-6)
    got = np.concatenate([lazy.chunk(c0, min(d, c0 + 10)).numpy() for c0 in range(0, d, 10)],
                         axis=1)
    np.testing.assert_allclose(got.transpose(0, 2, 1).reshape(h * w, d), dev, rtol=0,
                               atol=5e-6)
    np.testing.assert_allclose(lazy.column(8, 13).numpy(), dev[8 * w + 13], rtol=0, atol=5e-6)


def test_pool_region_scores_chunked_deviations_as_the_tensor():
    """``pool_region`` on a :class:`ChunkDeviations` target scores as on the same deviations
    as a tensor (float32: within 1e-5), channels of one pixel included; without the own
    NLLs it refuses the chunks."""
    runs, x, codes, scale, _ = _runs_case(h=24, w=20)
    h, w, d = x.shape
    dev, own = runs(np.ascontiguousarray(x).reshape(h * w, d), codes, scale)
    target = torch.from_numpy(dev.copy()).T.reshape(d, h, w)
    lazy, _ = runs.chunked(x, codes, scale)
    zero = torch.zeros((1, 1, 1), dtype=torch.float32).expand(d, h, w)
    sig = torch.full((d,), math.sqrt(0.9), dtype=torch.float32)[:, None, None].expand(d, h, w)
    own_t = torch.from_numpy(own[0].reshape(h, w))
    kw = dict(out_box=(0, h, 0, w), src_box=(0, h, 0, w), image_shape=(h, w),
              pooling=pooling.Pooling(background=4.0), noise2=0.9,
              excess=(0.0, math.sqrt(d / 2) / 3), own=own_t)
    for want in (None, (5, 7)):
        a = pooling.pool_region(target, zero, sig, None, want_channels=want, **kw)
        b = pooling.pool_region(lazy, zero, sig, None, want_channels=want, **kw)
        for k in KEYS + (("channel_nll",) if want else ()):
            np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-5, atol=1e-5,
                                       err_msg=k)
    kw["own"] = None
    with pytest.raises(ValueError, match="own NLLs"):
        pooling.pool_region(lazy, zero, sig, None, **kw)


def test_forward_transform_into_a_given_array():
    """``out=``: a strided block is read once into the given array, transformed in place,
    the same values bit for bit; a wrong array is refused."""
    from eelsanom.preprocess import forward_transform

    rng = np.random.default_rng(0)
    x = rng.poisson(4.0, (6, 9, 40)).astype(np.float64)[:, 1:8, 5:30].transpose(0, 2, 1)
    out = np.empty(x.shape, np.float32)
    assert forward_transform(x, "anscombe", 2.5, out=out) is out
    np.testing.assert_array_equal(out, forward_transform(np.ascontiguousarray(x), "anscombe",
                                                         2.5))
    same = np.ascontiguousarray(x, np.float32)
    ref = forward_transform(same, "anscombe")
    forward_transform(same, "anscombe", out=same)  # in place
    np.testing.assert_array_equal(same, ref)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        forward_transform(x, out=np.empty(x.shape, np.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_coherent_variance_only_where_a_dropped_neighbour_needs_it(dtype):
    """A shared sigma above the noise (a coherent part) and one strong outlier in a corner:
    the keep mask that drops it needs the rank-two variance only at the pixels within the
    statistic's reach of it (a strict subset); the others take the per-channel one. The
    scores and one pixel's channels equal the dense reference (float64 1e-9, float32 2e-5)."""
    from eelsanom import _pool_sums

    rng = np.random.default_rng(7)
    ny, nx, ne = 64, 70, 12
    target = rng.standard_normal((ne, ny, nx))
    target[:, 3, 4] += 9.0  # level 2: dropped by the mask of the level-0 pixels
    target[:, 40, 50] += 4.0
    sigma = np.broadcast_to(rng.uniform(0.8, 1.3, (ne, 1, 1)), target.shape).copy()
    t, m, s = (torch.as_tensor(a, dtype=dtype) for a in (target, np.zeros_like(target), sigma))
    pool = pooling.Pooling(background=6.0)
    kw = dict(out_box=(0, ny, 0, nx), src_box=(0, ny, 0, nx), image_shape=(ny, nx),
              pooling=pool, noise2=0.9, excess=(0.0, math.sqrt(ne / 2)))
    seen = []
    real = _pool_sums._coherent_pixels

    def spy(q, cm2, uniform):
        out = real(q, cm2, uniform)
        seen.append(None if out is None else int(out[0].numel()))
        return out

    _pool_sums._coherent_pixels = spy
    try:
        for want in (None, (5, 6), (50, 60)):
            new = pooling.pool_region(t, m, s, None, want_channels=want, **kw)
            ref = reference_region(t.double(), m.double(), s.double(), None,
                                   want_channels=want, **kw)
            rtol = 1e-9 if dtype == torch.float64 else 2e-5
            for k in KEYS + (("channel_nll",) if want else ()):
                np.testing.assert_allclose(new[k].double().numpy(), ref[k].numpy(), rtol=rtol,
                                           atol=rtol * ne, err_msg=k)
    finally:
        _pool_sums._coherent_pixels = real
    assert any(n is not None and 0 < n < ny * nx // 2 for n in seen), seen
