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
    torch = pytest.importorskip("torch")
    from eelsanom import pooling
    from eelsanom.nn.device import torch_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    device.reserve_gui_core()
    before = torch.get_num_threads()
    seen = []
    rng = np.random.default_rng(0)
    target = rng.standard_normal((12, 12, 5))

    def gauss(rows, cols):
        seen.append(torch.get_num_threads())
        return pooling.gaussian_block(target[rows, cols], 0 * target[rows, cols], 1.0)

    pooling.pool_image(gauss, 12, 12, pooling=pooling.Pooling(), noise2=1.0, excess=None)
    assert seen and set(seen) == {2}
    with torch_threads(torch.device("cpu")):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
