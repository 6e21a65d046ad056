"""Matplotlib canvases docked in napari: the pixel-spectrum plot and the NLL histogram.

Both keep the artists they draw as attributes (``observed_line``, ``mean_line``,
``band``, ``residual_line``, ``energy_window``, ``threshold_line``...) so that tests
can read exactly what is on screen.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from qtpy.QtCore import QTimer

__all__ = ["SpectrumCanvas", "HistogramCanvas", "LineScanCanvas"]

# napari's dark theme
_BG = "#262930"
_FG = "#d6d6d6"
_OBS = "#f0f0f0"
_MEAN = "#ff9f1c"
_WIN = "#e63946"


class _Canvas(FigureCanvasQTAgg):
    """A Qt matplotlib canvas with margins fixed in inches (set on resize): cheaper to draw
    than a constrained layout, which re-solves the layout on every draw."""

    #: left, right, top, bottom margins in inches
    margins = (0.62, 0.12, 0.32, 0.45)
    #: when the next queued redraw of any canvas may start (time.monotonic)
    _next_slot = 0.0
    #: spacing (s) of queued redraws of different canvases, and the least delay of one
    STAGGER = 0.06
    FIRST = 0.015

    def draw_idle(self) -> None:
        """Queue a redraw like matplotlib does, but never in the same event-loop turn as
        another canvas's queued redraw: several plots updated at once (a new result) then
        cost the GUI thread one plot per turn instead of all of them in one."""
        if getattr(self, "_draw_pending", False) or getattr(self, "_is_drawing", False):
            return
        self._draw_pending = True
        now = time.monotonic()
        start = max(now + self.FIRST, _Canvas._next_slot)
        _Canvas._next_slot = start + self.STAGGER
        QTimer.singleShot(int(1000 * (start - now)), self._draw_idle)

    def resizeEvent(self, event: Any) -> None:  # Qt API
        super().resizeEvent(event)
        self.fit_margins()

    def _init_blit(self) -> None:
        """Animated artists (``self._animated``) are drawn over a cached background, so
        moving one (a threshold line, a highlight) costs a blit, not a full redraw."""
        self._animated: list[Any] = []
        self._background: Any = None
        self.mpl_connect("draw_event", self._on_draw_event)

    def _on_draw_event(self, _event: Any) -> None:
        if self.is_saving():  # a savefig draws the animated artists itself
            self._background = None
            return
        self._background = self.copy_from_bbox(self.figure.bbox)
        for a in self._animated:
            if a.axes is not None and a.figure is self.figure:
                a.axes.draw_artist(a)

    def _blit(self) -> None:
        """Redraw only the animated artists (a full redraw when no background exists)."""
        if self._background is None or getattr(self, "_draw_pending", False):
            self.draw_idle()
            return
        self.restore_region(self._background)
        for a in self._animated:
            if a.axes is not None and a.figure is self.figure:
                a.axes.draw_artist(a)
        # matplotlib's blit() repaints synchronously (and napari's window with it): ask Qt
        # for a paint of the updated buffer at its next turn instead
        self.update()

    def fit_margins(self) -> None:
        """Apply :attr:`margins` to the figure's current size."""
        w, h = self.figure.get_size_inches()
        if w <= 0 or h <= 0:
            return
        left, right, top, bottom = self.margins
        self.figure.subplots_adjust(left=min(0.4, left / w), right=max(0.6, 1 - right / w),
                                    top=max(0.6, 1 - top / h), bottom=min(0.4, bottom / h))


def _style(fig: Figure, *axes: Any) -> None:
    fig.set_facecolor(_BG)
    for ax in axes:
        ax.set_facecolor(_BG)
        ax.tick_params(colors=_FG, labelsize=8)
        for sp in ax.spines.values():
            sp.set_color(_FG)
        ax.xaxis.label.set_color(_FG)
        ax.yaxis.label.set_color(_FG)
        ax.title.set_color(_FG)


#: colours of pinned pixels / region means drawn over the inspected pixel
_OVERLAY = ("#4cc9f0", "#80ed99", "#f72585", "#b8c0ff", "#ffd166", "#06d6a0")


