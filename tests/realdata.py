"""A skip marker for tests that need the real EELS files (see conftest.real_data_path)."""

from __future__ import annotations

import pytest

from tests.conftest import REAL_DATA_ENV, real_data_path

REAL = real_data_path()

need_real = pytest.mark.skipif(
    not (REAL / "PROVENANCE.md").exists(),
    reason=f"real EELS files not found at {REAL} (they live in ../shared/data/real beside the "
           f"checkout; set {REAL_DATA_ENV} to point elsewhere)")
