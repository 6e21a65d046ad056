"""The second pass of the workstation (issue 13): one source of defaults, no model in the GUI
thread, a responsive event loop while the real 3D-CVAE trains, panels that follow the current
data, line scans, the spectrum tool and a layout that fits a laptop.

Run with ``xvfb-run -a -s "-screen 0 1366x768x24" env QT_QPA_PLATFORM=xcb pytest
tests/plugins/test_workstation.py``.
"""

from __future__ import annotations

import importlib.util

import pytest

from ._gui import require_display

require_display()

from eelsanom_napari._layers import role_of  # noqa: E402
from eelsanom_napari._widgets import DetectorWidget  # noqa: E402

from eelsanom.detectors import detector_class  # noqa: E402
from eelsanom.detectors.params import GUI_FIELDS, HELP, defaults, detector_params  # noqa: E402

TIMEOUT_MS = 120_000
HAS_CVAE = importlib.util.find_spec("eelsanom.detectors.cvae3d") is not None


def errors(notes):
    return [m for s, m in notes if "error" in s]


def by_role(viewer, role):
    found = [ly for ly in viewer.layers if role_of(ly) == role]
    return found[-1] if found else None


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


# ----------------------------------------------------------------------------- 9. defaults
def test_params_defaults_are_the_classes():
    """Every parameter has help text, and the defaults are those of a default-built detector."""
    for method in HELP:
        cls = detector_class(method)
        got = defaults(method)
        assert got == cls().get_params() | {k: v for k, v in got.items()
                                            if isinstance(v, tuple)}
        for name, p in detector_params(method).items():
            assert not p.help.startswith("(no help"), (method, name)
            if p.kind == "choice":
                assert p.default in p.choices, (method, name)
        assert set(HELP[method]) <= set(got), set(HELP[method]) - set(got)
        assert set(GUI_FIELDS[method]) <= set(got)


def test_gui_defaults_equal_library_defaults(viewer):
    """The Detector panel, untouched, builds each detector exactly as the library's default."""
    det = DetectorWidget(viewer)
    for method in ("cvae", "pca", "rx"):
        det._method.value = method
        m, params = det.detector_params()
        built = DetectorWidget._make_detector(m, params).get_params()
        assert built == detector_class(method)().get_params(), method
        for name in GUI_FIELDS[method]:
            w = det._fields[method][name]
            assert w.tooltip == detector_params(method)[name].help
    assert det._cvae_epochs.value == defaults("cvae")["epochs"]
    assert float(det._cvae_lr.value) == defaults("cvae")["lr"]
