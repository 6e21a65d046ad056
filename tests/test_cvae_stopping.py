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
    # the kept weights are those of the lowest check (improvements within min_delta or the
    # held-out noise do not count) or of a later check no worse than it beyond that noise
    by_step = dict((int(k), c) for k, c in h["checks"])
    assert h["best_val"] == by_step[h["best_step"]] and h["lowest_val"] == by_step[h["lowest_step"]]
    assert h["lowest_val"] <= min(crits) + TrainConfig().min_delta * abs(h["lowest_val"])
    assert h["best_step"] >= h["lowest_step"] > 0
    assert h["best_val"] <= h["lowest_val"] + h.get("kept_within", 0.0)
    assert (h["best_step"] == h["lowest_step"]) == ("kept_within" not in h)
    if h["stopped_early"]:
        assert _waited_within_the_rule({**h, "best_step": h["lowest_step"]})
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


def _held(means, n=25):
    """Held-out values of validation blocks of ``n`` pixels with these per-block means."""
    values = np.repeat(np.asarray(means, np.float64), n)
    return train._Held(values, np.full(len(means), n, np.int64), np.ones(values.size, bool))


def _se(a, b):
    return train._held_se(_held(a), _held(b))


def test_paired_se_is_the_block_standard_error_of_the_difference():
    ref = [100.0, 110.0, 90.0, 100.0]
    # the same per-pixel shift in every block: a difference the held-out pixels measure exactly
    assert _se([99.0, 109.0, 89.0, 99.0], ref) == pytest.approx(0.0, abs=1e-12)
    # block differences +-1 around their mean: the standard error of the mean of 4 such blocks
    d = np.array([1.0, -1.0, 1.0, -1.0])
    assert _se([101.0, 109.0, 91.0, 99.0], ref) == pytest.approx(
        float(np.std(d, ddof=1) / np.sqrt(4)))
    # unequal blocks, noisy pixels: the ratio estimator's cluster standard error, by brute force
    rng = np.random.default_rng(0)
    n = rng.integers(5, 40, size=12)
    a, b = rng.normal(100, 3, n.sum()), rng.normal(100, 3, n.sum())
    tot = np.add.reduceat(a - b, np.r_[0, np.cumsum(n)[:-1]])
    resid = tot - n * tot.sum() / n.sum()
    want = np.sqrt(np.sum(resid ** 2) * 12 / 11) / n.sum()
    assert train.paired_se(a, b, n) == pytest.approx(float(want))
    # trimmed pixels (a robust criterion's) are left out of both sides: a wild pixel that
    # either check trimmed adds no noise
    wild = b.copy()
    wild[3] += 1e4
    keep = np.ones(a.size, bool)
    keep[3] = False
    assert train.paired_se(a, wild, n) > 10 * want
    k3 = keep.copy()
    sub = np.add.reduceat(np.where(k3, a - b, 0.0), np.r_[0, np.cumsum(n)[:-1]])
    m = np.add.reduceat(k3.astype(float), np.r_[0, np.cumsum(n)[:-1]])
    want3 = np.sqrt(np.sum((sub - m * sub.sum() / m.sum()) ** 2) * 12 / 11) / m.sum()
    assert train.paired_se(a, wild, n, keep) == pytest.approx(float(want3))
    # nothing to compare: no noise estimate
    assert train.paired_se(a, b[:-1], n) == 0.0 and train.paired_se(a[:5], b[:5], [5]) == 0.0
    assert train._held_se(None, _held(ref)) == 0.0


def _scripted_fit(sim, monkeypatch, script, **params):
    """Fit with the held-out criterion (and its blocks) scripted: ``script[0]`` is the
    initialisation's, then one per check (the last repeated); record each check's weights."""
    monkeypatch.setattr(train.TrainConfig, "floor_gap", None)
    states = []
    real_validate = train._validate

    def fake_validate(model, data, scaler, cfg, *, held=None, **kw):
        real_validate(model, data, scaler, cfg, **kw)  # the real pass (and progress events)
        means = script[min(len(states), len(script) - 1)]
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if held is not None:
            held.append(_held(means))
        return float(np.mean(means))

    monkeypatch.setattr(train, "_validate", fake_validate)
    det = get_detector("cvae", epochs=40, width=4, latent_dim=2, device="cpu", seed=0, **params)
    det.fit(sim.si, sim.bulk_mask)
    return det, states


# best 90 at check 1: check 2 is within half a standard error of it (0.1 worse, block noise
# +-0.8, so SE 0.46), check 3 is not (2 worse in every block), and ends the plateau: check 4,
# within the noise again, comes after a run that wandered off and is not kept
TIE = [90.9, 89.3, 90.9, 89.3]
SCRIPT = [[100.0] * 4, [90.0] * 4, TIE, [92.0] * 4, TIE, [95.0] * 4]


def test_the_latest_check_within_the_noise_of_the_best_is_kept(sim, monkeypatch):
    det, states = _scripted_fit(sim, monkeypatch, SCRIPT)
    h = det.history_
    steps = [s for s, _ in h["checks"]]
    # the patience runs from the best (check 1): the floor after it; the weights kept are those
    # of check 2, as good as the best within the held-out noise (not those of check 4, after
    # the plateau ended), so the time after them is the time spent after the checkpoint kept
    assert h["lowest_step"] == steps[0] and h["best_step"] == steps[1]
    assert h["best_val"] == pytest.approx(90.1) and h["lowest_val"] == pytest.approx(90.0)
    assert 0.1 < h["kept_within"] == pytest.approx(0.5 * _se(SCRIPT[2], SCRIPT[1]))
    assert not h["init_won"] and h["stopped_early"]
    assert _waited_within_the_rule({**h, "best_step": h["lowest_step"]})
    for k, v in det.model_.state_dict().items():  # states[0] is the initialisation's
        assert np.array_equal(v.numpy(), states[2][k].numpy()), k
    assert 0.0 < h["after_best_fraction"] < 1.0


