"""Tests of the 3D-CVAE detector (eelsanom.detectors.cvae3d, eelsanom.nn)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eelsanom import scoring  # noqa: E402
from eelsanom.detectors import get_detector, load_detector  # noqa: E402
from eelsanom.detectors.cvae3d import CVAE3DDetector  # noqa: E402
from eelsanom.errors import Cancelled, EnergyAxisMismatch, InputError, NotFittedError  # noqa: E402
from eelsanom.nn.losses import gaussian_nll, kl_standard_normal, sigma_from_raw  # noqa: E402
from eelsanom.nn.model import CVAE3D  # noqa: E402
from eelsanom.spectrum import Axis, SpectrumImage  # noqa: E402

# a tiny, fast configuration for tests about shapes and plumbing
TINY = dict(latent_dim=3, width=4, spatial_layers=1, patch_size=8, epochs=3, patience=50,
            device="cpu", seed=0)


def _expected(ny: int, nx: int, ne: int = 40, *, dose: float = 200.0) -> np.ndarray:
    """Noise-free counts: a power-law-like background and a peak, smooth thickness field."""
    e = np.arange(ne, dtype=np.float64)
    spec = 60.0 * np.exp(-e / 30.0) + 120.0 * np.exp(-0.5 * ((e - ne / 2) / 1.5) ** 2)
    yy, xx = np.mgrid[0:ny, 0:nx]
    thick = 1.0 + 0.1 * np.sin(yy / 5.0) * np.cos(xx / 7.0)
    return (dose / 200.0) * thick[..., None] * spec


def _si(ny: int, nx: int, ne: int = 40, seed: int = 0, **kw) -> SpectrumImage:
    rng = np.random.default_rng(seed)
    data = rng.poisson(_expected(ny, nx, ne, **kw)).astype(np.float32)
    return SpectrumImage(data=data, energy=Axis(ne, 0.3, 700.0, "eV", "Energy loss"))


@pytest.fixture(scope="module")
def fitted() -> tuple[CVAE3DDetector, SpectrumImage]:
    si = _si(20, 18)
    det = CVAE3DDetector(**TINY).fit(si)
    return det, si


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [
    (13, 7),   # odd sizes
    (1, 30),   # a line scan, 1 pixel high
    (5, 6),    # smaller than a training patch (8) in both directions
])
def test_output_shapes_any_image_size(shape):
    si = _si(*shape)
    det = CVAE3DDetector(**TINY).fit(si)
    res = det.score(si)
    assert res.nll.shape == shape
    assert res.latent.shape == (*shape, TINY["latent_dim"])
    for name in ("recon_nll", "kl", "elbo", "neighbourhood_nll"):
        assert res.maps[name].shape == shape
    assert np.isfinite(res.nll).all()
    mean, sigma = det.reconstruct(si)
    assert mean.shape == sigma.shape == si.shape
    assert (sigma > 0).all()


def test_fit_with_bulk_mask_and_line_scan_mask():
    si = _si(1, 40)
    mask = np.zeros(40, bool)
    mask[:25] = True  # a line scan's (n,) mask is accepted
    res = CVAE3DDetector(**TINY).fit(si, mask).score(si)
    assert res.nll.shape == (1, 40)


def test_lazy_dask_input_scores_like_numpy(fitted):
    da = pytest.importorskip("dask.array")
    det, si = fitted
    lazy = SpectrumImage(data=da.from_array(si.data, chunks=(7, 9, 40)), energy=si.energy)
    np.testing.assert_allclose(det.score(lazy).nll, det.score(si).nll, rtol=1e-6)


@pytest.mark.slow
def test_energy_range_models_the_window_only():
    si = _si(10, 10, ne=60)
    det = CVAE3DDetector(**dict(TINY, energy_range=(703.0, 712.0))).fit(si)
    res = det.score(si)
    assert res.energy.size == det.model_.n_energy == 31
    assert res.energy.offset == pytest.approx(703.0)


# ----------------------------------------------------------------------------- seams
@pytest.mark.slow
def test_constant_image_gives_flat_nll():
    """Every pixel has the same noise-free spectrum: no border or tile artefacts."""
    exp = np.broadcast_to(_expected(1, 1)[0, 0], (15, 17, 40)).astype(np.float32)
    si = SpectrumImage(data=np.ascontiguousarray(exp), energy=Axis(40, 0.3, 700.0, "eV"))
    det = CVAE3DDetector(**TINY, tile_size=4).fit(si)
    nll = det.score(si).nll
    assert np.ptp(nll) <= 1e-4 * abs(np.mean(nll))


@pytest.mark.parametrize("tile", [3, 5, 8])
def test_tiled_scoring_equals_whole_image(fitted, tile):
    det, si = fitted
    whole = det.set_params(tile_size=None).score(si)
    tiled = det.set_params(tile_size=tile).score(si)
    det.set_params(tile_size=None)
    np.testing.assert_allclose(tiled.nll, whole.nll, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(tiled.latent, whole.latent, rtol=1e-4, atol=1e-5)


def test_pixel_matches_full_score(fitted):
    det, si = fitted
    res = det.score(si)
    iy, ix = 0, 11  # a border pixel: its context is replicate-padded
    px = res.pixel(iy, ix)
    assert px.channel_nll.shape == (si.n_energy,)
    np.testing.assert_allclose(px.channel_nll.sum(), res.maps["neighbourhood_nll"][iy, ix],
                               rtol=1e-5)
    mean, sigma = det.reconstruct(si)
    np.testing.assert_allclose(px.mean, mean[iy, ix], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(px.sigma, sigma[iy, ix], rtol=1e-4, atol=1e-3)
    lo, hi = px.top_window(2.0)
    assert lo <= hi


def test_pooling_zero_is_the_per_pixel_nll(fitted):
    det, si = fitted
    old = det.pooling
    res = det.set_params(pooling=0.0).score(si)
    det.set_params(pooling=old)
    np.testing.assert_allclose(res.maps["neighbourhood_nll"], res.maps["recon_nll"], rtol=1e-6)


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip(fitted, tmp_path):
    det, si = fitted
    res = det.score(si)
    path = det.save(tmp_path / "m.h5")
    det2 = load_detector(path)
    assert isinstance(det2, CVAE3DDetector)
    assert det2.get_params() == det.get_params()
    res2 = det2.score(si)
    np.testing.assert_array_equal(res2.nll, res.nll)
    np.testing.assert_array_equal(res2.latent, res.latent)
    assert det2.n_parameters == det.n_parameters
    assert det2.history_["best_epoch"] == det.history_["best_epoch"]


def test_other_energy_axis_is_refused(fitted):
    det, si = fitted
    other = SpectrumImage(data=si.data, energy=Axis(si.n_energy, 0.25, 700.0, "eV"))
    with pytest.raises(EnergyAxisMismatch):
        det.score(other)
    shifted = SpectrumImage(data=si.data, energy=Axis(si.n_energy, 0.3, 700.15, "eV"))
    with pytest.raises(EnergyAxisMismatch):
        det.score(shifted)


def test_score_before_fit_is_refused():
    with pytest.raises(NotFittedError):
        CVAE3DDetector(**TINY).score(_si(4, 4))


# ----------------------------------------------------------------------------- training
def test_progress_events_carry_epoch_loss_and_val_nll():
    si = _si(24, 24)
    events = []
    CVAE3DDetector(**TINY).fit(si, progress=events.append)
    train = [e for e in events if e.stage == "train"]
    assert [e.step for e in train] == [1, 2, 3]
    assert all(e.total == TINY["epochs"] for e in train)
    assert all(np.isfinite(e.metrics["loss"]) and "val_nll" in e.metrics for e in train)
    assert np.isfinite(train[-1].metrics["val_nll"])  # 576 pixels: a validation split exists


@pytest.mark.slow
def test_cancel_writes_checkpoint_and_fit_resumes(tmp_path):
    si = _si(16, 16)
    ck = tmp_path / "train.ckpt"
    params = dict(TINY, epochs=6, checkpoint=str(ck))

    def stop_at_3(ev):
        return not (ev.stage == "train" and ev.step >= 3)

    det = CVAE3DDetector(**params)
    with pytest.raises(Cancelled):
        det.fit(si, progress=stop_at_3)
    assert ck.is_file()
    saved = torch.load(ck, weights_only=True)
    assert saved["epoch"] == 3 and not saved["finished"]
    steps = []
    det.fit(si, progress=lambda ev: steps.append(ev.step) if ev.stage == "train" else None)
    assert det.history_["resumed_from"] == 3
    assert steps == [4, 5, 6]
    assert det.history_["epochs_run"] == 6 and len(det.history_["loss"]) == 6
    # an uninterrupted run from scratch reaches the same weights
    ref = CVAE3DDetector(**dict(params, checkpoint=None)).fit(si)
    np.testing.assert_allclose(det.score(si).nll, ref.score(si).nll, rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_for_other_data_is_ignored(tmp_path, caplog):
    ck = tmp_path / "c.ckpt"
    CVAE3DDetector(**dict(TINY, checkpoint=str(ck))).fit(_si(12, 12, seed=1))
    det = CVAE3DDetector(**dict(TINY, checkpoint=str(ck)))
    with caplog.at_level("WARNING"):
        det.fit(_si(12, 12, seed=2))
    assert det.history_["resumed_from"] == 0
    assert "other data or parameters" in caplog.text


@pytest.mark.slow
def test_cpu_runs_are_reproducible():
    si = _si(16, 14)
    a = CVAE3DDetector(**TINY).fit(si).score(si)
    b = CVAE3DDetector(**TINY).fit(si).score(si)
    np.testing.assert_array_equal(a.nll, b.nll)
    np.testing.assert_array_equal(a.latent, b.latent)


def test_parameter_count_is_small():
    det = get_detector("cvae")
    assert 1_000 < det.n_parameters < 3_000_000  # unfitted: for a 1334-channel window
    m = CVAE3D(267, 8, 16, 3, 2)
    assert m.halo == 2 and m.n_parameters < 1_000_000


@pytest.mark.parametrize("params", [
    {"latent_dim": 0},             # no latent space
    {"latent_dim": 2.5},           # not an integer
    {"epochs": 0},
    {"lr": 0.0},
    {"lr": "fast"},
    {"beta": -1.0},
    {"beta_nll": 2.0},
    {"sigma_floor": 0.0},          # no floor: variance collapse
    {"robust_fraction": 0.7},
    {"val_fraction": 0.9},
    {"pooling": -1.0},
    {"scoring": "mse"},
    {"transform": "log"},
    {"device": "tpu"},
    {"amp": "yes"},
    {"batch_size": 0},
    {"tile_size": -4},
    {"patch_size": True},          # a bool is not a size
    {"energy_range": (760.0, 680.0)},
    {"threshold": "median"},
])
def test_bad_params_are_refused(params):
    with pytest.raises(InputError):
        CVAE3DDetector(**dict(TINY, **params)).fit(_si(6, 6))


@pytest.mark.slow
def test_robust_training_without_mask_flags_planted_pixels():
    si = _si(24, 24, seed=3)
    data = si.data.copy()
    truth = np.zeros((24, 24), bool)
    truth[10:13, 5:8] = True
    data[truth, 18:22] *= 1.8  # a strong local change of the peak
    si2 = SpectrumImage(data=data, energy=si.energy)
    res = CVAE3DDetector(**dict(TINY, epochs=5)).fit(si2).score(si2)
    assert scoring.roc_auc(res.nll, truth) > 0.95


# ----------------------------------------------------------------------------- quality
@pytest.mark.slow
def test_quality_floor_on_simulated_clusters():
    sim_mod = pytest.importorskip("eelsanom.simulate")
    sim = sim_mod.simulate(shape=(32, 32), window="fe-l", anomaly="shift", magnitude=2.4,
                           anomaly_shape="clusters", concentration=0.05, dose=200, seed=0)
    det = CVAE3DDetector(device="cpu", epochs=4, seed=0).fit(sim.si, sim.bulk_mask)
    res = det.score(sim.si)
    assert scoring.roc_auc(res.nll, sim.truth) >= 0.95
    assert res.latent.shape == (32, 32, 8)


# ----------------------------------------------------------------------------- losses
def test_losses_match_their_formulas():
    x, m, s = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0]), torch.tensor([2.0, 0.5])
    ref = torch.distributions.Normal(m, s).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, m, s), -ref)
    mu, lv = torch.tensor([0.3, -1.0]), torch.tensor([0.2, -0.5])
    q = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(kl_standard_normal(mu, lv), torch.distributions.kl_divergence(q, p))
    assert float(sigma_from_raw(torch.tensor(-1e4), 0.5, 2.0)) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_scores_agree_with_float32_on_gpu():
    si = _si(40, 40, ne=300)
    det = CVAE3DDetector(**dict(TINY, device="cuda", amp=True, width=8)).fit(si)
    amp = det.score(si).nll
    f32 = det.set_params(amp=False).score(si).nll
    cpu = det.set_params(device="cpu").score(si).nll
    np.testing.assert_allclose(f32, cpu, rtol=1e-4)
    # bf16 activations: the NLL moves by far less than its spread across pixels
    assert np.max(np.abs(amp - f32)) < 0.05 * np.std(f32) + 1e-3 * np.abs(f32).max()
    assert scoring.roc_auc(amp, f32 > np.median(f32)) > 0.97
