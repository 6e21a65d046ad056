"""Is every text of a matplotlib figure inside it, and is every axis and colour bar labelled?

:func:`text_problems` draws a figure with its renderer, records each text artist that is
actually drawn (tick labels outside the view are not) and its window extent
(``get_window_extent``), and lists what is wrong: a text reaching beyond the figure, an axis
label or title overlapping another text or another plot, an axis with tick labels but no
label, a colour bar without a label. :func:`install` makes every ``Figure.savefig`` of a process check its figure
first and append the problems to a JSON-lines file, so that a CLI run as a subprocess can be
checked for every picture it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

#: pixels a text may reach past the figure's edge (antialiasing)
TOLERANCE_PX = 1.0


@contextlib.contextmanager
def _recording() -> Any:
    from matplotlib.text import Text

    drawn: list[tuple[Any, Any]] = []
    orig = Text.draw

    def draw(self: Any, renderer: Any) -> None:
        orig(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, self.get_window_extent(renderer)))

    Text.draw = draw
    try:
        yield drawn
    finally:
        Text.draw = orig


def _name(t: Any) -> str:
    return repr(t.get_text()[:60])


def text_problems(fig: Any, *, where: str = "figure", overlaps: bool = True) -> list[str]:
    """What is clipped or unlabelled in ``fig`` (an empty list when nothing is).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    where : str
        Name of the figure in the messages.
    overlaps : bool
        Also report an axis label or title overlapping another text.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    with _recording() as drawn:
        fig.canvas.draw()
    fb = fig.bbox
    out = []
    for t, bb in drawn:
        if (bb.x0 < fb.x0 - TOLERANCE_PX or bb.x1 > fb.x1 + TOLERANCE_PX
                or bb.y0 < fb.y0 - TOLERANCE_PX or bb.y1 > fb.y1 + TOLERANCE_PX):
            out.append(f"{where}: text {_name(t)} at x {bb.x0:.0f}..{bb.x1:.0f}, y "
                       f"{bb.y0:.0f}..{bb.y1:.0f} leaves the {fb.width:.0f} x {fb.height:.0f} "
                       "px figure")
    labels = set()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        labels |= {id(ax.xaxis.label), id(ax.yaxis.label), id(ax.title)}
        cb = getattr(ax, "_colorbar", None)
        drawn_ids = {id(t) for t, _ in drawn}
        if cb is not None:
            long_axis = ax.yaxis if cb.orientation == "vertical" else ax.xaxis
            if not long_axis.label.get_text().strip():
                out.append(f"{where}: a colour bar has no label")
            continue
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            ticks = [lab for lab in axis.get_ticklabels() if id(lab) in drawn_ids]
            if ticks and not axis.label.get_text().strip():
                title = ax.get_title() or "an axes"
                out.append(f"{where}: {title!r} has {name} tick labels but no {name} label")
    if overlaps:  # an axis label or title over any other text
        for i, (t, bb) in enumerate(drawn):
            if id(t) not in labels:
                continue
            for j, (u, ub) in enumerate(drawn):
                if i != j and _overlap_area(bb, ub) > 2.0:
                    out.append(f"{where}: {_name(t)} overlaps {_name(u)}")
            for ax in fig.axes:  # ... or over another plot
                if ax is t.axes or not ax.get_visible() or not ax.axison:
                    continue
                if _overlap_area(bb, ax.get_window_extent()) > 2.0:
                    out.append(f"{where}: {_name(t)} lies over another plot "
                               f"({ax.get_title() or ax.get_ylabel() or 'axes'!r})")
    return sorted(set(out))


def _overlap_area(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def install(report_path: str | os.PathLike) -> None:
    """Make every ``Figure.savefig`` of this process check its figure first; each saved
    figure appends ``{"file": ..., "problems": [...]}`` to ``report_path`` (JSON lines)."""
    from matplotlib.figure import Figure

    orig = Figure.savefig

    def savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> Any:
        name = os.path.basename(str(fname)) if isinstance(fname, (str, os.PathLike)) else "?"
        probs = text_problems(self, where=name)
        with open(report_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"file": name, "problems": probs}) + "\n")
        return orig(self, fname, *args, **kwargs)

    Figure.savefig = savefig
