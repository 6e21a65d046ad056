"""The benchmark's figures: ROC curves, NLL histograms with thresholds, truth vs maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .references import REFERENCES


def _figures(cond_maps: list[tuple[str, dict[str, Any]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    paths = []
    with_truth = [(name, maps) for name, maps in cond_maps if maps["truth"].any()]
    n = max(1, len(with_truth))
    ncol = min(n, 4)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.8 * nrow), squeeze=False)
    for ax, (name, maps) in zip(axes.ravel(), with_truth):
        for det, nll in maps["nll"].items():
            fpr, tpr, _ = roc_curve(maps["truth"].ravel(), np.asarray(nll).ravel())
            ax.plot(fpr, tpr, label=det, lw=1.2, ls="--" if det in REFERENCES else "-")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
    for ax in axes.ravel()[len(with_truth):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    p = out / "roc_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # one figure per condition, drawn into one reused figure while the detectors are the same
    # (building the axes, colour bars and layout of ~30 panels cost more than drawing them)
    fig: _MapsFigure | None = None
    for name, maps in cond_maps:
        dets = [d for d in maps["nll"] if d not in ("supervised-limit", "hyperspy-decomposition")]
        if fig is None or fig.dets != dets:
            if fig is not None:
                fig.close()
            fig = _MapsFigure(dets)
        fig.show(name, maps)
        safe = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        p = out / f"maps_{safe}.png"
        fig.fig.savefig(p, dpi=90)
        paths.append(p)
    if fig is not None:
        fig.close()
    return paths


class _MapsFigure:
    """Ground truth, each detector's NLL map and its histogram with the threshold.

    Built once for a list of detectors (axes, colour bars, layout); :meth:`show`
    puts a condition's maps into it, so that drawing a suite's conditions does not
    build ~30 panels again for each.
    """

    #: histogram bins (from the 0.1th percentile of the map to its maximum)
    BINS = 80

    def __init__(self, dets: list[str]) -> None:
        import matplotlib.pyplot as plt

        self.dets = list(dets)
        n = len(dets) + 1
        self.fig, axes = plt.subplots(2, n, figsize=(3.0 * n, 6.0), squeeze=False)
        self.axes = axes
        blank = np.zeros((2, 2))
        self.truth = axes[0][0].imshow(blank, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
        axes[0][0].set_title("ground truth")
        axes[1][0].axis("off")
        self.images, self.steps, self.lines = [], [], []
        edges = np.linspace(0.0, 1.0, self.BINS + 1)
        for j, det in enumerate(dets, start=1):
            im = axes[0][j].imshow(blank, cmap="magma", interpolation="nearest")
            axes[0][j].set_title(det, fontsize=9)
            self.fig.colorbar(im, ax=axes[0][j], fraction=0.046, pad=0.04, label="NLL")
            ax = axes[1][j]
            pair = tuple(ax.stairs(np.ones(self.BINS), edges, fill=True, alpha=0.6, color=col,
                                   label=lab)
                         for lab, col in (("normal", "C0"), ("anomalous", "C1")))
            self.lines.append(ax.axvline(0.5, color="k", lw=1, label="threshold"))
            ax.set_yscale("log")
            ax.set_xlabel("NLL")
            ax.set_ylabel("pixels")
            self.images.append(im)
            self.steps.append(pair)
        if dets:
            axes[1][1].legend(fontsize=7)
        for a in axes[0]:
            a.set_xticks([])
            a.set_yticks([])
        self.title = self.fig.suptitle(" ")
        self._laid_out = False

    def show(self, name: str, maps: dict[str, Any]) -> None:
        """Put one condition's truth, maps, histograms and thresholds into the figure."""
        truth = np.asarray(maps["truth"], bool)
        self.truth.set_data(truth.astype(float))
        self.truth.set_extent((-0.5, truth.shape[1] - 0.5, truth.shape[0] - 0.5, -0.5))
        for j, det in enumerate(self.dets):
            nll = np.asarray(maps["nll"][det], float)
            lo, hi = np.percentile(nll, [1, 99.5])
            im = self.images[j]
            im.set_data(nll)
            im.set_extent((-0.5, nll.shape[1] - 0.5, nll.shape[0] - 0.5, -0.5))
            im.set_clim(lo, hi)
            bins = np.linspace(np.percentile(nll, 0.1), nll.max(), self.BINS + 1)
            if not bins[-1] > bins[0]:  # a constant map: one bin around its value
                bins = np.linspace(bins[0] - 0.5, bins[0] + 0.5, self.BINS + 1)
            for step, sel in zip(self.steps[j], (~truth, truth)):
                counts, _ = np.histogram(nll[sel], bins=bins)
                step.set_data(counts, bins)
                step.set_visible(bool(sel.any()))
            t = float(maps["thresholds"][det])
            self.lines[j].set_xdata([t, t])
            ax = self.axes[1][j + 1]
            ax.relim()
            ax.autoscale_view()
        self.title.set_text(name)
        if not self._laid_out:  # the layout depends on the labels, not on the data
            self.fig.tight_layout()
            self._laid_out = True

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.fig)
