"""The shared evidence-pooling stage (eelsanom.pooling) and the detectors that use it."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from eelsanom import pooling
from eelsanom.detectors import get_detector, load_detector
from eelsanom.errors import InputError
from eelsanom.scoring import average_precision, roc_auc
from eelsanom.simulate import simulate


@pytest.fixture(scope="module")
def sim03():
    """64 x 64 fe-l, 0.3 eV shifts in 2 % clusters: weak per pixel, strong per cluster."""
    return simulate(shape=(64, 64), magnitude=0.3, seed=0)


def _gauss_image(rng, ny=20, nx=24, ne=30, offset_box=None, offset=0.0):
    target = rng.standard_normal((ny, nx, ne))
    if offset_box is not None:
        y0, y1, x0, x1 = offset_box
        target[y0:y1, x0:x1] += offset
    return target, np.zeros_like(target)


def test_pool_image_tiles_equal_one_pass():
    rng = np.random.default_rng(0)
    target, mean = _gauss_image(rng, offset_box=(5, 9, 6, 10), offset=0.4)
    ny, nx, ne = target.shape

    def gauss(rows, cols):
        return pooling.gaussian_block(target[rows, cols], mean[rows, cols], 1.0)

    kw = dict(pooling=pooling.Pooling(sigma=0.8, background=3.0), noise2=1.0,
              excess=(0.0, math.sqrt(ne / 2)))
    whole = pooling.pool_image(gauss, ny, nx, tile=10_000, **kw)
    tiled = pooling.pool_image(gauss, ny, nx, tile=7, **kw)
    for k in ("score", "nb_nll", "own", "scale"):
        np.testing.assert_allclose(tiled[k], whole[k], rtol=1e-12, atol=1e-9)


def test_pooling_off_is_the_own_gaussian_nll():
    rng = np.random.default_rng(1)
    target, mean = _gauss_image(rng)
    sig = 1.3
    out = pooling.pool_image(lambda r, c: pooling.gaussian_block(target[r, c], mean[r, c], sig),
                             *target.shape[:2], pooling=pooling.Pooling(sigma=0.0), noise2=1.0,
                             excess=None)
    own = np.sum(0.5 * (target / sig) ** 2 + math.log(sig) + 0.5 * math.log(2 * math.pi), -1)
    np.testing.assert_allclose(out["score"], own, rtol=1e-12)
    assert np.all(out["scale"] == 0)


def test_pooled_statistic_has_the_own_null():
    """Pure unit-Gaussian noise: the neighbourhood statistic, rescaled to the pixel's own sigma,
    is N(0, 1) per channel (with and without the background term), so its NLL has the null
    distribution of the pixel's own NLL and the maximum of the two is fair."""
    rng = np.random.default_rng(2)
    ne, n = 20, 48
    dev = torch.as_tensor(rng.standard_normal((n, n, ne)))
    for back in (0.0, 6.0):
        g = pooling.neighbourhood_kernel(0.8)
        gb = pooling.neighbourhood_kernel(back) if back else None
        mats = [pooling._pool_matrix(0, n, 0, n, n, k) if k is not None else None
                for k in (g, g, gb, gb)]
        stat = pooling._Stat(*mats, "cpu", torch.float64)
        [((z2sum,), _)] = pooling._neighbourhood_z2(
            lambda c0, c1: (dev[..., c0:c1].permute(0, 2, 1).contiguous(), None, None), ne,
            (n, n), stat,
            [([None], (torch.ones(ne, dtype=torch.float64), torch.zeros(ne, dtype=torch.float64)),
              None)], None)
        z2 = z2sum / ne
        assert abs(float(z2.mean()) - 1.0) < 0.05, back


def test_a_shared_weak_offset_adds_up_in_the_pooled_score():
    """A weak offset shared by a 4 x 4 cluster barely moves each pixel's own NLL but clearly
    its pooled score."""
    rng = np.random.default_rng(3)
    ne = 40
    target, mean = _gauss_image(rng, ny=40, nx=40, ne=ne, offset_box=(10, 14, 20, 24),
                                offset=0.5)
    out = pooling.pool_image(lambda r, c: pooling.gaussian_block(target[r, c], mean[r, c], 1.0),
                             40, 40, pooling=pooling.Pooling(), noise2=1.0,
                             excess=(0.0, math.sqrt(ne / 2)))
    truth = np.zeros((40, 40), bool)
    truth[10:14, 20:24] = True
    own, pooled = roc_auc(out["own"], truth), roc_auc(out["score"], truth)
    # measured over seeds 0-3: own 0.65-0.79, pooled 0.94-0.99
    assert own < 0.85 and pooled > 0.9 and pooled > own + 0.15


@pytest.mark.slow
def test_every_detector_and_the_perfect_bulk_reference_pool_through_one_function(sim03,
                                                                                  monkeypatch):
    """Pooled PCA, pooled RX, the pooled perfect-bulk reference and the 3D-CVAE all call
    eelsanom.pooling.pool_region: one implementation, one set of parameters."""
    from eelsanom.bench import perfect_bulk_pooled

    calls: list[tuple[float, float, float]] = []
    real = pooling.pool_region

    def spy(*args, **kw):
        p = kw["pooling"]
        calls.append((p.sigma, p.background, p.spill))
        return real(*args, **kw)

    monkeypatch.setattr(pooling, "pool_region", spy)
    si, mask = sim03.si, sim03.bulk_mask
    seen = {}
    for name, make in (("pca", lambda: get_detector("pca", pooling=0.8, device="cpu")),
                       ("rx", lambda: get_detector("rx", pooling=0.8)),
                       ("cvae", lambda: get_detector("cvae", epochs=1, width=4, latent_dim=2,
                                                     device="cpu"))):
        det = make().fit(si, mask)
        calls.clear()
        det.score(si)
        seen[name] = set(calls)
    calls.clear()
    perfect_bulk_pooled(sim03)
    seen["perfect-bulk"] = set(calls)
    default = pooling.Pooling()
    for name, settings in seen.items():
        assert settings == {(default.sigma, default.background, default.spill)}, name


