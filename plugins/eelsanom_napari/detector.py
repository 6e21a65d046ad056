"""Panel 2, the detector: method, hyperparameters, device; Train / Apply / Cancel in a worker
thread with a napari progress bar; load / save a model file."""

from __future__ import annotations

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
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from eelsanom.detectors import DEFAULT_METHOD, detector_class
from eelsanom.detectors.base import check_train_mask
from eelsanom.detectors.params import Param, detector_params, gui_params
from eelsanom.errors import Cancelled, InputError

from . import _notify
from ._panel import (
    METHOD_NAMES,
    METHODS,
    _next_turn,
    _Panel,
    _report,
    leave_a_core,
)
from ._session import prepare_result

#: Seconds between two refreshes of the progress display.
PROGRESS_EVERY = 0.1


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
            for m in ("pca", "context-pca", "bulk-context", "rx", "cvae")}
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
        # one line, cut at the panel's width rather than widening it (the full text is its
        # tooltip): a wrapped label in the fixed-height footer would be clipped instead
        self._status.native.setSizePolicy(QSizePolicy.Policy.Ignored,
                                          QSizePolicy.Policy.Preferred)
        self._progress = ProgressBar(value=0, min=0, max=1000, visible=False)
        self._progress.tooltip = "the work under way (also in napari's activity dock)"
        self._per_method = {m: list(ws.values()) for m, ws in self._fields.items()}
        run_row = Container(widgets=[self._train_btn, self._apply_btn, self._cancel_btn],
                            layout="horizontal", labels=False)
        model_row = Container(widgets=[self._load_btn, self._save_btn], layout="horizontal",
                              labels=False)
        self.extend([self._method, self._device, self._energy, self._seed,
                     *[w for ws in self._per_method.values() for w in ws],
                     self._extra, self._auto_apply, self._model_file, model_row])
        # the primary actions and the progress stay in view below the scrolling fields
        self.pin([run_row, self._progress, self._status])
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
            self._progress.visible = busy
            if busy:
                self._progress.value = 0
        except RuntimeError:
            self._closed = True

    def _on_method(self, *_: Any) -> None:
        m = self._method.value
        for key, ws in self._per_method.items():
            for w in ws:
                w.visible = key == m
        self._device.enabled = m in ("pca", "context-pca", "bulk-context", "cvae")

    def _on_window_picked(self, lo: float, hi: float) -> None:
        """An energy window dragged on the spectrum plot becomes the detector's window."""
        if not self._closed:
            self._energy.value = f"{lo:.1f}:{hi:.1f}"

    def _set_status(self, text: str) -> None:
        if self._closed:
            return
        try:
            self._status.value = text
            self._status.tooltip = text
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
            if mask is not None:  # too small for this detector: said in the GUI's words
                check_train_mask(mask, si.nav_shape,
                                 min_pixels=detector_class(method).min_train_pixels,
                                 what=f"the bulk region {session.region_layer.name!r}",
                                 fix="Draw a larger region, or choose none to train on all "
                                     "pixels (robustly).")
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
                w._tell_cautions(res)

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
            res = w._deliver_result(prep, cube_ref())
            w._set_status(f"{name} applied to {cube_name}")
            if res is not None:
                w._tell_cautions(res)

        self._run("scoring", work, done)

    def _tell_cautions(self, res: Any) -> None:
        """The result's cautions and notes as warnings, and a note when it disagrees with the
        result it replaced on the same image (another detector or seed) about which pixels
        are anomalous."""
        for msg in result_messages(res, self._session.previous_result):
            _next_turn(lambda m=msg: _notify.warning(m))

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
        try:  # the panel's own bar (pinned beside Train): the fraction of the stage done
            self._progress.value = int(round(1000 * min(1.0, done / total))) if total else 0
        except RuntimeError:
            self._closed = True
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


def result_messages(res: Any, previous: Any = None) -> list[str]:
    """What the user should read about ``res``: its cautions and notes, and
    :func:`eelsanom.cautions.disagreement_notes` against ``previous`` when that scored the
    same image (same pixel grid) with another detector or seed."""
    from eelsanom import cautions

    info = getattr(res, "info", {}) or {}
    out = [*info.get("cautions", []), *info.get("notes", [])]
    if previous is None or previous is res or np.shape(previous.mask) != np.shape(res.mask) \
            or previous.x != res.x or previous.y != res.y:
        return out
    a, b = METHOD_NAMES.get(previous.method, previous.method), METHOD_NAMES.get(res.method,
                                                                                res.method)
    if a == b:
        a, b = f"the earlier {a} run", f"this {b} run"
    return out + cautions.disagreement_notes({a: previous.mask, b: res.mask})
