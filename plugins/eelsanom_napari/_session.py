"""Per-viewer state shared by the dock widgets (Qt-free).

The five dock widgets are independent napari contributions; they meet in one
:class:`Session` per viewer (:func:`get_session`), which holds the chosen
spectrum-image layer, the bulk-region layer, the fitted detector and the
current result, turns results into layers (NLL map and anomaly mask, on the
data's spatial calibration) and re-thresholds live. It announces changes with
psygnal signals; widgets only translate user actions into calls on it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from psygnal import Signal

from eelsanom.errors import InputError

from ._layers import (
    KEY,
    is_cube_layer,
    label_layer_kwargs,
    layer_spectrum_image,
    nav_scale_translate,
    region_mask,
    robust_limits,
    role_of,
    strongest_edge_channel,
)

log = logging.getLogger(__name__)

__all__ = ["Session", "Prepared", "get_session", "threshold_spec", "prepare_result"]

NLL_NAME = "NLL map (nats)"
MASK_NAME = "anomaly mask"

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _none() -> None:
    return None


def _ref(obj: Any) -> Callable[[], Any]:
    return _none if obj is None else weakref.ref(obj)


def get_session(viewer: Any) -> Session:
    """The :class:`Session` of ``viewer`` (made on first use, dropped with the viewer)."""
    s = _SESSIONS.get(viewer)
    if s is None:
        s = Session(viewer)
        _SESSIONS[viewer] = s
        ref = weakref.ref(s)

        def removed(event: Any = None) -> None:
            session = ref()
            if session is not None:
                session._on_layer_removed(getattr(event, "value", None))

        viewer.layers.events.removed.connect(removed)

        def dims(event: Any = None) -> None:
            session = ref()
            if session is not None:
                session._show_energy()

        def inserted(event: Any = None) -> None:
            layer = getattr(event, "value", None)
            if layer is not None and role_of(layer) == "cube":  # a file opened: at its edge
                # once napari has set up the new layer's slider (it centres it afterwards)
                try:
                    from qtpy.QtCore import QTimer

                    QTimer.singleShot(0, lambda: show_edge(viewer, layer))
                except ImportError:  # no Qt: now
                    show_edge(viewer, layer)
            dims(event)

        viewer.dims.events.current_step.connect(dims)
        viewer.layers.events.inserted.connect(inserted)
        for layer in list(viewer.layers):  # opened before any panel: at its edge too
            if role_of(layer) == "cube":
                show_edge(viewer, layer)
        s._show_energy()
    return s


def show_edge(viewer: Any, cube: Any, si: Any = None) -> None:
    """Put the energy slider on ``cube``'s strongest edge
    (:func:`._layers.strongest_edge_channel`; a core-loss image's brightest channel is
    background), with contrast limits that do not saturate that slice. Once per layer."""
    meta = (getattr(cube, "metadata", None) or {}).get(KEY)
    if not isinstance(meta, dict) or meta.get("opened_at_edge"):
        return
    try:
        si = si if si is not None else layer_spectrum_image(cube)
        k = strongest_edge_channel(si)
        viewer.dims.set_point(0, float(si.energy.values[k]))
        meta["opened_at_edge"] = True
        lo, hi = cube.contrast_limits
        top = float(np.percentile(np.asarray(si.data[:, :, k], float), 99.5))
        if top > hi:
            cube.contrast_limits = (lo, top)
    except Exception as exc:  # noqa: BLE001 - cosmetic only
        log.debug("could not set the energy slider: %s", exc)


@dataclass
class Prepared:
    """What showing a result needs, computed off the GUI thread (:func:`prepare_result`).

    Attributes
    ----------
    raw : AnomalyResult
        The result as the detector returned it.
    spec : str or float or None
        The threshold spec ``result`` was thresholded with.
    result : AnomalyResult
        ``raw`` thresholded by ``spec`` (``raw`` itself when ``spec`` is None or not
        applicable).
    nll_limits : (float, float)
        Contrast limits of the NLL map (1st-99.5th percentile).
    counts, edges : ndarray
        Histogram of the finite NLL values (80 bins).
    coords, explained : ndarray or None
        The latent codes on their first two principal axes (``None`` without codes).
    """

    raw: Any
    spec: Any
    result: Any
    nll_limits: tuple[float, float]
    counts: np.ndarray
    edges: np.ndarray
    coords: np.ndarray | None = None
    explained: np.ndarray | None = None


def _threshold(result: Any, spec: Any) -> tuple[Any, Any]:
    if spec is None:
        return result, None
    try:
        return result.with_threshold(spec), spec
    except InputError as exc:  # not applicable to this map: keep the detector's rule
        log.info("threshold %r not applicable (%s); using the detector's", spec, exc)
        return result, None


def show_colorbar(layer: Any) -> None:
    """Turn on napari's colour bar of an image layer (napari >= 0.5; else nothing), labelled:
    the layer's name (the quantity and its units, e.g. ``"NLL map (nats)"``) is shown beside
    it (napari's layer-name overlay, in the same corner: napari tiles the two)."""
    bar = getattr(layer, "colorbar", None) if layer is not None else None
    if bar is not None:
        try:
            # bottom right: the energy text holds the top of a narrow canvas
            bar.position = "bottom_right"
            bar.visible = True
        except Exception as exc:  # noqa: BLE001 - cosmetic only
            log.debug("no colour bar: %s", exc)
            return
        name = (getattr(layer, "_overlays", None) or {}).get("layer_name")
        if name is not None:
            try:
                name.position = bar.position
                name.visible = True
            except Exception as exc:  # noqa: BLE001 - cosmetic only
                log.debug("no colour bar label: %s", exc)


def _set_grid(layer: Any, scale: Any, translate: Any) -> None:
    """Set a layer's scale and translate where they differ (each set refreshes the layer)."""
    for name, want in (("scale", scale), ("translate", translate)):
        have, want_a = np.asarray(getattr(layer, name), float), np.asarray(want, float)
        if have.shape != want_a.shape or not np.allclose(have, want_a, rtol=1e-12, atol=0):
            setattr(layer, name, want)


def prepare_result(result: Any, spec: Any = None) -> Prepared:
    """Everything the panels show of ``result`` (threshold, contrast, histogram, latent
    projection): heavy enough to run in the worker thread that produced the result.

    Parameters
    ----------
    result : AnomalyResult
    spec : str or float or None
        Threshold spec to apply (see :func:`threshold_spec`).

    Returns
    -------
    Prepared
    """
    res, used = _threshold(result, spec)
    data = np.asarray(result.nll, dtype=np.float32)
    v = data[np.isfinite(data)].astype(float)
    counts, edges = np.histogram(v if v.size else np.zeros(1), bins=80)
    coords = explained = None
    if result.latent is not None:
        from eelsanom.latent.maps import project_codes

        try:
            coords, explained = project_codes(result.latent)
        except InputError:
            coords = explained = None
    return Prepared(raw=result, spec=used, result=res,
                    nll_limits=robust_limits(data, 1.0, 99.5), counts=counts, edges=edges,
                    coords=coords, explained=explained)


def threshold_spec(method: str, *, percent: float = 2.0, value: float | None = None) -> Any:
    """A :func:`eelsanom.scoring.compute_threshold` spec from the Results panel's choice.

    ``method`` is ``"default"`` (None: the detector's own rule, as trained), ``"otsu"``,
    ``"gmm"``, ``"robust"``, ``"percent"`` (flag the top ``percent`` % of pixels) or
    ``"manual"`` (NLL above ``value``).
    """
    m = str(method).lower()
    if m in ("default", "none", "detector"):
        return None
    if m in ("otsu", "gmm", "robust"):
        return m
    if m in ("percent", "percentile"):
        return float(percent)
    if m in ("manual", "value"):
        if value is None or not np.isfinite(value):
            raise InputError(f"manual threshold: expected a finite NLL value, found {value!r}.")
        return f"value:{float(value)!r}"
    raise InputError(f"threshold method: expected default, otsu, gmm, robust, percent or manual, "
                     f"found {method!r}.")


class Session:
    """What the eelsanom widgets of one viewer share.

    Attributes
    ----------
    cube_layer : napari Image layer or None
        The spectrum image chosen in the Bulk-region panel (None: the newest one).
    region_layer : napari Shapes or Labels layer or None
        The bulk region; None means all pixels, trained robustly.
    detector : BaseDetector or None
        The fitted (or loaded) detector.
    raw_result : AnomalyResult or None
        The last scoring result as the detector returned it.
    result : AnomalyResult or None
        ``raw_result`` thresholded by :attr:`threshold`: what the layers, the
        inspector and the export show.
    threshold : str or float or None
        The current threshold spec (see :func:`threshold_spec`); None keeps the rule the
        detector was trained with.
    """

    cube_changed = Signal()
    region_changed = Signal()
    detector_changed = Signal(object)
    result_changed = Signal(object)
    threshold_changed = Signal(object)
    #: (iy, ix): a panel asks the spectrum inspector to show this pixel (:meth:`select_pixel`)
    pixel_requested = Signal(int, int)
    #: (iy, ix): the spectrum inspector now shows this pixel (click, keys, request)
    pixel_changed = Signal(int, int)
    #: the threshold rule went back to the detector's own (new data: the old rule is stale)
    threshold_reset = Signal()
    #: (start, stop) eV: an energy window picked by dragging on the spectrum plot
    energy_window_picked = Signal(float, float)

    def __init__(self, viewer: Any) -> None:
        self._viewer_ref = weakref.ref(viewer)
        # layers are held weakly: a strong reference from this module-level registry would
        # keep the closed viewer (and its Qt window) alive through the layers' callbacks
        self._cube_ref: Callable[[], Any] = _none
        self._region_ref: Callable[[], Any] = _none
        self._result_cube_ref: Callable[[], Any] = _none
        self.detector: Any = None
        self.raw_result: Any = None
        self.result: Any = None
        self.previous_result: Any = None  # the raw result before the current one
        self.threshold: Any = None
        self.prepared: Prepared | None = None  # of the current raw result

    @property
    def cube_layer(self) -> Any:
        return self._cube_ref()

    @property
    def region_layer(self) -> Any:
        return self._region_ref()

    @property
    def result_cube(self) -> Any:
        """The cube layer the current result was computed on."""
        return self._result_cube_ref()

    # ------------------------------------------------------------------ layers
    @property
    def viewer(self) -> Any:
        v = self._viewer_ref()
        if v is None:
            raise RuntimeError("the viewer of this eelsanom session was closed")
        return v

    def _alive(self, layer: Any) -> bool:
        return layer is not None and layer in list(self.viewer.layers)

    def cube(self) -> Any:
        """The spectrum-image layer to work on: the chosen one, else the newest cube layer."""
        if self._alive(self.cube_layer):
            return self.cube_layer
        cands = [ly for ly in self.viewer.layers if is_cube_layer(ly)]
        ours = [ly for ly in cands if role_of(ly) == "cube"]
        pick = (ours or cands or [None])[-1]
        return pick

    def set_cube(self, layer: Any) -> None:
        if layer is not self.cube_layer:
            self._cube_ref = _ref(layer)
            if layer is not None and self.raw_result is not None and \
                    layer is not self.result_cube:
                self._reset_threshold()
            self.cube_changed.emit()

    def _reset_threshold(self) -> None:
        """Back to the detector's own rule (a rule picked for other data is stale)."""
        if self.threshold is not None:
            self.threshold = None
            self.threshold_reset.emit()

    def threshold_for(self, cube_layer: Any) -> Any:
        """The threshold spec a new result on ``cube_layer`` will get: the current rule on
        the same data, the detector's own (None) on other data."""
        if self.raw_result is not None and cube_layer is not self.result_cube:
            return None
        return self.threshold

    def set_region(self, layer: Any) -> None:
        if layer is not self.region_layer:
            self._region_ref = _ref(layer)
            self.region_changed.emit()

    def spectrum_image(self) -> Any:
        """The :class:`~eelsanom.spectrum.SpectrumImage` of :meth:`cube`.

        Raises
        ------
        InputError
            No spectrum image is open.
        """
        layer = self.cube()
        if layer is None:
            raise InputError("no spectrum image is open: expected a 3-D image layer (energy axis "
                             "first). Open an EELS file (File > Open) or the sample (File > Open "
                             "Sample > eelsanom).")
        return layer_spectrum_image(layer)

    def energy_text(self) -> str:
        """``'energy loss 708.3 eV (channel 94 of 267)'`` at the energy slider, or ``''``."""
        try:
            layer = self.cube()
            if layer is None or role_of(layer) != "cube" or self.viewer.dims.ndim < 3:
                return ""
            si = layer_spectrum_image(layer)
            e = float(self.viewer.dims.point[0])
            k = int(np.clip(round((e - si.energy.offset) / si.energy.scale), 0,
                            si.energy.size - 1))
            return (f"energy loss {si.energy.values[k]:.2f} {si.energy.units or 'eV'} "
                    f"(channel {k} of {si.energy.size})")
        except (InputError, RuntimeError, IndexError, ValueError) as exc:
            log.debug("no energy text: %s", exc)
            return ""

    def _show_energy(self) -> None:
        """The energy slider's position in eV, in the canvas's text overlay."""
        text = self.energy_text()
        try:
            overlay = self.viewer.text_overlay
        except (RuntimeError, AttributeError):
            return
        if text:
            overlay.text = text
            overlay.visible = True
            overlay.position = "top_left"
        elif overlay.text.startswith("energy loss "):
            overlay.visible = False

    def bulk_mask(self) -> tuple[np.ndarray | None, str]:
        """The training mask ``(ny, nx)`` of the region layer (None: all pixels) and a note."""
        region = self.region_layer if self._alive(self.region_layer) else None
        return region_mask(region, self.spectrum_image())

    # ------------------------------------------------------------------ model and results
    def set_detector(self, detector: Any) -> None:
        self.detector = detector
        self.detector_changed.emit(detector)

    def set_result(self, result: Any, cube_layer: Any = None,
                   prepared: Prepared | None = None,
                   defer: Callable[[Callable[[], None]], None] | None = None,
                   on_shown: Callable[[], None] | None = None) -> Any:
        """Show a new scoring result: NLL image layer, mask labels layer, current threshold.

        ``prepared`` (:func:`prepare_result`, computed in the worker) saves the GUI thread
        the thresholding, percentiles, histogram and latent projection. A result on other
        data than the previous one starts from the detector's own threshold rule. The
        result it replaces stays available as :attr:`previous_result` (e.g. for the
        latent panel's two-space maps).

        ``defer(fn)`` (e.g. a zero-delay Qt timer) spreads the showing over several turns
        of the event loop (NLL layer, mask layer, panels), so that no single turn blocks
        the GUI for long; the state (:attr:`result`...) is set at once, and ``on_shown()``
        is called after the last step (or once the result was superseded)."""
        cube = cube_layer if cube_layer is not None else self.cube()
        spec = self.threshold_for(cube)
        if spec is None:
            self._reset_threshold()
        if self.raw_result is not None and self.raw_result is not result:
            self.previous_result = self.raw_result
        self.raw_result = result
        self._result_cube_ref = _ref(cube)
        if prepared is None or prepared.raw is not result or prepared.spec != spec:
            prepared = prepare_result(result, spec)
        if prepared.spec != spec:  # the rule did not apply to this map
            self._reset_threshold()
        self.prepared = prepared
        self.result = prepared.result
        steps = [lambda: self._show_nll(self.result, prepared.nll_limits, colorbar=False),
                 lambda: show_colorbar(self.layer_by_role("nll")),
                 lambda: self._show_mask(self.result),
                 lambda: self.result_changed.emit(self.result),
                 lambda: self.threshold_changed.emit(self.result)]
        if defer is None:
            for step in steps:
                step()
            if on_shown is not None:
                on_shown()
            return self.result
        ref = weakref.ref(self)

        def run(i: int) -> None:
            s = ref()
            try:
                if s is None or s.raw_result is not result:  # superseded or cleared meanwhile
                    i = len(steps)
                else:
                    steps[i]()
            except RuntimeError as exc:  # the viewer closed meanwhile
                log.debug("result not shown: %s", exc)
                i = len(steps)
            if i + 1 < len(steps):
                defer(lambda: run(i + 1))
            elif on_shown is not None:
                on_shown()

        run(0)
        return self.result

    def clear_result(self) -> None:
        """Forget the current result (its layers were deleted): every panel lets go of it."""
        if self.raw_result is None:
            return
        self.previous_result = self.raw_result
        self.raw_result = self.result = self.prepared = None
        self._result_cube_ref = _none
        for role in ("mask", "nll"):
            layer = self.layer_by_role(role)
            if layer is not None:
                self.viewer.layers.remove(layer)
        self.result_changed.emit(None)
        self.threshold_changed.emit(None)

    def _on_layer_removed(self, layer: Any) -> None:
        """The NLL map or the image of the current result deleted: the result goes too."""
        if self.raw_result is None or layer is None:
            return
        if role_of(layer) == "nll" or layer is self.result_cube or \
                (self.result_cube is None and role_of(layer) == "cube"):
            self.clear_result()

    def _thresholded(self, result: Any) -> Any:
        res, used = _threshold(result, self.threshold)
        if used is None:
            self.threshold = None
        return res

    def set_threshold(self, spec: Any) -> Any:
        """Re-threshold the current result with ``spec`` (None: the detector's own rule);
        update the mask layer (live)."""
        from eelsanom.scoring import parse_threshold

        if spec is not None:
            parse_threshold(spec)  # refuse a bad spec before changing anything
        self.threshold = spec
        if self.raw_result is None:
            return None
        self.result = self._thresholded(self.raw_result)
        self._show_mask(self.result)
        self.threshold_changed.emit(self.result)
        return self.result

    def select_pixel(self, iy: int, ix: int) -> None:
        """Ask the spectrum inspector (and every linked view) to show pixel ``(iy, ix)``."""
        self.pixel_requested.emit(int(iy), int(ix))

    def layer_by_role(self, role: str) -> Any:
        for ly in self.viewer.layers:
            if role_of(ly) == role:
                return ly
        return None

    def _keep_selection(self, add: Any) -> Any:
        """Add a layer without stealing the active layer (e.g. the bulk shapes being drawn)."""
        sel = self.viewer.layers.selection
        active = sel.active
        layer = add()
        if active is not None and active in list(self.viewer.layers):
            sel.active = active
        return layer

    def _show_nll(self, res: Any, limits: tuple[float, float] | None = None,
                  colorbar: bool = True) -> None:
        data = np.asarray(res.nll, dtype=np.float32)
        scale, translate = nav_scale_translate(res.y, res.x)
        limits = robust_limits(data, 1.0, 99.5) if limits is None else limits
        layer = self.layer_by_role("nll")
        if layer is None:
            layer = self._keep_selection(lambda: self.viewer.add_image(
                data, name=NLL_NAME, scale=scale, translate=translate, colormap="magma",
                contrast_limits=limits, metadata={KEY: {"role": "nll"}}))
            if colorbar:
                show_colorbar(layer)
            return
        layer.data = data
        _set_grid(layer, scale, translate)
        layer.contrast_limits_range = (float(np.nanmin(data)), float(np.nanmax(data)))
        layer.contrast_limits = limits

    def _show_mask(self, res: Any) -> None:
        data = np.asarray(res.mask, dtype=np.uint8)
        layer = self.layer_by_role("mask")
        if layer is None:
            kw = label_layer_kwargs(MASK_NAME, res, "cyan", role="mask", opacity=0.9)
            layer = self._keep_selection(lambda: self.viewer.add_labels(data, **kw))
            layer.contour = 1
            return
        scale, translate = nav_scale_translate(res.y, res.x)
        _set_grid(layer, scale, translate)
        # a threshold tick that flags the same pixels costs no layer refresh
        if layer.data.shape != data.shape or not np.array_equal(layer.data, data):
            layer.data = data
