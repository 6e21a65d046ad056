"""Multi-core (issue 24): CPU work uses the process's cores, one left to a GUI, OMP_NUM_THREADS wins."""

from __future__ import annotations

import os

import numpy as np
import pytest

from eelsanom import device


@pytest.fixture
def no_gui():
    device.reserve_gui_core(False)  # a GUI test earlier in this process may have reserved one
    yield
    device.reserve_gui_core(False)


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_cpu_threads_counts_cores_and_leaves_one_to_a_gui(monkeypatch, no_gui):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device.cpu_threads() == _cores()
    device.reserve_gui_core()
    assert device.cpu_threads() == max(1, _cores() - 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.cpu_threads() == 2
    device.reserve_gui_core(False)
    assert device.cpu_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    device.reserve_gui_core()
    assert device.cpu_threads() == 1


def test_pooling_and_training_run_on_cpu_threads(monkeypatch, no_gui):
    """Pooling: tiles on ``cpu_threads()`` worker threads, each tile's products on one
    torch thread (threads meeting at every small product stall on a busy host), the same
    scores as one worker; training: ``cpu_threads()`` torch threads."""
    import threading

    torch = pytest.importorskip("torch")
    from eelsanom import pooling
    from eelsanom.nn.device import torch_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    device.reserve_gui_core()
    before = torch.get_num_threads()
    seen = []
    rng = np.random.default_rng(0)
    target = rng.standard_normal((24, 24, 5))
    target[5:9, 3:7] += 0.8

    def gauss(rows, cols):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return pooling.gaussian_block(target[rows, cols], 0 * target[rows, cols], 1.0)

    kw = dict(pooling=pooling.Pooling(background=3.0), noise2=1.0, excess=(0.0, 1.0), tile=6)
    two = pooling.pool_image(gauss, 24, 24, **kw)
    assert len(seen) == 16 and {n for _, n in seen} == {1}
    assert 1 <= len({t for t, _ in seen}) <= 2 and threading.get_ident() not in {t for t, _ in seen}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen.clear()
    one = pooling.pool_image(gauss, 24, 24, **kw)
    assert {t for t, _ in seen} == {threading.get_ident()}
    for k in one:
        np.testing.assert_array_equal(two[k], one[k], err_msg=k)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with torch_threads(torch.device("cpu")):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_default_and_pooled_pca_score_alike_on_tile_threads(monkeypatch, no_gui):
    """The default's one-pass evidence and PCA's pooled path build each tile's deviations in
    a buffer per thread (reused tile after tile): many tiles on worker threads score as on
    one thread, exactly."""
    from eelsanom import pooling
    from eelsanom.detectors import get_detector
    from eelsanom.simulate import simulate

    monkeypatch.setattr(pooling, "TILE_VALUES", 1 << 17)  # a few dozen tiles
    sim = simulate(shape=(40, 44), window="fe-l", magnitude=0.9, concentration=0.03, seed=4)
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        out[threads] = [get_detector(m, seed=0, **kw).fit(sim.si).score(sim.si).nll
                        for m, kw in (("bulk-context", {}), ("pca", {"pooling": 0.8}))]
    for one, many in zip(out["1"], out["3"]):
        np.testing.assert_array_equal(one, many)
