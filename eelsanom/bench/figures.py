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

    for name, maps in cond_maps:
        dets = [d for d in maps["nll"] if d not in ("supervised-limit", "hyperspy-decomposition")]
        fig, axes = plt.subplots(2, len(dets) + 1, figsize=(3.0 * (len(dets) + 1), 6.0),
                                 squeeze=False)
        axes[0][0].imshow(maps["truth"], cmap="gray", interpolation="nearest")
        axes[0][0].set_title("ground truth")
        axes[1][0].axis("off")
        for j, det in enumerate(dets, start=1):
            nll = np.asarray(maps["nll"][det], float)
            lo, hi = np.percentile(nll, [1, 99.5])
            im = axes[0][j].imshow(nll, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
            axes[0][j].set_title(det, fontsize=9)
            fig.colorbar(im, ax=axes[0][j], fraction=0.046, pad=0.04, label="NLL")
            t = maps["thresholds"][det]
            bins = np.linspace(np.percentile(nll, 0.1), nll.max(), 80)
            axes[1][j].hist(nll[~maps["truth"]], bins=bins, alpha=0.6, label="normal")
            if maps["truth"].any():
                axes[1][j].hist(nll[maps["truth"]], bins=bins, alpha=0.6, label="anomalous")
            axes[1][j].axvline(t, color="k", lw=1, label="threshold")
            axes[1][j].set_yscale("log")
            axes[1][j].set_xlabel("NLL")
            axes[1][j].set_ylabel("pixels")
        axes[1][1].legend(fontsize=7)
        for a in axes[0]:
            a.set_xticks([])
            a.set_yticks([])
        fig.suptitle(name)
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        p = out / f"maps_{safe}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths
