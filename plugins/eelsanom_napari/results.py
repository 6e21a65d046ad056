"""Panel 3, the results: threshold method (Otsu, GMM, top %, manual slider) applied live,
the NLL histogram with the threshold line."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    FloatSlider,
    FloatSpinBox,
    Label,
)

from eelsanom.errors import InputError

from . import _notify
from ._panel import (
    _Panel,
)
from ._plot import HistogramCanvas, LineScanCanvas
from ._session import threshold_spec


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
