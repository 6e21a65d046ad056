"""Skip helpers for the napari plugin tests.

The plugin tests need napari, magicgui and a Qt binding; the viewer tests also
need a real display (napari cannot draw image layers offscreen). Where these
are missing the tests skip with the reason, so the plain suite still passes on
a headless machine; CI runs them under Xvfb (``xvfb-run -a`` with
``QT_QPA_PLATFORM=xcb``).
"""

from __future__ import annotations

import importlib

import pytest


def require_napari() -> None:
    """Skip the calling module unless napari, magicgui and a Qt binding import."""
    for module in ("napari", "magicgui", "qtpy.QtCore"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - missing, broken, or no Qt binding (qtpy)
            pytest.skip(f"{module} cannot be imported ({type(exc).__name__}: {exc}); install "
                        "the GUI extra: pip install 'eelsanom[napari]'", allow_module_level=True)


def require_display() -> None:
    """Skip the calling module unless napari can open a window (a display, or Xvfb)."""
    require_napari()
    from eelsanom_napari._launch import display_problem

    problem = display_problem()
    if problem:
        pytest.skip(f"no display for napari: run under `xvfb-run -a` with QT_QPA_PLATFORM=xcb "
                    f"({problem})", allow_module_level=True)
