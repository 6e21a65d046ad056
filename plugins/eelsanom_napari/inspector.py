"""Panel 4, the spectrum inspector: click a pixel (or Shift+arrow keys) to plot its spectrum,
the model's mean with its +-sigma band, the residual and the energy window that contributes
most to its NLL."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from eelsanom.errors import InputError

from . import _notify
from ._layers import (
    KEY,
    pixel_to_world,
    role_of,
    world_to_pixel,
)
from ._panel import (
    _Panel,
)
from ._plot import SpectrumCanvas

log = logging.getLogger(__name__)


#: Pixels whose model view the inspector keeps per result.
CACHE_PIXELS = 4096
#: At most this many pinned pixels / region means on the spectrum plot.
OVERLAY_MAX = 6

_KEYS = {"Shift-Up": (-1, 0), "Shift-Down": (1, 0), "Shift-Left": (0, -1), "Shift-Right": (0, 1)}


def _click_callback(widget: SpectrumInspectorWidget) -> Callable[..., Any]:
    ref = weakref.ref(widget)

    def on_mouse(viewer: Any, event: Any) -> Any:
        """Left click without dragging: inspect the pixel under the cursor."""
        if getattr(event, "type", "mouse_press") != "mouse_press" or \
                getattr(event, "button", 1) != 1:
            return
        position = tuple(event.position)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        w = ref()
        if w is not None and not w._closed and not dragged:
            w.inspect_world(position)

    return on_mouse


def _key_callback(widget: SpectrumInspectorWidget, dy: int, dx: int) -> Callable[..., None]:
    ref = weakref.ref(widget)

    def move(viewer: Any) -> None:
        w = ref()
        if w is not None and not w._closed:
            w.move(dy, dx)

    return move


class SpectrumInspectorWidget(_Panel):
    """Click a pixel (or move with Shift + arrow keys) to plot its spectrum against the model.

    The docked plot shows the observed counts, the model's mean with its ±sigma band, the
    residual, and shades the energy window that contributes most to the pixel's NLL.
    Before a model exists it shows the observed spectrum alone.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._iy = SpinBox(label="y", value=0, min=0, max=0)
        self._ix = SpinBox(label="x", value=0, min=0, max=0)
        self._window = FloatSpinBox(label="window eV", value=5.0, min=0.1, max=500.0,
                                    step=0.5)
        self._iy.tooltip = "row of the inspected pixel (or click the image; Shift+arrows move)"
        self._ix.tooltip = "column of the inspected pixel"
        self._window.tooltip = ("width of the shaded energy window that contributes most to "
                                "the pixel's NLL")
        row = Container(widgets=[self._iy, self._ix, self._window], layout="horizontal",
                        labels=True)
        row.margins = (0, 0, 0, 0)
        self._pin_btn = PushButton(text="Pin")
        self._region_btn = PushButton(text="Region mean")
        self._clear_btn = PushButton(text="Clear")
        self._pin_btn.tooltip = "keep this pixel's spectrum on the plot to compare others with it"
        self._region_btn.tooltip = ("mean spectrum (observed and model) of the selected shapes "
                                    "layer's area, or of the bulk region")
        self._clear_btn.tooltip = "remove pinned pixels, region means and the picked window"
        tools = Container(widgets=[self._pin_btn, self._region_btn, self._clear_btn],
                          layout="horizontal", labels=False)
        tools.margins = (0, 0, 0, 0)
        self._flag = Label(label="", value="")
        self._flag.tooltip = "the inspected pixel against the current threshold"
        self.extend([row, self._flag])
        self._canvas = SpectrumCanvas()
        from matplotlib.backends.backend_qtagg import NavigationToolbar2QT
        from qtpy.QtWidgets import QHBoxLayout, QWidget

        # zoom / pan / home of the plot, and the spectrum tools, on one row
        self._toolbar = NavigationToolbar2QT(self._canvas, None, coordinates=False)
        self._toolbar.setStyleSheet("QToolBar { border: 0px; } QToolButton { padding: 0px; }")
        bar = QWidget()
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._toolbar)
        lay.addWidget(tools.native)
        self._tools = tools
        self._add_qt(bar)
        self._add_qt(self._canvas)
        self._canvas.on_span = self._span_callback()
        self._pin_btn.changed.connect(self._on_pin)
        self._region_btn.changed.connect(self._on_region_mean)
        self._clear_btn.changed.connect(self._on_clear_overlays)
        self._recon: dict[int, Any] = {}  # id(raw result) -> (raw, mean, sigma) (one kept)
        self._recon_worker: Any = None
        self.pixel: tuple[int, int] | None = None
        self.spectrum: Any = None
        #: PixelSpectrum per (iy, ix) of the raw result ``_cache_of`` (threshold-free)
        self._cache: dict[tuple[int, int], Any] = {}
        self._cache_of: Any = None
        self._pixel_worker: Any = None
        self._wanted: tuple[Any, int, int] | None = None
        #: model evaluations done for this panel (all in worker threads)
        self.n_model_calls = 0
        self._iy.changed.connect(self._on_spin)
        self._ix.changed.connect(self._on_spin)
        self._window.changed.connect(self._refresh)
        self._click = _click_callback(self)
        viewer.mouse_drag_callbacks.append(self._click)
        for key, (dy, dx) in _KEYS.items():
            viewer.bind_key(key, _key_callback(self, dy, dx), overwrite=True)
        self._session.result_changed.connect(self._refresh)
        self._session.threshold_changed.connect(self._on_threshold)
        self._session.cube_changed.connect(self._on_cube)
        self._session.pixel_requested.connect(self._on_pixel_requested)
        self._on_cube()

    # ------------------------------------------------------------------ spectrum tool
    def _span_callback(self) -> Callable[[float, float], None]:
        ref = weakref.ref(self)

        def picked(lo: float, hi: float) -> None:
            w = ref()
            if w is not None and not w._closed:
                w._session.energy_window_picked.emit(float(lo), float(hi))
        return picked

    def _on_pin(self, *_: Any) -> None:
        """Keep the inspected pixel's spectrum (and model, when known) on the plot."""
        if self.pixel is None:
            _notify.error("pin pixel: no pixel shown yet; click a pixel first.")
            return
        try:
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return
        iy, ix = self.pixel
        ps = self.spectrum
        if ps is not None:
            entry = (f"y={iy}, x={ix}", np.asarray(ps.energy), np.asarray(ps.observed),
                     np.asarray(ps.mean))
        else:
            entry = (f"y={iy}, x={ix}", si.energy.values, np.asarray(si.data[iy, ix], float),
                     None)
        self._canvas.overlays = [o for o in self._canvas.overlays if o[0] != entry[0]]
        self._canvas.overlays = [*self._canvas.overlays, entry][-OVERLAY_MAX:]
        self._draw()

    def _on_clear_overlays(self, *_: Any) -> None:
        """Remove pinned pixels, region means and the picked energy window."""
        self._canvas.overlays = []
        self._canvas.picked_window = None
        if self.pixel is not None:
            self._draw()
        else:
            self._canvas.clear("click a pixel to see its spectrum")

    def _region_layer(self) -> Any:
        active = self._viewer.layers.selection.active
        if active is not None and type(active).__name__ in ("Shapes", "Labels") and \
                role_of(active) not in ("mask", "truth"):
            return active
        return self._session.region_layer

    def _on_region_mean(self, *_: Any) -> Any:
        """Mean spectrum of the selected shapes/labels layer's area (else the bulk region),
        observed and, with a result, modelled (the model runs in a worker, once per result)."""
        from ._layers import region_mask

        layer = self._region_layer()
        try:
            si = self._session.spectrum_image()
            if layer is None:
                raise InputError("mean of region: no region; expected a shapes or labels "
                                 "layer selected in the layer list (draw one), or a bulk "
                                 "region chosen in the Bulk region panel.")
            mask, _ = region_mask(layer, si)
        except InputError as exc:
            _notify.error(str(exc))
            return None
        if mask is None or not mask.any():
            _notify.error(f"mean of region: {layer.name!r} covers 0 pixels of the image; "
                          "expected a rectangle, polygon or painted area on it.")
            return None
        label = f"{layer.name} (mean of {int(mask.sum())} px)"
        # the region's pixels only become float64: not a float64 copy of the whole cube
        obs = np.asarray(si.data[mask], float).mean(axis=0)
        raw = self._session.raw_result if self._result_for(self._session.cube()) is not None \
            else None
        entry = [label, si.energy.values, obs, None]
        self._canvas.overlays = [o for o in self._canvas.overlays if o[0] != label]
        self._canvas.overlays = [*self._canvas.overlays, tuple(entry)][-OVERLAY_MAX:]
        if self.pixel is not None:
            self._draw()
        else:
            self._canvas.show_pixel(si.energy.values, obs, title=label, pixel=(0, 0))
        if raw is not None:
            self._with_reconstruction(raw, lambda mean, e: self._set_overlay_model(
                label, e, mean[mask].mean(axis=0)))
        return mask

    def _set_overlay_model(self, label: str, energy: np.ndarray, model: np.ndarray) -> None:
        out = []
        for o in self._canvas.overlays:
            if o[0] == label:
                obs = o[2]
                if o[1].size != energy.size:  # the model's window: crop the observed mean
                    keep = np.isin(np.round(o[1], 6), np.round(energy, 6))
                    obs = o[2][keep]
                o = (label, energy, obs, model)
            out.append(o)
        self._canvas.overlays = out
        if self.pixel is not None:
            self._draw()

    def _with_reconstruction(self, raw: Any, then: Callable[[np.ndarray, np.ndarray], None]
                             ) -> None:
        """``then(mean, energy)`` with the result's whole-image model mean (computed once per
        result, in a worker)."""
        got = self._recon.get(id(raw))
        if got is not None and got[0] is raw:
            then(got[1], got[2])
            return
        def work() -> tuple[np.ndarray, np.ndarray]:
            mean, _sigma = raw.reconstruct()
            return np.asarray(mean, np.float64), raw.energy.values

        def done(w: SpectrumInspectorWidget, out: tuple[np.ndarray, np.ndarray]) -> None:
            w._recon = {id(raw): (raw, *out)}
            if w._session.raw_result is raw:
                then(*out)

        def errored(w: Any, exc: BaseException) -> None:
            log.error("reconstruction failed", exc_info=exc)
            if w is not None:
                _notify.error(f"mean of region: the model failed: {type(exc).__name__}: {exc}")

        self._recon_worker = self.run_worker(
            work, what="mean of region", on_done=done, on_error=errored,
            on_finished=lambda w: w is not None and setattr(w, "_recon_worker", None))

    def _on_pixel_requested(self, iy: int, ix: int) -> None:
        """Another panel (e.g. the latent scatter) asks for pixel (iy, ix)."""
        if not self._closed:
            self.inspect(int(iy), int(ix))

    def _on_cube(self, *_: Any) -> None:
        if self._closed:
            return
        try:
            ny, nx = self._session.spectrum_image().nav_shape
        except InputError:
            ny = nx = 1
        with self._iy.changed.blocked(), self._ix.changed.blocked():
            self._iy.max, self._ix.max = ny - 1, nx - 1

    def _on_spin(self, *_: Any) -> None:
        self.inspect(int(self._iy.value), int(self._ix.value))

    def _refresh(self, *_: Any) -> None:
        if self.pixel is not None and not self._closed:
            self._draw()

    def inspect_world(self, position: Any) -> tuple[int, int] | None:
        """Inspect the pixel at a world position (y, x last); None when outside the image."""
        try:
            si = self._session.spectrum_image()
        except InputError:
            return None
        px = world_to_pixel(position, si)
        if px is not None:
            self.inspect(*px)
        return px

    def move(self, dy: int, dx: int) -> None:
        """Move the inspected pixel by (dy, dx), staying inside the image."""
        try:
            ny, nx = self._session.spectrum_image().nav_shape
        except InputError:
            return
        iy, ix = self.pixel or (0, 0)
        self.inspect(int(np.clip(iy + dy, 0, ny - 1)), int(np.clip(ix + dx, 0, nx - 1)))

    def _result_for(self, cube: Any) -> Any:
        s = self._session
        if s.result is None or s.result_cube is not cube:
            return None
        return s.result

    # ------------------------------------------------------------------ model, off-thread
    def cached(self, iy: int, ix: int) -> Any:
        """The cached :class:`~eelsanom.result.PixelSpectrum` of (iy, ix) for the current
        result, or None (not computed yet)."""
        raw = self._session.raw_result
        if raw is None or self._cache_of is not raw:
            return None
        return self._cache.get((int(iy), int(ix)))

    def _store(self, raw: Any, iy: int, ix: int, ps: Any) -> None:
        if self._cache_of is not raw:
            self._cache_of, self._cache = raw, {}
        if len(self._cache) >= CACHE_PIXELS:
            self._cache.pop(next(iter(self._cache)))
        self._cache[(iy, ix)] = ps

    def _request(self, raw: Any, iy: int, ix: int) -> None:
        """Compute the model's view of (iy, ix) in a worker (one at a time: while one runs,
        only the latest request waits)."""
        if self._pixel_worker is not None:
            self._wanted = (raw, iy, ix)
            return
        def work() -> Any:
            return raw.pixel(iy, ix)

        def done(w: SpectrumInspectorWidget, ps: Any) -> None:
            w.n_model_calls += 1
            w._store(raw, iy, ix, ps)
            if w.pixel == (iy, ix) and w._session.raw_result is raw:
                w._draw()

        def errored(w: Any, exc: BaseException) -> None:
            if w is None:
                return
            log.error("pixel spectrum failed", exc_info=exc)
            _notify.error(f"cannot show the model for pixel y={iy}, x={ix}: "
                          f"{type(exc).__name__}: {exc}")

        def finished(w: Any) -> None:
            if w is None:
                return
            w._pixel_worker = None
            nxt, w._wanted = w._wanted, None
            if nxt is not None and not w._closed and nxt[0] is w._session.raw_result and \
                    w.cached(*nxt[1:]) is None:
                w._request(*nxt)

        self._pixel_worker = self.run_worker(work, what="pixel spectrum", on_done=done,
                                             on_error=errored, on_finished=finished)

    @property
    def busy(self) -> bool:
        """True while a pixel's model is computed (or one waits)."""
        return self._pixel_worker is not None or self._wanted is not None

    # ------------------------------------------------------------------ showing
    def inspect(self, iy: int, ix: int) -> Any:
        """Show pixel (iy, ix); returns its :class:`~eelsanom.result.PixelSpectrum` when the
        model's view is already cached, else None (it is computed in a worker thread and
        drawn when ready; the observed spectrum shows at once)."""
        try:
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return None
        ny, nx = si.nav_shape
        if not (0 <= iy < ny and 0 <= ix < nx):
            return None
        self.pixel = (iy, ix)
        with self._iy.changed.blocked(), self._ix.changed.blocked():
            self._iy.value, self._ix.value = iy, ix
        ps = self._draw()
        self._mark(si, iy, ix)
        self._session.pixel_changed.emit(iy, ix)
        return ps

    def _title(self, res: Any, ps: Any) -> str:
        """The plot's title: pixel, NLL and flag; the threshold's value is in the label
        above the plot (a slider tick then redraws the plot only when the flag flips)."""
        iy, ix = self.pixel
        where = f"pixel y={iy}, x={ix}"
        self._set_threshold_text(res)
        if res is None:
            return f"{where}: observed (no model yet)"
        flag = "ANOMALOUS" if bool(res.mask[iy, ix]) else "normal"
        nll = float(res.nll[iy, ix])
        text = f"{where}: NLL {nll:.5g} ({flag})"
        return text if ps is not None else text + ": computing the model..."

    def _set_threshold_text(self, res: Any) -> None:
        text = "" if res is None or self.pixel is None else (
            f"{'above' if bool(res.mask[self.pixel]) else 'below'} the threshold "
            f"{res.threshold:.5g} ({res.threshold_method})")
        if self._flag.value != text:
            self._flag.value = text

    def _draw(self) -> Any:
        """Draw the current pixel with what is known now (never runs the model here)."""
        if self.pixel is None or self._closed:
            return None
        try:
            cube = self._session.cube()
            si = self._session.spectrum_image()
        except InputError:
            return None
        iy, ix = self.pixel
        if not (0 <= iy < si.nav_shape[0] and 0 <= ix < si.nav_shape[1]):
            self.pixel = None
            self._canvas.clear("click a pixel to see its spectrum")
            return None
        res = self._result_for(cube)
        ps = self.cached(iy, ix) if res is not None else None
        if res is not None and ps is None:
            self._request(self._session.raw_result, iy, ix)
        self.spectrum = ps
        self._canvas.show_pixel(si.energy.values, np.asarray(si.data[iy, ix], float),
                                title=self._title(res, ps), pixel=(iy, ix), spectrum=ps,
                                window_ev=float(self._window.value),
                                expect_model=res is not None)
        return ps

    def _on_threshold(self, res: Any = None) -> None:
        """The threshold moved: only the title changes (flag and threshold); no model run."""
        if self._closed or self.pixel is None:
            return
        try:
            cube = self._session.cube()
        except InputError:
            return
        current = self._result_for(cube)
        if current is None:
            return
        iy, ix = self.pixel
        title = self._title(current, self.cached(iy, ix))
        if title != self._canvas.ax.get_title():  # the flag flipped
            self._canvas.set_title(title)

    def _mark(self, si: Any, iy: int, ix: int) -> None:
        pos = np.array([pixel_to_world(iy, ix, si)])
        layer = self._session.layer_by_role("marker")
        if layer is None:
            size = 1.5 * max(abs(si.y.scale), abs(si.x.scale))
            self._session._keep_selection(lambda: self._viewer.add_points(
                pos, name="inspected pixel", symbol="square", size=size,
                face_color="transparent", border_color="yellow", border_width=0.15,
                metadata={KEY: {"role": "marker"}}))
        else:
            layer.data = pos
