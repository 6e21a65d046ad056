"""The 3D-CVAE's blind-spot context mode (``CVAE3DDetector(context="blind-spot")``).

Each pixel is predicted from its neighbours' codes with the pixel itself masked;
under a smooth energy drift larger than a local chemical shift that separates
the two, where a per-pixel model cannot.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eelsanom import scoring  # noqa: E402
from eelsanom.detectors import load_detector  # noqa: E402
from eelsanom.detectors.cvae3d import CVAE3DDetector  # noqa: E402
from eelsanom.errors import InputError  # noqa: E402
from eelsanom.nn.model import CVAE3D  # noqa: E402
from eelsanom.simulate import simulate  # noqa: E402
from eelsanom.stream import score_streaming  # noqa: E402

CTX = dict(context="blind-spot", context_radius=2, latent_dim=4, width=4, patch_size=8,
           epochs=2, patience=50, device="cpu", seed=0)


@pytest.fixture(scope="module")
def sim():
    return simulate(shape=(16, 21), magnitude=2.4, concentration=0.05, drift=0.8, seed=2)


@pytest.fixture(scope="module")
def fitted(sim):
    return CVAE3DDetector(**CTX).fit(sim.si, sim.bulk_mask)


def test_prediction_never_sees_the_centre_pixel():
    """Changing a pixel changes its neighbours' predictions, never its own."""
    torch.manual_seed(0)
    model = CVAE3D(30, latent_dim=3, width=4, levels=1, spatial_layers=0, context_radius=2)
    with torch.no_grad():  # non-zero learned paths, so every part of the model is exercised
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 1, 30, 9, 9)
    y = x.clone()
    y[:, :, :, 4, 4] += 5.0  # the centre of the 5 x 5 output block
    a, b = model.context_forward(x), model.context_forward(y)
    for ta, tb in zip(a[:3], b[:3]):  # mean, raw, extra: (1, E, 5, 5)
        np.testing.assert_allclose(ta[..., 2, 2].detach(), tb[..., 2, 2].detach(), rtol=1e-5,
                                   atol=1e-6)
        assert not torch.allclose(ta[..., 2, 3], tb[..., 2, 3])  # a neighbour's does change
    assert model.halo == 2 and model.arch()["context_radius"] == 2
    with pytest.raises(ValueError, match="spatial_layers"):
        CVAE3D(30, spatial_layers=1, context_radius=2)


def test_untrained_model_predicts_from_the_median_of_the_neighbours_codes():
    """Epoch 0 is the median-of-PPCA-codes predictor: the learned correction starts at 0."""
    torch.manual_seed(1)
    model = CVAE3D(12, latent_dim=2, width=4, levels=1, spatial_layers=0, context_radius=1)
    x = torch.randn(1, 1, 12, 3, 3)
    mean, _, extra, _, _ = model.context_forward(x)
    mu_all, _ = model.codes(x)
    ring = mu_all[0].reshape(2, 9)[:, [0, 1, 2, 3, 5, 6, 7, 8]]
    med = ring.median(dim=1).values
    expect, _ = model.decode(med.reshape(1, 2, 1, 1))
    np.testing.assert_allclose(mean.detach(), expect.detach(), rtol=1e-5, atol=1e-6)
    assert (extra >= 0).all()


@pytest.mark.slow
def test_floor_under_drift_that_the_per_pixel_cvae_does_not_reach():
    """0.9 eV shifts under a 0.8 eV drift field, 32 x 32, seed 0.

    Measured: blind-spot pooled ROC-AUC 0.999 (epochs=2); the per-pixel 3D-CVAE
    (default mode, epochs=2) 0.846 on the same image (0.97 at seed 1, 0.97 at
    seed 2), so the floor 0.98 is out of the per-pixel model's reach here.
    """
    s = simulate(shape=(32, 32), magnitude=0.9, drift=0.8, concentration=0.05, seed=0)
    det = CVAE3DDetector(context="blind-spot", device="cpu", epochs=2, seed=0, width=8)
    res = det.fit(s.si, s.bulk_mask).score(s.si)
    assert scoring.roc_auc(res.nll, s.truth) >= 0.98
    h = det.history_
    assert np.isfinite(h["init_val"]) and h["best_val"] <= h["init_val"]


@pytest.mark.parametrize("tile", [pytest.param(5, marks=pytest.mark.slow), 11])
def test_tiled_scoring_equals_whole_image(sim, fitted, tile):
    whole = fitted.set_params(tile_size=None).score(sim.si)
    tiled = fitted.set_params(tile_size=tile).score(sim.si)
    fitted.set_params(tile_size=None)
    np.testing.assert_allclose(tiled.nll, whole.nll, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(tiled.latent, whole.latent, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_streamed_equals_eager(sim, fitted):
    from dataclasses import replace

    da = pytest.importorskip("dask.array")
    assert fitted.score_context == 2 + fitted._pooling().radius()
    eager = fitted.score(sim.si)
    lazy = replace(sim.si, data=da.from_array(np.asarray(sim.si.data), chunks=(4, 5, -1)))
    res = score_streaming(fitted, lazy, chunk_pixels=120)
    assert res.info["streaming"]["blocks"] > 1
    scale = np.abs(eager.nll).max()
    np.testing.assert_allclose(res.nll, eager.nll, rtol=0, atol=1e-6 * scale)


def test_score_is_the_nll_under_the_neighbourhood_prediction(sim, fitted):
    """No KL term in the score: pooling 0 gives exactly the pixel's own NLL."""
    res = fitted.set_params(pooling=0.0).score(sim.si)
    fitted.set_params(pooling=CVAE3DDetector().pooling)
    np.testing.assert_allclose(res.nll, res.maps["recon_nll"], rtol=1e-6)


def test_save_load_round_trip(sim, fitted, tmp_path):
    res = fitted.score(sim.si)
    det2 = load_detector(fitted.save(tmp_path / "ctx.h5"))
    assert det2.get_params() == fitted.get_params()
    assert det2.model_.context_radius == 2
    np.testing.assert_array_equal(det2.score(sim.si).nll, res.nll)


@pytest.mark.parametrize("params", [
    {"context": "ring"},
    {"context": "blind-spot", "context_radius": 0},
    {"context": "blind-spot", "context_radius": 2.5},
    {"context": "blind-spot", "nested_prefixes": "all"},
])
def test_bad_context_params_are_refused(sim, params):
    with pytest.raises(InputError, match="context|nested"):
        CVAE3DDetector(**{**CTX, **params}).fit(sim.si, sim.bulk_mask)
