"""Plain (Qt-free) glue between eelsanom objects and napari layers.

A spectrum image ``(ny, nx, n_energy)`` becomes an image layer of shape
``(n_energy, ny, nx)``: napari puts its sliders on the leading axes, so the
energy-loss axis is the dims slider, calibrated in eV (``scale``/``translate``),
and the two displayed axes keep the spatial calibration of the file. Every 2-D
layer the plugin makes (summed intensity, ground truth, NLL map, mask) uses the
same spatial ``scale``/``translate``, so napari aligns it with the cube's last
two axes.

The :class:`~eelsanom.spectrum.SpectrumImage` behind a cube layer travels in
``layer.metadata["eelsanom"]["si"]`` (its ``data`` is the array the layer shows,
not a copy).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from eelsanom.errors import InputError
from eelsanom.spectrum import Axis, SpectrumImage

log = logging.getLogger(__name__)

__all__ = [
    "KEY", "role_of", "spectrum_image_layers", "nav_scale_translate", "layer_spectrum_image",
    "is_cube_layer", "region_mask", "world_to_pixel", "pixel_to_world", "robust_limits",
    "strongest_edge_channel",
]

#: ``layer.metadata`` key for everything eelsanom stores on a layer.
KEY = "eelsanom"

#: Shape types that enclose an area (lines and paths do not).
_AREA_SHAPES = ("rectangle", "polygon", "ellipse")

#: Strided subsample size used for contrast limits of big cubes.
_MAX_SAMPLE = 1_000_000


def role_of(layer: Any) -> str | None:
    """The eelsanom role of a layer (``"cube"``, ``"intensity"``, ``"nll"``...) or None."""
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get(KEY) if isinstance(meta, dict) else None
    return info.get("role") if isinstance(info, dict) else None


def _label(name: str, units: str) -> str:
    return f"{name} ({units})" if units else name


def robust_limits(arr: Any, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    """Contrast limits from the ``lo``/``hi`` percentiles of the finite values (subsampled)."""
    a = np.asarray(arr)
    step = max(1, int(np.ceil(a.size / _MAX_SAMPLE)))
    flat = a.reshape(-1)[::step]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    a0, a1 = (float(v) for v in np.percentile(flat, [lo, hi]))
    if not a1 > a0:
        a0, a1 = float(flat.min()), float(flat.max())
    if not a1 > a0:
        a1 = a0 + 1.0
    return a0, a1


def strongest_edge_channel(si: SpectrumImage) -> int:
    """The energy channel to open a spectrum image at: just past its strongest edge.

    A core-loss spectrum is highest at its first channels (the background falls off as
    a power law), so the brightest channel is background. The edge is where the mean
    spectrum (pixels subsampled, smoothed over ~2 % of the channels) *rises* most (in
    counts) over that width; the channel returned is the top of that rise. A
    spectrum that never rises (no edge in the window) opens at its brightest channel.

    Parameters
    ----------
    si : SpectrumImage

    Returns
    -------
    int
        Channel index in ``0 .. n_energy - 1``.
    """
    ny, nx = si.nav_shape
    sub = np.asarray(si.data[:: max(1, ny // 16), :: max(1, nx // 16)], float)
    mean = sub.reshape(-1, sub.shape[-1]).mean(axis=0)
    n = mean.size
    if n < 4 or not np.isfinite(mean).all():
        return int(np.nanargmax(mean)) if np.isfinite(mean).any() else 0
    w = max(2, n // 50)
    if n < 3 * w:
        return int(np.argmax(mean))
    smooth = np.convolve(mean, np.ones(w) / w, mode="valid")  # [j]: channels j .. j+w-1
    rise = smooth[w:] - smooth[:-w]  # in counts: a noisy tail's ratios do not count
    k = int(np.argmax(rise))
    if not rise[k] > 0.02 * float(np.max(np.abs(smooth))):  # no edge: the brightest channel
        return int(np.argmax(mean))
    top = k + w  # the rise ends in the window starting here; its highest point after it
    peak = top + int(np.argmax(smooth[top:top + 2 * w]))
    return int(min(peak + w // 2, n - 1))


def nav_scale_translate(y: Axis, x: Axis) -> tuple[tuple[float, float], tuple[float, float]]:
    """napari ``scale`` and ``translate`` of a 2-D map on the navigation grid ``(y, x)``."""
    return (float(y.scale), float(x.scale)), (float(y.offset), float(x.offset))


def _nav_kwargs(si: SpectrumImage) -> dict[str, Any]:
    scale, translate = nav_scale_translate(si.y, si.x)
    kw: dict[str, Any] = {"scale": scale, "translate": translate,
                          "axis_labels": (_label("y", si.y.units), _label("x", si.x.units))}
    return kw


def _mask_colormap(color: str) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: color})


def label_layer_kwargs(name: str, si_or_axes: Any, color: str, *, role: str,
                       opacity: float = 0.6, visible: bool = True) -> dict[str, Any]:
    """Keyword arguments of a 0/1 labels layer on the navigation grid (label 1 in ``color``)."""
    y, x = (si_or_axes.y, si_or_axes.x)
    scale, translate = nav_scale_translate(y, x)
    return {"name": name, "scale": scale, "translate": translate, "opacity": opacity,
            "visible": visible, "colormap": _mask_colormap(color),
            "metadata": {KEY: {"role": role}}}


def spectrum_image_layers(si: SpectrumImage, name: str | None = None) -> list[tuple]:
    """napari layer data for a spectrum image.

    Parameters
    ----------
    si : SpectrumImage
        Data of shape (ny, nx, n_energy).
    name : str, optional
        Base layer name (default: the title).

    Returns
    -------
    list of (data, meta, layer_type)
        - the cube, ``(n_energy, ny, nx)`` image, energy axis first (the slider), scale
          ``(eV/channel, y.scale, x.scale)``, translate ``(E0, y0, x0)``;
        - the summed intensity ``(ny, nx)`` float32 image, shown on top: the navigator
          (hide it to see the energy slices);
        - the ground truth as a labels layer (uint8, 1 = anomalous), when ``si`` has one;
        - the bulk region stored in a simulated file (``si.metadata["bulk_mask"]``) as a
          labels layer, when present.
    """
    base = name or si.title or "spectrum image"
    nav = _nav_kwargs(si)
    e = si.energy
    cube = np.moveaxis(si.data, 2, 0)  # a view: (n_energy, ny, nx)
    cube_kw: dict[str, Any] = {
        "name": base,
        "scale": (float(e.scale), *nav["scale"]),
        "translate": (float(e.offset), *nav["translate"]),
        "axis_labels": (_label("energy loss", e.units or "eV"), *nav["axis_labels"]),
        "colormap": "gray",
        "contrast_limits": robust_limits(si.data),
        "metadata": {KEY: {"role": "cube", "si": si, "source": si.source}},
    }
    total = np.asarray(si.data.sum(axis=2), dtype=np.float32)
    inten_kw = dict(nav, name=f"{base} summed intensity", colormap="gray", visible=True,
                    contrast_limits=robust_limits(total),
                    metadata={KEY: {"role": "intensity"}})
    out: list[tuple] = [(cube, cube_kw, "image"), (total, inten_kw, "image")]
    if si.ground_truth is not None:
        out.append((np.asarray(si.ground_truth, dtype=np.uint8),
                    label_layer_kwargs(f"{base} ground truth", si, "lime", role="truth",
                                       opacity=0.5, visible=False), "labels"))
    bulk = (si.metadata or {}).get("bulk_mask")
    if bulk is not None and np.shape(bulk) == si.nav_shape:
        out.append((np.asarray(bulk, dtype=np.uint8),
                    label_layer_kwargs("bulk region (from file)", si, "dodgerblue", role="bulk",
                                       opacity=0.35), "labels"))
    return out


def is_cube_layer(layer: Any) -> bool:
    """An image layer with at least 3 axes (energy first): eelsanom's own or any other."""
    if role_of(layer) == "cube":
        return True
    return type(layer).__name__ == "Image" and getattr(layer, "ndim", 0) == 3 \
        and not getattr(layer, "rgb", False)


