"""The latent-space panel in a real napari viewer (needs a display: Xvfb in CI).

Run with ``xvfb-run -a -s "-screen 0 1920x1200x24" env QT_QPA_PLATFORM=xcb pytest
tests/plugins/test_latent_panel.py``. The results are fitted directly (PCA on the
sample's bulk region, a second or so) rather than through the Detector panel.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ._gui import require_display

require_display()

from eelsanom_napari._latent_panel import (  # noqa: E402
    MAP_LAYERS,
    LatentPanel,
    project_codes,
    scatter_indices,
)
from eelsanom_napari._layers import pixel_to_world, role_of  # noqa: E402
from eelsanom_napari._session import get_session  # noqa: E402
from eelsanom_napari._widgets import dock_all  # noqa: E402

from eelsanom import latent as lt  # noqa: E402
from eelsanom.detectors import get_detector  # noqa: E402

TIMEOUT_MS = 60_000
TWO_SPACE = ("relative_agreement", "mutual_knn", "procrustes_residual")


# ----------------------------------------------------------------------------- helpers
def errors(notes):
    return [m for s, m in notes if "error" in s]


def click(viewer, world_yx):
    """A left click (press + release, no drag) at a world position in the viewer."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    pos = (float(viewer.dims.point[0]), *world_yx)
    press = SimpleNamespace(type="mouse_press", position=pos, button=1, modifiers=(),
                            is_dragging=False, handled=False, pos=np.zeros(2))
    mouse_press_callbacks(viewer, ReadOnlyWrapper(press, exceptions=("handled",)))
    release = SimpleNamespace(**{**vars(press), "type": "mouse_release"})
    mouse_release_callbacks(viewer, ReadOnlyWrapper(release, exceptions=("handled",)))


def click_canvas(canvas, xy_data):
    """A left mouse press on the matplotlib canvas at data coordinates (fires pick events)."""
    from matplotlib.backend_bases import MouseEvent

    canvas.draw()
    x, y = canvas.ax.transData.transform(np.asarray(xy_data, float))
    MouseEvent("button_press_event", canvas, x, y, button=1)._process()


def fit(session, method="pca", **params):
    si = session.spectrum_image()
    mask, _ = session.bulk_mask()
    if method == "pca":
        params.setdefault("device", "cpu")
    return get_detector(method, **params).fit(si, mask).score(si)


def compute(qtbot, panel, **values):
    for name, v in values.items():
        getattr(panel, name).value = v
    worker = panel._on_compute()
    assert worker is not None and panel.busy
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    return worker


@pytest.fixture
def ws(make_napari_viewer, sample_file):
    """A viewer with the sample, the six panels (latent panel included) and a PCA result."""
    viewer = make_napari_viewer()
    viewer.open(str(sample_file), plugin="eelsanom")
    panels = dock_all(viewer)
    panel = panels["Latent space"]
    assert isinstance(panel, LatentPanel)
    session = get_session(viewer)
    cube = session.cube()
    res = fit(session, n_components=4)
    session.set_result(res, cube)
    ns = SimpleNamespace(viewer=viewer, panels=panels, panel=panel, session=session,
                         cube=cube, res=res)
    yield ns
    ns.__dict__.clear()  # before make_napari_viewer's leak check (pytest keeps fixture values)


# ----------------------------------------------------------------------------- Qt-free helpers
def test_projection_and_subsample_helpers():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(10, 12, 3)) * np.array([5.0, 2.0, 0.1])
    coords, explained = project_codes(z)
    assert coords.shape == (120, 2)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(z.reshape(-1, 3)[:, 0]
                                                             - z[..., 0].mean()), atol=0.5)
    assert explained[0] > explained[1] > 0 and explained.sum() <= 1.0
    _, e1 = project_codes(z[..., :1])
    assert e1[0] == pytest.approx(1.0) and e1[1] == 0.0
    valid = np.ones(120, bool)
    valid[:20] = False
    vals = rng.normal(size=120)
    idx = scatter_indices(valid, vals, 50)
    assert idx.size == 50 and np.unique(idx).size == 50 and idx.min() >= 20
    assert np.all(np.diff(vals[idx]) >= 0)  # most anomalous drawn last
    np.testing.assert_array_equal(idx, scatter_indices(valid, vals, 50))  # fixed seed
    assert scatter_indices(valid, vals, 500).size == 100


