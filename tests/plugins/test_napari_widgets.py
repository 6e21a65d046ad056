"""The eelsanom panels driven end to end in a real napari viewer (needs a display: Xvfb in CI).

Run with ``xvfb-run -a -s "-screen 0 1920x1200x24" env QT_QPA_PLATFORM=xcb pytest tests/plugins``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ._gui import require_display

require_display()

from eelsanom_napari._layers import pixel_to_world, role_of  # noqa: E402
from eelsanom_napari._session import get_session  # noqa: E402
from eelsanom_napari._widgets import DetectorWidget, dock_all  # noqa: E402

from eelsanom.detectors.base import BaseDetector  # noqa: E402
from eelsanom.progress import emit  # noqa: E402

TRAIN_TIMEOUT_MS = 120_000


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def open_sample(viewer, path: Path):
    layers = viewer.open(str(path), plugin="eelsanom")
    assert len(layers) == 4
    return layers


def by_role(viewer, role: str):
    found = [ly for ly in viewer.layers if role_of(ly) == role]
    return found[-1] if found else None


def add_bulk_rectangle(panels, rows=(0, 18), cols=(0, 63)):
    """Through the Bulk panel: a new shapes layer with one rectangle (pixel corners)."""
    layer = panels["Bulk region"]._on_new_rectangle()
    layer.add_rectangles(np.array([[rows[0], cols[0]], [rows[1], cols[1]]], float))
    return layer


def train(qtbot, det, method="pca", **values):
    det._method.value = method
    for name, v in values.items():
        getattr(det, name).value = v
    det._on_train()
    assert det.busy
    qtbot.waitUntil(lambda: not det.busy, timeout=TRAIN_TIMEOUT_MS)


def click(viewer, world_yx):
    """A left click (press + release, no drag) at a world position, through napari's
    mouse-callback machinery."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    pos = (float(viewer.dims.point[0]), *world_yx)
    press = SimpleNamespace(type="mouse_press", position=pos, button=1, modifiers=(),
                            is_dragging=False, handled=False, pos=np.zeros(2))
    mouse_press_callbacks(viewer, ReadOnlyWrapper(press, exceptions=("handled",)))
    release = SimpleNamespace(**{**vars(press), "type": "mouse_release"})
    mouse_release_callbacks(viewer, ReadOnlyWrapper(release, exceptions=("handled",)))


def errors(notes):
    return [m for s, m in notes if "error" in s]


class SlowDetector(BaseDetector):
    """A stand-in detector whose fit takes ``steps * delay`` seconds, reporting each step."""

    method = "slow"
    min_train_pixels = 1

    def __init__(self, *, steps: int = 400, delay: float = 0.01) -> None:
        self.steps = steps
        self.delay = delay

    def _fit(self, si, mask, progress):
        self.started_, self.stopped_ = True, False
        try:
            for i in range(self.steps):
                time.sleep(self.delay)
                emit(progress, "train", i + 1, self.steps, loss=1.0 / (i + 1))
        finally:
            self.stopped_ = True

    def _score(self, si, progress):
        return np.asarray(si.data, float).sum(axis=2), None, {}

    def _reconstruct(self, si):
        m = np.asarray(si.data, np.float32).mean(axis=(0, 1))
        shape = si.data.shape
        return np.broadcast_to(m, shape).copy(), np.ones(shape, np.float32)


# ----------------------------------------------------------------------------- reader in napari
def test_open_sample_through_reader(viewer, sample_file):
    open_sample(viewer, sample_file)
    cube = by_role(viewer, "cube")
    assert cube.data.shape == (267, 64, 64) and cube.data.dtype == np.float32
    np.testing.assert_allclose(cube.scale, (0.3, 0.2, 0.2))
    np.testing.assert_allclose(cube.translate, (680.0, 0.0, 0.0))
    assert viewer.dims.axis_labels[0] == "energy loss (eV)"  # the slider is the energy axis
    assert viewer.dims.ndisplay == 2 and tuple(viewer.dims.displayed) == (1, 2)
    assert 680.0 <= viewer.dims.point[0] <= 759.9
    inten = by_role(viewer, "intensity")
    np.testing.assert_allclose(inten.scale, cube.scale[1:])
    truth = by_role(viewer, "truth")
    assert type(truth).__name__ == "Labels" and truth.data.dtype == np.uint8
    assert int(truth.data.sum()) == 82


