"""The eelsanom dock widgets (magicgui containers) and :func:`dock_all`, re-exported.

Five thin panels over the library (the sixth, the latent space, is in
:mod:`._latent_panel`), sharing one :class:`~._session.Session` per viewer; all derive from
:class:`~._panel._Panel` and run their heavy work through its one worker runner
(:meth:`~._panel._Panel.run_worker`):

1. :class:`BulkRegionWidget` - the spectrum image and the bulk (training) region;
2. :class:`DetectorWidget` - method, hyperparameters, device; Train / Apply / Cancel in a
   worker thread with a napari progress bar; load / save a model file;
3. :class:`ResultsWidget` - threshold method (Otsu, GMM, top %, manual slider) applied live,
   NLL histogram with the threshold line;
4. :class:`SpectrumInspectorWidget` - click a pixel (or Shift+arrow keys) to plot its
   spectrum, the model's mean with its ±sigma band, the residual and the energy window that
   contributes most to its NLL;
5. :class:`ExportWidget` - the run folder ``eelsanom detect`` writes (maps, summary JSON, seed
   maps) and the model file.

Each panel is its own module (:mod:`.bulk_region`, :mod:`.detector`, :mod:`.results`,
:mod:`.inspector`, :mod:`.export`) and the docking is :mod:`.layout`; this module keeps the
names importable from ``eelsanom_napari._widgets``.

Child widgets are private attributes (``self._method``, ``self._train_btn``...) and every
button has a handler method (``_on_train``...), so tests drive the panels by setting values
and calling handlers. Heavy imports (torch, the detectors) happen inside the worker
functions, never in the GUI thread.
"""

from __future__ import annotations

from .bulk_region import ALL_PIXELS, BulkRegionWidget
from .detector import PROGRESS_EVERY, DetectorWidget
from .export import ExportWidget
from .inspector import CACHE_PIXELS, OVERLAY_MAX, SpectrumInspectorWidget
from .layout import LARGE_SCREEN, LAYOUTS, PANELS, choose_layout, dock_all, size_docks
from .results import ResultsWidget, line_scan_axis, threshold_methods

__all__ = ["BulkRegionWidget", "DetectorWidget", "ResultsWidget", "SpectrumInspectorWidget",
           "ExportWidget", "dock_all", "size_docks", "choose_layout", "line_scan_axis",
           "threshold_methods", "PANELS", "LAYOUTS", "LARGE_SCREEN", "ALL_PIXELS",
           "PROGRESS_EVERY", "CACHE_PIXELS", "OVERLAY_MAX"]