# ----------------------------------------------------------------------------- map layers
def test_map_layers_shape_scale_and_recompute(ws, qtbot, notifications):
    panel, viewer, cube, res = ws.panel, ws.viewer, ws.cube, ws.res
    assert "press Compute maps" in panel._status.value
    compute(qtbot, panel, _reference="pca", _k=20)
    assert not errors(notifications), notifications
    layers = panel.map_layers()
    assert set(layers) == {"local_dimension", *TWO_SPACE}
    for key, ly in layers.items():
        assert type(ly).__name__ == "Image" and ly.data.shape == (64, 64), key
        np.testing.assert_allclose(ly.scale, cube.scale[1:])
        np.testing.assert_allclose(ly.translate, cube.translate[1:])
        lo, hi = ly.contrast_limits
        assert lo < hi
        assert ly.colormap.name == MAP_LAYERS[key][1]
    assert layers["local_dimension"].name == "latent: local intrinsic dim."
    assert layers["relative_agreement"].name == "latent: rel. agreement (vs PCA-4, bulk)"
    # only the first map is shown, above the NLL map
    assert [k for k, ly in layers.items() if ly.visible] == ["local_dimension"]
    np.testing.assert_allclose(layers["local_dimension"].data,
                               lt.local_dimension_map(res.latent, k=20), rtol=1e-5)
    agree = layers["relative_agreement"].data
    assert np.nanmin(agree) >= -1.0 - 1e-6 and np.nanmax(agree) <= 1.0 + 1e-6
    knn = layers["mutual_knn"].data
    assert knn.min() >= 0.0 and knn.max() <= 1.0
    assert "median local dim." in panel._status.value and "Procrustes residual" in \
        panel._status.value

    # recompute with another k: the same layers, new data
    n_layers = len(viewer.layers)
    before = {k: ly for k, ly in layers.items()}
    old = layers["local_dimension"].data.copy()
    compute(qtbot, panel, _k=8)
    assert len(viewer.layers) == n_layers
    after = panel.map_layers()
    assert all(after[k] is before[k] for k in before)
    assert not np.allclose(after["local_dimension"].data, old, equal_nan=True)
    np.testing.assert_allclose(after["local_dimension"].data,
                               lt.local_dimension_map(res.latent, k=8), rtol=1e-5)
    # no reference: the two-space layers go
    compute(qtbot, panel, _reference="none")
    assert set(panel.map_layers()) == {"local_dimension"}
    assert len(viewer.layers) == n_layers - 3
    assert not errors(notifications), notifications


def test_previous_result_as_reference(ws, qtbot, notifications):
    """Known answer: the previous result's codes rotated and scaled -> full agreement,
    zero Procrustes residual, identical neighbourhoods."""
    from scipy.stats import ortho_group

    panel, session, res = ws.panel, ws.session, ws.res
    panel._reference.value = "previous"
    panel._on_compute()
    assert "no previous result" in errors(notifications)[-1] and not panel.busy
    q = ortho_group.rvs(4, random_state=0)
    rotated = dataclasses.replace(res, latent=(2.5 * res.latent.astype(np.float64) @ q + 1.0))
    session.set_result(rotated, ws.cube)
    assert session.previous_result is res
    compute(qtbot, panel, _k=10)
    layers = panel.map_layers()
    assert layers["procrustes_residual"].name.endswith("(vs previous PCA)")
    np.testing.assert_allclose(layers["relative_agreement"].data, 1.0, atol=1e-4)
    np.testing.assert_allclose(layers["procrustes_residual"].data, 0.0, atol=1e-4)
    assert layers["mutual_knn"].data.mean() > 0.99  # ties among near-equal codes aside
    # a previous result on another grid is refused with a message
    small = dataclasses.replace(res, nll=res.nll[:8, :8], latent=res.latent[:8, :8])
    session.previous_result = small
    assert panel._on_compute() is None
    assert "expected the same image" in errors(notifications)[-1]


