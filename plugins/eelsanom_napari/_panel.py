"""The base of the eelsanom panels and the one worker runner they all use (Qt).

:class:`_Panel` is a magicgui container with a scrolling body, the viewer's
:class:`~._session.Session`, layer-list change notifications, and
:meth:`_Panel.run_worker`: run a function in a worker thread and hand its result to the
GUI thread (:func:`deliver`), with optional progress events and cancel. Every panel that
does heavy work (training, scoring, a pixel's model, the latent maps) goes through it, so
the rules live in one place:

- the callbacks receive the panel as an argument and the runner holds it weakly: a
  finished worker (napari keeps some) never keeps a closed viewer alive;
- nothing is shown once the viewer closed; closing the viewer cancels running work at its
  next progress report;
- errors become notifications that say what failed (an ``InputError`` its own message).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import napari
from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtCore import Signal as QtSignal

from eelsanom.errors import Cancelled, InputError

from . import _notify
from ._session import Session, get_session

log = logging.getLogger(__name__)

__all__ = ["METHODS", "METHOD_NAMES", "deliver", "leave_a_core"]

METHODS = [("bulk + context PCA", "bulk-context"), ("3D-CVAE", "cvae"), ("context PCA", "context-pca"),
           ("PCA", "pca"), ("RX", "rx")]
METHOD_NAMES = {v: k for k, v in METHODS}

def _scroll_area(inner: Any) -> Any:
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(inner)
    area.setMinimumHeight(120)
    return area


#: Every live eelsanom panel (to find their docks).
_PANELS: weakref.WeakSet = weakref.WeakSet()


class _DockTabber(QObject):
    """When a panel is docked on its own (napari's Plugins menu), put it in a tab beside an
    eelsanom panel already docked in the same area instead of stacking one more panel
    below it (a column of six panels is ~2000 px tall)."""

    def __init__(self, panel: Any) -> None:
        super().__init__(panel.native)
        self._panel = weakref.ref(panel)
        self.done = False
        panel.native.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # Qt API
        # (getattr: Qt may still deliver events while the Python side is torn down)
        if not getattr(self, "done", True) and \
                event.type() in (QEvent.Type.Show, QEvent.Type.ParentChange):
            QTimer.singleShot(0, self.tabify)
        return False

    def tabify(self) -> None:
        panel = self._panel()
        if panel is None or self.done or panel._closed:
            return
        try:
            dock = panel._dock_widget()
            win = dock.parentWidget() if dock is not None else None
            if win is None or not hasattr(win, "tabifyDockWidget") or dock.isFloating():
                return
            self.done = True
            area = win.dockWidgetArea(dock)
            for other in list(_PANELS):
                od = other._dock_widget() if other is not panel and not other._closed else None
                if od is None or od is dock or od.parentWidget() is not win or \
                        od.isFloating() or win.dockWidgetArea(od) != area or \
                        not od.isVisible() or dock in win.tabifiedDockWidgets(od):
                    continue
                win.tabifyDockWidget(od, dock)
                dock.show()
                dock.raise_()
                return
        except RuntimeError:  # Qt objects deleted meanwhile
            return


class _Panel(Container):
    """Base of the panels: the viewer, its session, and layer-list change notifications."""

    def __init__(self, viewer: napari.viewer.Viewer, **kwargs: Any) -> None:
        # the fields live in a body container inside a scroll area, so that a panel docked
        # on a small screen scrolls instead of forcing the window taller than the screen
        super().__init__(labels=False)
        self._body = Container(**kwargs)
        self._scroll = _scroll_area(self._body.native)
        self.native.layout().addWidget(self._scroll)
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        _PANELS.add(self)
        self._tabber = _DockTabber(self)
        # napari hands plugin widgets a public-only proxy of the viewer; the panels of one
        # viewer share state through the viewer itself
        viewer = getattr(viewer, "__wrapped__", viewer)
        # the viewer is reached through the session, which holds it weakly: a panel is
        # owned by the viewer's window, and a reference back would make a cycle that keeps
        # the closed viewer (and its QtViewer) alive until a full garbage collection
        self._session: Session = get_session(viewer)
        self._closed = False
        self.native.destroyed.connect(self._mark_closed_factory())
        self._watcher: Any = None
        #: cancel flags of running work (set when the viewer closes), running workers
        self._jobs: set[threading.Event] = set()
        self._workers: set[Any] = set()
        ev = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(ev, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)

    @property
    def _viewer(self) -> Any:
        """The viewer (raises RuntimeError once it is gone, as Qt does for deleted widgets)."""
        return self._session.viewer

    def _mark_closed_factory(self) -> Callable[..., None]:
        ref = weakref.ref(self)

        def mark(*_: Any) -> None:
            w = ref()
            if w is not None:
                w._on_window_closed()
        return mark

    def _on_window_closed(self) -> None:
        """The viewer (or this panel) is going away: stop touching Qt widgets, and ask
        running work to stop at its next progress report."""
        for ev in list(getattr(self, "_jobs", ())):
            ev.set()
        self._closed = True

    def _watch_window(self) -> None:
        """Once docked, watch the main window so that closing the viewer is noticed at once."""
        window = self.native.window()
        if self._watcher is None and window is not None and window is not self.native:
            self._watcher = _CloseWatcher(window, self._mark_closed_factory())

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        try:
            self.reset_choices()
        except RuntimeError:  # Qt side already deleted
            self._closed = True

    def _layer_choices(self, keep: Callable[[Any], bool]) -> list[tuple[str, Any]]:
        return [(ly.name, ly) for ly in self._viewer.layers if keep(ly)]

    def _add_qt(self, qwidget: Any) -> None:
        self._body.native.layout().addWidget(qwidget)

    def pin(self, widgets: Any) -> None:
        """Add magicgui widgets below the scrolling body, always visible: the panel's primary
        actions (Train, Apply, Cancel, the progress) never scroll out of sight on a small
        screen."""
        footer = self.__dict__.get("_footer")
        if footer is None:
            from qtpy.QtWidgets import QSizePolicy

            footer = self._footer = Container(labels=False)
            footer.native.layout().setContentsMargins(6, 2, 6, 4)
            # its own height always: the scrolling body above gives way
            footer.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
            self.native.layout().addWidget(footer.native)
        footer.extend(widgets)

    def extend(self, widgets: Any) -> None:
        """Add magicgui widgets to the panel's (scrolling) body."""
        body = self.__dict__.get("_body")
        if body is None:  # magicgui's own construction
            super().extend(widgets)
        else:
            body.extend(widgets)

    def reset_choices(self, *_: Any) -> None:
        """Refresh every combo box of the body (e.g. the layer lists)."""
        super().reset_choices()
        body = self.__dict__.get("_body")
        if body is not None:
            body.reset_choices()

    # ------------------------------------------------------------------ the worker runner
    def run_worker(self, fn: Callable[..., Any], *, what: str = "eelsanom",
                   on_done: Callable[[Any, Any], None] | None = None,
                   on_error: Callable[[Any, BaseException], None] | None = None,
                   on_finished: Callable[[Any], None] | None = None,
                   progress: Callable[[Any, Any], None] | None = None,
                   cancel: threading.Event | None = None) -> Any:
        """Run ``fn`` in a worker thread; the one runner every panel uses.

        Parameters
        ----------
        fn : callable
            ``fn()``, or with ``progress`` ``fn(callback)``: ``callback(event)`` carries a
            :class:`~eelsanom.progress.ProgressEvent` to the GUI thread and returns False
            once cancelled (the library then raises ``Cancelled``).
        what : str
            What runs, for messages ("training 3D-CVAE").
        on_done : callable, optional
            ``on_done(panel, value)`` in the GUI thread with the return value (through
            :func:`deliver`: not once the panel is closed).
        on_error : callable, optional
            ``on_error(panel or None, exc)`` in the GUI thread (None: the panel is closed).
            Default: a notification (``Cancelled`` an info; ``InputError`` its message).
        on_finished : callable, optional
            ``on_finished(panel or None)`` in the GUI thread after either of the above.
        progress : callable, optional
            ``progress(panel, event)`` in the GUI thread per event (events still queued
            when the work ended are dropped).
        cancel : threading.Event, optional
            The flag that cancels the work (made here when not given); set by
            closing the viewer too.

        Returns
        -------
        worker
            The started superqt worker; ``worker.cancel`` is the flag.

        The callbacks get the panel as an argument: they must not hold it themselves
        (this runner holds it weakly).
        """
        # superqt's worker is the thread_worker napari wraps, without napari's extras: its
        # generic traceback notifications (ours say what went wrong) and its registration
        # with the "current viewer" task list, which can be another viewer than ours (its
        # close would quit our worker) and keeps finished workers alive
        from superqt.utils import create_worker

        self._watch_window()
        ref = weakref.ref(self)
        cancel = cancel if cancel is not None else threading.Event()
        jobs, workers = self._jobs, self._workers
        jobs.add(cancel)
        state = {"done": False}
        args: tuple[Any, ...] = ()
        bridge = None
        if progress is not None:
            bridge = _Bridge()

            def on_progress(ev: Any) -> None:
                w = ref()
                if w is not None and not state["done"] and not w._closed:
                    progress(w, ev)

            bridge.event.connect(on_progress)

            def callback(ev: Any) -> bool:
                bridge.event.emit(ev)
                return not cancel.is_set()

            args = (callback,)
        worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True)
        worker.cancel, worker.bridge = cancel, bridge
        worker.warned.connect(_log_warning)  # warnings from the worker thread go to the log

        def alive() -> Any:
            w = ref()
            return w if w is not None and not w._closed else None

        def returned(value: Any) -> None:
            state["done"] = True  # progress events still queued are stale now
            if on_done is not None:
                deliver(ref, on_done, value)

        def errored(exc: BaseException) -> None:
            state["done"] = True
            handler = on_error if on_error is not None else _report(what)
            try:
                handler(alive(), exc)
            except RuntimeError as err:  # Qt objects deleted while closing
                log.debug("ignored after close: %s", err)

        def finished() -> None:
            state["done"] = True
            jobs.discard(cancel)
            workers.discard(worker)
            if on_finished is not None:
                try:
                    on_finished(ref())
                except RuntimeError as err:
                    log.debug("ignored after close: %s", err)

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        workers.add(worker)
        worker.start()
        return worker

    def _dock_widget(self) -> Any:
        """The QDockWidget this panel sits in, or None (not docked)."""
        from qtpy.QtWidgets import QDockWidget

        w = self.native.parentWidget()
        while w is not None and not isinstance(w, QDockWidget):
            w = w.parentWidget()
        return w



