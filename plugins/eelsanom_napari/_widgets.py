"""The eelsanom dock widgets (magicgui containers) and :func:`dock_all`.

Five thin panels over the library (the sixth, the latent space, is in
:mod:`._latent_panel`), sharing one :class:`~._session.Session` per viewer; all derive from
:class:`~._panel._Panel` and run their heavy work through its one worker runner
(:meth:`~._panel._Panel.run_worker`):

1. :class:`BulkRegionWidget` - the spectrum image and the bulk (training) region;
2. :class:`DetectorWidget` - method, hyperparameters, device; Train / Apply / Cancel in a
   worker thread with a napari progress bar; load / save a model file;
3. :class:`ResultsWidget` - threshold method (Otsu, GMM, top %, manual slider) applied live,
   NLL histogram with the threshold line;
4. :class:`SpectrumInspectorWidget` - click a pixel (or Shift+arrow keys) to plot its
   spectrum, the model's mean with its ±sigma band, the residual and the energy window that
   contributes most to its NLL;
5. :class:`ExportWidget` - the run folder ``eelsanom detect`` writes (maps, summary JSON, seed
   maps) and the model file.

Child widgets are private attributes (``self._method``, ``self._train_btn``...) and every
button has a handler method (``_on_train``...), so tests drive the panels by setting values
and calling handlers. Heavy imports (torch, the detectors) happen inside the worker
functions, never in the GUI thread.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer

from eelsanom.detectors import DEFAULT_METHOD
from eelsanom.detectors.params import Param, detector_params, gui_params
from eelsanom.errors import Cancelled, InputError

from . import _notify
from ._latent_panel import LatentPanel
from ._layers import (
    KEY,
    is_cube_layer,
    nav_scale_translate,
    pixel_to_world,
    role_of,
    world_to_pixel,
)
from ._panel import (
    METHOD_NAMES,
    METHODS,
    _next_turn,
    _Panel,
    _report,
    leave_a_core,
)
from ._plot import HistogramCanvas, LineScanCanvas, SpectrumCanvas
from ._session import prepare_result, threshold_spec

log = logging.getLogger(__name__)

__all__ = ["BulkRegionWidget", "DetectorWidget", "ResultsWidget", "SpectrumInspectorWidget",
           "ExportWidget", "dock_all"]

ALL_PIXELS = "(none: all pixels, robust)"


# ============================================================================ 1. bulk region
class BulkRegionWidget(_Panel):
    """Choose the spectrum image and the bulk (defect-free) region the detector learns from.

    The region is a shapes layer (rectangles, polygons, ellipses; lines are ignored) or a
    labels layer (non-zero = bulk) on the image's pixel grid. None means "all pixels": the
    detectors then train robustly, down-weighting their worst-explained pixels.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._cube = ComboBox(label="spectrum image", choices=self._cube_choices, nullable=True)
        self._region = ComboBox(label="bulk region", choices=self._region_choices)
        self._new_rect = PushButton(text="New rectangle layer")
        self._new_labels = PushButton(text="New labels layer (paint)")
        self._count = Label(label="covers", value="")
        self.extend([self._cube, self._region, self._new_rect, self._new_labels, self._count])
        self._watched: Any = None
        self._cube.changed.connect(self._on_cube)
        self._region.changed.connect(self._on_region)
        self._new_rect.changed.connect(self._on_new_rectangle)
        self._new_labels.changed.connect(self._on_new_labels)
        self._session.cube_changed.connect(self._update_count)
        self._auto_pick(self._session.cube())  # docked after a file was opened
        self._on_cube()
        self._on_region()

    # ------------------------------------------------------------------ choices
    def _cube_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return self._layer_choices(is_cube_layer)

    def _region_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        layers = self._layer_choices(lambda ly: type(ly).__name__ in ("Shapes", "Labels")
                                     and role_of(ly) not in ("mask", "truth"))
        return [(ALL_PIXELS, ALL_PIXELS), *layers]

    def _on_layers_changed(self, event: Any = None) -> None:
        super()._on_layers_changed(event)
        if self._closed:
            return
        inserted = event is not None and getattr(event, "type", "") == "inserted"
        self._auto_pick(getattr(event, "value", None) if inserted else None)
        self._on_cube()
        self._on_region()

    def _auto_pick(self, new: Any = None) -> None:
        """Pick a newly added cube, and a bulk layer when none is chosen yet."""
        if new is not None and is_cube_layer(new) and role_of(new) == "cube" and \
                new in list(self._viewer.layers):
            self._cube.value = new
        if self._region.value == ALL_PIXELS:
            for ly in reversed(list(self._viewer.layers)):
                if (role_of(ly) == "bulk" or ly.name.lower().startswith("bulk")) and \
                        type(ly).__name__ in ("Shapes", "Labels"):
                    self._region.value = ly
                    break

    # ------------------------------------------------------------------ handlers
    def _on_cube(self, *_: Any) -> None:
        self._session.set_cube(self._cube.value)
        self._update_count()

    def _on_region(self, *_: Any) -> None:
        layer = self._region.value
        layer = None if layer == ALL_PIXELS else layer
        self._watch(layer)
        self._session.set_region(layer)
        self._update_count()

    def _watch(self, layer: Any) -> None:
        """Recount whenever the region layer's shapes or painted pixels change."""
        if self._watched is layer:
            return
        for old_layer in [self._watched] if self._watched is not None else []:
            for name in ("data", "set_data", "paint", "labels_update"):
                em = getattr(old_layer.events, name, None)
                if em is not None:
                    em.disconnect(self._update_count)
        self._watched = layer
        if layer is not None:
            for name in ("data", "set_data", "paint", "labels_update"):
                em = getattr(layer.events, name, None)
                if em is not None:
                    em.connect(self._update_count)

    def _update_count(self, *_: Any) -> None:
        if self._closed:
            return
        self._count.value = self.describe()

    def describe(self) -> str:
        """What the bulk region covers, e.g. ``'1216 of 4096 pixels (29.7 %)'``."""
        try:
            si = self._session.spectrum_image()
        except InputError:
            return "no spectrum image open"
        n = si.nav_shape[0] * si.nav_shape[1]
        try:
            mask, note = self._session.bulk_mask()
        except InputError as exc:
            return str(exc)
        if mask is None:
            return f"none selected: all {n} pixels, trained robustly"
        k = int(mask.sum())
        text = f"{k} of {n} pixels ({100.0 * k / n:.1f} %)"
        if k == 0:
            text = "0 pixels: draw a rectangle or polygon on it (or choose none)"
        return f"{text}; {note}" if note else text

    def _on_new_rectangle(self, *_: Any) -> Any:
        """Add a 2-D shapes layer on the image's grid, in rectangle mode, and select it."""
        try:
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return None
        scale, translate = nav_scale_translate(si.y, si.x)
        layer = self._viewer.add_shapes(
            ndim=2, name="bulk region", scale=scale, translate=translate,
            edge_color="dodgerblue", face_color=[0.12, 0.56, 1.0, 0.2], edge_width=0.5,
            metadata={KEY: {"role": "bulk"}})
        layer.mode = "add_rectangle"
        self._region.value = layer
        return layer

    def _on_new_labels(self, *_: Any) -> Any:
        """Add a labels layer on the image's grid, in paint mode, and select it."""
        from ._layers import label_layer_kwargs

        try:
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return None
        kw = label_layer_kwargs("bulk region (painted)", si, "dodgerblue", role="bulk",
                                opacity=0.5)
        layer = self._viewer.add_labels(np.zeros(si.nav_shape, np.uint8), **kw)
        layer.selected_label = 1
        layer.brush_size = max(3, min(si.nav_shape) // 8)
        layer.mode = "paint"
        self._region.value = layer
        return layer


# ============================================================================ 2. detector
def _energy_window(text: str) -> tuple[float, float] | None:
    """``'700:740'`` -> (700.0, 740.0); empty or ``'all'`` -> None (the whole axis)."""
    t = str(text or "").strip()
    if not t or t.lower() in ("all", "full"):
        return None
    try:
        a, b = (float(v) for v in t.split(":"))
    except ValueError as exc:
        raise InputError(f"energy window: expected START:STOP in eV (e.g. 700:740) or empty for "
                         f"the whole axis, found {text!r}.") from exc
    if not a < b:
        raise InputError(f"energy window: expected START < STOP, found {text!r}.")
    return (a, b)


def _param_field(p: Param) -> Any:
    """A magicgui field for a detector parameter: default, range and tooltip from ``p``.

    Integers are spin boxes (an optional one shows 0 as "auto"), choices combo boxes and
    floats text fields (learning rates need more digits than a spin box keeps).
    """
    label = p.name.replace("_", " ")
    if p.kind == "int":
        auto = p.default is None and p.optional
        lo = 0 if p.optional else int(p.low if p.low is not None else 0)
        hi = int(p.high if p.high is not None else 2**31 - 1)
        w = SpinBox(label=f"{label} (0 = auto)" if p.optional else label,
                    value=0 if auto else int(p.default), min=lo, max=hi)
    elif p.kind == "choice":
        w = ComboBox(label=label, choices=list(p.choices), value=p.default)
    elif p.kind == "float":
        w = LineEdit(label=label, value=repr(float(p.default)))
    else:
        w = LineEdit(label=label, value="" if p.default is None else str(p.default))
    w.tooltip = p.help
    return w


def _field_value(p: Param, w: Any) -> Any:
    """The parameter value a field holds (0 of an optional integer: None, automatic)."""
    v = w.value
    if p.kind == "int":
        return None if p.optional and int(v) == 0 else int(v)
    if p.kind == "float":
        try:
            x = float(str(v).strip())
        except ValueError as exc:
            raise InputError(f"{p.name.replace('_', ' ')}: expected a number such as "
                             f"{p.default!r}, found {v!r}.") from exc
        lo, hi = p.low, p.high
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise InputError(f"{p.name.replace('_', ' ')}: expected a number in [{lo}, {hi}], "
                             f"found {x!r}.")
        return x
    if p.kind == "choice":
        return v
    t = str(v).strip()
    return None if p.optional and not t else t


_EXTRA = "__extra__"


def _parse_extra(text: str) -> dict[str, Any]:
    """``'batch_size=64, robust_fraction=0.1'`` -> dict (values as Python literals or strings)."""
    import ast

    out: dict[str, Any] = {}
    for part in (p.strip() for p in str(text or "").split(",")):
        if not part:
            continue
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputError(f"other parameters: expected NAME=VALUE pairs separated by commas "
                             f"(e.g. batch_size=64, robust_fraction=0.1), found {part!r}.")
        val = val.strip()
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


class DetectorWidget(_Panel):
    """Method, hyperparameters and device; Train, Apply, Cancel; load and save a model file.

    Training and scoring run in a napari ``thread_worker`` with a progress bar in the
    activity dock (epoch / loss for the 3D-CVAE); the viewer stays responsive, and
    Cancel (here or in the activity dock) stops the work at the next step. Closing the
    viewer cancels running work too.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._method = ComboBox(label="method", choices=METHODS, value=DEFAULT_METHOD)
        self._method.tooltip = ("3D-CVAE: a neural model of the bulk (blind-spot context: each "
                                "pixel predicted from its neighbours); context PCA: PCA codes "
                                "predicted from the neighbourhood (seconds; robust to drift); "
                                "PCA: probabilistic PCA (seconds); RX: Mahalanobis distance "
                                "(fastest). Benchmarks: docs/benchmark.md")
        common = detector_params("cvae")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"],
                                value=common["device"].default)
        self._device.tooltip = common["device"].help
        self._energy = LineEdit(label="energy window (eV)", value="")
        self._energy.native.setPlaceholderText("all, or e.g. 700:740 (or drag on the plot)")
        self._energy.tooltip = common["energy_range"].help + "; format START:STOP"
        self._seed = SpinBox(label="seed", value=int(common["seed"].default), min=0,
                             max=2**31 - 1)
        self._seed.tooltip = common["seed"].help
        #: per method: parameter name -> field, built from eelsanom.detectors.params
        self._fields: dict[str, dict[str, Any]] = {
            m: {p.name: _param_field(p) for p in gui_params(m)}
            for m in ("pca", "context-pca", "rx", "cvae")}
        f = self._fields
        # short names the tests (and older code) use
        self._pca_components = f["pca"]["n_components"]
        self._rx_shrinkage = f["rx"]["shrinkage"]
        self._cvae_epochs, self._cvae_latent = f["cvae"]["epochs"], f["cvae"]["latent_dim"]
        self._cvae_width, self._cvae_patch = f["cvae"]["width"], f["cvae"]["patch_size"]
        self._cvae_lr, self._cvae_beta = f["cvae"]["lr"], f["cvae"]["beta"]
        self._extra = LineEdit(label="other parameters", value="")
        self._extra.native.setPlaceholderText("e.g. batch_size=64, robust_fraction=0.1")
        self._auto_apply = CheckBox(text="score after training", value=True)
        self._train_btn = PushButton(text="Train")
        self._apply_btn = PushButton(text="Apply")
        self._cancel_btn = PushButton(text="Cancel")
        self._model_file = FileEdit(label="model file", mode="w", filter="*.h5")
        self._load_btn = PushButton(text="Load model")
        self._save_btn = PushButton(text="Save model")
        self._status = Label(label="status", value="no model")
        self._per_method = {m: list(ws.values()) for m, ws in self._fields.items()}
        run_row = Container(widgets=[self._train_btn, self._apply_btn, self._cancel_btn],
                            layout="horizontal", labels=False)
        model_row = Container(widgets=[self._load_btn, self._save_btn], layout="horizontal",
                              labels=False)
        self.extend([self._method, self._device, self._energy, self._seed,
                     *[w for ws in self._per_method.values() for w in ws],
                     self._extra, self._auto_apply, run_row, self._model_file, model_row, self._status])
        self._delivering = 0
        self._cancel_event: threading.Event | None = None
        self._worker: Any = None
        self._pbar: Any = None
        self.n_progress_events = 0
        self.last_event: Any = None
        self._epoch: tuple[int, int] = (0, 0)
        self._bar_stage: str | None = None
        self._bar_unit = 1
        self._batches_per_epoch = 0
        self._shown_at = 0.0
        self._flush_pending = False
        self._session.energy_window_picked.connect(self._on_window_picked)
        self._method.changed.connect(self._on_method)
        self._train_btn.changed.connect(self._on_train)
        self._apply_btn.changed.connect(self._on_apply)
        self._cancel_btn.changed.connect(self._on_cancel)
        self._load_btn.changed.connect(self._on_load)
        self._save_btn.changed.connect(self._on_save)
        self._on_method()
        self._set_busy(False)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while training, scoring or loading runs (or its result is being shown)."""
        return self._worker is not None or self._delivering > 0

    def _set_busy(self, busy: bool) -> None:
        if self._closed:
            return
        try:
            for b in (self._train_btn, self._apply_btn, self._load_btn, self._save_btn):
                b.enabled = not busy
            self._cancel_btn.enabled = busy
        except RuntimeError:
            self._closed = True

    def _on_method(self, *_: Any) -> None:
        m = self._method.value
        for key, ws in self._per_method.items():
            for w in ws:
                w.visible = key == m
        self._device.enabled = m in ("pca", "context-pca", "cvae")

    def _on_window_picked(self, lo: float, hi: float) -> None:
        """An energy window dragged on the spectrum plot becomes the detector's window."""
        if not self._closed:
            self._energy.value = f"{lo:.1f}:{hi:.1f}"

    def _set_status(self, text: str) -> None:
        if self._closed:
            return
        try:
            self._status.value = text
        except RuntimeError:
            self._closed = True

    # ------------------------------------------------------------------ parameters
    def detector_params(self) -> tuple[str, dict[str, Any]]:
        """The chosen method and its keyword arguments (unknown ones are dropped later)."""
        m = self._method.value
        p: dict[str, Any] = {"energy_range": _energy_window(self._energy.value),
                             "seed": int(self._seed.value), "device": self._device.value}
        for prm in gui_params(m):
            p[prm.name] = _field_value(prm, self._fields[m][prm.name])
        p.update(_parse_extra(self._extra.value))
        p[_EXTRA] = sorted(_parse_extra(self._extra.value))
        return m, p

    @staticmethod
    def _make_detector(method: str, params: dict[str, Any]) -> Any:
        """Build the detector (called in the worker thread: imports torch for PCA/CVAE)."""
        from eelsanom.detectors import detector_class

        cls = detector_class(method)
        names = set(cls._param_names())
        params = dict(params)
        unknown = [k for k in params.pop(_EXTRA, []) if k not in names]
        if unknown:
            raise InputError(f"other parameters: {METHOD_NAMES.get(method, method)} has no "
                             f"parameter {', '.join(map(repr, unknown))}; expected some of "
                             f"{', '.join(sorted(names))}.")
        return cls(**{k: v for k, v in params.items() if k in names})

    # ------------------------------------------------------------------ actions
    def _on_train(self, *_: Any) -> None:
        """Fit the chosen detector on the bulk region (worker thread), then score the image."""
        if self.busy:
            _notify.warning("eelsanom is already running; cancel it first.")
            return
        session = self._session
        try:
            cube = session.cube()
            si = session.spectrum_image()
            mask, _note = session.bulk_mask()
            if mask is not None and not mask.any():
                raise InputError(
                    f"the bulk region {session.region_layer.name!r} covers 0 pixels of the "
                    f"{si.nav_shape[0]} x {si.nav_shape[1]} image; expected a region inside the "
                    "image. Draw a rectangle or polygon on it, or choose none to train on all "
                    "pixels (robustly).")
            method, params = self.detector_params()
        except InputError as exc:
            _notify.error(str(exc))
            return
        auto_apply = bool(self._auto_apply.value)
        make = self._make_detector
        name = METHOD_NAMES.get(method, method)
        n_train = "all" if mask is None else int(mask.sum())
        cube_ref = weakref.ref(cube)

        # The closures handed to the worker hold no strong reference to this panel or to a
        # layer: napari keeps finished workers in its task list, and a strong reference
        # would keep the closed viewer alive.
        spec = session.threshold_for(cube)

        def work(progress: Callable[[Any], bool]) -> tuple[Any, Any]:
            leave_a_core()
            det = make(method, params)
            det.fit(si, mask, progress=progress)
            res = det.score(si, progress=progress) if auto_apply else None
            return det, (prepare_result(res, spec) if res is not None else None)

        def done(w: DetectorWidget, out: tuple[Any, Any]) -> None:
            det, prep = out
            w._session.set_detector(det)
            w._set_status(f"{name} fitted on {n_train} pixels in "
                          f"{getattr(det, 'fit_seconds_', float('nan')):.1f} s")
            if prep is not None:
                res = w._deliver_result(prep, cube_ref())
                text = (f"{name}: {res.n_flagged} of {res.nll.size} pixels flagged "
                        f"({res.threshold_method}).")
                _next_turn(lambda: _notify.info(text))

        epochs = params.get("epochs")
        self._run(f"training {name}", work, done,
                  epochs=epochs if isinstance(epochs, int) and epochs > 0 else None)

    def _on_apply(self, *_: Any) -> None:
        """Score the current spectrum image with the current detector (worker thread)."""
        if self.busy:
            _notify.warning("eelsanom is already running; cancel it first.")
            return
        det = self._session.detector
        if det is None:
            _notify.error("no model to apply: train one (Train) or load a model file first.")
            return
        try:
            cube = self._session.cube()
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return
        cube_ref, cube_name = weakref.ref(cube), str(getattr(cube, "name", "the image"))
        name = METHOD_NAMES.get(det.method, det.method)

        spec = self._session.threshold_for(cube)

        def work(progress: Callable[[Any], bool]) -> Any:
            leave_a_core()
            return prepare_result(det.score(si, progress=progress), spec)

        def done(w: DetectorWidget, prep: Any) -> None:
            w._deliver_result(prep, cube_ref())
            w._set_status(f"{name} applied to {cube_name}")

        self._run("scoring", work, done)

    def _deliver_result(self, prep: Any, cube: Any) -> Any:
        """Show a prepared result over several event-loop turns; busy until it is shown."""
        self._delivering += 1
        ref = weakref.ref(self)

        def shown() -> None:
            w = ref()
            if w is not None:
                w._delivering -= 1
                if not w.busy:
                    w._set_busy(False)

        return self._session.set_result(prep.raw, cube, prep, defer=_next_turn,
                                        on_shown=shown)

    def _on_cancel(self, *_: Any) -> None:
        """Ask the running work to stop at its next progress report (a batch, or an epoch
        where the detector reports per epoch)."""
        if self._cancel_event is not None:
            self._cancel_event.set()
            ev = self.last_event
            fine = ev is not None and (ev.stage == "batch" or "batch" in ev.metrics)
            self._set_status("cancelling..." if fine or ev is None or ev.stage != "train"
                             else "cancelling at the end of this epoch...")

    def _on_load(self, *_: Any) -> None:
        """Load the model file (worker thread) and check it against the open image."""
        if self.busy:
            _notify.warning("eelsanom is already running; cancel it first.")
            return
        path = Path(str(self._model_file.value or ""))
        if not str(self._model_file.value or "").strip() or not path.is_file():
            _notify.error(f"model file {str(path)!r} not found; expected a .h5 file written by "
                          "eelsanom (Save model, `eelsanom train`).")
            return

        def work(progress: Callable[[Any], bool]) -> Any:
            from eelsanom.detectors import load_detector

            return load_detector(path)

        def done(w: DetectorWidget, det: Any) -> None:
            w._session.set_detector(det)
            if det.method in METHOD_NAMES:
                w._method.value = det.method
            w._set_status(f"loaded {METHOD_NAMES.get(det.method, det.method)} model "
                          f"{path.name} ({det.energy_axis_.describe()})")
            w._check_axis(det)

        self._run("loading model", work, done)

    def _check_axis(self, det: Any) -> None:
        from eelsanom.errors import EnergyAxisMismatch

        try:
            det.window(self._session.spectrum_image())
        except EnergyAxisMismatch as exc:
            _notify.warning(f"{exc} Apply will refuse this image.")
        except InputError:
            pass

    def _on_save(self, *_: Any) -> None:
        """Write the current detector to the model file."""
        det = self._session.detector
        if det is None:
            _notify.error("no model to save: train one first.")
            return
        text = str(self._model_file.value or "").strip()
        if not text or text == ".":
            _notify.error("choose a model file name first (e.g. model.h5).")
            return
        try:
            p = det.save(Path(text))
        except (InputError, OSError) as exc:
            _notify.error(f"could not save the model: {exc}")
            return
        self._set_status(f"model saved to {p}")
        _notify.info(f"model saved to {p}")

    # ------------------------------------------------------------------ worker plumbing
    def _run(self, what: str, fn: Callable[[Callable[[Any], bool]], Any],
             on_done: Callable[[Any, Any], None], epochs: int | None = None) -> Any:
        """Run ``fn(progress_callback)`` in a worker (:meth:`_Panel.run_worker`) with a
        progress bar in napari's activity dock and this panel's Cancel (``epochs``: how
        many the training will run, when known, so that the bar moves from the first
        batch on).

        ``on_done(panel, value)`` runs in the GUI thread with the return value, unless the
        viewer was closed meanwhile. Errors become notifications; ``Cancelled`` an info.
        """
        from napari.utils import cancelable_progress

        cancel = threading.Event()
        self._cancel_event = cancel
        pbar = cancelable_progress(total=0, desc=f"eelsanom: {what}", cancel_callback=cancel.set)
        self._pbar = pbar
        self.n_progress_events = 0
        self._epoch, self._shown_at, self.last_event = (0, int(epochs or 0)), 0.0, None
        self._bar_stage, self._batches_per_epoch = None, 0

        notify = _report(what)  # the runner's notifications, plus the panel's status line

        def errored(w: DetectorWidget | None, exc: BaseException) -> None:
            notify(w, exc)
            if w is not None:
                w._set_status(f"{what} {'cancelled' if isinstance(exc, Cancelled) else 'failed'}")

        def finished(w: DetectorWidget | None) -> None:
            pbar.close()
            if w is not None:
                w._worker = None
                w._cancel_event = None
                w._set_busy(w.busy)

        # (the worker's signals reach this thread through the event loop: not before
        # this method returns)
        worker = self.run_worker(fn, what=what, on_done=on_done, on_error=errored,
                                 on_finished=finished, cancel=cancel,
                                 progress=lambda w, ev: w._on_progress(ev))
        self._worker = worker
        self._set_busy(True)
        self._set_status(f"{what}...")
        return worker

    def _on_progress(self, ev: Any) -> None:
        """A progress event from the worker (GUI thread): update the status and the bar.

        Events may come per epoch or finer, in either of two shapes: ``"train"`` events
        with ``batch``/``batches`` metrics, or ``"batch"`` events counting the steps (and
        validation blocks) within the epoch under way, followed by the epoch's ``"train"``
        event. The bar then advances by fractions of an epoch. The display is refreshed at
        most every :data:`PROGRESS_EVERY` seconds (the last event wins), so that many small
        events cost the GUI thread little.
        """
        self.n_progress_events += 1
        self.last_event = ev
        if ev.stage in ("train", "fit"):
            self._epoch = (int(ev.step), int(ev.total or 0) or self._epoch[1])
        elif ev.stage == "batch" and ev.metrics.get("phase") != "validation":
            # a training step: its total is the epoch's count (steps and validation blocks)
            self._batches_per_epoch = int(ev.total or 0)
        now = time.monotonic()
        if now - self._shown_at >= PROGRESS_EVERY:
            self._show_progress()
        elif not self._flush_pending:
            self._flush_pending = True
            ref = weakref.ref(self)
            QTimer.singleShot(int(1000 * PROGRESS_EVERY), lambda: (w := ref()) is not None
                              and w._flush_progress())

    def _flush_progress(self) -> None:
        self._flush_pending = False
        if self._worker is not None and not self._closed:
            self._show_progress()

    def progress_fraction(self) -> tuple[float, int, str]:
        """What the last event says: ``(done, total, text)`` in epochs for training (e.g.
        2.5 of 40 in the middle of the third epoch), in steps for other stages."""
        ev = self.last_event
        m = dict(ev.metrics)
        batch, batches = m.pop("batch", None), m.pop("batches", None)
        phase = m.pop("phase", None)
        if ev.stage == "batch":  # counting within the epoch under way
            batch, batches = int(ev.step), int(ev.total or 0)
        metrics = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in m.items())
        epoch, epochs = self._epoch
        if ev.stage in ("train", "fit", "batch"):
            # a "batch" event belongs to the epoch after the last one reported; a "train"
            # event with batch metrics to the epoch it names
            current = epoch + 1 if ev.stage == "batch" else epoch
            done = float(epoch)
            total = epochs
            if ev.stage == "batch" and phase == "validation" and epoch == 0 and \
                    not self._batches_per_epoch:
                # the validation split scored once before the first epoch: no epoch yet
                text = f"train: validation before epoch 1, block {batch}/{batches or '?'}"
                return 0.0, total, text + (f", {metrics}" if metrics else "")
            if batch is not None and batches:
                done = current - 1 + min(1.0, batch / batches)
            text = f"train: epoch {max(current, 1)}/{epochs or '?'}"
            if batch is not None:
                text += f", {phase or 'batch'} {batch}/{batches or '?'}"
        else:
            done, total = float(ev.step), int(ev.total or 0)
            text = f"{ev.stage}: step {ev.step}/{ev.total or '?'}"
        return done, total, text + (f", {metrics}" if metrics else "")

    def _show_progress(self) -> None:
        ev = self.last_event
        if ev is None:
            return
        self._shown_at = time.monotonic()
        done, total, text = self.progress_fraction()
        self._set_status(text)
        pbar = self._pbar
        if pbar is None:
            return
        # napari's bar counts whole steps: batches when the events give them, else epochs
        # or steps; a new stage (training, then scoring) starts it anew
        batches = self._batches_per_epoch or ev.metrics.get("batches")
        stage = "train" if ev.stage in ("train", "fit", "batch") else ev.stage
        fine = stage == "train" and bool(batches) and bool(total)
        if self._bar_stage != stage or (fine and self._bar_unit == 1):
            # batches once they come (and so for the rest of the stage)
            self._bar_stage, self._bar_unit = stage, int(batches) if fine else 1
            pbar.reset(total=total * self._bar_unit if total else 0)
        unit = self._bar_unit
        if total and pbar.total != total * unit:
            pbar.total = total * unit
        pbar.set_description(f"eelsanom {text}")
        n = int(round(done * unit)) if total else int(done)
        if n >= pbar.n:
            pbar.update(n - pbar.n)


