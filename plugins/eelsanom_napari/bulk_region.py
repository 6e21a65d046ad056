"""Panel 1, the bulk region: the spectrum image and the bulk (training) region."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Label,
    PushButton,
)

from eelsanom.errors import InputError

from . import _notify
from ._layers import (
    KEY,
    is_cube_layer,
    nav_scale_translate,
    role_of,
)
from ._panel import (
    _Panel,
)

ALL_PIXELS = "(none: all pixels, robust)"


# ============================================================================ 1. bulk region
class BulkRegionWidget(_Panel):
    """Choose the spectrum image and the bulk (defect-free) region the detector learns from.

    The region is a shapes layer (rectangles, polygons, ellipses; lines are ignored) or a
    labels layer (non-zero = bulk) on the image's pixel grid. None means "all pixels": the
    detectors then train robustly, down-weighting their worst-explained pixels.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._cube = ComboBox(label="spectrum image", choices=self._cube_choices, nullable=True)
        self._region = ComboBox(label="bulk region", choices=self._region_choices)
        self._new_rect = PushButton(text="New rectangle layer")
        self._new_labels = PushButton(text="New labels layer (paint)")
        self._count = Label(label="covers", value="")
        self.extend([self._cube, self._region, self._new_rect, self._new_labels, self._count])
        self._watched: Any = None
        self._cube.changed.connect(self._on_cube)
        self._region.changed.connect(self._on_region)
        self._new_rect.changed.connect(self._on_new_rectangle)
        self._new_labels.changed.connect(self._on_new_labels)
        self._session.cube_changed.connect(self._update_count)
        self._auto_pick(self._session.cube())  # docked after a file was opened
        self._on_cube()
        self._on_region()

    # ------------------------------------------------------------------ choices
    def _cube_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return self._layer_choices(is_cube_layer)

    def _region_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        layers = self._layer_choices(lambda ly: type(ly).__name__ in ("Shapes", "Labels")
                                     and role_of(ly) not in ("mask", "truth"))
        return [(ALL_PIXELS, ALL_PIXELS), *layers]

    def _on_layers_changed(self, event: Any = None) -> None:
        super()._on_layers_changed(event)
        if self._closed:
            return
        inserted = event is not None and getattr(event, "type", "") == "inserted"
        self._auto_pick(getattr(event, "value", None) if inserted else None)
        self._on_cube()
        self._on_region()

    def _auto_pick(self, new: Any = None) -> None:
        """Pick a newly added cube, and a bulk layer when none is chosen yet."""
        if new is not None and is_cube_layer(new) and role_of(new) == "cube" and \
                new in list(self._viewer.layers):
            self._cube.value = new
        if self._region.value == ALL_PIXELS:
            for ly in reversed(list(self._viewer.layers)):
                if (role_of(ly) == "bulk" or ly.name.lower().startswith("bulk")) and \
                        type(ly).__name__ in ("Shapes", "Labels"):
                    self._region.value = ly
                    break

    # ------------------------------------------------------------------ handlers
    def _on_cube(self, *_: Any) -> None:
        self._session.set_cube(self._cube.value)
        self._update_count()

    def _on_region(self, *_: Any) -> None:
        layer = self._region.value
        layer = None if layer == ALL_PIXELS else layer
        self._watch(layer)
        self._session.set_region(layer)
        self._update_count()

    def _watch(self, layer: Any) -> None:
        """Recount whenever the region layer's shapes or painted pixels change."""
        if self._watched is layer:
            return
        for old_layer in [self._watched] if self._watched is not None else []:
            for name in ("data", "set_data", "paint", "labels_update"):
                em = getattr(old_layer.events, name, None)
                if em is not None:
                    em.disconnect(self._update_count)
        self._watched = layer
        if layer is not None:
            for name in ("data", "set_data", "paint", "labels_update"):
                em = getattr(layer.events, name, None)
                if em is not None:
                    em.connect(self._update_count)

    def _update_count(self, *_: Any) -> None:
        if self._closed:
            return
        self._count.value = self.describe()

    def describe(self) -> str:
        """What the bulk region covers, e.g. ``'1216 of 4096 pixels (29.7 %)'``."""
        try:
            si = self._session.spectrum_image()
        except InputError:
            return "no spectrum image open"
        n = si.nav_shape[0] * si.nav_shape[1]
        try:
            mask, note = self._session.bulk_mask()
        except InputError as exc:
            return str(exc)
        if mask is None:
            return f"none selected: all {n} pixels, trained robustly"
        k = int(mask.sum())
        text = f"{k} of {n} pixels ({100.0 * k / n:.1f} %)"
        if k == 0:
            text = "0 pixels: draw a rectangle or polygon on it (or choose none)"
        return f"{text}; {note}" if note else text

    def _on_new_rectangle(self, *_: Any) -> Any:
        """Add a 2-D shapes layer on the image's grid, in rectangle mode, and select it."""
        try:
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return None
        scale, translate = nav_scale_translate(si.y, si.x)
        layer = self._viewer.add_shapes(
            ndim=2, name="bulk region", scale=scale, translate=translate,
            edge_color="dodgerblue", face_color=[0.12, 0.56, 1.0, 0.2], edge_width=0.5,
            metadata={KEY: {"role": "bulk"}})
        layer.mode = "add_rectangle"
        self._region.value = layer
        return layer

    def _on_new_labels(self, *_: Any) -> Any:
        """Add a labels layer on the image's grid, in paint mode, and select it."""
        from ._layers import label_layer_kwargs

        try:
            si = self._session.spectrum_image()
        except InputError as exc:
            _notify.error(str(exc))
            return None
        kw = label_layer_kwargs("bulk region (painted)", si, "dodgerblue", role="bulk",
                                opacity=0.5)
        layer = self._viewer.add_labels(np.zeros(si.nav_shape, np.uint8), **kw)
        layer.selected_label = 1
        layer.brush_size = max(3, min(si.nav_shape) // 8)
        layer.mode = "paint"
        self._region.value = layer
        return layer