def test_a_fixed_patience_keeps_the_lowest_check(sim, monkeypatch):
    # a number given as patience keeps the rule as before: the lowest check is kept
    det, states = _scripted_fit(sim, monkeypatch, SCRIPT, patience=1)
    h = det.history_
    steps = [s for s, _ in h["checks"]]
    assert h["best_step"] == h["lowest_step"] == steps[0] and "kept_within" not in h
    for k, v in det.model_.state_dict().items():
        assert np.array_equal(v.numpy(), states[1][k].numpy()), k


def test_an_unbeaten_start_keeps_the_latest_check_within_its_noise(sim, monkeypatch):
    # never better than the start: stops at the floor; the last check of the plateau within the
    # noise of the start is kept (not the start, not the checks clearly worse, not one within
    # the noise after the plateau ended)
    tie = [100.9, 99.3, 100.9, 99.3]
    script = [[100.0] * 4, tie, [100.8, 99.4, 100.8, 99.4], [103.0] * 4, tie, [104.0] * 4]
    det, states = _scripted_fit(sim, monkeypatch, script)
    h = det.history_
    steps = [s for s, _ in h["checks"]]
    assert h["lowest_step"] == 0 and h["best_step"] == steps[1] and not h["init_won"]
    floor = max(2 * h["val_every"], math.ceil(h["steps_per_epoch"] / 2), 6)
    assert floor <= h["steps_run"] < floor + h["val_every"]
    for k, v in det.model_.state_dict().items():
        assert np.array_equal(v.numpy(), states[2][k].numpy()), k
    # the user is told training did not beat the start, and which step was kept instead
    notes = training_notes(det)
    assert any("no training step beat" in n and f"step {h['best_step']}" in n for n in notes)
    assert not any("best epoch 0" in n for n in notes)


def test_the_bench_table_names_the_lowest_check_when_a_later_one_is_kept():
    from eelsanom.bench.report import _training_table

    rec = {"condition": "c", "detector": "cvae+pool", "init_val": 10.0, "best_val": 8.1,
           "best_epoch": 5, "init_won": False, "best_step": 15, "lowest_step": 12,
           "steps_run": 18, "init_floor_gap": 0.3, "at_noise_floor": False, "train_s": 2.0,
           "after_best_fraction": 0.1, "after_best_fit_fraction": 0.08}
    row = _training_table([rec])[2]
    assert "| 15 (5) of 18, lowest 12 |" in row and "| 10 / 8 |" in row
    same = _training_table([{**rec, "lowest_step": 15}])[2]
    assert "| 15 (5) of 18 |" in same and "lowest" not in same


def test_a_resumed_run_keeps_the_same_check_as_one_never_cancelled(tmp_path, monkeypatch):
    # the plateau's weights so far, the best check's held-out values and the plateau itself
    # travel in the checkpoint: the best is step 7, steps 8-12 stay within its noise; cancelled
    # in epoch 6 (the checkpoint holds step 10) and resumed, training ends on the same check
    # and the same weights as a run never cancelled
    from eelsanom.errors import Cancelled

    monkeypatch.setattr(train.TrainConfig, "floor_gap", None)
    rng = np.random.default_rng(0)  # a smooth thickness field (test_nn_progress's image)
    e = np.arange(32, dtype=np.float64)
    yy, xx = np.mgrid[0:24, 0:24]
    thick = 1.0 + 0.3 * np.sin(yy / 3.0)[..., None] + 0.2 * np.cos(xx / 4.0)[..., None]
    lam = 200.0 * thick * (np.exp(-e / 20.0) + 0.5 * np.exp(-0.5 * ((e - 18) / 2.0) ** 2))
    si = SpectrumImage(data=rng.poisson(lam).astype(np.float32),
                       energy=Axis(32, 0.3, 700.0, "eV", "Energy loss"))
    params = dict(latent_dim=3, width=4, spatial_layers=1, patch_size=8, epochs=6,
                  device="cpu", seed=2)
    ref = get_detector("cvae", **params).fit(si)
    h = ref.history_
    assert (h["lowest_step"], h["best_step"], h["steps_run"]) == (7, 12, 12)
    ck = tmp_path / "train.ckpt"
    n_train = [0]

    def cancel_in_epoch_6(ev):
        n_train[0] += ev.stage == "train"
        return not (n_train[0] == 5 and ev.stage == "batch" and ev.step == 2)

    det = get_detector("cvae", **params, checkpoint=str(ck))
    with pytest.raises(Cancelled):
        det.fit(si, progress=cancel_in_epoch_6)
    det.fit(si)
    r = det.history_
    assert r["resumed_from"] == 5
    assert (r["lowest_step"], r["best_step"], r["steps_run"]) == (7, 12, 12)
    np.testing.assert_allclose(det.score(si).nll, ref.score(si).nll, rtol=1e-5)
