"""Fixtures of the napari plugin tests (see _gui.py for when they skip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "sample_fe-l_shift1.5.hspy"


@pytest.fixture(scope="session")
def sample_file() -> Path:
    """The bundled sample spectrum image."""
    if not SAMPLE.is_file():
        pytest.skip(f"sample file missing: {SAMPLE}")
    return SAMPLE


@pytest.fixture
def notifications():
    """Every napari notification shown during the test, as a list of (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def keep(event):
        n = getattr(event, "value", event)
        seen.append((str(n.severity).lower(), str(n.message)))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Files the reader must refuse with a notification: one spectrum, a 2-D image, a damaged
    file."""
    import hyperspy.api as hs

    d = tmp_path_factory.mktemp("bad_eels")
    spec = hs.signals.Signal1D(np.linspace(1.0, 2.0, 100).astype(np.float32))
    ax = spec.axes_manager.signal_axes[0]
    ax.units, ax.scale, ax.offset = "eV", 0.5, 400.0
    spec.save(d / "single_spectrum.hspy")
    hs.signals.Signal2D(np.ones((16, 16), np.float32)).save(d / "image2d.hspy")
    raw = SAMPLE.read_bytes() if SAMPLE.is_file() else b"\x89HDF\r\n\x1a\n" + b"\0" * 4096
    (d / "truncated.hspy").write_bytes(raw[: len(raw) // 3])
    (d / "garbage.dm4").write_bytes(b"this is not a Gatan file" * 40)
    return {"single spectrum": d / "single_spectrum.hspy", "2-D image": d / "image2d.hspy",
            "truncated": d / "truncated.hspy", "garbage": d / "garbage.dm4"}