class SpectrumCanvas(_Canvas):
    """One pixel's spectrum, the model's mean with its ±sigma band, and the residual.

    The upper axes show the observed counts, the reconstruction (mean) and the
    band ``mean ± sigma``; the lower axes the residual ``observed - mean`` with
    the band ``± sigma``. The energy window that contributes most to the pixel's
    NLL (:meth:`~eelsanom.result.PixelSpectrum.top_window`) is shaded in both.

    A spectrum tool besides: ``overlays`` (pinned pixels, the mean of a drawn region,
    each observed and, when known, modelled) are drawn over the pixel; dragging on the
    upper axes picks an energy window (``picked_window``; ``on_span(lo, hi)`` is called),
    shown as a dashed span until the next pick. The legend sits above the axes, never
    over the data.

    Cheap to update: the artists are made once and updated in place (``set_data``), and
    they are *animated*: drawn over a cached background of axes, ticks and labels. Showing
    another pixel whose curves fit the current limits costs a blit; only new limits (kept
    with some slack, so that neighbours share them), new overlays or a new legend cost a
    full redraw. ``n_full_draws`` and ``n_blits`` count both (read by tests).
    """

    margins = (0.62, 0.12, 0.55, 0.45)
    #: the curves keep the current y-limits while they span at least this fraction of them;
    #: new limits leave MARGIN of the curves' span free above and below
    KEEP_LIMITS = 0.5
    MARGIN = 0.12

    def __init__(self, width: float = 5.0, height: float = 3.6) -> None:
        from matplotlib.widgets import SpanSelector

        fig = Figure(figsize=(width, height), dpi=100)
        super().__init__(fig)
        self.ax, self.ax_res = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
        fig.subplots_adjust(hspace=0.08)
        self.fit_margins()
        self._init_blit()
        self.mpl_connect("draw_event", self._count_draw)
        ax, axr = self.ax, self.ax_res
        for a in (ax, axr):
            a.set_autoscale_on(False)
        anim = {"animated": True, "visible": False}
        # made once, updated in place (see the class docstring)
        self._win = [a.axvspan(0.0, 1.0, color=_WIN, alpha=0.25, lw=0, **anim)
                     for a in (ax, axr)]
        self._win[0].set_label("top-NLL window")
        self._band = ax.fill_between([0.0, 1.0], [0.0, 0.0], [0.0, 0.0], color=_MEAN,
                                     alpha=0.3, lw=0, label="model ±σ", **anim)
        (self._obs,) = ax.plot([], [], color=_OBS, lw=1.0, label="observed", **anim)
        (self._mean,) = ax.plot([], [], color=_MEAN, lw=1.3, label="model", **anim)
        self._res_band = axr.fill_between([0.0, 1.0], [0.0, 0.0], [0.0, 0.0], color=_MEAN,
                                          alpha=0.3, lw=0, **anim)
        (self._res,) = axr.plot([], [], color=_OBS, lw=0.8, **anim)
        axr.axhline(0.0, color=_FG, lw=0.5)
        self._picked = ax.axvspan(0.0, 1.0, facecolor="none", edgecolor="#4cc9f0", ls="--",
                                  lw=1.0, **anim)
        text = {"ha": "center", "va": "center", "color": _FG, "animated": True}
        self._message = ax.text(0.5, 0.5, "", transform=ax.transAxes, fontsize=9, **text)
        self._res_message = axr.text(0.5, 0.5, "no model yet: train or load one",
                                     transform=axr.transAxes, fontsize=8, **text)
        self._res_message.set_visible(False)
        ax.title.set_animated(True)
        self._overlay_key: Any = None
        self._legend_key: Any = None
        self._legend_model = False
        self.n_full_draws = 0
        self.n_blits = 0
        # what tests read: the artists on screen now (None when not shown)
        self.observed_line: Any = None
        self.mean_line: Any = None
        self.band: Any = None
        self.residual_line: Any = None
        self.residual_band: Any = None
        self.legend: Any = None
        self.energy_window: tuple[float, float] | None = None
        self.energy_window_spans: list[Any] = []
        self.pixel: tuple[int, int] | None = None
        #: (label, energy, observed, model mean or None) drawn over the pixel
        self.overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self.overlay_lines: list[Any] = []
        self.picked_window: tuple[float, float] | None = None
        self.on_span: Any = None
        self._title_pad = 26.0
        self._labels()
        self._span = SpanSelector(ax, self._spanned, "horizontal", useblit=False,
                                  props={"facecolor": "#4cc9f0", "alpha": 0.25},
                                  interactive=False, minspan=1e-9, button=1)
        self.setMinimumHeight(220)
        self.clear("click a pixel to see its spectrum")

    def _count_draw(self, _event: Any) -> None:
        self.n_full_draws += 1

    def _blit(self) -> None:
        self.n_blits += 1
        super()._blit()

    def _set_animated(self) -> None:
        """The animated artists in drawing order (spans under curves, text on top)."""
        self._animated = [*self._win, self._band, *self.overlay_lines, self._obs, self._mean,
                          self._res_band, self._res, self._picked, self._message,
                          self._res_message, self.ax.title]

    def clear(self, message: str = "") -> None:
        """Hide the pixel's curves (with a message in the upper axes); a full redraw."""
        for a in (*self._win, self._band, self._obs, self._mean, self._res_band, self._res,
                  self._res_message, *self.overlay_lines):
            a.set_visible(False)
        if self.legend is not None:
            self.legend.remove()
        self.legend, self._legend_key, self._overlay_key = None, None, None
        for line in self.overlay_lines:
            line.remove()
        self.overlay_lines = []
        self.observed_line = self.mean_line = self.band = None
        self.residual_line = self.residual_band = None
        self.energy_window, self.energy_window_spans, self.pixel = None, [], None
        self._message.set_text(message)
        self._message.set_visible(bool(message))
        self.ax.set_title("")
        self._picked.set_visible(False)
        self._set_animated()
        self.draw_idle()

    def _labels(self) -> None:
        self.ax.set_ylabel("counts")
        self.ax_res.set_ylabel("residual")
        self.ax_res.set_xlabel("energy loss (eV)")
        _style(self.figure, self.ax, self.ax_res)

    # ------------------------------------------------------------------ energy window picking
    def _spanned(self, lo: float, hi: float) -> None:
        if not hi > lo:
            return
        self.pick_window(float(lo), float(hi))

    def pick_window(self, lo: float, hi: float) -> None:
        """Mark ``[lo, hi]`` eV as the picked energy window and tell ``on_span``."""
        self.picked_window = (lo, hi)
        self._draw_picked()
        self._legend()
        self.draw_idle()
        if self.on_span is not None:
            self.on_span(lo, hi)

    def _draw_picked(self) -> None:
        w = self.picked_window
        self._picked.set_visible(w is not None and self.pixel is not None)
        if w is not None:
            self._picked.set_x(w[0])
            self._picked.set_width(w[1] - w[0])
            self._picked.set_label(f"picked: {w[0]:.1f}-{w[1]:.1f} eV")

    # ------------------------------------------------------------------ drawing
    def _sync_overlays(self) -> bool:
        """(Re)make the overlay lines when the overlays changed; True when they did."""
        key = tuple((o[0], id(o[1]), id(o[2]), id(o[3])) for o in self.overlays)
        if key == self._overlay_key:
            for line in self.overlay_lines:
                line.set_visible(True)
            return False
        for line in self.overlay_lines:
            line.remove()
        self.overlay_lines = []
        for i, (label, e, obs, model) in enumerate(self.overlays):
            c = _OVERLAY[i % len(_OVERLAY)]
            (line,) = self.ax.plot(e, obs, color=c, lw=0.9, label=label, animated=True)
            self.overlay_lines.append(line)
            if model is not None:
                (mline,) = self.ax.plot(e, model, color=c, lw=0.9, ls="--", animated=True,
                                        label=f"{label}: model")
                self.overlay_lines.append(mline)
        self._overlay_key = key
        return True

    def _legend(self, model: bool | None = None) -> bool:
        """The legend of the visible curves, above the axes; made anew (a full redraw)
        only when its entries change. It is part of the background, so its labels do not
        change per pixel (the top-NLL window's range is in the title)."""
        if model is None:
            model = self._legend_model
        self._legend_model = model
        # the model's entries stay while a pixel's model is being computed (expect_model):
        # the legend, part of the background, then does not change twice per first click
        handles = [a for a in (self._band, self._obs, self._mean, self._win[0])
                   if a is self._obs or model]
        handles += [a for a in (*self.overlay_lines, self._picked) if a.get_visible()]
        labels = [a.get_label() for a in handles]
        key = (tuple(labels), tuple(id(a) for a in handles))
        if key == self._legend_key and self.legend is not None:
            return False
        if self.legend is not None:
            self.legend.remove()
        # the legend copies each handle's style, visibility included: the model's curves
        # may be hidden for now (being computed), their entries must not be
        hidden = [a for a in handles if not a.get_visible()]
        for a in hidden:
            a.set_visible(True)
        try:
            self.legend = self.ax.legend(handles, labels, loc="lower left",
                                         bbox_to_anchor=(0.0, 1.0), ncol=4, fontsize=6.5,
                                         frameon=False, borderaxespad=0.1, handlelength=1.2,
                                         columnspacing=0.8, handletextpad=0.4)
        finally:
            for a in hidden:
                a.set_visible(False)
        for t in self.legend.get_texts():
            t.set_color(_FG)
        n = len(labels)
        self._title_pad = 16 if n <= 4 else 26 if n <= 8 else 36
        self._legend_key = key
        return True

    def _fit_y(self, ax: Any, curves: list[np.ndarray]) -> bool:
        """Set ``ax``'s y-limits to the curves (:attr:`MARGIN`) unless the current ones hold
        them with little waste (:attr:`KEEP_LIMITS`); True when the limits changed."""
        finite = [c[np.isfinite(c)] for c in curves]
        finite = [c for c in finite if c.size]
        if not finite:
            return False
        lo = min(float(c.min()) for c in finite)
        hi = max(float(c.max()) for c in finite)
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        cur_lo, cur_hi = ax.get_ylim()
        if cur_lo <= lo and hi <= cur_hi and span >= self.KEEP_LIMITS * (cur_hi - cur_lo):
            return False
        ax.set_ylim(lo - self.MARGIN * span, hi + self.MARGIN * span)
        return True

    def show_pixel(self, energy: np.ndarray, observed: np.ndarray, *, title: str,
                   pixel: tuple[int, int], spectrum: Any = None, window_ev: float = 5.0,
                   expect_model: bool = False) -> None:
        """Plot a pixel (and the overlays).

        Parameters
        ----------
        energy, observed : ndarray of shape (n_energy,)
            Energy axis (eV) and counts; used when ``spectrum`` is None (no model yet).
        title : str
        pixel : (iy, ix)
        spectrum : PixelSpectrum, optional
            The model's view of the pixel (mean, sigma, residual, per-channel NLL).
        window_ev : float
            Width of the highlighted energy window.
        expect_model : bool
            ``spectrum`` is None because the pixel's model is being computed (the plot
            says so, and keeps the model's legend entries).
        """
        self.pixel = (int(pixel[0]), int(pixel[1]))
        self._message.set_visible(False)
        model = spectrum is not None
        if model:
            e = np.asarray(spectrum.energy, float)
            obs = np.asarray(spectrum.observed, float)
            m, s = np.asarray(spectrum.mean, float), np.asarray(spectrum.sigma, float)
            r = np.asarray(spectrum.residual, float)
            self._band.set_data(e, m - s, m + s)
            self._mean.set_data(e, m)
            self._res_band.set_data(e, -s, s)
            self._res.set_data(e, r)
            self.energy_window = spectrum.top_window(window_ev)
            lo_w, hi_w = self.energy_window
            for span in self._win:
                span.set_x(lo_w)
                span.set_width(hi_w - lo_w)
            title = f"{title}; top NLL {lo_w:.1f}-{hi_w:.1f} eV"
        else:
            e, obs = np.asarray(energy, float), np.asarray(observed, float)
            self.energy_window = None
        self._obs.set_data(e, obs)
        self._obs.set_visible(True)
        for a in (self._band, self._mean, self._res_band, self._res, *self._win):
            a.set_visible(model)
        self._res_message.set_visible(not model)
        self._res_message.set_text("computing the model..." if expect_model else
                                   "no model yet: train or load one")
        self.observed_line = self._obs
        self.mean_line, self.band = (self._mean, self._band) if model else (None, None)
        self.residual_line, self.residual_band = ((self._res, self._res_band) if model
                                                  else (None, None))
        self.energy_window_spans = list(self._win) if model else []
        full = self._sync_overlays()
        self._draw_picked()
        full |= self._legend(model or expect_model)
        self._set_animated()
        # limits: the energy axis exactly, counts and residual with some slack
        e_all = [e] + [np.asarray(o[1], float) for o in self.overlays]
        lo, hi = min(float(x.min()) for x in e_all), max(float(x.max()) for x in e_all)
        if hi > lo and self.ax.get_xlim() != (lo, hi):
            self.ax.set_xlim(lo, hi)
            full = True
        curves = [obs] + ([m - s, m + s] if model else [])
        curves += [np.asarray(c, float) for o in self.overlays for c in (o[2], o[3])
                   if c is not None]
        full |= self._fit_y(self.ax, curves)
        if model:
            full |= self._fit_y(self.ax_res, [r, s, -s])
        self.ax.set_title(title, fontsize=8, pad=self._title_pad)
        if full:
            self.draw_idle()
        else:
            self._blit()

    def set_title(self, title: str) -> None:
        """Change the title only (e.g. the pixel's flag after a threshold change): a blit."""
        self.ax.set_title(title, fontsize=8, pad=self._title_pad)
        self._blit()


