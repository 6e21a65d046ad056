"""Matplotlib canvases docked in napari: the pixel-spectrum plot and the NLL histogram.

Both keep the artists they draw as attributes (``observed_line``, ``mean_line``,
``band``, ``residual_line``, ``energy_window``, ``threshold_line``...) so that tests
can read exactly what is on screen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

__all__ = ["SpectrumCanvas", "HistogramCanvas"]

# napari's dark theme
_BG = "#262930"
_FG = "#d6d6d6"
_OBS = "#f0f0f0"
_MEAN = "#ff9f1c"
_WIN = "#e63946"


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


class SpectrumCanvas(FigureCanvasQTAgg):
    """One pixel's spectrum, the model's mean with its ±sigma band, and the residual.

    The upper axes show the observed counts, the reconstruction (mean) and the
    band ``mean ± sigma``; the lower axes the residual ``observed - mean`` with
    the band ``± sigma``. The energy window that contributes most to the pixel's
    NLL (:meth:`~eelsanom.result.PixelSpectrum.top_window`) is shaded in both.
    """

    def __init__(self, width: float = 5.0, height: float = 3.6) -> None:
        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
        super().__init__(fig)
        self.ax, self.ax_res = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
        self.observed_line: Any = None
        self.mean_line: Any = None
        self.band: Any = None
        self.residual_line: Any = None
        self.residual_band: Any = None
        self.energy_window: tuple[float, float] | None = None
        self.energy_window_spans: list[Any] = []
        self.pixel: tuple[int, int] | None = None
        self.setMinimumHeight(220)
        self.clear("click a pixel to see its spectrum")

    def clear(self, message: str = "") -> None:
        """Empty both axes (with a message in the upper one)."""
        for ax in (self.ax, self.ax_res):
            ax.clear()
        self.observed_line = self.mean_line = self.band = None
        self.residual_line = self.residual_band = None
        self.energy_window, self.energy_window_spans, self.pixel = None, [], None
        if message:
            self.ax.text(0.5, 0.5, message, ha="center", va="center", color=_FG,
                         transform=self.ax.transAxes, fontsize=9)
        self._labels()
        self.draw_idle()

    def _labels(self) -> None:
        self.ax.set_ylabel("counts")
        self.ax_res.set_ylabel("residual")
        self.ax_res.set_xlabel("energy loss (eV)")
        _style(self.figure, self.ax, self.ax_res)

    def show_pixel(self, energy: np.ndarray, observed: np.ndarray, *, title: str,
                   pixel: tuple[int, int], spectrum: Any = None, window_ev: float = 5.0) -> None:
        """Plot a pixel.

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
        """
        self.clear()
        self.pixel = (int(pixel[0]), int(pixel[1]))
        ax, axr = self.ax, self.ax_res
        if spectrum is None:
            (self.observed_line,) = ax.plot(energy, observed, color=_OBS, lw=1.0,
                                            label="observed")
            axr.text(0.5, 0.5, "no model yet: train or load one", ha="center", va="center",
                     color=_FG, transform=axr.transAxes, fontsize=8)
        else:
            e = np.asarray(spectrum.energy, float)
            m, s = np.asarray(spectrum.mean, float), np.asarray(spectrum.sigma, float)
            self.band = ax.fill_between(e, m - s, m + s, color=_MEAN, alpha=0.3, lw=0,
                                        label="model ± σ")
            (self.observed_line,) = ax.plot(e, spectrum.observed, color=_OBS, lw=1.0,
                                            label="observed")
            (self.mean_line,) = ax.plot(e, m, color=_MEAN, lw=1.3, label="model mean")
            self.residual_band = axr.fill_between(e, -s, s, color=_MEAN, alpha=0.3, lw=0)
            (self.residual_line,) = axr.plot(e, spectrum.residual, color=_OBS, lw=0.8)
            axr.axhline(0.0, color=_FG, lw=0.5)
            self.energy_window = spectrum.top_window(window_ev)
            for a in (ax, axr):
                self.energy_window_spans.append(a.axvspan(*self.energy_window, color=_WIN, alpha=0.25, lw=0))
            self.energy_window_spans[0].set_label(
                f"largest NLL: {self.energy_window[0]:.1f}-{self.energy_window[1]:.1f} eV")
        leg = ax.legend(loc="upper right", fontsize=7, frameon=False)
        for t in leg.get_texts():
            t.set_color(_FG)
        ax.set_title(title, fontsize=9)
        self._labels()
        self.draw_idle()


    def set_title(self, title: str) -> None:
        """Change the title only (e.g. the pixel's flag after a threshold change)."""
        self.ax.set_title(title, fontsize=9)
        self.draw_idle()


class HistogramCanvas(FigureCanvasQTAgg):
    """Histogram of the NLL map (log counts) with the threshold as a vertical line."""

    def __init__(self, width: float = 4.0, height: float = 2.2) -> None:
        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
        super().__init__(fig)
        self.ax = fig.add_subplot()
        self.threshold_line: Any = None
        self.counts: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self.setMinimumHeight(150)
        self.clear()

    def clear(self) -> None:
        self.ax.clear()
        self.threshold_line, self.counts, self.edges = None, None, None
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
        self.counts, self.edges = np.asarray(counts), np.asarray(edges)
        self.ax.stairs(self.counts, self.edges, fill=True, color="#8c6bb1", alpha=0.9)
        self.ax.set_yscale("log")
        self.ax.set_ylim(0.8, None)
        self.threshold_line = self.ax.axvline(threshold, color="cyan", lw=1.5)
        self._labels()
        self.draw_idle()

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold line."""
        if self.threshold_line is None:
            return
        self.threshold_line.set_xdata([threshold, threshold])
        self.draw_idle()
