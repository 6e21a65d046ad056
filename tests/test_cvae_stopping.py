"""3D-CVAE training stops when it stops learning (issue 24): patience in optimiser steps that
grows with the steps up to the best epoch, a time cap, and the share of time after the best."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from eelsanom.detectors import get_detector
from eelsanom.detectors.cvae3d import AUTO_PATIENCE
from eelsanom.nn.train import TrainConfig, patience_steps
from eelsanom.simulate import simulate


def test_patience_rule_in_steps():
    cfg = TrainConfig(patience=8)
    # an early best epoch: two epochs' worth of steps
    assert patience_steps(cfg, {"steps_per_epoch": 5, "best_epoch": 1}) == 10
    # a late one: a third of the steps up to it (12 epochs of 5 steps -> 20 steps)
    assert patience_steps(cfg, {"steps_per_epoch": 5, "best_epoch": 12}) == 20
    # never more than `patience` epochs
    assert patience_steps(cfg, {"steps_per_epoch": 5, "best_epoch": 300}) == 40
    # an explicit floor in steps
    assert patience_steps(TrainConfig(patience=8, patience_steps=33),
                          {"steps_per_epoch": 5, "best_epoch": 0}) == 33
    # a fixed patience (a number given to the detector): that many epochs, whatever the best
    fixed = TrainConfig(patience=8, patience_fraction=0.0)
    assert patience_steps(fixed, {"steps_per_epoch": 5, "best_epoch": 1}) == 40


def test_the_detector_default_is_auto_and_a_number_is_fixed():
    assert get_detector("cvae").patience == "auto"
    with pytest.raises(Exception, match="patience"):
        get_detector("cvae", patience="soon", device="cpu")._validate_params()


@pytest.fixture(scope="module")
def sim():
    return simulate(shape=(24, 24), seed=0)


def test_training_records_the_time_after_its_best_epoch(sim):
    det = get_detector("cvae", epochs=12, width=4, latent_dim=2, device="cpu")
    det.fit(sim.si, sim.bulk_mask)
    h = det.history_
    assert 0.0 <= h["after_best_fraction"] <= 1.0
    assert h["train_seconds"] >= h["best_seconds"] >= 0.0
    # it stopped no later than the rule allows after its best epoch
    if h["stopped_early"]:
        waited = (h["epochs_run"] - h["best_epoch"]) * h["steps_per_epoch"]
        assert waited == pytest.approx(
            patience_steps(TrainConfig(patience=AUTO_PATIENCE), h), abs=h["steps_per_epoch"])
    assert "after_best_fraction" in det._history_summary(h)


def test_max_time_stops_training_and_keeps_the_best(sim):
    det = get_detector("cvae", epochs=50, width=4, latent_dim=2, device="cpu", max_time=1e-3)
    det.fit(sim.si, sim.bulk_mask)
    h = det.history_
    assert h["stopped_by_time"] and h["epochs_run"] == 1
    assert det.score(sim.si).nll.shape == (24, 24)


@pytest.mark.parametrize("bad", [0, -1.0, "soon"])
def test_max_time_is_validated(sim, bad):
    from eelsanom.errors import InputError

    with pytest.raises(InputError, match="max_time"):
        get_detector("cvae", max_time=bad, device="cpu").fit(sim.si, sim.bulk_mask)
