"""The dock layout: every panel docked and tabbed by screen size (:func:`dock_all`)."""

from __future__ import annotations

import logging
from typing import Any

import napari

from eelsanom.errors import InputError

from ._latent_panel import LatentPanel
from ._panel import (
    _Panel,
)
from .bulk_region import BulkRegionWidget
from .detector import DetectorWidget
from .export import ExportWidget
from .inspector import SpectrumInspectorWidget
from .results import ResultsWidget

log = logging.getLogger(__name__)


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
    a 470 px column on the right; the plots 55 % of its height beside the panels, or 31 % of
    the window below the canvas, which keeps most of the window (call again after
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
            qwin.resizeDocks([plots], [max(300, int(0.31 * qwin.height()))],
                             Qt.Orientation.Vertical)
            if qwin.dockWidgetArea(results) == qwin.dockWidgetArea(plots):
                w = qwin.width()
                qwin.resizeDocks([plots, results], [int(0.58 * w), int(0.42 * w)],
                                 Qt.Orientation.Horizontal)
    except (RuntimeError, AttributeError, KeyError) as exc:  # cosmetic only
        log.debug("could not size the docks: %s", exc)
