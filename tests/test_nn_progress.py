"""Progress within an epoch and prompt cancellation of the 3D-CVAE (eelsanom.nn.train,
eelsanom.nn.infer): batch events, cancel at any batch, resume after a mid-epoch cancel."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eelsanom.detectors.cvae3d import CVAE3DDetector  # noqa: E402
from eelsanom.errors import Cancelled  # noqa: E402
from eelsanom.spectrum import Axis, SpectrumImage  # noqa: E402

TINY = dict(latent_dim=3, width=4, spatial_layers=1, patch_size=8, epochs=3, patience=50,
            device="cpu", seed=0)


def _si(ny: int, nx: int, ne: int = 32, seed: int = 0) -> SpectrumImage:
    rng = np.random.default_rng(seed)
    e = np.arange(ne, dtype=np.float64)
    yy, xx = np.mgrid[0:ny, 0:nx]
    thick = 1.0 + 0.3 * np.sin(yy / 3.0)[..., None] + 0.2 * np.cos(xx / 4.0)[..., None]
    lam = 200.0 * thick * (np.exp(-e / 20.0) + 0.5 * np.exp(-0.5 * ((e - 18) / 2.0) ** 2))
    return SpectrumImage(data=rng.poisson(lam).astype(np.float32),
                         energy=Axis(ne, 0.3, 700.0, "eV", "Energy loss"))


def _epochs(events):
    """Split the event list at the "train" events: the events of each epoch, in order."""
    out, cur = [], []
    for ev in events:
        cur.append(ev)
        if ev.stage == "train":
            out.append(cur)
            cur = []
    return out, cur


def test_batch_events_count_steps_and_validation_checks_within_each_epoch():
    from eelsanom.nn.train import _check_steps

    events = []
    det = CVAE3DDetector(**TINY).fit(_si(24, 24), progress=events.append)
    steps, every = det.history_["steps_per_epoch"], det.history_["val_every"]
    assert 1 <= every <= steps
    # the initialisation's validation pass comes first, as phase="validation" batch events
    n_init = next(i for i, ev in enumerate(events) if "loss" in ev.metrics)
    assert n_init >= 1 and all(ev.stage == "batch" and ev.metrics["phase"] == "validation"
                               for ev in events[:n_init])
    epochs, tail = _epochs(events[n_init:])
    assert [ep[-1].step for ep in epochs] == [1, 2, 3] and tail == []
    for e, ep in enumerate(epochs):
        batches = ep[:-1]
        assert all(ev.stage == "batch" for ev in batches)
        n = batches[0].total
        assert [ev.step for ev in batches] == list(range(1, n + 1))
        assert all(ev.total == n for ev in batches)
        train = [ev for ev in batches if "loss" in ev.metrics]
        assert len(train) == steps and all(np.isfinite(ev.metrics["loss"]) for ev in train)
        # a full validation pass (as many blocks as the initialisation's) after each check step
        checks = _check_steps(e, steps, every)
        assert checks[-1] == steps and n == steps + len(checks) * n_init
        kinds = ["v" if ev.metrics.get("phase") == "validation" else "s" for ev in batches]
        expect = []
        for k in range(1, steps + 1):
            expect += ["s"] + (["v"] * n_init if k in checks else [])
        assert kinds == expect


def test_cancel_at_first_batch_of_epoch_1_stops_before_the_epoch_ends():
    events = []

    def cancel_first_step(ev):
        events.append(ev)
        return not (ev.stage == "batch" and "loss" in ev.metrics)

    det = CVAE3DDetector(**dict(TINY, epochs=4))
    with pytest.raises(Cancelled):
        det.fit(_si(24, 24), progress=cancel_first_step)
    # nothing after the cancelling event: no further step, no validation, no epoch
    assert "loss" in events[-1].metrics and events[-1].step == 1
    assert [ev for ev in events if ev.stage == "train"] == []
    assert sum("loss" in ev.metrics for ev in events) == 1


def test_cancel_during_the_validation_pass_stops_before_the_epoch_is_reported():
    events = []
    seen_step = []

    def cancel_in_validation(ev):
        events.append(ev)
        if "loss" in ev.metrics:
            seen_step.append(ev)
        return not (seen_step and ev.metrics.get("phase") == "validation")

    with pytest.raises(Cancelled):
        CVAE3DDetector(**TINY).fit(_si(24, 24), progress=cancel_in_validation)
    assert events[-1].metrics.get("phase") == "validation"
    assert [ev for ev in events if ev.stage == "train"] == []


@pytest.mark.slow
def test_mid_epoch_cancel_resumes_from_the_last_finished_epoch(tmp_path):
    si = _si(16, 16)
    ck = tmp_path / "train.ckpt"
    params = dict(TINY, epochs=4, checkpoint=str(ck))
    n_train = [0]

    def cancel_in_epoch_3(ev):
        n_train[0] += ev.stage == "train"
        return not (n_train[0] == 2 and ev.stage == "batch" and ev.step == 2)

    det = CVAE3DDetector(**params)
    with pytest.raises(Cancelled):
        det.fit(si, progress=cancel_in_epoch_3)
    saved = torch.load(ck, weights_only=True)
    assert saved["epoch"] == 2 and not saved["finished"]
    det.fit(si)
    assert det.history_["resumed_from"] == 2 and det.history_["epochs_run"] == 4
    # the interrupted epoch is repeated exactly: the same weights as a run never cancelled
    ref = CVAE3DDetector(**dict(params, checkpoint=None)).fit(si)
    np.testing.assert_allclose(det.score(si).nll, ref.score(si).nll, rtol=1e-5)


def test_scoring_reports_each_tile_and_cancels_at_the_first():
    si = _si(20, 20)
    det = CVAE3DDetector(**dict(TINY, epochs=1, tile_size=8)).fit(si)
    events = []
    det.score(si, progress=events.append)
    tiles = [ev for ev in events if ev.stage == "score"]
    assert [ev.step for ev in tiles] == list(range(1, 10)) and tiles[0].total == 9
    calls = []

    def stop(ev):
        calls.append(ev)
        return False

    with pytest.raises(Cancelled):
        det.score(si, progress=stop)
    assert len(calls) == 1