# ----------------------------------------------------------------------------- scatter
def test_scatter_points_colours_and_inspector_link(ws, qtbot, notifications):
    panel, viewer, session = ws.panel, ws.viewer, ws.session
    insp = ws.panels["Spectrum inspector"]
    canvas = panel._canvas
    nll = session.result.nll.ravel()
    # all 4096 pixels below the default maximum
    assert canvas.points.get_offsets().shape == (4096, 2)
    panel._max_points.value = 1000
    assert canvas.points.get_offsets().shape == (1000, 2)
    np.testing.assert_allclose(canvas.points.get_array(), nll[canvas.indices])
    assert np.unique(canvas.indices).size == 1000
    coords, _ = project_codes(session.result.latent)
    np.testing.assert_allclose(canvas.points.get_offsets(), coords[canvas.indices])
    assert "1000 of 4096 pixels (random, seed 0)" in canvas.ax.get_title()
    assert canvas.ax.get_xlabel().startswith("latent PC 1 (")
    assert canvas.ax.get_ylabel().startswith("latent PC 2 (")
    assert canvas.colorbar.ax.get_ylabel() == "NLL (higher = more anomalous)"
    first = canvas.indices.copy()
    panel._max_points.value = 1001
    panel._max_points.value = 1000
    np.testing.assert_array_equal(canvas.indices, first)  # fixed seed

    # click an isolated point (unique nearest) -> the inspector shows that pixel
    canvas.draw()
    xy = canvas.ax.transData.transform(coords[canvas.indices])
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(d, np.inf)
    j = int(np.argmax(np.where(d.min(axis=1) > 1.0, nll[canvas.indices], -np.inf)))
    iy, ix = divmod(int(canvas.indices[j]), 64)
    click_canvas(canvas, coords[canvas.indices[j]])
    assert insp.pixel == (iy, ix)
    assert insp._canvas.pixel == (iy, ix) and f"y={iy}, x={ix}" in insp._canvas.ax.get_title()
    assert canvas.pixel == (iy, ix)
    np.testing.assert_allclose(np.ravel(canvas.highlight.get_data()), coords[iy * 64 + ix])

    # a click in the viewer (any pixel, shown in the scatter or not) moves the highlight
    hidden = int(np.setdiff1d(np.arange(4096), canvas.indices)[7])
    hy, hx = divmod(hidden, 64)
    click(viewer, pixel_to_world(hy, hx, session.spectrum_image()))
    assert insp.pixel == (hy, hx) and canvas.pixel == (hy, hx)
    np.testing.assert_allclose(np.ravel(canvas.highlight.get_data()), coords[hidden])
    insp.move(0, 1)  # Shift + Right
    assert canvas.pixel == (hy, min(hx + 1, 63))
    # a new result redraws the scatter and keeps the inspected pixel highlighted
    session.set_result(fit(session, n_components=3), ws.cube)
    assert canvas.points.get_offsets().shape == (1000, 2)
    assert canvas.pixel == (hy, min(hx + 1, 63))
    assert not errors(notifications), notifications


# ----------------------------------------------------------------------------- seed disagreement
def test_seed_disagreement_layer_when_present(ws, qtbot, notifications):
    panel, session, res = ws.panel, ws.session, ws.res
    assert panel._seed_note.value.startswith("not available")
    assert "several seeds" in panel._seed_note.value
    compute(qtbot, panel, _reference="none")
    assert "seed_disagreement" not in panel.map_layers()
    dis = np.random.default_rng(0).gamma(2.0, size=(64, 64)).astype(np.float32)
    faked = dataclasses.replace(res, maps={**res.maps, "seed_disagreement": dis})
    session.set_result(faked, ws.cube)
    assert panel._seed_note.value.startswith("available")
    compute(qtbot, panel)
    layer = panel.map_layers()["seed_disagreement"]
    assert layer.name == "latent: seed disagreement"
    np.testing.assert_array_equal(layer.data, dis)
    np.testing.assert_allclose(layer.scale, ws.cube.scale[1:])
    # a result without it: the stale layer goes
    session.set_result(res, ws.cube)
    compute(qtbot, panel)
    assert "seed_disagreement" not in panel.map_layers()
    assert not errors(notifications), notifications