def test_manifest_contributions_in_napari(viewer):
    """The sample and the five panels as napari's menus open them (npe2, viewer injected)."""
    from npe2 import PluginManager

    if "eelsanom" not in PluginManager.instance():
        pytest.skip("the eelsanom plugin is not registered (pip install -e '.[dev]')")
    layers = viewer.open_sample("eelsanom", "fe_l_shift")
    assert [ly.name for ly in layers][:2] == ["sample_fe-l_shift1.5",
                                              "sample_fe-l_shift1.5 summed intensity"]
    assert by_role(viewer, "truth").data.sum() == 82
    names = ["1. Bulk region", "2. Detector", "3. Results", "4. Spectrum inspector",
             "5. Export"]
    kinds = []
    for name in names:
        _dock, widget = viewer.window.add_plugin_dock_widget("eelsanom", name)
        kinds.append(type(widget).__name__)
    assert kinds == ["BulkRegionWidget", "DetectorWidget", "ResultsWidget",
                     "SpectrumInspectorWidget", "ExportWidget"]


def test_bad_files_notify_and_add_nothing(viewer, bad_files, notifications):
    for kind, path in bad_files.items():
        n_before = len(viewer.layers)
        viewer.open(str(path), plugin="eelsanom")  # must not raise
        assert len(viewer.layers) == n_before, kind
        assert errors(notifications) and path.name in errors(notifications)[-1], kind


# ----------------------------------------------------------------------------- bulk region
def test_bulk_region_counts(viewer, sample_file):
    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    bulk = panels["Bulk region"]
    # the bulk mask stored in the simulated file is picked up automatically
    assert bulk._region.value.name == "bulk region (from file)"
    assert bulk._count.value.startswith("1216 of 4096 pixels")
    bulk._region.value = "(none: all pixels, robust)"
    assert bulk._count.value == "none selected: all 4096 pixels, trained robustly"
    assert get_session(viewer).bulk_mask()[0] is None
    layer = add_bulk_rectangle(panels, rows=(0, 9), cols=(0, 19))
    assert bulk._region.value is layer
    assert bulk._count.value.startswith("200 of 4096 pixels (4.9 %)")
    layer.add_polygons([np.array([[40.0, 40.0], [40.0, 49.0], [49.0, 49.0], [49.0, 40.0]])])
    assert bulk._count.value.startswith("300 of 4096")  # the count follows the edits
    layer.add_lines(np.array([[30.0, 0.0], [30.0, 63.0]]))
    assert "1 line/path shape(s) ignored" in bulk._count.value
    mask, _ = get_session(viewer).bulk_mask()
    assert mask.shape == (64, 64) and mask[:10, :20].all() and mask.sum() == 300
    painted = bulk._on_new_labels()
    painted.data[5:10, 5:10] = 1
    painted.refresh()
    painted.events.data()
    assert bulk._count.value.startswith("25 of 4096")


