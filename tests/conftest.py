"""Shared pytest fixtures.

Real EELS files written by acquisition software live outside the project, in
``../shared/data/real`` next to the repository (see PROVENANCE.md there), or in
the folder named by the ``EELSANOM_REAL_DATA`` environment variable. Tests that
need them skip with the reason where the folder is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REAL_DATA_ENV = "EELSANOM_REAL_DATA"


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
