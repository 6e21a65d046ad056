"""Small matplotlib helpers (no pyplot state: figures are built on the Agg canvas)."""

from __future__ import annotations

from typing import Any

import numpy as np


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.4, 4.4)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def new_axes(ax: Any = None, *, size: tuple[float, float] = (6.4, 4.4)) -> tuple[Any, Any]:
    """``(figure, axes)``: the given axes and its figure, or a new single-axes figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(size=size)
    return fig, fig.add_subplot()


def image(ax: Any, arr: np.ndarray, *, title: str, cbar_label: str, cmap: str = "viridis",
          vmin: float | None = None, vmax: float | None = None) -> Any:
    """A per-pixel map in pixel coordinates with a labelled colour bar."""
    import matplotlib

    cm = matplotlib.colormaps[cmap].copy()
    cm.set_bad("0.6")
    a = np.asarray(arr, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    im = ax.imshow(np.ma.masked_invalid(a), cmap=cm, vmin=vmin, vmax=vmax,
                   interpolation="nearest", aspect="equal" if a.shape[0] > 1 else "auto")
    cb = ax.figure.colorbar(im, ax=ax)
    cb.set_label(cbar_label)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(title, fontsize=10)
    return im