class _Bridge(QObject):
    """Carries progress events from the worker thread to the GUI thread (queued signal)."""

    event = QtSignal(object)


class _CloseWatcher(QObject):
    """Calls ``on_close`` once when the viewer's main window closes (or is destroyed)."""

    def __init__(self, window: Any, on_close: Callable[[], None]) -> None:
        super().__init__(window)  # the window is reached as parent(): no Python reference
        self._on_close = on_close
        window.installEventFilter(self)
        window.destroyed.connect(lambda *_: on_close())

    def eventFilter(self, obj: Any, event: Any) -> bool:  # Qt API
        if event.type() == QEvent.Type.Close:
            QTimer.singleShot(0, self._check)
        return False

    def _check(self) -> None:
        """After the close event: only a window that really went away counts (the user may
        have answered "cancel" to napari's close dialog)."""
        try:
            window = self.parent()
            gone = window is None or not window.isVisible()
        except RuntimeError:
            gone = True
        if gone:
            self._on_close()



def _next_turn(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a later turn of the Qt event loop: after 20 ms, so that input, paint
    and other timers are served between two steps."""
    QTimer.singleShot(20, fn)


def leave_a_core() -> int:
    """Called in a worker thread before heavy torch work: torch uses at most ``cores - 1``
    threads, so one core stays with the GUI thread; returns the thread count.

    Returns
    -------
    int
        torch's intra-op thread count now (1 on a single-core machine).
    """
    from eelsanom.device import reserve_gui_core

    reserve_gui_core()  # the library's own thread choices (pooling, 3D-CVAE) leave it too
    try:
        import torch  # heavy: only ever imported in a worker
    except ImportError:  # RX needs no torch
        return 0
    n = max(1, (os.cpu_count() or 2) - 1)
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def deliver(ref: Callable[[], Any], on_done: Callable[[Any, Any], None], value: Any) -> None:
    """Hand a worker's return ``value`` to ``on_done(panel, value)`` on the GUI thread.

    Nothing happens when the panel (``ref()``, a weak reference) is gone or closed; a
    refused input becomes a notification, and Qt objects deleted while the viewer
    closes are ignored.

    Parameters
    ----------
    ref : callable
        Weak reference to the panel.
    on_done : callable
        ``on_done(panel, value)``: shows the result.
    value : object
        What the worker returned.
    """
    w = ref()
    if w is None or w._closed:
        return
    try:
        on_done(w, value)
    except InputError as exc:
        _notify.error(str(exc))
    except RuntimeError as exc:  # Qt objects deleted while closing
        log.debug("ignored after close: %s", exc)


def _log_warning(args: tuple) -> None:
    """A warning raised in a worker thread (``warnings.showwarning`` arguments): log it."""
    message, category = (args + (None, None))[:2]
    log.warning("%s: %s", getattr(category, "__name__", "Warning"), message)




def _report(what: str) -> Callable[[Any, BaseException], None]:
    """The runner's default error handler: a notification saying what failed."""

    def report(panel: Any, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            if panel is not None:
                _notify.info(f"eelsanom: {what} cancelled.")
            return
        if isinstance(exc, InputError):
            msg = str(exc)
        else:
            log.error("%s failed", what, exc_info=exc)
            msg = f"{what} failed: {type(exc).__name__}: {exc}"
        if panel is not None:
            _notify.error(msg)
    return report