def layer_spectrum_image(layer: Any) -> SpectrumImage:
    """The SpectrumImage behind a cube layer.

    eelsanom's own layers carry it in their metadata. Any other 3-D image layer is
    read as ``(n_energy, ny, nx)`` with its ``scale``/``translate`` as calibration
    (axis 0 in eV), which is how this plugin lays cubes out.

    Raises
    ------
    InputError
        The layer is not a 3-D image.
    """
    meta = (getattr(layer, "metadata", None) or {}).get(KEY) or {}
    si = meta.get("si") if isinstance(meta, dict) else None
    if isinstance(si, SpectrumImage):
        return si
    if not is_cube_layer(layer):
        raise InputError(
            f"layer {getattr(layer, 'name', layer)!r}: expected a spectrum image (a 3-D image "
            f"layer, energy axis first), found {type(layer).__name__} with "
            f"{getattr(layer, 'ndim', '?')} axes. Open the file with the eelsanom reader.")
    data = np.asarray(layer.data, dtype=np.float32)
    sc, tr = (np.asarray(layer.scale, float), np.asarray(layer.translate, float))
    ne, ny, nx = data.shape
    return SpectrumImage(np.moveaxis(data, 0, 2), Axis(ne, sc[0], tr[0], "eV", "Energy loss"),
                         y=Axis(ny, sc[1], tr[1], "", "y"), x=Axis(nx, sc[2], tr[2], "", "x"),
                         title=str(layer.name))


