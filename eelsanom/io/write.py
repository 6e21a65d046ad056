"""Writing results: HyperSpy signals, PNG maps, JSON, and a result's maps under one naming rule.

Every writer goes through :func:`eelsanom.io._files.atomic_write` (a hidden
temporary name in the destination folder, renamed into place when complete), so
an interrupted run never leaves a half-written file under a final name, and
refuses to write onto a ``protect``-ed path (the run's inputs).
:func:`result_paths` is the one naming rule of a result's maps (``<stem>_nll.hspy``,
...), used to check the paths before a run and to write and read them back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..spectrum import Axis, _jsonify
from ._files import _check_output, atomic_write, atomic_write_bytes
from .read import _read_all
from .signals import _check_map, _latent_signal, _nav_axes, map_to_signal

logger = logging.getLogger("eelsanom.io")

__all__ = ["MASK_COLOURS", "save_signal", "save_png_map", "write_json", "result_paths",
           "save_result", "load_result_maps"]

_SIGNAL_FORMATS = ("hspy", "zspy")
_RESULT_FORMATS = ("hspy", "zspy", "png", "tiff")


def _check_writable_format(path: Path) -> None:
    ext = path.suffix.lower().lstrip(".")
    try:
        from rsciio import IO_PLUGINS
    except ImportError:  # pragma: no cover - rosettasciio comes with hyperspy
        return
    ok = sorted({e.lower() for p in IO_PLUGINS if p.get("writes") for e in p["file_extensions"]})
    if ext not in ok:
        raise InputError(f"cannot write {path.name}: expected an extension HyperSpy writes "
                         f"(e.g. .hspy, .zspy; any of {', '.join('.' + e for e in ok)}), found "
                         f"{path.suffix or 'none'}.")


def save_signal(signal: Any, path: str | os.PathLike, *, overwrite: bool = True,
                protect: Iterable[Any] = ()) -> Path:
    """Write a HyperSpy signal atomically (format from the extension: ``.hspy``, ``.zspy``...).

    The signal is written under a hidden temporary name in the destination folder
    and renamed into place; a ``.zspy`` folder that already exists is removed only
    after the new one is complete. Nothing is left behind when writing fails.

    Parameters
    ----------
    signal : hyperspy signal
    path : str or Path
    overwrite : bool
        Replace an existing file (default). With ``False`` an existing path is refused.
    protect : iterable of paths
        Paths that must never be written (the input files).

    Returns
    -------
    Path
        ``path``.
    """
    path = _check_output(Path(path), overwrite=overwrite, protect=protect)
    _check_writable_format(path)
    atomic_write(path, lambda tmp: signal.save(tmp, overwrite=True), record=True)
    logger.debug("wrote %s", path)
    return path


_LENGTH_STEPS = (("m", 1e9), ("mm", 1e6), ("µm", 1e3), ("um", 1e3), ("nm", 1.0))


def _readable_units(y: Axis, x: Axis) -> tuple[Axis, Axis]:
    """Axes rescaled to nm/µm/mm so that tick labels are neither tiny nor huge."""
    to_nm = dict(_LENGTH_STEPS)
    if x.units not in to_nm or y.units not in to_nm:
        return y, x
    span_nm = max(abs(x.scale) * x.size * to_nm[x.units], abs(y.scale) * y.size * to_nm[y.units])
    unit, f = ("nm", 1.0) if span_nm < 2e3 else ("µm", 1e3) if span_nm < 2e6 else ("mm", 1e6)

    def conv(a: Axis) -> Axis:
        k = to_nm[a.units] / f
        return replace(a, scale=a.scale * k, offset=a.offset * k, units=unit)

    return conv(y), conv(x)


#: colours of a boolean map's PNG: (not flagged, flagged)
MASK_COLOURS = ("#1f1f1f", "#ff8c00")


def save_png_map(arr: Any, path: str | os.PathLike, *, si_or_result: Any, title: str,
                 cbar_label: str, cmap: str = "magma", mask_overlay: Any = None,
                 log: bool = False, threshold: float | None = None,
                 protect: Iterable[Any] = ()) -> Path:
    """Plot a per-pixel map with a colour bar and physical axes, and write it atomically.

    Parameters
    ----------
    arr : array of shape (ny, nx)
        The map; NaN pixels are drawn grey. A boolean map is drawn in the two
        :data:`MASK_COLOURS` with a legend (counts per colour) instead of a colour bar.
    path : str or Path
        Output image (``.png``; ``.pdf``/``.svg`` also work).
    si_or_result : SpectrumImage or AnomalyResult
        Gives the axes' calibration: the image extent is in the navigation units and
        the pixel size is written in the title.
    title, cbar_label : str
        Plot title (the map size in pixels and the pixel size are added below it) and
        colour-bar label.
    cmap : str
        Matplotlib colour map.
    mask_overlay : bool array of shape (ny, nx), optional
        Pixels drawn in translucent cyan on top.
    log : bool
        Logarithmic colour scale (symmetric-log when some values are <= 0).
    threshold : float, optional
        Marked as a line on the colour bar.
    protect : iterable of paths
        Paths that must never be written.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        When ``path`` is one of ``protect`` or an existing directory, when
        ``si_or_result`` has no ``y``/``x`` :class:`Axis`, or when ``arr`` or
        ``mask_overlay`` is not of shape (ny, nx).
    """
    import matplotlib
    from matplotlib import colors as mcolors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = _check_output(Path(path), overwrite=True, protect=protect)
    y, x = _nav_axes(si_or_result)
    raw = _check_map(arr, y, x, title or "map")
    is_bool = raw.dtype == bool
    data = raw.astype(np.float64)
    y, x = _readable_units(y, x)
    ny, nx = data.shape
    extent = (x.offset - x.scale / 2, x.end + x.scale / 2,
              y.end + y.scale / 2, y.offset - y.scale / 2)
    ratio = (ny * abs(y.scale)) / max(nx * abs(x.scale), 1e-300)
    aspect = "equal" if (y.units == x.units and 1 / 20 <= ratio <= 20) else "auto"
    finite = data[np.isfinite(data)]
    norm = None
    if log and finite.size:
        if finite.min() > 0:
            norm = mcolors.LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * 1.0001))
        else:
            nz = np.abs(finite[finite != 0])
            lin = float(np.percentile(nz, 10)) if nz.size else 1.0
            norm = mcolors.SymLogNorm(linthresh=max(lin, 1e-12), vmin=finite.min(),
                                      vmax=finite.max())
    if is_bool:  # two colours and a legend, fixed whatever the mask holds (all False too)
        cm = mcolors.ListedColormap(list(MASK_COLOURS))
        norm = mcolors.BoundaryNorm([-0.5, 0.5, 1.5], 2)
    else:
        cm = matplotlib.colormaps[cmap].copy()
    cm.set_bad("0.6")
    fig = Figure(figsize=(6.4, 4.8 if ny > 1 else 2.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), extent=extent, origin="upper", cmap=cm, norm=norm,
                   interpolation="nearest", aspect=aspect)
    if is_bool:
        from matplotlib.patches import Patch

        n_yes = int(raw.sum())
        handles = [Patch(facecolor=MASK_COLOURS[0], edgecolor="0.5",
                         label=f"not flagged ({raw.size - n_yes} px)"),
                   Patch(facecolor=MASK_COLOURS[1], edgecolor="0.5",
                         label=f"flagged ({n_yes} px)")]
        # an axes legend beside the map: constrained layout makes room for it (a figure legend
        # "outside right" with an equal-aspect map pushed the title and y label off the figure)
        ax.legend(handles=handles, title=cbar_label, loc="center left", bbox_to_anchor=(1.03, 0.5),
                  borderaxespad=0.0, fontsize=9, title_fontsize=9)
    else:
        cb = fig.colorbar(im, ax=ax)
        cb.set_label(cbar_label)
        if threshold is not None and np.isfinite(threshold):
            cb.ax.axhline(float(threshold), color="cyan", linewidth=1.5)
    if mask_overlay is not None:
        m = _check_map(mask_overlay, y, x, "mask_overlay").astype(bool)
        rgba = np.zeros((ny, nx, 4))
        rgba[m] = (0.0, 1.0, 1.0, 0.45)
        ax.imshow(rgba, extent=extent, origin="upper", interpolation="nearest", aspect=aspect)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel(f"x ({x.units or 'px'})")
    if ny == 1:
        ax.set_yticks([])
        ax.set_ylabel("line scan")
    else:
        ax.set_ylabel(f"y ({y.units or 'px'})")
    px = (f"{x.scale:.3g} {x.units or 'px'}" if math.isclose(x.scale, y.scale, rel_tol=1e-6)
          or ny == 1 else f"{x.scale:.3g} x {y.scale:.3g} {x.units or 'px'}")
    ax.set_title(f"{title}\n{ny} x {nx} px, pixel {px}", fontsize=10, wrap=True)
    _fit_text(fig)
    return atomic_write(path, lambda tmp: fig.savefig(
        tmp, format=(path.suffix.lstrip(".").lower() or "png")), record=True)


def _fit_text(fig: Any) -> None:
    """Widen ``fig`` until everything drawn lies inside it (a long title or legend), at most
    to 12.8 inches."""
    for _ in range(4):
        fig.canvas.draw()
        tb = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, drawn artists only
        w, h = fig.get_size_inches()
        over = max(-tb.x0, tb.x1 - w)
        if over <= 0.01 or w >= 12.8:
            return
        fig.set_size_inches(min(w + 2 * over + 0.1, 12.8), h)


def write_json(obj: Any, path: str | os.PathLike, *, protect: Iterable[Any] = ()) -> Path:
    """Write ``obj`` as strict JSON, atomically.

    numpy scalars and arrays become numbers and lists, NaN/inf become ``null``,
    paths become strings, :class:`Axis` and dataclasses become dicts.

    Parameters
    ----------
    obj : object
        Any mix of dicts, sequences, numpy scalars/arrays, paths, axes and dataclasses;
        objects of other types are written as ``str(obj)``.
    path : str or Path
        Output file (overwritten when it exists; its folder is created).
    protect : iterable of paths
        Paths that must never be written (the input files).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        When ``path`` is one of ``protect`` or an existing directory.
    """
    path = _check_output(Path(path), overwrite=True, protect=protect)
    text = json.dumps(_jsonify(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def _write_tiff(arr: np.ndarray, path: Path, protect: Iterable[Any]) -> Path | None:
    path = _check_output(path, overwrite=True, protect=protect)
    try:
        import tifffile

        def write(tmp: Path) -> None:
            tifffile.imwrite(tmp, arr)
    except ImportError:
        try:
            import imageio.v3 as iio
        except ImportError:
            logger.warning("TIFF output skipped for %s: install tifffile or imageio", path)
            return None

        def write(tmp: Path) -> None:
            iio.imwrite(tmp, arr, extension=".tif")
    return atomic_write(path, write, record=True)


def _normalise_formats(formats: Iterable[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for f in formats:
        k = str(f).lower().lstrip(".")
        k = "tiff" if k == "tif" else k
        if k not in _RESULT_FORMATS:
            raise InputError(f"output format: expected some of {', '.join(_RESULT_FORMATS)}, "
                             f"found {f!r}.")
        if k not in out:
            out.append(k)
    return out


def _safe_stem(stem: str) -> str:
    s = str(stem).strip()
    if not s or s in {".", ".."} or re.search(r"[\\/]", s):
        raise InputError(f"stem: expected a file-name stem without folders, found {stem!r}.")
    return s


def _result_info(result: Any) -> dict[str, Any]:
    """The ``metadata.eelsanom`` node of the maps :func:`save_result` writes."""
    thr = float(result.threshold)
    return {"threshold": thr if math.isfinite(thr) else None,
            "threshold_method": str(result.threshold_method), "method": str(result.method),
            "energy": result.energy.to_dict(),
            "info_json": json.dumps(_jsonify(getattr(result, "info", {}) or {}),
                                    allow_nan=False)}


def _map_labels(stem: str, method: str, threshold: float = float("nan"),
                threshold_method: str = "") -> dict[str, tuple[str, str | None]]:
    """``name -> (title, quantity)`` of the saved maps (``nll``, ``mask``, ``latent``): one
    wording for :func:`save_result` and the block-by-block writer of :mod:`eelsanom.stream`."""
    return {"nll": (f"{stem} NLL ({method})", "NLL (higher = more anomalous)"),
            "mask": (f"{stem} anomaly mask ({method})",
                     f"NLL > {float(threshold):.6g} ({threshold_method})"),
            "latent": (f"{stem} latent codes ({method})", None)}


def result_paths(outdir: str | os.PathLike, stem: str, formats: Iterable[str] = ("hspy", "png"),
                 *, latent: bool = True) -> dict[str, Path]:
    """The paths :func:`save_result` writes (one naming rule, also used to check them first).

    Parameters
    ----------
    outdir : str or Path
        Output folder.
    stem : str
        File-name stem, without folders.
    formats : iterable of str or str
        As :func:`save_result`.
    latent : bool
        Include the latent-code maps (results that carry latent codes).

    Returns
    -------
    dict of str -> Path
        Keys ``"<map>_<format>"`` as :func:`save_result` returns them.

    Raises
    ------
    InputError
        When a format is unknown or ``stem`` is empty or contains a folder.
    """
    fmts = _normalise_formats(formats)
    stem = _safe_stem(stem)
    out = Path(outdir).expanduser()
    paths: dict[str, Path] = {}
    for f in fmts:
        if f in _SIGNAL_FORMATS:
            for name in ("nll", "mask") + (("latent",) if latent else ()):
                paths[f"{name}_{f}"] = out / f"{stem}_{name}.{f}"
        elif f == "png":
            for name in ("nll", "mask"):
                paths[f"{name}_png"] = out / f"{stem}_{name}.png"
        elif f == "tiff":
            for name in ("nll", "mask"):
                paths[f"{name}_tiff"] = out / f"{stem}_{name}.tif"
    return paths


def save_result(result: Any, outdir: str | os.PathLike, *, stem: str,
                formats: Iterable[str] = ("hspy", "png"),
                protect: Iterable[Any] = ()) -> dict[str, Path]:
    """Write an :class:`~eelsanom.result.AnomalyResult`'s maps into ``outdir``.

    Files (each written atomically), for the formats requested:

    - ``<stem>_nll.hspy|.zspy``: NLL map (Signal2D, navigation calibration; the
      threshold, its method and the detector in ``metadata.eelsanom``);
    - ``<stem>_mask.hspy|.zspy``: boolean anomaly mask (same calibration);
    - ``<stem>_latent.hspy|.zspy``: latent codes ``(ny, nx, d)`` as a Signal1D over
      the navigation grid, when the result has them;
    - ``<stem>_nll.png``, ``<stem>_mask.png``: plots with colour bars and physical axes;
    - ``<stem>_nll.tif``, ``<stem>_mask.tif`` (float32 / uint8) with ``"tiff"``, when
      tifffile or imageio is installed.

    Parameters
    ----------
    result : AnomalyResult
        The result: ``nll`` (ny, nx), ``mask`` (ny, nx) bool, optional ``latent``
        (ny, nx, d), threshold and navigation axes.
    outdir : str or Path
        Output folder (created when missing).
    stem : str
        File-name stem, without folders.
    formats : iterable of str or str
        Any of ``"hspy"``, ``"zspy"``, ``"png"``, ``"tiff"`` (``"tif"`` accepted;
        case and a leading dot ignored).
    protect : iterable of paths
        Paths that must never be written (the input files).

    Returns
    -------
    dict of str -> Path
        Keys ``"<map>_<format>"``, e.g. ``"nll_hspy"``, ``"mask_png"``, ``"latent_zspy"``,
        ``"nll_tiff"``.

    Raises
    ------
    InputError
        When a format is unknown, ``stem`` is empty or contains a folder, or an output
        path is one of ``protect`` or an existing directory.
    """
    fmts = _normalise_formats(formats)
    stem = _safe_stem(stem)
    out = Path(outdir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    nll = np.asarray(result.nll, dtype=np.float32)
    mask = np.asarray(result.mask, dtype=bool)
    thr = float(result.threshold)
    tmethod = str(result.threshold_method)
    method = str(result.method)
    n_flag, n_tot = int(mask.sum()), int(mask.size)
    info = _result_info(result)
    written: dict[str, Path] = {}
    names = result_paths(out, stem, fmts)

    sig_fmts = [f for f in fmts if f in _SIGNAL_FORMATS]
    if sig_fmts:
        labels = _map_labels(stem, method, thr, tmethod)
        nll_sig = map_to_signal(nll, result, title=labels["nll"][0], quantity=labels["nll"][1])
        mask_sig = map_to_signal(mask, result, title=labels["mask"][0],
                                 quantity=labels["mask"][1])
        for s in (nll_sig, mask_sig):
            s.metadata.add_dictionary({"eelsanom": dict(info)})
        lat_sig = None
        if getattr(result, "latent", None) is not None:
            lat_sig = _latent_signal(result.latent, result, title=labels["latent"][0])
            lat_sig.metadata.add_dictionary({"eelsanom": dict(info)})
        for f in sig_fmts:
            written[f"nll_{f}"] = save_signal(nll_sig, names[f"nll_{f}"], protect=protect)
            written[f"mask_{f}"] = save_signal(mask_sig, names[f"mask_{f}"],
                                                 protect=protect)
            if lat_sig is not None:
                written[f"latent_{f}"] = save_signal(lat_sig, names[f"latent_{f}"],
                                                     protect=protect)
    if "png" in fmts:
        written["nll_png"] = save_png_map(
            nll, names["nll_png"], si_or_result=result,
            title=f"{stem}: NLL ({method}); threshold {thr:.4g} ({tmethod})",
            cbar_label="NLL (higher = more anomalous)", threshold=thr, protect=protect)
        written["mask_png"] = save_png_map(
            mask, names["mask_png"], si_or_result=result,
            title=f"{stem}: anomaly mask, {n_flag} of {n_tot} px flagged ({method})",
            cbar_label=f"flagged: NLL > {thr:.4g}", cmap="gray", protect=protect)
    if "tiff" in fmts:
        for name, arr in (("nll", nll), ("mask", mask.astype(np.uint8))):
            p = _write_tiff(arr, names[f"{name}_tiff"], protect)
            if p is not None:
                written[f"{name}_tiff"] = p
    return written


def load_result_maps(outdir: str | os.PathLike, stem: str) -> dict[str, np.ndarray]:
    """Read back the maps :func:`save_result` wrote (``.hspy`` preferred, else ``.zspy``).

    Parameters
    ----------
    outdir : str or Path
        The folder :func:`save_result` wrote into.
    stem : str
        The file-name stem given to :func:`save_result`.

    Returns
    -------
    dict of str -> ndarray
        ``"nll"`` (ny, nx) float32, ``"mask"`` (ny, nx) bool when written, ``"latent"``
        (ny, nx, d) when written, and ``"threshold"`` (a 0-d float64 array) when stored.

    Raises
    ------
    InputError
        No ``<stem>_nll`` file in ``outdir``, or ``stem`` is empty or contains a folder.
    """
    out_dir = Path(outdir).expanduser()
    stem = _safe_stem(stem)
    maps: dict[str, np.ndarray] = {}
    for name in ("nll", "mask", "latent"):
        for ext in (".hspy", ".zspy"):
            p = out_dir / f"{stem}_{name}{ext}"
            if not p.exists():
                continue
            sig = _read_all(p, lazy=False)[0]
            arr = np.asarray(sig.data)
            maps[name] = arr.astype(bool) if name == "mask" else arr
            if name == "nll" and sig.metadata.has_item("eelsanom.threshold"):
                thr = sig.metadata.get_item("eelsanom.threshold")
                maps["threshold"] = np.asarray(np.nan if thr is None else thr, dtype=np.float64)
            break
    if "nll" not in maps:
        raise InputError(f"{out_dir}: expected {stem}_nll.hspy or {stem}_nll.zspy (written by "
                         "save_result), found neither. Check the folder and the stem.")
    return maps