class HistogramCanvas(_Canvas):
    """Histogram of the NLL map (log counts) with the threshold as a vertical line."""

    def __init__(self, width: float = 4.0, height: float = 2.2) -> None:
        fig = Figure(figsize=(width, height), dpi=100)
        super().__init__(fig)
        self.ax = fig.add_subplot()
        self.fit_margins()
        self.threshold_line: Any = None
        self.counts: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self._init_blit()
        self.setMinimumHeight(150)
        self.clear()

    def clear(self) -> None:
        self.ax.clear()
        self.threshold_line, self.counts, self.edges = None, None, None
        self._animated, self._background = [], None
        self.ax.text(0.5, 0.5, "no NLL map yet", ha="center", va="center", color=_FG,
                     transform=self.ax.transAxes, fontsize=9)
        self._labels()
        self.draw_idle()

    def _labels(self) -> None:
        self.ax.set_xlabel("NLL (higher = more anomalous)")
        self.ax.set_ylabel("pixels")
        _style(self.figure, self.ax)

    def show(self, nll: np.ndarray, threshold: float, bins: int = 80) -> None:
        """Draw the histogram of the finite values of ``nll`` and the threshold line."""
        v = np.asarray(nll, float).ravel()
        v = v[np.isfinite(v)]
        self.show_counts(*np.histogram(v, bins=bins), threshold)

    def show_counts(self, counts: np.ndarray, edges: np.ndarray, threshold: float) -> None:
        """Draw a histogram computed elsewhere (e.g. in a worker) and the threshold line."""
        self.ax.clear()
        self._background = None
        self.counts, self.edges = np.asarray(counts), np.asarray(edges)
        self.ax.stairs(self.counts, self.edges, fill=True, color="#8c6bb1", alpha=0.9)
        self.ax.set_yscale("log")
        # plain tick labels: the default 10^k labels go through mathtext, slow to draw
        self.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        self.ax.yaxis.set_minor_formatter(NullFormatter())
        self.ax.set_ylim(0.8, None)
        self.threshold_line = self.ax.axvline(threshold, color="cyan", lw=1.5, animated=True)
        self._animated = [self.threshold_line]
        self._labels()
        self.draw_idle()

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold line (a blit over the cached histogram)."""
        if self.threshold_line is None:
            return
        self.threshold_line.set_xdata([threshold, threshold])
        self._blit()


class LineScanCanvas(_Canvas):
    """A line scan (spectra along one line): the spectra as a position x energy image, and
    the NLL against position with the threshold and the flagged positions.

    Attributes read by tests: ``image`` (the AxesImage; rows are positions), ``nll_line``,
    ``threshold_line``, ``flagged`` (positions above the threshold), ``marker`` (the
    inspected position in both axes). ``on_pick(index)`` is called with the position index
    clicked in either axes.
    """

    margins = (0.62, 0.12, 0.3, 0.45)

    def __init__(self, width: float = 5.0, height: float = 3.8) -> None:
        fig = Figure(figsize=(width, height), dpi=100)
        super().__init__(fig)
        self.ax_img, self.ax_nll = fig.subplots(2, 1, height_ratios=(1.6, 1))
        self.fit_margins()
        self.image: Any = None
        self.nll_line: Any = None
        self.threshold_line: Any = None
        self.flagged: Any = None
        self.marker: list[Any] = []
        self.positions: np.ndarray = np.zeros(0)
        self.on_pick: Any = None
        self.setMinimumHeight(260)
        self.mpl_connect("button_press_event", self._clicked)

    #: the gap (inches) between the two plots: the image's tick labels and x label
    GAP = 0.62

    def fit_margins(self) -> None:
        """The margins, and a gap between the plots fixed in inches (``hspace`` is a
        fraction of the plots' height, so a fixed fraction let the image's x label run into
        the NLL plot on a short canvas)."""
        super().fit_margins()
        w, h = self.figure.get_size_inches()
        if w <= 0 or h <= 0:
            return
        sp = self.figure.subplotpars
        mean_h = max(((sp.top - sp.bottom) * h - self.GAP) / 2, 0.1)
        self.figure.subplots_adjust(hspace=self.GAP / mean_h)

    def show(self, energy: np.ndarray, spectra: np.ndarray, positions: np.ndarray, *,
             position_label: str, nll: np.ndarray | None = None,
             threshold: float | None = None, mask: np.ndarray | None = None,
             index: int | None = None) -> None:
        """Draw the line scan.

        Parameters
        ----------
        energy : ndarray of shape (n_energy,)
        spectra : ndarray of shape (n_positions, n_energy)
        positions : ndarray of shape (n_positions,)
            Position of each spectrum along the line (calibrated units).
        position_label : str
        nll, mask : ndarray of shape (n_positions,), optional
            Scores and flags of a result; ``threshold`` its threshold.
        index : int, optional
            The inspected position.
        """
        from ._layers import robust_limits

        for ax in (self.ax_img, self.ax_nll):
            ax.clear()
        self.positions = np.asarray(positions, float)
        e = np.asarray(energy, float)
        p = self.positions
        dp = (p[1] - p[0]) if p.size > 1 else 1.0
        de = (e[1] - e[0]) if e.size > 1 else 1.0
        lo, hi = robust_limits(spectra, 0.5, 99.5)
        self.image = self.ax_img.imshow(
            np.asarray(spectra, float), aspect="auto", origin="upper", cmap="gray",
            vmin=lo, vmax=hi, interpolation="nearest",
            extent=(e[0] - de / 2, e[-1] + de / 2, p[-1] + dp / 2, p[0] - dp / 2))
        self.ax_img.set_xlabel("energy loss (eV)")
        self.ax_img.set_ylabel(position_label)
        self.ax_img.set_title("line scan: spectra along the line (click a row)", fontsize=9)
        self.nll_line = self.threshold_line = self.flagged = None
        if nll is not None:
            (self.nll_line,) = self.ax_nll.plot(p, nll, color="#ff9f1c", lw=1.2, marker=".",
                                                label="NLL")
            if threshold is not None:
                self.threshold_line = self.ax_nll.axhline(threshold, color="cyan", lw=1.0,
                                                          label="threshold")
            if mask is not None and np.any(mask):
                m = np.asarray(mask, bool)
                self.flagged = self.ax_nll.scatter(p[m], np.asarray(nll)[m], s=30,
                                                   facecolors="none", edgecolors="cyan",
                                                   label="flagged")
            self.ax_nll.set_ylabel("NLL")
        else:
            self.ax_nll.text(0.5, 0.5, "no result yet: train or apply a detector",
                             ha="center", va="center", color=_FG,
                             transform=self.ax_nll.transAxes, fontsize=8)
        self.ax_nll.set_xlabel(position_label)
        self.ax_nll.set_xlim(p[0] - dp / 2, p[-1] + dp / 2)
        self.marker = []
        if index is not None and 0 <= index < p.size:
            self.marker = [self.ax_img.axhline(p[index], color="yellow", lw=0.8),
                           self.ax_nll.axvline(p[index], color="yellow", lw=0.8)]
        _style(self.figure, self.ax_img, self.ax_nll)
        self.draw_idle()

    def index_at(self, value: float) -> int | None:
        """The position index nearest to ``value`` (calibrated), or None outside."""
        p = self.positions
        if p.size == 0:
            return None
        k = int(np.argmin(np.abs(p - value)))
        half = abs(p[1] - p[0]) / 2 if p.size > 1 else 0.5
        return k if abs(p[k] - value) <= half + 1e-9 else None

    def _clicked(self, event: Any) -> None:
        if event.button != 1 or event.inaxes is None or self.on_pick is None:
            return
        if event.inaxes is self.ax_img:
            k = self.index_at(event.ydata)
        elif event.inaxes is self.ax_nll:
            k = self.index_at(event.xdata)
        else:
            return
        if k is not None:
            self.on_pick(k)
