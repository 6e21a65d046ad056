"""Where the real EELS files live for tests (../shared/data/real, or $EELSANOM_REAL_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL = Path(os.environ.get("EELSANOM_REAL_DATA",
                           Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"))

need_real = pytest.mark.skipif(
    not (REAL / "PROVENANCE.md").exists(),
    reason=f"real EELS files not found at {REAL} (they live in ../shared/data/real beside the "
           "checkout; set EELSANOM_REAL_DATA to point elsewhere)")