# ----------------------------------------------------------------------------- the main workflow
def test_pca_workflow_end_to_end(viewer, qtbot, sample_file, tmp_path, notifications):
    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    det, res_w, insp, exp = (panels[k] for k in ("Detector", "Results", "Spectrum inspector",
                                                 "Export"))
    add_bulk_rectangle(panels)
    assert panels["Bulk region"]._count.value.startswith("1216 of 4096")
    train(qtbot, det, "pca", _pca_components=6, _device="cpu")
    assert not errors(notifications), notifications
    assert det.n_progress_events > 0 and "fitted on 1216 pixels" in det._status.value
    session = get_session(viewer)
    result = session.result
    cube = by_role(viewer, "cube")

    # layers: NLL image and mask labels on the data's spatial calibration
    nll, mask = by_role(viewer, "nll"), by_role(viewer, "mask")
    assert nll.data.shape == (64, 64) and nll.data.dtype == np.float32
    assert mask.data.shape == (64, 64) and mask.data.dtype == np.uint8
    for ly in (nll, mask):
        np.testing.assert_allclose(ly.scale, cube.scale[1:])
        np.testing.assert_allclose(ly.translate, cube.translate[1:])
    assert nll.colormap.name == "magma"
    np.testing.assert_allclose(nll.data, result.nll.astype(np.float32))
    np.testing.assert_array_equal(mask.data.astype(bool), result.mask)
    assert result.evaluate()["roc_auc"] > 0.95  # it finds the planted shifts

    # threshold: the detector's own rule at first, then live, every method; the histogram
    # line follows
    assert res_w._method.value == "default"
    assert session.result.threshold == session.raw_result.threshold
    assert f"({session.raw_result.threshold_method})" in res_w._stats.value
    res_w._method.value = "percent"
    res_w._percent.value = 5.0
    assert int(mask.data.sum()) == round(0.05 * 4096) == session.result.n_flagged
    assert res_w._hist.threshold_line.get_xdata()[0] == pytest.approx(session.result.threshold)
    res_w._method.value = "manual"
    t = float(np.percentile(result.nll, 90))
    res_w._manual.value = t
    np.testing.assert_array_equal(mask.data.astype(bool), session.result.nll > res_w._manual.value)
    assert abs(int(mask.data.sum()) - 410) <= 3
    assert res_w._hist.threshold_line.get_xdata()[0] == pytest.approx(res_w._manual.value)
    res_w._method.value = "gmm"
    assert session.result.threshold_method == "gmm"
    res_w._method.value = "otsu"
    assert session.result.threshold_method == "otsu"
    assert "of 4096 px" in res_w._stats.value

    # inspector: a click on an anomalous pixel plots its spectrum against the model
    iy, ix = map(int, np.argwhere(session.result.mask & session.raw_result._si.ground_truth)[0])
    click(viewer, pixel_to_world(iy, ix, session.raw_result._si))
    assert insp.pixel == (iy, ix)
    # the model's view is computed in a worker thread and drawn when it arrives
    qtbot.waitUntil(lambda: insp.spectrum is not None, timeout=TRAIN_TIMEOUT_MS)
    ps = session.result.pixel(iy, ix)
    canvas = insp._canvas
    np.testing.assert_allclose(canvas.observed_line.get_ydata(), ps.observed)
    np.testing.assert_allclose(canvas.mean_line.get_ydata(), ps.mean)
    np.testing.assert_allclose(canvas.residual_line.get_ydata(), ps.residual)
    np.testing.assert_allclose(canvas.observed_line.get_xdata(), cube.translate[0]
                               + cube.scale[0] * np.arange(267))
    band = canvas.band.get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx((ps.mean - ps.sigma).min(), rel=1e-5)
    assert canvas.energy_window == ps.top_window(5.0)
    assert 705.0 <= canvas.energy_window[0] <= 725.0  # the shifted Fe L3/L2 lines
    assert canvas.ax_res.get_xlabel() == "energy loss (eV)"
    assert "ANOMALOUS" in canvas.ax.get_title()
    marker = by_role(viewer, "marker")
    np.testing.assert_allclose(marker.data[0], pixel_to_world(iy, ix, session.raw_result._si))
    # keyboard: Shift+arrows move the inspected pixel
    move = viewer.keymap[next(k for k in viewer.keymap if "Shift" in str(k) and "Right" in
                              str(k))]
    move(viewer)
    assert insp.pixel == (iy, min(ix + 1, 63))
    # a click outside the image does nothing
    click(viewer, (-50.0, -50.0))
    assert insp.pixel == (iy, min(ix + 1, 63))

    # export, then read the maps back
    exp._folder.value = tmp_path
    exp._tiff.value = True
    written = exp._on_export()
    assert {"nll_hspy", "mask_hspy", "nll_png", "mask_png", "nll_tiff", "mask_tiff",
            "model", "summary"} <= set(written)
    # the same run folder as `eelsanom detect`: its summary JSON, readable by `eelsanom latent`
    import json

    summary = json.loads(written["summary"].read_text())
    assert summary["method"] == "pca" and summary["exported_from"] == "napari"
    assert summary["counts"]["flagged"] == session.result.n_flagged
    from eelsanom.latent.report import find_stem

    assert find_stem(tmp_path) == exp._stem.value
    # a second export over its own files is allowed; a user's file in the way is not
    assert exp._on_export() is not None
    from eelsanom.io import load_result_maps

    maps = load_result_maps(tmp_path, exp._stem.value)
    np.testing.assert_allclose(maps["nll"], nll.data)
    np.testing.assert_array_equal(maps["mask"], mask.data.astype(bool))
    assert float(maps["threshold"]) == pytest.approx(session.result.threshold)
    import tifffile

    np.testing.assert_allclose(tifffile.imread(written["nll_tiff"]), nll.data)

    # the saved model, loaded in the Detector panel and applied, gives the same map
    det._method.value = "rx"
    det._model_file.value = written["model"]
    det._on_load()
    qtbot.waitUntil(lambda: not det.busy, timeout=TRAIN_TIMEOUT_MS)
    assert det._method.value == "pca" and "loaded PCA model" in det._status.value
    det._on_apply()
    qtbot.waitUntil(lambda: not det.busy, timeout=TRAIN_TIMEOUT_MS)
    np.testing.assert_allclose(session.raw_result.nll, result.nll, rtol=1e-5)
    assert not errors(notifications), notifications


