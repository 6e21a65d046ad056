"""The workstation on a laptop and a desktop screen (issue 23, item 3): the primary actions
pinned outside the scrolling area, every figure the GUI shows with its text inside and its
axes labelled (the check of ``tests/test_figure_text.py``), the NLL colour bar labelled, a
core-loss line scan opened at its edge, and the image given most of a 1920 x 1080 window.

Run with ``xvfb-run -a -s "-screen 0 1920x1200x24" env QT_QPA_PLATFORM=xcb pytest
tests/plugins/test_gui_layout.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from ._gui import require_display

require_display()

from eelsanom_napari._layers import role_of, strongest_edge_channel  # noqa: E402
from eelsanom_napari._session import get_session  # noqa: E402
from eelsanom_napari.layout import dock_all  # noqa: E402

from eelsanom.spectrum import Axis, SpectrumImage  # noqa: E402
from tests.conftest import real_data_path  # noqa: E402
from tests.figtext import text_problems  # noqa: E402

LINESCAN = real_data_path() / "LSMO_linescan.hspy"


def _open(viewer, qtbot, path, size, layout):
    viewer.open(str(path), plugin="eelsanom")
    panels = dock_all(viewer, layout)
    qwin = viewer.window._qt_window
    qwin.resize(*size)
    qtbot.wait(300)
    from eelsanom_napari.layout import size_docks

    size_docks(panels)
    qtbot.wait(300)
    return panels, qwin


def _fully_shown(widget, qwin) -> bool:
    """``widget`` is visible, at its full height, and inside the window."""
    from qtpy.QtCore import QRect

    if not widget.isVisible():
        return False
    top_left = widget.mapTo(qwin, widget.rect().topLeft())
    r = QRect(top_left, widget.size())
    return qwin.rect().contains(r) and widget.height() >= widget.sizeHint().height() - 1


@pytest.mark.parametrize("method", ["context-pca", "cvae", "pca", "rx"])
def test_train_apply_cancel_visible_at_1366x768(make_napari_viewer, qtbot, sample_file, method):
    viewer = make_napari_viewer(show=True)
    panels, qwin = _open(viewer, qtbot, sample_file, (1366, 768), "small")
    det = panels["Detector"]
    det._dock.raise_()
    det._method.value = method
    qtbot.wait(200)
    scroll = det._scroll
    for btn in (det._train_btn, det._apply_btn, det._cancel_btn, det._status):
        w = btn.native
        assert _fully_shown(w, qwin), (method, btn)
        assert not scroll.isAncestorOf(w), "a primary action scrolls out of sight"
    # the body does scroll: the fields that do not fit are below the fold, not the buttons
    assert det._footer.native.isVisible()


def test_progress_bar_is_pinned_and_follows_the_work(make_napari_viewer, qtbot, sample_file):
    viewer = make_napari_viewer(show=True)
    panels, qwin = _open(viewer, qtbot, sample_file, (1366, 768), "small")
    det = panels["Detector"]
    det._dock.raise_()
    det._method.value = "pca"
    det._device.value = "cpu"
    assert not det._progress.native.isVisible()
    det._on_train()
    qtbot.waitUntil(lambda: det._progress.native.isVisible(), timeout=10_000)
    assert not det._scroll.isAncestorOf(det._progress.native)
    qtbot.waitUntil(lambda: not det.busy, timeout=120_000)
    assert not det._progress.native.isVisible()


def _result(viewer, method="pca"):
    from eelsanom.detectors import get_detector

    session = get_session(viewer)
    si = session.spectrum_image()
    mask = si.metadata.get("bulk_mask")
    res = get_detector(method).fit(si, None if mask is None else mask.astype(bool)).score(si)
    return session.set_result(res, session.cube())


@pytest.mark.parametrize("size,layout", [((1366, 768), "small"), ((1920, 1080), "large")])
def test_gui_figures_keep_their_text_inside(make_napari_viewer, qtbot, sample_file, size,
                                            layout):
    viewer = make_napari_viewer(show=True)
    panels, qwin = _open(viewer, qtbot, sample_file, size, layout)
    res = _result(viewer)
    insp, results, latent = (panels["Spectrum inspector"], panels["Results"],
                             panels["Latent space"])
    iy, ix = map(int, np.argwhere(res.mask)[0])
    insp.inspect(iy, ix)
    qtbot.waitUntil(lambda: insp.spectrum is not None, timeout=60_000)
    problems = []
    for name, panel, canvas in (("spectrum", insp, insp._canvas),
                                ("histogram", results, results._hist),
                                ("latent scatter", latent, latent._canvas)):
        panel._dock.raise_()
        qtbot.wait(200)
        assert canvas.height() >= 150, (name, canvas.height())
        problems += text_problems(canvas.figure, where=f"{name} at {size}")
    assert problems == []


def test_line_scan_figures_and_opening_energy(make_napari_viewer, qtbot):
    if not LINESCAN.is_file():
        pytest.skip(f"real line scan missing: {LINESCAN}")
    viewer = make_napari_viewer(show=True)
    panels, qwin = _open(viewer, qtbot, LINESCAN, (1366, 768), "small")
    # opened at the Mn L3 edge (~640 eV), not at 428.5 eV (the first, brightest channel)
    assert 625 <= float(viewer.dims.point[0]) <= 650, viewer.dims.point
    _result(viewer, "context-pca")
    results = panels["Results"]
    results._dock.raise_()
    qtbot.wait(300)
    assert text_problems(results._line.figure, where="line scan at 1366x768") == []


def test_nll_colour_bar_is_labelled(make_napari_viewer, qtbot, sample_file):
    viewer = make_napari_viewer(show=True)
    _open(viewer, qtbot, sample_file, (1366, 768), "small")
    _result(viewer)
    nll = next(ly for ly in viewer.layers if role_of(ly) == "nll")
    assert nll.colorbar.visible
    label = nll._overlays["layer_name"]
    assert label.visible and label.position == nll.colorbar.position
    assert "NLL" in nll.name and "(nats)" in nll.name


def test_image_gets_most_of_a_1920x1080_window(make_napari_viewer, qtbot, sample_file):
    viewer = make_napari_viewer(show=True)
    panels, qwin = _open(viewer, qtbot, sample_file, (1920, 1080), "large")
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.height() >= 0.6 * qwin.height(), (canvas.height(), qwin.height())
    assert panels["Spectrum inspector"]._canvas.height() >= 170


def test_strongest_edge_channel_is_the_edge_not_the_background():
    e = np.arange(400.0, 700.0, 0.5)
    spec = 1e4 * (e / 400.0) ** -3.0  # falling background: brightest at the first channel
    spec = spec + np.where(e > 532.0, 900.0 * np.exp(-(e - 532.0) / 60.0), 0.0)  # an O K edge
    data = np.tile(spec.astype(np.float32), (2, 3, 1))
    si = SpectrumImage(data, Axis(e.size, 0.5, 400.0, "eV"))
    k = strongest_edge_channel(si)
    assert 532.0 <= e[k] <= 545.0
    flat = SpectrumImage(np.tile((1e4 * (e / 400.0) ** -3.0).astype(np.float32), (2, 3, 1)),
                         Axis(e.size, 0.5, 400.0, "eV"))
    assert strongest_edge_channel(flat) == 0  # no edge: the brightest channel



def test_result_messages_tell_cautions_and_disagreement():
    from dataclasses import replace

    from eelsanom_napari.detector import result_messages

    from eelsanom.detectors import get_detector

    rng = np.random.default_rng(0)
    small = SpectrumImage(rng.poisson(50, (1, 12, 60)).astype(np.float32),
                          Axis(60, 1.0, 400.0, "eV"))
    res = get_detector("pca").fit(small).score(small)
    msgs = result_messages(res)
    assert res.info["cautions"] and all(m in msgs for m in res.info["cautions"])  # 12 pixels
    si = SpectrumImage(rng.poisson(50, (1, 40, 60)).astype(np.float32),
                       Axis(60, 1.0, 400.0, "eV"))
    res = get_detector("pca").fit(si).score(si)
    a = replace(res, mask=np.zeros_like(res.mask), method="context-pca")
    a.mask[0, [2, 19, 30, 37]] = True
    b = replace(res, mask=np.zeros_like(res.mask), method="cvae")
    b.mask[0, 14] = True
    notes = [m for m in result_messages(b, a) if "disagree" in m]
    assert len(notes) == 1 and notes[0].startswith("context PCA and 3D-CVAE disagree")
    assert not [m for m in result_messages(a, a) if "disagree" in m]
    other_grid = replace(a, x=Axis(40, 2.0, 0.0, "nm", "x"))
    assert not [m for m in result_messages(b, other_grid) if "disagree" in m]