# ----------------------------------------------------------------------------- refusals
def test_result_without_latent_and_worker_errors(ws, qtbot, notifications):
    panel, session, viewer = ws.panel, ws.session, ws.viewer
    rx = fit(session, "rx")
    assert rx.latent is None
    session.set_result(rx, ws.cube)
    assert "RX result has no latent codes" in panel._status.value
    assert panel._canvas.points is None
    n = len(viewer.layers)
    assert panel._on_compute() is None and not panel.busy
    assert "no latent codes" in errors(notifications)[-1]
    assert "3D-CVAE or PCA" in errors(notifications)[-1]
    assert len(viewer.layers) == n and not panel.map_layers()
    # an error inside the worker (more neighbours than pixels) is a notification
    # an error inside the worker (a previous result with a 1-D latent: the two-space tools
    # need d >= 2) becomes a notification; the panel stays usable
    session.set_result(dataclasses.replace(ws.res, latent=ws.res.latent[..., :1]), ws.cube)
    session.set_result(ws.res, ws.cube)
    compute(qtbot, panel, _reference="previous")
    msg = errors(notifications)[-1]
    assert msg.startswith("latent maps:") and "dimension d >= 2, found d = 1" in msg
    assert panel._status.value.startswith("failed") and panel._compute_btn.enabled
    compute(qtbot, panel, _reference="none")
    assert set(panel.map_layers()) == {"local_dimension"}


# ----------------------------------------------------------------------------- manifest, screenshot
def test_manifest_registers_latent_panel(make_napari_viewer):
    from npe2 import PluginManager

    if "eelsanom" not in PluginManager.instance():
        pytest.skip("the eelsanom plugin is not registered (pip install -e '.[dev]')")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("eelsanom", "6. Latent space")
    assert isinstance(widget, LatentPanel)
    assert widget._status.value == "no result yet: train or apply a detector"


def test_latent_panel_screenshot(make_napari_viewer, sample_file, qtbot, tmp_path,
                                 notifications):
    """The workstation (the panels as ``eelsanom gui`` docks them) with the latent panel
    after a PCA run; saved for review (``EELSANOM_SCREENSHOT_DIR=docs/images`` writes
    ``latent_panel.png`` there)."""
    from eelsanom_napari._launch import _fit_window, _show_strongest_channel

    viewer = make_napari_viewer(show=True)
    panels = dock_all(viewer)
    viewer.open(str(sample_file), plugin="eelsanom")
    _show_strongest_channel(viewer, get_session(viewer).spectrum_image())
    _fit_window(panels["Detector"].native.window())
    panel = panels["Latent space"]  # docked by dock_all as a tab beside the Detector panel
    panel._dock.raise_()
    session = get_session(viewer)
    si = session.spectrum_image()
    # a PCA trained robustly on all pixels, compared with a PCA of the bulk region:
    # the anomalies are the codes the two spaces do not share
    res = get_detector("pca", n_components=6, device="cpu").fit(si, None).score(si)
    session.set_result(res, session.cube())
    compute(qtbot, panel, _reference="pca")
    layers = panel.map_layers()
    assert layers["procrustes_residual"].name == \
        "latent: Procrustes residual (vs PCA-6, bulk)"
    layers["local_dimension"].visible = False
    layers["procrustes_residual"].visible = True
    viewer.layers.selection.active = layers["procrustes_residual"]
    mask = next(ly for ly in viewer.layers if role_of(ly) == "mask")
    viewer.layers.move(viewer.layers.index(mask), len(viewer.layers))  # outlines on top
    iy, ix = map(int, np.argwhere(res.mask & si.ground_truth)[3])
    panels["Spectrum inspector"].inspect(iy, ix)
    panel._dock.raise_()
    panels["Bulk region"]._dock.raise_()
    qtbot.wait(500)
    viewer.reset_view()
    qtbot.wait(300)
    out = Path(os.environ.get("EELSANOM_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    img = viewer.screenshot(str(out / "latent_panel.png"), canvas_only=False, flash=False)
    assert img.ndim == 3 and img.shape[0] >= 600 and img.shape[1] >= 900
    assert img[..., :3].std() > 20
    assert panel._canvas.pixel == (iy, ix)
    shown = [role_of(ly) for ly in viewer.layers if ly.visible]
    assert [r for r in shown if r and r.startswith("latent:")] == \
        ["latent:procrustes_residual"]
    assert not errors(notifications), notifications