def test_rx_all_pixels_and_save_model(viewer, qtbot, sample_file, tmp_path, notifications):
    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    panels["Bulk region"]._region.value = "(none: all pixels, robust)"
    det = panels["Detector"]
    det._auto_apply.value = False
    train(qtbot, det, "rx")
    assert "fitted on all pixels" in det._status.value
    assert by_role(viewer, "nll") is None  # not scored yet
    det._on_apply()
    qtbot.waitUntil(lambda: not det.busy, timeout=TRAIN_TIMEOUT_MS)
    assert by_role(viewer, "nll").data.shape == (64, 64)
    det._model_file.value = tmp_path / "rx.h5"
    det._on_save()
    assert (tmp_path / "rx.h5").is_file() and not errors(notifications)


def test_results_slider_follows_a_result_outside_the_old_range(viewer, sample_file,
                                                               notifications):
    """A new result whose NLL lies wholly below (then above) the previous threshold: the
    manual-threshold slider takes the new range and keeps the threshold inside it (a guard
    for the reported slider crash, which did not reproduce here)."""
    import dataclasses

    from eelsanom.detectors import get_detector

    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    session = get_session(viewer)
    si = session.spectrum_image()
    res = get_detector("pca", n_components=4, device="cpu").fit(si, None).score(si)
    session.set_result(res, session.cube())
    slider = panels["Results"]._manual
    for factor in (1e-3, 10.0):  # every NLL below the old threshold, then above the old max
        scaled = dataclasses.replace(res, nll=res.nll * factor,
                                     threshold=res.threshold * factor)
        session.set_result(scaled, session.cube())
        assert slider.min <= scaled.threshold <= slider.max
        # the slider keeps 6 decimals (magicgui FloatSlider)
        assert slider.max == pytest.approx(float(scaled.nll.max()), rel=1e-5, abs=1e-5)
        assert slider.min == pytest.approx(float(scaled.nll.min()), rel=1e-5, abs=1e-5)
        assert slider.value == pytest.approx(scaled.threshold, rel=1e-3)
    assert not errors(notifications), notifications