def world_to_pixel(position: Any, si: SpectrumImage) -> tuple[int, int] | None:
    """Nearest pixel ``(iy, ix)`` of the navigation grid at a world position, or None outside.

    Only the last two coordinates of ``position`` (y, x in the data's units) are used.
    """
    pos = np.asarray(position, dtype=float).ravel()
    if pos.size < 2:
        return None
    iy = int(np.floor((pos[-2] - si.y.offset) / si.y.scale + 0.5))
    ix = int(np.floor((pos[-1] - si.x.offset) / si.x.scale + 0.5))
    ny, nx = si.nav_shape
    if not (0 <= iy < ny and 0 <= ix < nx):
        return None
    return iy, ix


def pixel_to_world(iy: int, ix: int, si: SpectrumImage) -> tuple[float, float]:
    """World ``(y, x)`` of the centre of pixel ``(iy, ix)``."""
    return float(si.y.offset + iy * si.y.scale), float(si.x.offset + ix * si.x.scale)


def _shapes_mask(layer: Any, si: SpectrumImage) -> tuple[np.ndarray, str]:
    from napari.layers import Shapes

    ny, nx = si.nav_shape
    verts, kinds, skipped = [], [], 0
    for data, kind in zip(layer.data, layer.shape_type):
        if kind not in _AREA_SHAPES:
            skipped += 1
            continue
        world = np.array([layer.data_to_world(v) for v in np.asarray(data, float)], float)
        pix = np.stack([(world[:, -2] - si.y.offset) / si.y.scale,
                        (world[:, -1] - si.x.offset) / si.x.scale], axis=1)
        verts.append(pix)
        kinds.append(kind)
    note = f"{skipped} line/path shape(s) ignored (no area)" if skipped else ""
    if not verts:
        return np.zeros((ny, nx), bool), note
    masks = Shapes(verts, shape_type=kinds).to_masks(mask_shape=(ny, nx))
    return np.asarray(masks, bool).any(axis=0), note


def _labels_mask(layer: Any, si: SpectrumImage) -> np.ndarray:
    data = np.asarray(layer.data)
    if data.shape[-2:] != si.nav_shape:
        raise InputError(
            f"bulk region: the labels layer {layer.name!r} has shape {data.shape}; expected the "
            f"spectrum image's pixel grid {si.nav_shape}. Paint on a labels layer made with "
            "'New labels layer' in the Bulk region panel.")
    m = data != 0
    while m.ndim > 2:  # labels painted on energy slices: bulk wherever painted
        m = m.any(axis=0)
    return m


def region_mask(layer: Any, si: SpectrumImage) -> tuple[np.ndarray | None, str]:
    """The bulk (training) mask a shapes or labels layer draws on ``si``'s pixel grid.

    Parameters
    ----------
    layer : napari Shapes or Labels layer, or None
        Rectangles, polygons and ellipses of a shapes layer (in world coordinates, so any
        layer scale works; lines and paths are ignored); non-zero pixels of a labels
        layer on the same ``(ny, nx)`` grid.
    si : SpectrumImage

    Returns
    -------
    mask : ndarray of bool, shape (ny, nx), or None
        None when ``layer`` is None: all pixels, trained robustly.
    note : str
        Anything the user should know (ignored shapes).
    """
    if layer is None:
        return None, ""
    kind = type(layer).__name__
    if kind == "Shapes":
        return _shapes_mask(layer, si)
    if kind == "Labels":
        return _labels_mask(layer, si), ""
    raise InputError(f"bulk region: expected a shapes or labels layer, found {kind} "
                     f"{getattr(layer, 'name', '')!r}.")
