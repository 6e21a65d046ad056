"""The latent-space panel: per-pixel latent maps as layers and a scatter of the latent codes.

:class:`LatentPanel` works on the session's current result (a detector that keeps
latent codes: the 3D-CVAE or PCA). **Compute maps** runs, in a worker thread, the
per-pixel tools of :mod:`eelsanom.latent` and shows each as an image layer on the
data's spatial grid (replaced, not piled up, on recompute):

- local intrinsic dimension (:func:`eelsanom.latent.local_dimension_map`, TwoNN on
  each pixel's ``k`` nearest codes);
- against a *reference space* over the same pixels -- a PCA fitted on the bulk region
  (as many components as the result's latent, at least 2; same energy window), or the
  previous result of the session -- the relative-representation agreement
  (:func:`~eelsanom.latent.relative_agreement`), the mutual k-NN overlap
  (:func:`~eelsanom.latent.mutual_knn_map`) and the Procrustes residual
  (:func:`~eelsanom.latent.procrustes`, divided by the RMS norm of the codes);
- the seed disagreement ``result.maps["seed_disagreement"]`` when the detector was
  trained with several seeds (the panel says why when it is not there).

The scatter shows the codes projected on their first two principal axes, coloured by
NLL (a fixed-seed random subsample above ``max points``). Clicking a point shows that
pixel in the spectrum inspector (:meth:`~._session.Session.select_pixel`); inspecting
a pixel (click in the viewer, Shift + arrows) highlights its point.

The numerical helpers (:func:`~eelsanom.latent.maps.project_codes`,
:func:`~eelsanom.latent.maps.scatter_indices`,
:func:`~eelsanom.latent.maps.compute_latent_maps`) live in :mod:`eelsanom.latent.maps`
(Qt-free, for notebooks too); this module is the canvas and the panel.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Label, PushButton, SpinBox
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from eelsanom.errors import InputError
from eelsanom.latent.maps import (
    SCATTER_SEED,
    LatentMaps,
    compute_latent_maps,
    project_codes,
    scatter_indices,
)
from eelsanom.latent.maps import TWO_SPACE_KEYS as _TWO_SPACE

from . import _notify
from ._layers import KEY, nav_scale_translate, robust_limits
from ._panel import METHOD_NAMES, _Panel
from ._plot import _FG, _Canvas, _style
from ._session import show_colorbar

log = logging.getLogger(__name__)

__all__ = ["LatentPanel", "LatentScatterCanvas", "LatentMaps", "MAP_LAYERS", "REFERENCES",
           "project_codes", "scatter_indices", "compute_latent_maps"]

#: Reference spaces of the two-space maps: (shown, key).
REFERENCES = [("PCA on the bulk region", "pca"), ("previous result", "previous"),
              ("none (single-space maps only)", "none")]

#: Per-pixel map layers: key -> (layer name, napari colormap, what bright means).
#: Names are short so that the layer list shows them; two-space maps get the reference
#: appended, e.g. ``"latent: Procrustes residual (vs PCA-6, bulk)"``.
MAP_LAYERS: dict[str, tuple[str, str, str]] = {
    "local_dimension": ("latent: local intrinsic dim.", "viridis", "higher dimension"),
    "relative_agreement": ("latent: rel. agreement", "viridis", "spaces agree"),
    "mutual_knn": ("latent: kNN overlap", "viridis", "same neighbours"),
    "procrustes_residual": ("latent: Procrustes residual", "magma", "not carried over"),
    "seed_disagreement": ("latent: seed disagreement", "magma", "seeds disagree"),
}
_ROLE = "latent:"


# ============================================================================ scatter canvas
#: magma without its near-black end, so that low-NLL points show on napari's dark theme.
_CMAP = ListedColormap(colormaps["magma"](np.linspace(0.18, 1.0, 256)), name="magma_dark_bg")


class LatentScatterCanvas(_Canvas):
    """Latent codes on their first two principal axes, coloured by NLL, with a colour bar.

    Attributes read by tests: ``points`` (the PathCollection; ``get_array()`` is the NLL
    of the shown pixels), ``indices`` (their flat pixel indices), ``coords`` (every
    pixel's 2-D position), ``highlight`` (the marker of the inspected pixel), ``pixel``.
    ``on_pick(iy, ix)`` is called when a point is clicked.
    """

    def __init__(self, width: float = 4.2, height: float = 3.6) -> None:
        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
        super().__init__(fig)
        self.ax: Any = None
        self.points: Any = None
        self.colorbar: Any = None
        self.highlight: Any = None
        self.indices: np.ndarray = np.zeros(0, int)
        self.coords: np.ndarray | None = None
        self.shape: tuple[int, int] | None = None
        self.pixel: tuple[int, int] | None = None
        self.on_pick: Callable[[int, int], None] | None = None
        self.setMinimumHeight(260)
        self._init_blit()
        self.mpl_connect("pick_event", self._picked)
        self.clear("no latent codes yet")

    def fit_margins(self) -> None:
        """Nothing: this figure keeps its constrained layout (it has a colour bar)."""

    def clear(self, message: str = "") -> None:
        """Empty the figure (with a message)."""
        self.figure.clear()
        self.ax = self.figure.add_subplot()
        self.points = self.colorbar = self.highlight = self.coords = self.shape = None
        self._animated, self._background = [], None
        self.indices, self.pixel = np.zeros(0, int), None
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        if message:
            self.ax.text(0.5, 0.5, message, ha="center", va="center", color=_FG, wrap=True,
                         transform=self.ax.transAxes, fontsize=9)
        _style(self.figure, self.ax)
        self.draw_idle()

    def show(self, coords: np.ndarray, nll: np.ndarray, indices: np.ndarray,
             shape: tuple[int, int], *, title: str, xlabel: str, ylabel: str) -> None:
        """Draw the points ``indices`` of ``coords`` (n, 2) coloured by ``nll`` (n,)."""
        self.clear()
        self.coords, self.shape = np.asarray(coords, float), (int(shape[0]), int(shape[1]))
        self.indices = np.asarray(indices, int)
        c = np.asarray(nll, float)[self.indices]
        xy = self.coords[self.indices]
        lo, hi = robust_limits(c, 1.0, 99.5)
        size = 9.0 if self.indices.size <= 2000 else 4.0
        self.points = self.ax.scatter(xy[:, 0], xy[:, 1], c=c, s=size, cmap=_CMAP, vmin=lo,
                                      vmax=hi, linewidths=0, picker=True, pickradius=4)
        self.colorbar = self.figure.colorbar(self.points, ax=self.ax, pad=0.02, fraction=0.06)
        self.colorbar.set_label("NLL (higher = more anomalous)", color=_FG, fontsize=8)
        self.colorbar.ax.tick_params(colors=_FG, labelsize=7)
        self.colorbar.outline.set_edgecolor(_FG)
        self.ax.set_xlabel(xlabel, fontsize=8)
        self.ax.set_ylabel(ylabel, fontsize=8)
        self.ax.set_title(title, fontsize=8)
        self.ax.tick_params(labelsize=7)
        (self.highlight,) = self.ax.plot([], [], marker="s", ms=9, mfc="none", mec="yellow",
                                         mew=1.6, ls="none", label="inspected pixel",
                                         animated=True)
        self._animated, self._background = [self.highlight], None
        _style(self.figure, self.ax)
        self.ax.tick_params(labelsize=7)
        self.draw_idle()

    def point_of(self, iy: int, ix: int) -> np.ndarray | None:
        """The 2-D position of pixel (iy, ix) (shown or not), or None."""
        if self.coords is None or self.shape is None:
            return None
        ny, nx = self.shape
        if not (0 <= iy < ny and 0 <= ix < nx):
            return None
        p = self.coords[iy * nx + ix]
        return p if np.all(np.isfinite(p)) else None

    def highlight_pixel(self, iy: int, ix: int) -> bool:
        """Mark pixel (iy, ix) in the scatter; False when it has no position."""
        p = self.point_of(iy, ix)
        if p is None or self.highlight is None:
            return False
        self.pixel = (int(iy), int(ix))
        self.highlight.set_data([p[0]], [p[1]])
        self._blit()
        return True

    def _picked(self, event: Any) -> None:
        if event.artist is not self.points or self.shape is None or not len(event.ind):
            return
        ind = np.asarray(event.ind, int)
        me = event.mouseevent
        if me is not None and me.x is not None and ind.size > 1:
            xy = self.ax.transData.transform(self.coords[self.indices[ind]])
            ind = ind[[int(np.argmin(np.hypot(xy[:, 0] - me.x, xy[:, 1] - me.y)))]]
        iy, ix = divmod(int(self.indices[ind[0]]), self.shape[1])
        if self.on_pick is not None:
            self.on_pick(iy, ix)


# ============================================================================ the panel
class LatentPanel(_Panel):
    """Latent-space maps as layers and a scatter of the latent codes, linked to the inspector.

    Works on the session's current result; a result without latent codes (RX) is
    refused with a message. The two-space maps compare the result's codes with the
    chosen reference space over the same pixels. Computation runs in a worker thread;
    errors become notifications.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._reference = ComboBox(label="reference space", choices=REFERENCES, value="pca")
        self._k = SpinBox(label="k (neighbours)", value=20, min=2, max=1000)
        self._max_points = SpinBox(label="scatter points (max)", value=5000, min=100,
                                   max=1_000_000, step=500)
        self._compute_btn = PushButton(text="Compute maps")
        self._status = Label(label="status", value="")
        self._seed_note = Label(label="seed disagreement", value="")
        for w in (self._status, self._seed_note):
            w.native.setWordWrap(True)
        self._reference.tooltip = ("space compared with the result's codes for the relative "
                                   "agreement, mutual kNN and Procrustes maps")
        self._k.tooltip = "neighbours for the local intrinsic dimension and mutual kNN maps"
        self._max_points.tooltip = (f"more pixels than this: a random subsample (seed "
                                    f"{SCATTER_SEED}) in the scatter")
        self.extend([self._reference, self._k, self._max_points, self._compute_btn,
                     self._status, self._seed_note])
        self._canvas = LatentScatterCanvas()
        self._add_qt(self._canvas)
        self._canvas.on_pick = self._pick_callback()
        self._worker: Any = None
        self._last_pixel: tuple[int, int] | None = None
        self.last_maps: LatentMaps | None = None
        self._maps_of: Any = None  # the raw result the map layers were computed for
        self._compute_btn.changed.connect(self._on_compute)
        self._max_points.changed.connect(self._refresh_scatter)
        self._session.result_changed.connect(self._on_result)
        self._session.pixel_changed.connect(self._on_pixel_changed)
        self._on_result(self._session.result)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while the maps are being computed."""
        return self._worker is not None

    def _set(self, widget: Any, text: str) -> None:
        if self._closed:
            return
        try:
            widget.value = text
        except RuntimeError:
            self._closed = True

    def _pick_callback(self) -> Callable[[int, int], None]:
        ref = weakref.ref(self)

        def picked(iy: int, ix: int) -> None:
            w = ref()
            if w is not None and not w._closed:
                w.select_pixel(iy, ix)
        return picked

    @staticmethod
    def _no_latent_message(res: Any) -> str:
        name = METHOD_NAMES.get(res.method, res.method)
        return (f"the {name} result has no latent codes; expected a result of a detector "
                "that keeps them (3D-CVAE or PCA). Train or apply one of those.")

    # ------------------------------------------------------------------ result and scatter
    def _on_result(self, res: Any = None) -> None:
        if self._closed:
            return
        self._drop_stale_maps()
        self._seed_note_for(res)
        if res is None:
            self._set(self._status, "no result yet: train or apply a detector")
            self._canvas.clear("no result yet")
            return
        if res.latent is None:
            msg = self._no_latent_message(res)
            self._set(self._status, msg)
            self._canvas.clear(f"{METHOD_NAMES.get(res.method, res.method)}: no latent codes")
            return
        d = int(np.shape(res.latent)[-1])
        self._set(self._status, f"{METHOD_NAMES.get(res.method, res.method)} result, "
                                f"{d}-D latent: press Compute maps")
        self._refresh_scatter()

    def _drop_stale_maps(self) -> None:
        """Map layers of a result that is no longer the current one are removed."""
        if self._maps_of is None or self._maps_of is self._session.raw_result:
            return
        for layer in self.map_layers().values():
            if layer in list(self._viewer.layers):
                self._viewer.layers.remove(layer)
        self._maps_of, self.last_maps = None, None

    def _seed_note_for(self, res: Any) -> None:
        if res is not None and "seed_disagreement" in (res.maps or {}):
            text = "available (Compute maps shows it)"
        elif res is None:
            text = "no result yet"
        else:
            name = METHOD_NAMES.get(res.method, res.method)
            text = (f"not available: this {name} result comes from a single model; train the "
                    "3D-CVAE with several seeds (other parameters: n_seeds=3) to get it")
        self._set(self._seed_note, text)

    def _refresh_scatter(self, *_: Any) -> None:
        """Redraw the scatter of the current result's codes (cheap: runs in the GUI thread)."""
        if self._closed:
            return
        res = self._session.result
        if res is None or res.latent is None:
            return
        prep = self._session.prepared
        if prep is not None and prep.result is res and prep.coords is not None:
            coords, explained = prep.coords, prep.explained  # projected in the worker
        else:
            try:
                coords, explained = project_codes(res.latent)
            except InputError as exc:
                self._canvas.clear(str(exc))
                return
        nll = np.asarray(res.nll, float).ravel()
        valid = np.all(np.isfinite(coords), axis=1) & np.isfinite(nll)
        n_max = int(self._max_points.value)
        idx = scatter_indices(valid, nll, n_max)
        d = int(np.shape(res.latent)[-1])
        n = int(valid.sum())
        shown = (f"all {n} pixels" if idx.size == n else
                 f"{idx.size} of {n} pixels (random, seed {SCATTER_SEED})")
        ylabel = (f"latent PC 2 ({100 * explained[1]:.0f} % of variance)" if d > 1 else
                  "(1-D latent: no second axis)")
        self._canvas.show(coords, nll, idx, tuple(np.shape(res.nll)),
                          title=f"{d}-D latent codes on their first two PCA axes: {shown}",
                          xlabel=f"latent PC 1 ({100 * explained[0]:.0f} % of variance)",
                          ylabel=ylabel)
        if self._last_pixel is not None:
            self._canvas.highlight_pixel(*self._last_pixel)

    def select_pixel(self, iy: int, ix: int) -> None:
        """Show pixel (iy, ix): in the spectrum inspector (through the session) and here."""
        self._last_pixel = (int(iy), int(ix))
        self._session.select_pixel(iy, ix)
        self._canvas.highlight_pixel(iy, ix)

    def _on_pixel_changed(self, iy: int, ix: int) -> None:
        if self._closed:
            return
        self._last_pixel = (int(iy), int(ix))
        self._canvas.highlight_pixel(iy, ix)

    # ------------------------------------------------------------------ maps
    def _reference_space(self, res: Any) -> tuple[Callable[[], Any] | None, str]:
        """A function returning the reference codes (run in the worker) and its label."""
        choice = self._reference.value
        if choice == "none":
            return None, ""
        if choice == "previous":
            prev = self._session.previous_result
            if prev is None:
                raise InputError("reference space: there is no previous result; expected one "
                                 "scored before the current one (train or apply twice), or "
                                 "choose 'PCA on the bulk region'.")
            if prev.latent is None:
                raise InputError("reference space: " + self._no_latent_message(prev))
            if tuple(np.shape(prev.nll)) != tuple(np.shape(res.nll)):
                raise InputError(f"reference space: the previous result covers "
                                 f"{np.shape(prev.nll)} pixels, the current one "
                                 f"{np.shape(res.nll)}; expected the same image.")
            latent = prev.latent
            label = f"previous {METHOD_NAMES.get(prev.method, prev.method)}"
            return (lambda: latent), label
        # PCA on the same bulk region, on the image the result was scored on
        si = res._si if getattr(res, "_si", None) is not None else \
            self._session.spectrum_image()
        if tuple(si.nav_shape) != tuple(np.shape(res.nll)):
            raise InputError(f"reference space: the open image has {si.nav_shape} pixels, the "
                             f"result {np.shape(res.nll)}; expected the image it was scored on.")
        try:
            mask, _ = self._session.bulk_mask()
        except InputError:
            mask = None
        if mask is not None and (mask.shape != si.nav_shape or not mask.any()):
            mask = None
        e = res.energy.values
        energy = None if e.size == si.energy.size else (float(e[0]), float(e[-1]))
        # as many components as the result's latent (at least 2: the two-space tools need
        # d >= 2), on the same energy window and bulk region
        q = max(2, int(np.shape(res.latent)[-1]))

        def fit_pca() -> Any:
            from eelsanom.detectors.pca import PCADetector

            det = PCADetector(n_components=q, device="cpu", energy_range=energy, seed=0)
            return det.fit(si, mask).score(si).latent

        where = "all pixels" if mask is None else "bulk"
        return fit_pca, f"PCA-{q}, {where}"

    def _on_compute(self, *_: Any) -> Any:
        """Compute the per-pixel maps of the current result (worker thread); returns the worker."""
        if self.busy:
            _notify.warning("the latent maps are already being computed.")
            return None
        res = self._session.result
        if res is None:
            _notify.error("no result yet: train a detector (or load one and Apply) first.")
            return None
        if res.latent is None:
            msg = self._no_latent_message(res)
            self._set(self._status, msg)
            _notify.error(msg)
            return None
        try:
            get_reference, label = self._reference_space(res)
        except InputError as exc:
            _notify.error(str(exc))
            return None
        latent = res.latent
        seed_map = (res.maps or {}).get("seed_disagreement")
        k = int(self._k.value)

        def work() -> LatentMaps:
            ref = get_reference() if get_reference is not None else None
            return compute_latent_maps(latent, ref, reference_label=label, k=k,
                                       seed_disagreement=seed_map)

        axes = (res.y, res.x)
        raw = self._session.raw_result

        def done(w: LatentPanel, out: LatentMaps) -> None:
            if w._session.raw_result is not raw:  # a new result arrived meanwhile
                w._set(w._status, "the result changed while the maps were computed: "
                                  "press Compute maps again")
                return
            w._maps_of = raw
            w._show_maps(out, axes)

        return self._run(work, done)

    def _run(self, fn: Callable[[], Any], on_done: Callable[[Any, Any], None]) -> Any:
        """Run ``fn`` with :meth:`_Panel.run_worker`; the Compute button waits for it."""

        def errored(w: LatentPanel | None, exc: BaseException) -> None:
            if isinstance(exc, InputError):
                msg = f"latent maps: {exc}"
            else:
                log.error("latent maps failed", exc_info=exc)
                msg = f"latent maps failed: {type(exc).__name__}: {exc}"
            if w is not None:
                _notify.error(msg)
                w._set(w._status, "failed (see the notification)")

        def finished(w: LatentPanel | None) -> None:
            if w is None:
                return
            w._worker = None
            if not w._closed:
                try:
                    w._compute_btn.enabled = True
                except RuntimeError:
                    w._closed = True

        self._compute_btn.enabled = False
        self._set(self._status, "computing the latent maps...")
        self._worker = self.run_worker(fn, what="latent maps", on_done=on_done,
                                       on_error=errored, on_finished=finished)
        return self._worker

    def _show_maps(self, out: LatentMaps, axes: tuple[Any, Any]) -> None:
        """Add (or replace) one image layer per map; drop two-space layers of no reference."""
        self.last_maps = out
        scale, translate = nav_scale_translate(*axes)
        first = not any(self._map_layer(key) is not None for key in MAP_LAYERS)
        for key, (base, cmap, _) in MAP_LAYERS.items():
            layer = self._map_layer(key)
            if key not in out.maps:
                if layer is not None and (key in _TWO_SPACE or key == "seed_disagreement"):
                    self._viewer.layers.remove(layer)
                continue
            data = out.maps[key]
            name = f"{base} (vs {out.reference})" if key in _TWO_SPACE else base
            limits = robust_limits(data, 1.0, 99.0)
            if layer is None:
                kw = {"name": name, "scale": scale, "translate": translate, "colormap": cmap,
                      "contrast_limits": limits, "metadata": {KEY: {"role": _ROLE + key}},
                      "visible": first and key == "local_dimension"}
                new = self._session._keep_selection(
                    lambda d=data, kw=kw: self._viewer.add_image(d, **kw))
                show_colorbar(new)
                continue
            layer.data = data
            layer.name = name
            layer.scale, layer.translate = scale, translate
            finite = data[np.isfinite(data)]
            if finite.size:
                layer.contrast_limits_range = (float(finite.min()),
                                               max(float(finite.max()), limits[1]))
            layer.contrast_limits = limits
        s = out.summary
        parts = [f"median local dim. {s['local_dimension']:.2f}"]
        if out.reference:
            parts.append(f"vs {out.reference}: agreement {s['relative_agreement']:.2f}, "
                         f"kNN overlap {s['mutual_knn']:.2f}, Procrustes residual "
                         f"{s['procrustes_relative_residual']:.2f}")
        self._set(self._status, f"{len(out.maps)} map layers in {out.seconds:.1f} s; "
                                + "; ".join(parts))

    def _map_layer(self, key: str) -> Any:
        return self._session.layer_by_role(_ROLE + key)

    def map_layers(self) -> dict[str, Any]:
        """The latent map layers in the viewer, by key of :data:`MAP_LAYERS`."""
        return {k: ly for k in MAP_LAYERS if (ly := self._map_layer(k)) is not None}