# ----------------------------------------------------------------------------- faults
def test_training_refusals(viewer, qtbot, sample_file, notifications):
    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    det = panels["Detector"]
    det._method.value = "pca"
    # an empty bulk region: refused at once, no worker started
    panels["Bulk region"]._on_new_rectangle()
    det._on_train()
    assert not det.busy
    assert "covers 0 pixels" in errors(notifications)[-1]
    # a region too small for PCA: refused at once too, in the GUI's words
    from eelsanom.detectors.pca import PCADetector

    assert PCADetector.min_train_pixels > 1
    painted = panels["Bulk region"]._on_new_labels()
    painted.data[3, 3] = 1
    painted.events.data()
    assert panels["Bulk region"]._count.value.startswith("1 of 4096")
    det._device.value = "cpu"
    det._on_train()
    assert not det.busy
    assert "covers 1 pixel;" in errors(notifications)[-1]
    assert "Draw a larger region" in errors(notifications)[-1]  # the GUI's words
    assert f"at least {PCADetector.min_train_pixels}" in errors(notifications)[-1]
    assert get_session(viewer).detector is None and by_role(viewer, "nll") is None
    # bad typed parameters
    det._energy.value = "740:700"
    det._on_train()
    assert "START < STOP" in errors(notifications)[-1] and not det.busy
    det._energy.value = ""
    painted.data[:10, :10] = 1  # a region large enough: the parameter fails in the worker
    painted.events.data()
    det._extra.value = "no_such_parameter=3"
    train(qtbot, det, "pca")
    assert "no_such_parameter" in errors(notifications)[-1]
    # apply without a model
    det._on_apply()
    assert "no model to apply" in errors(notifications)[-1]


def test_model_energy_axis_mismatch(viewer, qtbot, sample_file, tmp_path, notifications):
    from eelsanom_napari._layers import spectrum_image_layers
    from napari.layers import Layer

    from eelsanom.detectors import get_detector
    from eelsanom.simulate import simulate

    # a model trained on the sample's Fe L window (680-759.9 eV)...
    sim = simulate(shape=(16, 16), window="fe-l", seed=1)
    model = get_detector("rx").fit(sim.si, sim.bulk_mask).save(tmp_path / "fe.h5")
    # ...and data on another channel grid (the wide 420-820 eV window at 0.6 eV/ch)
    other = simulate(shape=(16, 16), window="bfo", seed=2).si
    other = type(other)(**{**vars(other), "data": other.data[:, :, ::2],
                           "energy": type(other.energy)(
                               other.energy.values[::2].size, 2 * other.energy.scale,
                               other.energy.offset, "eV", "Energy loss")})
    for data, meta, kind in spectrum_image_layers(other, name="other window"):
        viewer.add_layer(Layer.create(data, meta, kind))
    panels = dock_all(viewer)
    det = panels["Detector"]
    det._model_file.value = model
    det._on_load()
    qtbot.waitUntil(lambda: not det.busy, timeout=TRAIN_TIMEOUT_MS)
    warn = [m for s, m in notifications if "warn" in s]
    assert warn and "Apply will refuse" in warn[-1]
    det._on_apply()
    qtbot.waitUntil(lambda: not det.busy, timeout=TRAIN_TIMEOUT_MS)
    msg = errors(notifications)[-1]
    assert sim.si.energy.describe() in msg and other.energy.describe() in msg  # both axes
    assert by_role(viewer, "nll") is None


