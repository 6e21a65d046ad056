"""Shared pytest fixtures.

Real EELS files written by acquisition software live outside the project, in
``../shared/data/real`` next to the repository (see PROVENANCE.md there), or in
the folder named by the ``EELSANOM_REAL_DATA`` environment variable. Tests that
need them skip with the reason where the folder is absent.

Parallel runs (pytest-xdist, ``-n 2 --dist loadfile`` in the README's test command): the tests
of one file run on one worker, so a module-scoped fixture trains once; and each worker is
given its share of the CPUs as thread count (``OMP_NUM_THREADS`` and friends) before torch is
imported, so the library's thread count (``eelsanom.device.cpu_threads``) and the CLI
subprocesses and notebook kernels a test starts use that share instead of all cores twice over.
(``--dist loadgroup`` does not group with pytest 9: xdist 3.8 renames ``item._nodeid``, which
pytest 9 no longer reads.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REAL_DATA_ENV = "EELSANOM_REAL_DATA"


def _pin_xdist_worker() -> None:
    """Give each of n xdist workers 1/n of this process's CPUs as its thread count (OpenMP,
    MKL, OpenBLAS, torch), so n workers do not each start one thread per core.

    The workers are not bound to cores (no affinity): a GUI test's event loop and its
    training thread must be free to run on any core, or its responsiveness checks (a cancel
    within 1 s, no stalled event-loop turn) measure the sharing instead of the code.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    threads = str(max(1, ncpu // count))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = threads
    if "torch" in sys.modules:  # imported already (by a plugin): set its pool too
        sys.modules["torch"].set_num_threads(int(threads))


_pin_xdist_worker()


def real_data_path() -> Path:
    """Where the real EELS files are expected (they may be absent)."""
    env = os.environ.get(REAL_DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).parents[1] / ".." / "shared" / "data" / "real").resolve()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder of real EELS files; skips the test when it is absent."""
    d = real_data_path()
    if not d.is_dir():
        pytest.skip(f"real EELS data folder not found at {d} (set {REAL_DATA_ENV} to the folder "
                    "holding EELS_SI.dm4 etc.; see PROVENANCE.md)")
    return d


@pytest.fixture(scope="session")
def real_file(real_data_dir: Path) -> Callable[[str], Path]:
    """``real_file("EELS_SI.dm4")`` -> path of that real file; skips when it is missing."""

    def get(name: str) -> Path:
        p = real_data_dir / name
        if not p.exists():
            pytest.skip(f"real EELS file {name} not found in {real_data_dir}")
        return p

    return get