# ============================================================================ 3. results
def line_scan_axis(si: Any) -> tuple[str, np.ndarray, str] | None:
    """``(axis, positions, label)`` of a line scan (a 1 x n or n x 1 spectrum image), where
    ``axis`` is ``"x"`` or ``"y"``; None for an image with both sides longer than 1."""
    ny, nx = si.nav_shape
    if ny > 1 and nx > 1 or ny * nx < 2:
        return None
    ax = si.x if ny == 1 else si.y
    name = "x" if ny == 1 else "y"
    units = f" ({ax.units})" if getattr(ax, "units", "") else ""
    return name, np.asarray(ax.values, float), f"position{units}"



def threshold_methods() -> list[tuple[str, str]]:
    """The Results panel's threshold choices (``robust`` where eelsanom.scoring has it)."""
    from eelsanom.scoring import parse_threshold

    out = [("detector's rule", "default"), ("Otsu", "otsu"), ("GMM", "gmm")]
    try:
        parse_threshold("robust")
        out.append(("robust (median + 4 MAD)", "robust"))
    except InputError:
        pass
    return [*out, ("top % of pixels", "percent"), ("manual", "manual")]


class ResultsWidget(_Panel):
    """Threshold the NLL map live and show its histogram with the threshold line.

    The NLL map is an image layer (``magma``, contrast from the 1st-99.5th percentile,
    the data's spatial scale) and the anomaly mask a labels layer drawn as outlines;
    both are updated by the session whenever a result arrives or the threshold moves.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._method = ComboBox(label="threshold", choices=threshold_methods(), value="default")
        self._percent = FloatSpinBox(label="top %", value=2.0, min=0.01, max=50.0, step=0.1)
        self._manual = FloatSlider(label="NLL threshold", min=0.0, max=1.0, value=0.5)
        self._stats = Label(label="flagged", value="no result yet")
        self.extend([self._method, self._percent, self._manual, self._stats])
        self._hist = HistogramCanvas()
        self._add_qt(self._hist)
        # a line scan: spectra as a position x energy image, NLL against position
        self._line = LineScanCanvas()
        self._line.on_pick = self._line_pick_callback()
        self._add_qt(self._line)
        self._line.setVisible(False)
        self._line_index: int | None = None
        self._session.cube_changed.connect(self._refresh_line)
        self._session.pixel_changed.connect(self._on_pixel_changed)
        self._method.changed.connect(self._on_method)
        self._percent.changed.connect(self._apply)
        self._manual.changed.connect(self._apply)
        self._session.result_changed.connect(self._on_result)
        self._session.threshold_changed.connect(self._on_threshold)
        self._session.threshold_reset.connect(self._on_threshold_reset)
        self._on_method(apply=False)
        self._refresh_line()
        if self._session.result is not None:
            self._on_result(self._session.result)
            self._on_threshold(self._session.result)

    def _on_method(self, *_: Any, apply: bool = True) -> None:
        m = self._method.value
        self._percent.visible = m == "percent"
        self._manual.visible = m == "manual"
        if apply:
            self._apply()

    def spec(self) -> Any:
        """The threshold spec of the current choice (see :func:`~._session.threshold_spec`)."""
        return threshold_spec(self._method.value, percent=float(self._percent.value),
                              value=float(self._manual.value))

    def _apply(self, *_: Any) -> None:
        if self._closed:
            return
        try:
            self._session.set_threshold(self.spec())
        except InputError as exc:
            _notify.error(str(exc))

    # ------------------------------------------------------------------ line scans
    def _line_pick_callback(self) -> Callable[[int], None]:
        ref = weakref.ref(self)

        def picked(k: int) -> None:
            w = ref()
            if w is None or w._closed:
                return
            try:
                si = w._session.spectrum_image()
            except InputError:
                return
            iy, ix = (0, k) if si.nav_shape[0] == 1 else (k, 0)
            w._session.select_pixel(iy, ix)
        return picked

    def _on_pixel_changed(self, iy: int, ix: int) -> None:
        if self._closed or self._line.isHidden():
            return
        k = max(int(iy), int(ix))
        if k != self._line_index:
            self._line_index = k
            self._refresh_line()

    def _refresh_line(self, *_: Any) -> None:
        """Show the line-scan view when the current image is a line scan (1 x n or n x 1)."""
        if self._closed:
            return
        try:
            si = self._session.spectrum_image()
        except InputError:
            si = None
        line = line_scan_axis(si) if si is not None else None
        was = not self._line.isHidden()
        self._line.setVisible(line is not None)
        self._hist.setVisible(line is None)  # 10-40 positions: the plot says more
        if line is None:
            return
        dock = getattr(self, "_dock", None)
        if not was and dock is not None:
            dock.raise_()
        axis, positions, label = line
        spectra = np.asarray(si.data, float).reshape(positions.size, -1)
        res = self._session.result
        if res is not None and self._session.result_cube is not self._session.cube():
            res = None
        kw: dict[str, Any] = {}
        if res is not None and np.size(res.nll) == positions.size:
            kw = {"nll": np.asarray(res.nll, float).ravel(), "threshold": float(res.threshold),
                  "mask": np.asarray(res.mask, bool).ravel()}
        self._line.show(si.energy.values, spectra, positions, position_label=label,
                        index=self._line_index, **kw)

    def _on_threshold_reset(self) -> None:
        """New data: the session went back to the detector's rule; so does the panel."""
        if self._closed:
            return
        with self._method.changed.blocked():
            self._method.value = "default"
        self._on_method(apply=False)

    def _on_result(self, res: Any) -> None:
        if self._closed:
            return
        if res is None:
            self._stats.value = "no result yet"
            self._hist.clear()
            return
        prep = self._session.prepared
        if prep is not None and prep.result is res:
            lo, hi = float(prep.edges[0]), float(prep.edges[-1])
        else:
            finite = np.asarray(res.nll, float)[np.isfinite(res.nll)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        new_min = lo - 1e-9 * abs(lo)
        with self._manual.changed.blocked():
            # widen first, move the value into the new range, then narrow: magicgui refuses
            # a range that excludes the current value (a new result entirely below the old
            # threshold, or entirely above it)
            self._manual.min = min(float(self._manual.min), new_min)
            self._manual.max = max(float(self._manual.max), hi)
            self._manual.value = float(np.clip(res.threshold, lo, hi))
            self._manual.min, self._manual.max = new_min, hi
            self._manual.step = (hi - lo) / 1000.0
        if prep is not None and prep.result is res:
            self._hist.show_counts(prep.counts, prep.edges, res.threshold)
        else:
            self._hist.show(res.nll, res.threshold)

    def _on_threshold(self, res: Any) -> None:
        if self._closed:
            return
        if not self._line.isHidden() or res is None:
            self._refresh_line()
        if res is None:
            return
        n, k = res.nll.size, res.n_flagged
        self._stats.value = (f"{k} of {n} px ({100.0 * k / n:.2f} %); NLL > "
                             f"{res.threshold:.5g} ({res.threshold_method})")
        self._hist.set_threshold(res.threshold)
        if self._method.value != "manual":
            with self._manual.changed.blocked():
                self._manual.value = float(np.clip(res.threshold, self._manual.min,
                                                   self._manual.max))


# ============================================================================ 4. inspector
#: Seconds between two refreshes of the progress display.
PROGRESS_EVERY = 0.1

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


# ============================================================================ 5. export
class ExportWidget(_Panel):
    """Write the run folder (as ``eelsanom detect``: maps, summary JSON, seed maps) and the model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._folder = FileEdit(label="folder", mode="d")
        self._stem = LineEdit(label="name", value="")
        self._hspy = CheckBox(text="HyperSpy (.hspy)", value=True)
        self._tiff = CheckBox(text="TIFF", value=False)
        self._png = CheckBox(text="PNG", value=True)
        self._model = CheckBox(text="model (.h5)", value=True)
        self._export_btn = PushButton(text="Export")
        self._written = Label(label="written", value="")
        fmt = Container(widgets=[self._hspy, self._tiff, self._png, self._model],
                        layout="horizontal", labels=False)
        self.extend([self._folder, self._stem, fmt, self._export_btn, self._written])
        self._export_btn.changed.connect(self._on_export)
        self._session.result_changed.connect(self._default_stem)

    def _default_stem(self, res: Any = None) -> None:
        if self._closed or str(self._stem.value).strip():
            return
        cube = self._session.result_cube
        base = Path(str(getattr(cube, "name", "") or "eelsanom")).stem
        self._stem.value = f"{base}_{res.method}" if res is not None else base

    def _on_export(self, *_: Any) -> dict[str, Path] | None:
        """Write the run folder ``eelsanom detect`` writes (maps, seed maps, summary JSON; see
        :func:`eelsanom.run.write_run`) and the model file; returns ``{key: path}``.

        Every path is checked first (:func:`eelsanom.io.check_outputs`): an input is never
        written, and a file that eelsanom did not write is never replaced.
        """
        from eelsanom.io import check_outputs, result_paths
        from eelsanom.pipeline import SEED_MAPS, write_run

        s = self._session
        res = s.result
        if res is None:
            _notify.error("nothing to export yet: train a model (or load one and Apply) first.")
            return None
        folder = str(self._folder.value or "").strip()
        if not folder or folder == ".":
            _notify.error("choose an output folder first.")
            return None
        self._default_stem(res)
        stem = str(self._stem.value).strip()
        fmts = [f for f, w in (("hspy", self._hspy), ("tiff", self._tiff), ("png", self._png))
                if w.value]
        si = getattr(s.raw_result, "_si", None)
        inputs = [p for p in (getattr(si, "source", None),) if p]
        written: dict[str, Path] = {}
        try:
            planned = list(result_paths(folder, stem, fmts, latent=res.latent is not None)
                           .values()) if fmts else []
            planned += [Path(folder) / f"{stem}_{m}.npy" for m in SEED_MAPS if m in res.maps]
            planned.append(Path(folder) / f"{stem}_summary.json")
            if self._model.value and s.detector is not None:
                planned.append(Path(folder) / f"{stem}_model.h5")
            check_outputs(planned, inputs, what="export")
            if si is not None:
                summary = write_run(res, si, folder, stem, formats=fmts, protect=inputs,
                                    extra={"exported_from": "napari"})
                written.update({k: Path(v) for k, v in summary["outputs"].items()})
            elif fmts:  # a result without its data (cannot happen through the panels)
                from eelsanom.io import save_result

                written.update(save_result(res, folder, stem=stem, formats=fmts))
            if self._model.value and s.detector is not None:
                written["model"] = s.detector.save(Path(folder) / f"{stem}_model.h5")
        except (InputError, OSError) as exc:
            _notify.error(f"export failed: {exc}")
            return None
        if not written:
            _notify.warning("nothing selected to export.")
            return written
        self._written.value = f"{len(written)} files in {folder}"
        _notify.info("eelsanom wrote " + ", ".join(p.name for p in written.values()))
        return written


# ============================================================================ all together
PANELS: dict[str, type[_Panel]] = {
    "Bulk region": BulkRegionWidget,
    "Detector": DetectorWidget,
    "Results": ResultsWidget,
    "Spectrum inspector": SpectrumInspectorWidget,
    "Export": ExportWidget,
}


#: Tab groups of :func:`dock_all`, by screen: (area, panels tabbed together) per group;
#: the first panel of each group is in front. ``"small"``: a laptop (both groups on the
#: right, one above the other); ``"large"``: the plots side by side below the canvas.
LAYOUTS: dict[str, list[tuple[str, list[str]]]] = {
    "small": [("right", ["Bulk region", "Detector", "Latent space", "Export"]),
              ("right", ["Spectrum inspector", "Results"])],
    "large": [("right", ["Bulk region", "Detector", "Latent space", "Export"]),
              ("bottom", ["Spectrum inspector"]),
              ("bottom", ["Results"])],
}

#: Below this available screen size (px) the "small" layout is used.
LARGE_SCREEN = (1600, 1000)


def choose_layout(width: int, height: int) -> str:
    """``"large"`` for a screen of at least :data:`LARGE_SCREEN`, else ``"small"``."""
    return "large" if width >= LARGE_SCREEN[0] and height >= LARGE_SCREEN[1] else "small"


def _screen_size(window: Any) -> tuple[int, int]:
    try:
        geo = window.screen().availableGeometry()
        return int(geo.width()), int(geo.height())
    except Exception:  # noqa: BLE001 - no screen information: assume a laptop
        return 1366, 768


def dock_all(viewer: napari.viewer.Viewer, layout: str | None = None) -> dict[str, _Panel]:
    """Dock the six eelsanom panels in ``viewer``; returns them by name (workflow order).

    Parameters
    ----------
    viewer : napari.Viewer
    layout : {"small", "large"}, optional
        :data:`LAYOUTS` key; default: chosen from the screen's size
        (:func:`choose_layout`). Panels scroll when the window is too small for them.
    """

    win = viewer.window
    qwin = win._qt_window
    layout = layout or choose_layout(*_screen_size(qwin))
    if layout not in LAYOUTS:
        raise InputError(f"dock_all: expected layout 'small' or 'large', found {layout!r}.")
    classes: dict[str, type[_Panel]] = {**PANELS, "Latent space": LatentPanel}
    out: dict[str, _Panel] = {}
    firsts = []
    for area, names in LAYOUTS[layout]:
        group = []
        for name in names:
            w = classes[name](viewer)
            w._tabber.done = True  # placed here, not by the Plugins-menu rule
            dock = win.add_dock_widget(w, name=name, area=area)
            w._dock = dock
            w._watch_window()
            out[name] = w
            if group:
                qwin.tabifyDockWidget(group[0], dock)
            group.append(dock)
        firsts.append((area, group[0]))
    # (a second group in an area is already below (right) or beside (bottom) the first:
    # that is how Qt adds a dock to an occupied area)
    for _area, d in firsts:
        d.raise_()
    out["Bulk region"]._dock.raise_()
    out["Spectrum inspector"]._dock.raise_()
    panels = {**{k: out[k] for k in PANELS}, "Latent space": out["Latent space"]}
    size_docks(panels)
    return panels


def size_docks(panels: dict[str, _Panel]) -> None:
    """Give the docks of :func:`dock_all` sensible sizes for the window's current size:
    a 470 px column on the right, the plots at least 45 % of its height (call again after
    resizing the window)."""
    from qtpy.QtCore import Qt

    try:
        first, plots = panels["Bulk region"]._dock, panels["Spectrum inspector"]._dock
        qwin = first.parentWidget()
        qwin.resizeDocks([first], [470], Qt.Orientation.Horizontal)
        if qwin.dockWidgetArea(plots) == qwin.dockWidgetArea(first):
            h = max(400, qwin.height() - 60)
            qwin.resizeDocks([first, plots], [int(0.45 * h), int(0.55 * h)],
                             Qt.Orientation.Vertical)
        else:  # below the canvas: the spectrum and the Results side by side
            results = panels["Results"]._dock
            qwin.resizeDocks([plots], [max(280, int(0.34 * qwin.height()))],
                             Qt.Orientation.Vertical)
            if qwin.dockWidgetArea(results) == qwin.dockWidgetArea(plots):
                w = qwin.width()
                qwin.resizeDocks([plots, results], [int(0.58 * w), int(0.42 * w)],
                                 Qt.Orientation.Horizontal)
    except (RuntimeError, AttributeError, KeyError) as exc:  # cosmetic only
        log.debug("could not size the docks: %s", exc)