# ----------------------------------------------------------------------------- threads
def test_viewer_responsive_while_training_and_cancel(viewer, qtbot, sample_file, notifications,
                                                     monkeypatch):
    from qtpy.QtCore import QTimer

    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    det = panels["Detector"]
    slow = SlowDetector(steps=2000, delay=0.01)  # 20 s unless cancelled
    monkeypatch.setattr(DetectorWidget, "_make_detector", staticmethod(lambda m, p: slow))
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    try:
        det._method.value = "pca"
        det._on_train()
        qtbot.waitUntil(lambda: det.n_progress_events >= 30, timeout=20_000)
        assert det.busy and not slow.stopped_
        # the GUI thread keeps running: timer events, a layer edit, progress bar updates
        n0, t0 = len(ticks), time.perf_counter()
        viewer.layers[0].opacity = 0.42
        qtbot.wait(300)
        assert det.busy
        assert len(ticks) - n0 >= 10, "the event loop stalled while training"
        gaps = np.diff([t for t in ticks if t >= t0])
        assert gaps.max() < 0.25
        assert viewer.layers[0].opacity == pytest.approx(0.42)
        assert det._pbar.total == 2000 and 0 < det._pbar.n < 2000
        assert det.last_event.stage == "train" and "loss" in det.last_event.metrics
        assert "epoch" in det._status.value
        det._on_cancel()
        qtbot.waitUntil(lambda: not det.busy, timeout=10_000)
    finally:
        timer.stop()
    assert slow.stopped_
    assert any("cancelled" in m for _, m in notifications)
    assert get_session(viewer).detector is None and by_role(viewer, "nll") is None
    assert det._train_btn.enabled and not det._cancel_btn.enabled


@pytest.mark.parametrize("shape", ["batch stage", "batch metrics"])
def test_progress_bar_moves_within_an_epoch(make_napari_viewer, shape):
    """Both shapes of per-batch progress: ``"batch"`` events counting the steps (and
    validation blocks, ``phase``) of the epoch under way before its ``"train"`` event, or
    ``"train"`` events with ``batch``/``batches`` metrics; the bar and the status follow
    the batches, then scoring starts the bar anew."""
    from napari.utils import progress as napari_progress

    from eelsanom.progress import ProgressEvent

    viewer = make_napari_viewer()
    det = dock_all(viewer)["Detector"]
    det._pbar = bar = napari_progress(total=0)
    det._epoch, det._bar_stage = (0, 4), None  # a 4-epoch training (the epochs field)
    seen = []

    def send(ev):
        det._on_progress(ev)
        det._show_progress()
        seen.append((bar.n / bar.total, det._status.value))

    try:
        if shape == "batch stage":  # the validation split scored before the first epoch
            send(ProgressEvent("batch", 1, 2, {"phase": "validation"}))
            assert seen[-1][0] == 0 and "validation before epoch 1" in seen[-1][1]
        for epoch in (1, 2):
            for k in range(1, 11):
                if shape == "batch stage":
                    phase = {"phase": "validation"} if k > 8 else {"loss": 1.0 / k}
                    send(ProgressEvent("batch", k, 10, phase))
                else:
                    send(ProgressEvent("train", epoch, 4, {"batch": k, "batches": 10}))
            if shape == "batch stage":
                send(ProgressEvent("train", epoch, 4, {"loss": 0.5, "val_nll": 0.7}))
        seen = seen[1:] if shape == "batch stage" else seen
        fractions = [f for f, _ in seen]
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(0.5)
        assert fractions[4] == pytest.approx(0.125)  # 5 of 10 batches of the first of 4
        assert any("epoch 1/4, batch 5/10" in t for _, t in seen)
        if shape == "batch stage":
            assert any("epoch 1/4, validation 9/10" in t for _, t in seen)
            assert "epoch 2/4" in seen[-1][1] and "val_nll 0.7" in seen[-1][1]
        # scoring: a new stage, the bar counts its steps from 0
        send(ProgressEvent("score", 1, 3))
        assert bar.total == 3 and bar.n == 1 and "score: step 1/3" in det._status.value
    finally:
        bar.close()


def test_closing_viewer_stops_training(make_napari_viewer, qtbot, sample_file, monkeypatch):
    viewer = make_napari_viewer()
    open_sample(viewer, sample_file)
    det = dock_all(viewer)["Detector"]
    slow = SlowDetector(steps=5000, delay=0.01)  # 50 s unless stopped
    monkeypatch.setattr(DetectorWidget, "_make_detector", staticmethod(lambda m, p: slow))
    det._method.value = "pca"
    det._on_train()
    qtbot.waitUntil(lambda: det.n_progress_events >= 5, timeout=20_000)
    worker = det._worker
    t0 = time.perf_counter()
    viewer.close()
    qtbot.waitUntil(lambda: slow.stopped_, timeout=10_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=10_000)
    assert time.perf_counter() - t0 < 10


