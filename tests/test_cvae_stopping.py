"""3D-CVAE training stops when it stops learning (issue 24): validation checks within epochs,
patience in optimiser steps (a short floor while the PPCA warm start is unbeaten, a third of the
steps up to the best check after it), a time cap, and the share of time after the best."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")

from eelsanom.cautions import training_notes
from eelsanom.detectors import get_detector
from eelsanom.detectors.cvae3d import AUTO_PATIENCE
from eelsanom.nn import train
from eelsanom.nn.train import TrainConfig, _check_steps, noise_floor_gap, patience_steps
from eelsanom.simulate import simulate
from eelsanom.spectrum import Axis, SpectrumImage


def test_patience_rule_in_steps():
    cfg = TrainConfig(patience=8)
    h = {"steps_per_epoch": 5, "val_every": 1}
    # the warm start still best: the floor only (6 steps, two check intervals, half an epoch)
    assert patience_steps(cfg, {**h, "best_step": 0}) == 6
    assert patience_steps(cfg, {**h, "val_every": 4, "best_step": 0}) == 8
    assert patience_steps(cfg, {"steps_per_epoch": 30, "val_every": 1, "best_step": 0}) == 15
    # an early best check: the floor
    assert patience_steps(cfg, {**h, "best_step": 5}) == 6
    # a late one: a third of the steps up to it (60 steps -> 20)
    assert patience_steps(cfg, {**h, "best_step": 60}) == 20
    # never more than `patience` epochs
    assert patience_steps(cfg, {**h, "best_step": 1500}) == 40
    # an explicit floor in steps
    assert patience_steps(TrainConfig(patience=8, patience_steps=33), {**h, "best_step": 0}) == 33
    # a fixed patience (a number given to the detector): that many epochs, whatever the best
    fixed = TrainConfig(patience=8, patience_fraction=0.0)
    assert patience_steps(fixed, {**h, "best_step": 5}) == 40
    # histories written before checks within epochs (best_epoch only) read as before
    assert patience_steps(cfg, {"steps_per_epoch": 5, "best_epoch": 12}) == 20


def test_check_steps_fall_every_n_steps_of_the_run_and_end_each_epoch():
    assert _check_steps(0, 5, 1) == [1, 2, 3, 4, 5]
    assert _check_steps(0, 5, 2) == [2, 4, 5]
    assert _check_steps(1, 5, 2) == [1, 3, 5]  # steps 6, 8, 10 of the run
    assert _check_steps(0, 5, 5) == [5]


def test_the_detector_default_is_auto_and_a_number_is_fixed():
    assert get_detector("cvae").patience == "auto"
    with pytest.raises(Exception, match="patience"):
        get_detector("cvae", patience="soon", device="cpu")._validate_params()


@pytest.fixture(scope="module")
def sim():
    return simulate(shape=(24, 24), seed=0)


def _waited_within_the_rule(h):
    """Steps run after the best check: the patience, plus less than one check interval."""
    waited = h["steps_run"] - h["best_step"]
    allowed = patience_steps(TrainConfig(patience=AUTO_PATIENCE), h)
    return allowed <= waited < allowed + h["val_every"]


def test_the_noise_floor_gap_of_a_perfect_model_is_zero():
    rng = np.random.default_rng(0)
    noise, ne = 1.3, 200
    r = rng.normal(0.0, noise, size=(20000, ne))
    # the mean Gaussian NLL per pixel of a model whose residual is the noise itself
    nll = float(np.mean(np.sum(0.5 * np.log(2 * np.pi * noise ** 2) + 0.5 * (r / noise) ** 2, 1)))
    assert noise_floor_gap(nll, ne, noise) == pytest.approx(0.0, abs=2e-3)
    assert noise_floor_gap(nll + 10 * ne, ne, noise) == pytest.approx(10.0, abs=2e-3)
    assert np.isnan(noise_floor_gap(float("nan"), ne, noise))


def test_a_warm_start_at_the_noise_floor_skips_training(sim):
    # the simulator's bulk is a linear manifold under counting noise: the PPCA start explains
    # held-out bulk to the noise level, and training is not started
    det = get_detector("cvae", epochs=40, width=4, latent_dim=2, device="cpu", seed=0)
    det.fit(sim.si, sim.bulk_mask)
    h = det.history_
    assert h["at_noise_floor"] and h["init_won"] and h["best_step"] == 0
    assert h["init_floor_gap"] <= TrainConfig().floor_gap
    assert h["epochs_run"] == 0 and h.get("steps_run", 0) == 0
    assert h["after_best_fraction"] == 0.0 and h["after_best_fit_fraction"] == 0.0
    assert any("training skipped" in n for n in training_notes(det))
    # a fixed patience asks for training: it is never skipped
    fixed = get_detector("cvae", epochs=1, width=4, latent_dim=2, device="cpu", seed=0,
                         patience=3).fit(sim.si, sim.bulk_mask)
    assert not fixed.history_.get("at_noise_floor") and fixed.history_["steps_run"] > 0


def test_an_unbeaten_warm_start_stops_within_the_floor(sim, monkeypatch):
    # the same start with the noise-floor skip turned off: training runs, does not beat the
    # start, and stops after the floor (not after epochs of waiting)
    monkeypatch.setattr(train.TrainConfig, "floor_gap", None)
    det = get_detector("cvae", epochs=40, width=4, latent_dim=2, device="cpu", seed=0)
    det.fit(sim.si, sim.bulk_mask)
    h = det.history_
    assert h["init_won"] and h["best_step"] == 0 and h["stopped_early"]
    floor = max(2 * h["val_every"], math.ceil(h["steps_per_epoch"] / 2), 6)
    assert floor <= h["steps_run"] < floor + h["val_every"]
    assert h["steps_run"] <= 2 * floor < 40 * h["steps_per_epoch"]
    assert 0.0 < h["after_best_fraction"] <= 1.0
    assert 0.0 < h["after_best_fit_fraction"] < h["after_best_fraction"]
    assert h["train_seconds"] >= h["best_seconds"] >= 0.0
    for k in ("after_best_fraction", "best_step", "steps_run", "fit_seconds"):
        assert k in det._history_summary(h)


def _nonlinear(ny=24, nx=24, ne=48, seed=0):
    """A peak whose position moves across the image: one nonlinear degree of freedom that one
    principal component cannot follow, so training beats the PPCA start."""
    rng = np.random.default_rng(seed)
    e = np.arange(ne, dtype=np.float64)
    pos = 10.0 + 28.0 * (np.arange(nx) / (nx - 1))[None, :] + 0.0 * np.arange(ny)[:, None]
    lam = 30.0 + 400.0 * np.exp(-0.5 * ((e - pos[..., None]) / 2.0) ** 2)
    return SpectrumImage(data=rng.poisson(lam).astype(np.float32),
                         energy=Axis(ne, 1.0, 700.0, "eV", "Energy loss"))


def test_training_that_improves_keeps_its_best_check():
    si = _nonlinear()
    det = get_detector("cvae", epochs=12, width=4, latent_dim=1, device="cpu", seed=0)
    det.fit(si, np.ones(si.nav_shape, bool))
    h = det.history_
    crits = [c for _, c in h["checks"]]
    assert not h["init_won"] and h["best_step"] > 0 and h["best_val"] < h["init_val"]
    # the kept weights are the best check's (a check better by less than min_delta is not
    # counted as better)
    best = dict((int(k), c) for k, c in h["checks"])[h["best_step"]]
    assert h["best_val"] == best
    assert best <= min(crits) + TrainConfig().min_delta * abs(best)
    if h["stopped_early"]:
        assert _waited_within_the_rule(h)
    else:
        assert h["steps_run"] == 12 * h["steps_per_epoch"]
    assert 0.0 <= h["after_best_fraction"] < 1.0


def test_max_time_stops_training_and_keeps_the_best():
    si = _nonlinear()
    det = get_detector("cvae", epochs=50, width=4, latent_dim=1, device="cpu", max_time=1e-3)
    det.fit(si, np.ones(si.nav_shape, bool))
    h = det.history_
    # the clock is read after every step: one step, its check, and stop
    assert h["stopped_by_time"] and h["steps_run"] == 1 and h["epochs_run"] == 1
    assert [s for s, _ in h["checks"]] == [1]
    assert det.score(si).nll.shape == (24, 24)


@pytest.mark.parametrize("bad", [0, -1.0, "soon"])
def test_max_time_is_validated(sim, bad):
    from eelsanom.errors import InputError

    with pytest.raises(InputError, match="max_time"):
        get_detector("cvae", max_time=bad, device="cpu").fit(sim.si, sim.bulk_mask)


def test_the_bench_reports_the_training_record(sim):
    from eelsanom.bench.report import _training_table
    from eelsanom.bench.runner import _training_record

    det = get_detector("cvae", epochs=40, width=4, latent_dim=2, device="cpu", seed=0)
    det.fit(sim.si, sim.bulk_mask)
    rec = _training_record(det)
    assert rec["at_noise_floor"] and rec["steps_run"] == 0 and rec["after_best_fraction"] == 0.0
    assert rec["init_floor_gap"] <= TrainConfig().floor_gap
    learnt = {**rec, "at_noise_floor": False, "init_won": False, "best_step": 30, "steps_run": 40,
              "best_epoch": 10, "best_val": rec["init_val"] - 2.0, "train_s": 8.0,
              "after_best_fraction": 0.2, "after_best_fit_fraction": 0.15}
    rows = [{"condition": "c", "detector": "cvae+pool", **rec},
            {"condition": "c", "detector": "cvae-ctx+pool", **learnt}]
    table = _training_table(rows)
    assert len(table) == 4
    assert "training skipped: at the noise floor" in table[2] and "| 0 / 0 |" in table[2]
    assert "| blind-spot |" in table[3] and "30 (10) of 40" in table[3] and "| 20 / 15 |" in table[3]
