"""Skip helpers for the napari plugin tests.

The plugin tests need napari, magicgui and a Qt binding; the viewer tests also
need a real display (napari cannot draw image layers offscreen). Where these
are missing the tests skip with the reason, so the plain suite still passes on
a headless machine; CI runs them under Xvfb (``xvfb-run -a`` with
``QT_QPA_PLATFORM=xcb``).
"""

from __future__ import annotations

import pytest


def require_napari() -> None:
    """Skip the calling module unless napari, magicgui and a Qt binding import."""
    pytest.importorskip("napari", reason="napari is not installed (pip install 'eelsanom[napari]')")
    pytest.importorskip("magicgui", reason="magicgui is not installed")
    try:
        import qtpy.QtCore  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - qtpy raises its own error types
        pytest.skip(f"no Qt binding for napari ({exc})", allow_module_level=True)


def require_display() -> None:
    """Skip the calling module unless napari can open a window (a display, or Xvfb)."""
    require_napari()
    from eelsanom_napari._launch import display_problem

    problem = display_problem()
    if problem:
        pytest.skip(f"no display for napari: run under `xvfb-run -a` with QT_QPA_PLATFORM=xcb "
                    f"({problem})", allow_module_level=True)
