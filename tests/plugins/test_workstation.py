"""The second pass of the workstation (issue 13): one source of defaults, no model in the GUI
thread, a responsive event loop while the real 3D-CVAE trains, panels that follow the current
data, line scans, the spectrum tool and a layout that fits a laptop.

Run with ``xvfb-run -a -s "-screen 0 1366x768x24" env QT_QPA_PLATFORM=xcb pytest
tests/plugins/test_workstation.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ._gui import require_display

require_display()

from eelsanom_napari._layers import role_of  # noqa: E402
from eelsanom_napari._session import get_session  # noqa: E402
from eelsanom_napari._widgets import DetectorWidget, dock_all  # noqa: E402

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


# ----------------------------------------------------------------------------- helpers
def open_sample(viewer, path):
    return viewer.open(str(path), plugin="eelsanom")


def fit_result(si, method="pca", mask=None, **params):
    from eelsanom.detectors import get_detector

    return get_detector(method, **params).fit(si, mask).score(si)


def tiny_cvae_result(si, mask):
    """A real 3D-CVAE, trained briefly (the model's cost per pixel is what matters here)."""
    return fit_result(si, "cvae", mask, epochs=2, latent_dim=2, width=4, patch_size=8,
                      spatial_layers=1, batch_size=32, device="cpu")


def count_model_calls(monkeypatch, det):
    """Wrap the detector's per-pixel and whole-image model entry points; returns the list
    of threads each call ran in."""
    import threading

    calls = []
    for name in ("pixel_spectrum", "reconstruct", "_pixel", "_reconstruct"):
        original = getattr(det, name)

        def wrapped(*a, _original=original, **kw):
            calls.append(threading.current_thread())
            return _original(*a, **kw)

        monkeypatch.setattr(det, name, wrapped)
    return calls


# ----------------------------------------------------------------------------- 2. GUI thread
@pytest.mark.skipif(not HAS_CVAE, reason="the 3D-CVAE detector is not in this checkout")
def test_inspector_model_runs_off_the_gui_thread_and_is_cached(viewer, qtbot, sample_file,
                                                               monkeypatch, notifications):
    """With a real 3D-CVAE result: a click computes the pixel's model in a worker thread;
    clicking it again, and moving the threshold slider, never run the model."""
    import threading

    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    session = get_session(viewer)
    si = session.spectrum_image()
    res = tiny_cvae_result(si, si.metadata["bulk_mask"].astype(bool))
    session.set_result(res, session.cube())
    calls = count_model_calls(monkeypatch, res._detector)
    insp, results = panels["Spectrum inspector"], panels["Results"]
    assert insp.inspect(10, 12) is None  # not cached yet: observed now, model later
    assert insp._canvas.observed_line is not None and "computing" in insp._canvas.ax.get_title()
    qtbot.waitUntil(lambda: insp.cached(10, 12) is not None, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: insp.spectrum is not None, timeout=TIMEOUT_MS)
    assert calls and all(t is not threading.main_thread() for t in calls)
    assert insp._canvas.mean_line is not None
    np.testing.assert_allclose(insp._canvas.mean_line.get_ydata(), res.pixel(10, 12).mean,
                               rtol=1e-5)
    n = len(calls) - 1  # res.pixel above ran once in this thread
    # the threshold slider: many ticks, the title follows, the model never runs
    results._method.value = "manual"
    lo, hi = float(np.min(res.nll)), float(np.max(res.nll))
    for t in np.linspace(lo, hi, 12)[1:-1]:
        results._manual.value = float(t)
        assert insp._canvas.ax.get_title().endswith(f"threshold {session.result.threshold:.5g})")
        flagged = bool(session.result.mask[10, 12])
        assert ("ANOMALOUS" in insp._canvas.ax.get_title()) == flagged
    # clicking the same pixel again, and back from a neighbour: from the cache
    insp.inspect(10, 12)
    assert insp.spectrum is not None
    assert len(calls) == n + 1, "the slider or a repeated click ran the model"
    insp.move(0, 1)
    qtbot.waitUntil(lambda: insp.cached(10, 13) is not None, timeout=TIMEOUT_MS)
    insp.move(0, -1)
    assert insp.spectrum is insp.cached(10, 12)
    assert all(t is not threading.main_thread() for t in calls[n + 1:])
    assert not errors(notifications), notifications


# ----------------------------------------------------------------------------- 5. stale state
def test_panels_follow_the_current_data_and_result(viewer, qtbot, sample_file, tmp_path,
                                                   notifications):
    from eelsanom_napari._layers import spectrum_image_layers
    from napari.layers import Layer

    from eelsanom.simulate import simulate

    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    session = get_session(viewer)
    results, insp, export, latent = (panels[k] for k in ("Results", "Spectrum inspector",
                                                        "Export", "Latent space"))
    si = session.spectrum_image()
    session.set_result(fit_result(si, n_components=4, device="cpu"), session.cube())
    # a rule picked on the first dataset...
    results._method.value = "percent"
    results._percent.value = 20.0
    assert session.result.n_flagged == round(0.2 * 4096)
    # ... latent maps of its result...
    worker = latent._on_compute()
    qtbot.waitUntil(lambda: not latent.busy, timeout=TIMEOUT_MS)
    assert worker is not None and latent.map_layers()
    # ... then a second dataset with its own result
    other = simulate(shape=(8, 5), window="fe-l", seed=3).si
    for data, meta, kind in spectrum_image_layers(other, name="second"):
        viewer.add_layer(Layer.create(data, meta, kind))
    assert session.cube().name == "second"
    assert session.threshold is None and results._method.value == "default"
    res2 = session.set_result(fit_result(other, "rx"), session.cube())
    assert res2.threshold_method == session.raw_result.threshold_method  # detector's rule
    assert results._stats.value.startswith(f"{res2.n_flagged} of 40 px")
    assert not latent.map_layers(), "latent maps of the old result stayed"
    # deleting the NLL map: every panel lets go of the result
    insp.inspect(2, 2)
    viewer.layers.remove(by_role(viewer, "nll"))
    assert session.result is None and by_role(viewer, "mask") is None
    assert results._stats.value == "no result yet" and results._hist.counts is None
    assert "no model yet" in insp._canvas.ax.get_title()
    export._folder.value = tmp_path
    assert export._on_export() is None
    assert "nothing to export" in errors(notifications)[-1]
    assert "no result yet" in latent._status.value