def test_pooled_pca_and_rx_beat_their_per_pixel_scores_on_weak_clusters(sim03):
    si, mask, truth = sim03.si, sim03.bulk_mask, sim03.truth
    for method in ("pca", "rx"):
        det = get_detector(method, **({"device": "cpu"} if method == "pca" else {}))
        det.fit(si, mask)
        plain = det.score(si).nll
        pooled = det.set_params(pooling=0.8).score(si).nll
        assert average_precision(pooled, truth) > average_precision(plain, truth) + 0.2, method
    # measured: PCA 0.076 -> 0.677 AP, RX 0.078 -> 0.397 (seed 0)
    assert average_precision(pooled, truth) > 0.3


def test_pooled_pca_scores_by_block_equal_the_whole_image(sim03):
    det = get_detector("pca", pooling=0.8, device="cpu").fit(sim03.si, sim03.bulk_mask)
    whole = det.score(sim03.si).nll
    assert det.score_context == pooling.Pooling().radius() == 20
    block, _, _ = det.score_block(sim03.si, (30, 45, 10, 33))
    # float32 pooling: the block's and the image's matrix products round differently (each
    # chunk's channel sums in float32: a few float32 epsilons of the NLL)
    np.testing.assert_allclose(block, whole[30:45, 10:33], rtol=5e-7)


def test_pooled_pixel_spectrum_splits_the_winning_nll_over_channels(sim03):
    det = get_detector("rx", pooling=0.8).fit(sim03.si, sim03.bulk_mask)
    res = det.score(sim03.si)
    px = res.pixel(40, 20)
    # rtol: the pixel is scored on its own context, in float32 (rounds unlike the whole image)
    np.testing.assert_allclose(px.channel_nll.sum(), res.maps["neighbourhood_nll"][40, 20],
                               rtol=1e-7)


@pytest.mark.parametrize("bad", [-0.5, 9.0, float("nan"), "wide", True])
def test_pooling_parameter_is_validated(bad, sim03):
    with pytest.raises(InputError, match="pooling: expected the neighbourhood sigma"):
        get_detector("pca", pooling=bad, device="cpu").fit(sim03.si, sim03.bulk_mask)


@pytest.mark.slow
def test_pooling_is_saved_and_old_neighbourhood_model_files_load(tmp_path, sim03):
    import h5py

    det = get_detector("cvae", epochs=1, width=4, latent_dim=2, device="cpu", pooling=0.5)
    det.fit(sim03.si, sim03.bulk_mask)
    path = det.save(tmp_path / "m.h5")
    assert load_detector(path).pooling == 0.5
    # a model file written before the rename stores the parameter as "neighbourhood"
    import json

    with h5py.File(path, "r+") as f:
        params = json.loads(f.attrs["params"])
        params["neighbourhood"] = params.pop("pooling")
        f.attrs["params"] = json.dumps(params)
    old = load_detector(path)
    assert old.pooling == 0.5
    np.testing.assert_allclose(old.score(sim03.si).nll, det.score(sim03.si).nll, rtol=1e-6)


def test_pool_region_accepts_float32_on_the_device():
    t = torch.zeros((5, 6, 6), dtype=torch.float32)
    out = pooling.pool_region(t + 0.1, t, t + 1.0, None, out_box=(0, 6, 0, 6),
                              src_box=(0, 6, 0, 6), image_shape=(6, 6),
                              pooling=pooling.Pooling(), noise2=1.0, excess=None)
    # the maps are accumulated and returned in float64 (issue 24)
    assert out["score"].dtype == torch.float64 and out["score"].shape == (6, 6)


@pytest.mark.slow
def test_cli_pooling_and_context_options_reach_the_detector(tmp_path):
    """--pooling reaches every detector (saved in the summary); --context the 3D-CVAE."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from eelsanom.cli import _detector_params, build_parser

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "sample_fe-l_shift1.5.hspy"
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "eelsanom", "detect", str(sample), "--method",
                        "pca", "--pooling", "0.8", "--train-mask", "file", "--out", str(out),
                        "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads(next(out.glob("*_summary.json")).read_text())
    assert summary["params"]["pooling"] == 0.8
    args = build_parser().parse_args(["detect", "x.hspy", "--method", "cvae", "--context",
                                      "blind-spot", "--pooling", "0", "--out", "o"])
    params = _detector_params(args)
    assert params["context"] == "blind-spot" and params["pooling"] == 0.0
    bad = subprocess.run([sys.executable, "-m", "eelsanom", "detect", str(sample), "--method",
                          "rx", "--pooling", "-1", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "pooling: expected the neighbourhood sigma" in bad.stderr


def test_importing_the_numpy_detectors_does_not_import_torch():
    # PCA / RX take pooling_from / excess_stats from eelsanom.pooling; torch stays lazy there
    code = ("import sys, eelsanom.detectors.pca, eelsanom.detectors.rx, eelsanom.pooling; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