@pytest.mark.skipif(importlib.util.find_spec("eelsanom.detectors.cvae3d") is None,
                    reason="the 3D-CVAE detector is not in this checkout")
@pytest.mark.slow
def test_tiny_cvae(viewer, qtbot, sample_file, notifications, monkeypatch):
    open_sample(viewer, sample_file)
    panels = dock_all(viewer)
    add_bulk_rectangle(panels)
    det = panels["Detector"]
    events = []
    original = DetectorWidget._on_progress

    def spy(self, ev):
        events.append(ev)
        original(self, ev)

    monkeypatch.setattr(DetectorWidget, "_on_progress", spy)
    train(qtbot, det, "cvae", _cvae_epochs=2, _cvae_latent=2, _cvae_width=4, _cvae_patch=8,
          _device="cpu", _extra="spatial_layers=0, batch_size=64, patience=2")
    # (a fixed patience: with "auto" the network's PPCA start is at the noise floor on the
    # sample and training is skipped, so no epoch would reach the progress bar)
    assert not errors(notifications), notifications
    s = get_session(viewer)
    assert s.detector.method == "cvae" and s.detector.width == 4 and s.detector.epochs == 2
    assert s.raw_result.latent.shape == (64, 64, 2)
    assert by_role(viewer, "nll").data.shape == (64, 64)
    train_events = [e for e in events if e.stage == "train"]
    assert train_events and train_events[-1].step == train_events[-1].total == 2
    assert "loss" in train_events[-1].metrics  # epoch and loss reach the progress bar
    insp = panels["Spectrum inspector"]
    insp.inspect(5, 5)
    qtbot.waitUntil(lambda: insp.cached(5, 5) is not None, timeout=TRAIN_TIMEOUT_MS)
    assert insp.spectrum is not None and insp.spectrum.mean.shape == (267,)


# ----------------------------------------------------------------------------- screenshot
def test_workstation_screenshot(qtbot, tmp_path, notifications):
    """`eelsanom gui` on the sample after a PCA run; the screenshot is saved for review."""
    from eelsanom_napari._launch import launch, panels_of

    viewer = launch(block=False, show=True)
    try:
        panels = panels_of(viewer)
        assert set(panels) == {"Bulk region", "Detector", "Results", "Spectrum inspector",
                               "Export", "Latent space"}
        assert by_role(viewer, "cube").data.shape == (267, 64, 64)
        det = panels["Detector"]
        train(qtbot, det, "pca", _pca_components=6, _device="cpu")
        s = get_session(viewer)
        iy, ix = map(int, np.argwhere(s.result.mask & s.raw_result._si.ground_truth)[3])
        panels["Spectrum inspector"].inspect(iy, ix)
        qtbot.waitUntil(lambda: panels["Spectrum inspector"].spectrum is not None,
                        timeout=TRAIN_TIMEOUT_MS)
        qtbot.wait(500)
        out = Path(os.environ.get("EELSANOM_SCREENSHOT_DIR") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        img = viewer.screenshot(str(out / "workstation.png"), canvas_only=False, flash=False)
        assert img.ndim == 3 and img.shape[0] >= 600 and img.shape[1] >= 900
        assert img[..., :3].std() > 20  # not a blank window
        canvas = viewer.screenshot(canvas_only=True, flash=False)
        assert canvas[..., :3].std() > 5  # the NLL map is drawn
        assert (out / "workstation.png").stat().st_size > 50_000
        assert not errors(notifications), notifications
    finally:
        viewer.close()


def test_launch_refuses_bad_file_before_any_window(bad_files):
    from eelsanom_napari._launch import launch
    from napari._qt.qt_viewer import QtViewer

    from eelsanom.errors import InputError

    n = len(QtViewer._instances)
    with pytest.raises(InputError, match="signal axes"):
        launch(bad_files["2-D image"], block=False, show=False)
    assert len(QtViewer._instances) == n
