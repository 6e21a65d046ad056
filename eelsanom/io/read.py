"""Reading EELS spectrum images: listing a file's signals, loading one, and refusing bad files.

Reading goes through HyperSpy/RosettaSciIO (imported lazily, inside the
functions, so ``import eelsanom.io`` stays cheap and the core never needs
HyperSpy): :func:`load_spectrum_image` turns a ``.dm3/.dm4/.hspy/.zspy/.emd/...``
file into a validated :class:`~eelsanom.spectrum.SpectrumImage`, eagerly or
lazily (dask). :func:`list_signals` says what a file holds.

One place for each rule: the file extensions (:data:`SUPPORTED_EXTENSIONS`, and
:data:`SCANNED_EXTENSIONS` picked up when a folder is scanned), what counts as an
EELS spectrum image (:func:`is_eels_spectrum_image`), the declared-size checks
that refuse a crafted or truncated file before it is read, and the decision to
stream a cube block by block (:func:`stream_decision`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..spectrum import SpectrumImage, _acquisition_info, _units_are_ev, as_spectrum_image

logger = logging.getLogger("eelsanom.io")

__all__ = ["SUPPORTED_EXTENSIONS", "SCANNED_EXTENSIONS", "STREAM_ENV", "is_eels_spectrum_image",
           "list_signals", "format_signal_list", "load_spectrum_image", "stream_threshold_bytes",
           "should_stream", "stream_decision"]

#: EELS spectrum-image file types, listed once: extension (lower case) -> whether a folder
#: scan (``eelsanom batch DIR``) picks it up. Any other file HyperSpy reads is still tried
#: by :func:`load_spectrum_image`.
_EXTENSIONS: dict[str, bool] = {
    ".dm3": True, ".dm4": True, ".hspy": True, ".zspy": True, ".emd": True,
    ".hdf5": False, ".nxs": False, ".rpl": False, ".emi": False, ".ser": False,
}
#: Extensions we advertise for EELS spectrum images (lower case).
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_EXTENSIONS)
#: Extensions picked up when a folder is given as input (lower case).
SCANNED_EXTENSIONS: tuple[str, ...] = tuple(e for e, scan in _EXTENSIONS.items() if scan)

#: environment variable: stream cubes larger than this many bytes (overrides the RAM rule)
STREAM_ENV = "EELSANOM_STREAM_BYTES"


def is_eels_spectrum_image(n_navigation: int, n_signal: int, energy_units: str,
                           signal_type: str = "") -> bool:
    """The one rule for "this signal is an EELS spectrum image" (files holding several signals).

    Parameters
    ----------
    n_navigation, n_signal : int
        Number of navigation axes (probe positions) and of signal axes.
    energy_units : str
        Units of the signal axis.
    signal_type : str
        HyperSpy's ``metadata.Signal.signal_type`` (empty when unset).

    Returns
    -------
    bool
        True for one signal axis in eV, one or two navigation axes, and an EELS or
        unset signal type.
    """
    return bool(n_signal == 1 and 1 <= n_navigation <= 2 and _units_are_ev(energy_units)
                and (signal_type == "" or "EELS" in signal_type.upper()))


def _hs() -> Any:
    import hyperspy.api as hs  # heavy, imported on use only

    return hs


class _DropRsciioAdvice(logging.Filter):
    """Hide HyperSpy's "please report this error" log line: we raise a clearer InputError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "please report this error" not in record.getMessage()


@contextlib.contextmanager
def _quiet_read_errors() -> Iterator[None]:
    log = logging.getLogger("hyperspy.io")
    flt = _DropRsciioAdvice()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


def _one_line(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."




def _check_input_path(path: Any) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"{p}: file not found. Expected an existing EELS spectrum-image file "
            f"({', '.join(SUPPORTED_EXTENSIONS)}); check the path and its spelling.")
    if p.is_dir() and p.suffix.lower() != ".zspy":
        raise InputError(
            f"{p} is a directory; expected a file ({', '.join(SUPPORTED_EXTENSIONS)}) or a .zspy "
            "dataset folder. Give the path of the file inside it.")
    return p


def _check_declared(path: Path) -> None:
    """Check what an HDF5 file (``.hspy``, ``.emd``, ``.h5``, ...) declares before any reader
    touches its data: no dataset stored outside the file (external links, virtual datasets,
    external raw storage); every dataset's declared size actually stored (a chunked dataset
    whose chunks were never written, e.g. a crafted 200000 x 200000 x 2048 header, is
    refused in milliseconds instead of being read as zeros for hours); and, in HyperSpy
    files, each ``axis-i`` size equal to the data's size along that axis."""
    if path.is_dir():
        _check_declared_zarr(path)
        return
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return
    except OSError:
        return  # unreadable: the reader says why
    import h5py

    problems: list[str] = []

    def visit(group: Any, prefix: str, depth: int) -> None:
        if depth > 64 or len(problems) > 0:
            return
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"{where} is a link to another file ({link.filename}); expected "
                                "data stored inside this file")
                return
            if isinstance(link, h5py.SoftLink):
                continue
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                visit(obj, where, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                check_dataset(obj, where)
            if problems:
                return
        if "data" in group and isinstance(group.get("data"), h5py.Dataset):
            check_axes(group, prefix)

    def check_dataset(ds: Any, where: str) -> None:
        if ds.is_virtual or ds.external:
            problems.append(f"{where} is a virtual dataset or stored in external files; expected "
                            "data stored inside this file")
            return
        if ds.size == 0 or ds.shape is None:
            return
        nbytes = int(ds.size) * ds.dtype.itemsize
        if ds.chunks is not None and (big := _chunk_problem(where, ds.chunks, ds.dtype.itemsize)):
            problems.append(big)
            return
        if ds.chunks is not None:
            expected = math.prod(math.ceil(n / c) for n, c in zip(ds.shape, ds.chunks))
            stored = ds.id.get_num_chunks()
            if stored < expected and nbytes > (1 << 20):
                problems.append(
                    f"{where} declares shape {ds.shape} ({nbytes / 1e9:.3g} GB) but only "
                    f"{stored} of its {expected} chunks hold data")
            elif nbytes > _BOMB_MIN_BYTES and ds.id.get_storage_size() * _BOMB_RATIO < nbytes:
                problems.append(
                    f"{where} declares shape {ds.shape} ({nbytes / 1e9:.3g} GB) but stores only "
                    f"{ds.id.get_storage_size()} bytes (more than {_BOMB_RATIO}x compression)")
        elif ds.id.get_storage_size() < nbytes and nbytes > (1 << 20):
            problems.append(f"{where} declares shape {ds.shape} ({nbytes / 1e9:.3g} GB) but "
                            f"stores {ds.id.get_storage_size()} bytes")

    def check_axes(group: Any, prefix: str) -> None:
        shape = group["data"].shape or ()
        for i in range(len(shape)):
            ax = group.get(f"axis-{i}")
            if not isinstance(ax, h5py.Group) or "size" not in ax.attrs:
                continue
            try:
                size = int(ax.attrs["size"])
            except (TypeError, ValueError):
                size = -1
            if size != shape[i]:
                told = size if size >= 0 else repr(ax.attrs["size"])
                problems.append(f"{prefix}/axis-{i} declares {told} points but the data has "
                                f"{shape[i]} along that axis (data shape {shape})")
                return

    try:
        with h5py.File(path, "r") as f:
            visit(f, "", 0)
    except (OSError, RuntimeError, KeyError, ValueError):
        return  # damaged beyond h5py: the reader refuses it with its own message
    if problems:
        raise InputError(f"{path}: {problems[0]}. The file is incomplete, damaged or crafted; "
                         "expected a complete file as the instrument software or HyperSpy wrote "
                         "it. Export it again from the original data.")


#: a dataset declaring more than _BOMB_MIN_BYTES that stores under 1/_BOMB_RATIO of it is
#: refused (real EELS counts compress a few times, not a thousand)
_BOMB_MIN_BYTES = 1 << 28
_BOMB_RATIO = 1000


#: the largest one chunk of a file may decompress to (a reader holds a whole chunk at once;
#: instrument and HyperSpy files use chunks of megabytes)
_MAX_CHUNK_BYTES = 1 << 30


def _chunk_limit() -> int:
    try:
        import psutil

        return int(min(_MAX_CHUNK_BYTES, psutil.virtual_memory().available // 4))
    except Exception:  # noqa: BLE001 - psutil missing: the fixed cap
        return _MAX_CHUNK_BYTES


def _chunk_problem(where: str, chunks: Any, itemsize: int) -> str | None:
    nbytes = math.prod(int(c) for c in chunks) * int(itemsize)
    limit = _chunk_limit()
    if nbytes > limit:
        return (f"{where} is stored in chunks of {tuple(int(c) for c in chunks)} "
                f"({nbytes / 2**30:.3g} GiB each, more than the {limit / 2**30:.3g} GiB one read "
                "may take)")
    return None


def _zarr_chunk_files(root: str, meta: dict[str, Any]) -> tuple[int, int]:
    """``(files, bytes)`` of the chunk files of the zarr array in ``root``: only names that
    are chunk keys of its grid (``0.1.2``, or ``0/1/2`` with the ``/`` separator), so a
    junk file beside them does not count as stored data."""
    ndim = len(meta["shape"])
    sep = meta.get("dimension_separator") or "."
    n = total = 0
    for sub_root, _d, names in os.walk(root):
        rel = os.path.relpath(sub_root, root)
        prefix = [] if rel == "." else rel.split(os.sep)
        for name in names:
            parts = prefix + (name.split(".") if sep == "." else [name])
            if len(parts) == ndim and all(p.isdigit() for p in parts):
                n += 1
                total += os.path.getsize(os.path.join(sub_root, name))
    return n, total


def _check_declared_zarr(path: Path) -> None:
    """:func:`_check_declared` for a ``.zspy`` (zarr) folder: each array's chunk size bounded,
    and its declared size against the bytes its chunk files (nothing else) store."""
    for root, _dirs, names in os.walk(path):
        if ".zarray" not in names:
            continue
        try:
            meta = json.loads((Path(root) / ".zarray").read_text(encoding="utf-8"))
            shape = [int(n) for n in meta["shape"]]
            chunks = [int(c) for c in meta["chunks"]]
            itemsize = np.dtype(meta["dtype"]).itemsize
            nbytes = math.prod(shape) * itemsize
        except (OSError, ValueError, KeyError, TypeError):
            continue  # the reader refuses it with its own message
        where = os.path.relpath(root, path)
        problem = _chunk_problem(where, chunks, itemsize) if len(chunks) == len(shape) else None
        if problem is None and nbytes > _BOMB_MIN_BYTES:
            _n, stored = _zarr_chunk_files(root, meta)
            if stored * _BOMB_RATIO < nbytes:
                problem = (f"{where} declares shape {tuple(shape)} ({nbytes / 1e9:.3g} GB) but "
                           f"stores only {stored} bytes in its chunk files")
        if problem:
            raise InputError(
                f"{path}: {problem}. The file is incomplete, damaged or crafted; expected a "
                "complete file as HyperSpy wrote it. Export it again from the original data.")


def _read_all(path: Path, *, lazy: bool) -> list[Any]:
    """All signals in ``path`` as a list of HyperSpy signals (the file opened read-only)."""
    _check_declared(path)
    hs = _hs()
    kw: dict[str, Any] = {}
    suffix = path.suffix.lower()
    if suffix == ".hspy" or (suffix == ".zspy" and path.is_dir()):
        kw["mode"] = "r"  # the zspy reader would open a lazy file read-write by default
    try:
        with _quiet_read_errors():
            out = hs.load(path, lazy=lazy, **kw)
    except Exception as exc:  # any reader failure is a bad input file
        raise InputError(
            f"{path}: could not be read ({type(exc).__name__}: {_one_line(exc)}). Expected a "
            f"complete file in a format HyperSpy reads ({', '.join(SUPPORTED_EXTENSIONS)}, ...). "
            "Check that the file is not truncated or still being written and that its "
            "extension matches its format.") from exc
    signals = list(out) if isinstance(out, (list, tuple)) else [out]
    if not signals:
        raise InputError(f"{path}: the file holds no signals; expected an EELS spectrum image.")
    return [_normalise(s) for s in signals]


def _normalise(sig: Any) -> Any:
    """Undo formats that drop the navigation/signal split (e.g. NCEM EMD loads as ``(|E, x, y)``).

    A signal with no navigation axis, 2-3 signal axes and exactly one axis in eV
    becomes a Signal1D over that axis. Anything else is returned unchanged.
    """
    am = sig.axes_manager
    if am.navigation_dimension != 0 or am.signal_dimension not in (2, 3):
        return sig
    ev = [ax for ax in am.signal_axes if _units_are_ev(str(getattr(ax, "units", "")))]
    if len(ev) != 1:
        return sig
    try:
        out = sig.as_signal1D(ev[0], optimize=False)
    except Exception:  # noqa: BLE001 - leave it to the validation to explain
        return sig
    logger.info("%s: read as a spectrum image over its eV axis %r (the file stores no "
                "navigation/signal split)", _title_of(sig), ev[0].name)
    return out


def _title_of(sig: Any) -> str:
    try:
        return str(sig.metadata.General.title or "")
    except AttributeError:
        return ""


def _signal_type_of(sig: Any) -> str:
    try:
        return str(sig.metadata.Signal.signal_type or "")
    except AttributeError:
        return ""


def _describe_hspy(path: Path) -> list[dict[str, Any]] | None:
    """:func:`list_signals` of a ``.hspy`` file read with h5py (importing HyperSpy takes seconds).

    Only for the plain case :func:`_describe` would give the same answer for: an HDF5
    file that declares ``file_format="HyperSpy"``, every signal with uniform axes, one
    signal axis, at least one navigation axis, not ragged, and signal type EELS or
    unset; anything else returns ``None`` and goes through HyperSpy.
    """
    if path.is_dir() or path.suffix.lower() != ".hspy":
        return None
    try:
        _check_declared(path)
    except InputError:
        return None  # the HyperSpy path reports it
    import importlib.util

    import h5py

    try:
        with h5py.File(path, "r") as f:
            if str(f.attrs.get("file_format", "")) != "HyperSpy" or "Experiments" not in f:
                return None
            exps = f["Experiments"]
            out = []
            for index, name in enumerate(exps):
                g = exps[name]
                attrs = g.get("attributes")
                if attrs is not None and bool(attrs.attrs.get("ragged", False)):
                    return None
                data = g["data"]
                axes = [g[f"axis-{i}"].attrs for i in range(data.ndim)]
                if any(str(a.get("_type", "UniformDataAxis")) != "UniformDataAxis"
                       or "scale" not in a or "offset" not in a for a in axes):
                    return None
                nav = [a for a in axes if bool(a.get("navigate"))]
                sig = [a for a in axes if not bool(a.get("navigate"))]
                meta = g.get("metadata")
                general = meta.get("General") if meta is not None else None
                signal = meta.get("Signal") if meta is not None else None
                title = str(general.attrs.get("title", "")) if general is not None else ""
                stype = str(signal.attrs.get("signal_type", "")) if signal is not None else ""
                if len(sig) != 1 or not nav or stype not in ("EELS", ""):
                    return None
                eels = stype == "EELS" and importlib.util.find_spec("exspy") is not None
                ax = sig[0]
                size, scale, offset = int(ax["size"]), float(ax["scale"]), float(ax["offset"])
                units = str(ax.get("units", ""))
                units = "" if units == "<undefined>" else units
                axis_vals = offset + scale * np.arange(size)
                out.append({
                    "index": index, "title": title, "signal_type": stype,
                    "class": "LazyEELSSpectrum" if eels else "LazySignal1D",
                    "shape": tuple(int(n) for n in data.shape),
                    "nav_shape": tuple(int(a["size"]) for a in nav),
                    "signal_shape": (size,), "dtype": str(data.dtype),
                    "energy_offset": float(axis_vals[0]) if size else None,
                    "energy_end": float(axis_vals[-1]) if size else None,
                    "energy_scale": float(scale or np.nan), "energy_units": units,
                    "is_candidate": is_eels_spectrum_image(len(nav), 1, units, stype)})
            return out or None
    except Exception:  # noqa: BLE001 - anything unexpected: HyperSpy reads it and explains
        return None


def _describe(sig: Any, index: int) -> dict[str, Any]:
    am = sig.axes_manager
    sig_axes = list(am.signal_axes)
    nav_axes = list(am.navigation_axes)
    stype = _signal_type_of(sig)
    info: dict[str, Any] = {
        "index": index,
        "title": _title_of(sig),
        "signal_type": stype,
        "class": type(sig).__name__,
        "shape": tuple(int(n) for n in sig.data.shape),
        "nav_shape": tuple(int(ax.size) for ax in reversed(nav_axes)),
        "signal_shape": tuple(int(ax.size) for ax in reversed(sig_axes)),
        "dtype": str(sig.data.dtype),
        "energy_offset": None, "energy_end": None, "energy_scale": None, "energy_units": None,
        "is_candidate": False,
    }
    if len(sig_axes) == 1:
        ax = sig_axes[0]
        axis_vals = np.asarray(ax.axis, dtype=float)
        units = str(getattr(ax, "units", ""))
        units = "" if units == "<undefined>" else units
        info.update(energy_offset=float(axis_vals[0]) if axis_vals.size else None,
                    energy_end=float(axis_vals[-1]) if axis_vals.size else None,
                    energy_scale=float(getattr(ax, "scale", np.nan) or np.nan),
                    energy_units=units)
        info["is_candidate"] = is_eels_spectrum_image(len(nav_axes), len(sig_axes), units, stype)
    return info


def _format_one(info: Mapping[str, Any]) -> str:
    kind = info["signal_type"] or info["class"]
    nav, sig = info["nav_shape"], info["signal_shape"]
    shape = f"({', '.join(map(str, nav))}|{', '.join(map(str, sig))})"
    if info["energy_offset"] is not None:
        units = info["energy_units"] or "uncalibrated"
        rng = f"{info['energy_offset']:g} to {info['energy_end']:g} {units}"
    else:
        rng = f"{len(sig)} signal axes, no energy axis"
    flag = " <- EELS spectrum image" if info["is_candidate"] else ""
    return f"[{info['index']}] {info['title']!r} {kind} {shape} {rng}{flag}"


def format_signal_list(infos: Sequence[Mapping[str, Any]]) -> str:
    """One line per signal of :func:`list_signals`: index, title, type, shape, energy range.

    Shapes are written HyperSpy-style, ``(navigation|signal)`` in array order.

    Parameters
    ----------
    infos : sequence of mapping
        The dicts :func:`list_signals` returns, one per signal.

    Returns
    -------
    str
        The lines joined by ``"; "`` (the EELS spectrum image candidates are marked
        ``<- EELS spectrum image``).
    """
    return "; ".join(_format_one(i) for i in infos)


def list_signals(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Describe every signal in a file (read lazily, so only headers are touched).

    Parameters
    ----------
    path : str or Path
        Any file HyperSpy reads.

    Returns
    -------
    list of dict
        One dict per signal with ``index``, ``title``, ``signal_type``, ``class``,
        ``shape`` (data shape), ``nav_shape`` and ``signal_shape`` (array order),
        ``dtype``, ``energy_offset``/``energy_end``/``energy_scale``/``energy_units``
        (``None`` unless there is one signal axis) and ``is_candidate``: one signal
        axis in eV, one or two navigation axes, and an EELS or unset signal type.

    Raises
    ------
    InputError
        Missing or unreadable file.
    """
    p = _check_input_path(path)
    fast = _describe_hspy(p)  # a plain HyperSpy HDF5 file: its headers, without HyperSpy
    if fast is not None:
        return fast
    signals = _read_all(p, lazy=True)
    try:
        return [_describe(s, i) for i, s in enumerate(signals)]
    finally:
        for s in signals:
            _close(s)


def _file_handle(data: Any) -> Any:
    """The open file (h5py/tiff) behind a lazily loaded dask array, or None."""
    if isinstance(data, np.ndarray):
        return None
    try:
        from rsciio.utils.file import get_file_handle

        return get_file_handle(data, warn=False)
    except Exception:  # noqa: BLE001 - no handle to close
        return None


def _close(sig: Any) -> None:
    fh = _file_handle(getattr(sig, "data", None))
    if fh is not None:
        with contextlib.suppress(Exception):
            fh.close()


def _pick(path: Path, infos: list[dict[str, Any]], signal: Any) -> int:
    n = len(infos)
    how = ("Choose one with --signal INDEX (CLI) or load_spectrum_image(path, signal=INDEX) "
           "(Python).")
    if signal is None:
        if n == 1:
            return 0
        cands = [i for i in infos if i["is_candidate"]]
        if len(cands) == 1:
            logger.info("%s holds %d signals; using [%d] %r, the only EELS spectrum image",
                        path.name, n, cands[0]["index"], cands[0]["title"])
            return int(cands[0]["index"])
        found = ("none of them is" if not cands else
                 f"{len(cands)} of them could be")
        raise InputError(
            f"{path.name}: expected one EELS spectrum image, found {n} signals and {found} an "
            f"EELS spectrum image (one energy axis in eV, 1-2 navigation axes): "
            f"{format_signal_list(infos)}. {how}")
    if isinstance(signal, bool) or not isinstance(signal, (int, np.integer)):
        raise InputError(f"signal: expected an integer index into the file's signals, found "
                         f"{signal!r}. {how}")
    idx = int(signal)
    if idx < 0:
        idx += n
    if not 0 <= idx < n:
        raise InputError(
            f"{path.name}: signal index {signal} is out of range; expected 0 to {n - 1}. The "
            f"file holds: {format_signal_list(infos)}.")
    return idx


def load_spectrum_image(path: str | os.PathLike, *, lazy: bool | str = False,
                        signal: int | None = None,
                        on_axes: Callable[[SpectrumImage], None] | None = None) -> SpectrumImage:
    """Read an EELS spectrum image from any HyperSpy-readable file.

    Parameters
    ----------
    path : str or Path
        ``.dm3``, ``.dm4``, ``.hspy``, ``.zspy``, ``.emd``, ... The file is opened
        read-only and never modified.
    lazy : bool or "auto"
        Keep the data as a dask array (read on demand). Non-finite values are
        then refused chunk by chunk when the data is computed (an :class:`InputError`
        raised from the computation); read errors of a damaged file also surface then.
        ``"auto"``: lazy when the cube is too large to hold (see
        :func:`eelsanom.stream.should_stream`; an INFO log line says so), else read
        into memory; the file is opened once either way.
    signal : int, optional
        Which signal to use when the file holds several (see :func:`list_signals`).
        By default the only EELS spectrum-image candidate is used.
    on_axes : callable, optional
        Called with the spectrum image as soon as its axes are known and before its
        data is read (lazily opened: ``data`` is a dask array; ``metadata`` without
        the keys added here), so that checks needing only the axes (a region, a mask
        shape, an energy window) refuse in seconds; an exception it raises ends the
        load, with the file closed.

    Returns
    -------
    SpectrumImage
        ``data`` of shape ``(ny, nx, n_energy)``, float32 (a line scan has ``ny == 1``),
        every axis calibrated as in the file; ``source`` the path; ``title`` from the
        file's metadata (or the file name); ``metadata`` with ``signal_index``,
        ``n_signals``, ``signal_type`` and ``original_metadata`` (a small JSON-able
        dict of acquisition information when the file has it). A ground-truth map
        stored by :func:`to_signal` is read back.

    Raises
    ------
    InputError
        Missing, unreadable or truncated file; a file with several candidate signals and
        no ``signal``; a single spectrum, an image, 4-D data; an energy axis not in eV or
        not increasing; NaN/inf values (eager load).
    """
    if lazy not in (True, False, "auto"):
        raise InputError(f"lazy: expected True, False or 'auto', found {lazy!r}.")
    p = _check_input_path(path)
    fh = None
    try:
        signals = _read_all(p, lazy=True)
    except InputError:
        if lazy is True:
            raise
        signals = _read_all(p, lazy=False)  # a reader without lazy support
    try:
        infos = [_describe(s, i) for i, s in enumerate(signals)]
        idx = _pick(p, infos, signal)
        sig = signals[idx]
        label = (p.name if len(signals) == 1
                 else f"{p.name} signal [{idx}] {infos[idx]['title']!r}")
        fh = _file_handle(sig.data)
        if lazy == "auto":
            lazy = False
            if getattr(sig, "_lazy", False):
                lazy, why = stream_decision(tuple(sig.data.shape))
                if lazy:
                    logger.info("streaming %s block by block: %s (lazy=False / --no-lazy loads "
                                "it whole)", p.name, why)
        checked = False
        if on_axes is not None and getattr(sig, "_lazy", False):
            try:
                early = as_spectrum_image(sig, what=label)
            except InputError:
                early = None  # refused below, with the full message
            if early is not None:
                on_axes(replace(early, source=str(p)))
                checked = True
        if not lazy and getattr(sig, "_lazy", False):
            _check_fits(label, tuple(sig.data.shape))
            try:
                sig.compute(show_progressbar=False)
            except Exception as exc:  # e.g. a truncated dataset
                raise InputError(
                    f"{label}: could not be read ({type(exc).__name__}: {_one_line(exc)}). "
                    "Check that the file is complete (not truncated or still being written)."
                ) from exc
        try:
            si = as_spectrum_image(sig, what=label)  # also reads metadata arrays (ground truth)
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if label in msg else f"{label}: {msg}") from None
        if on_axes is not None and not checked:
            on_axes(replace(si, source=str(p)))
        meta = dict(si.metadata)
        meta.update(signal_index=idx, n_signals=len(signals),
                    signal_type=infos[idx]["signal_type"], original_metadata=_acquisition_info(sig))
    except BaseException:
        for s in signals:
            _close(s)
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()
        raise
    if not lazy:  # everything is in memory: release the file
        for s in signals:
            _close(s)
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()
    if si.is_lazy:
        si = replace(si, data=_finite_guard(si.data, label))
    return replace(si, title=si.title or p.stem, source=str(p), metadata=meta)


def _check_fits(label: str, shape: tuple[int, ...]) -> None:
    """Refuse to read a cube into memory when it cannot fit (float32), before reading it."""
    need = 4 * math.prod(int(n) for n in shape)
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - cannot tell: let the read try
        return
    if need > avail:
        raise InputError(
            f"{label}: the cube {' x '.join(map(str, shape))} needs {need / 1e9:.3g} GB as float32, "
            f"more than the {avail / 1e9:.3g} GB of memory available; expected a cube that fits "
            "to load it whole. Stream it block by block instead (--lazy, or lazy=True), or crop "
            "it first.")


def _finite_guard(data: Any, label: str) -> Any:
    """Wrap a dask array so that computing a chunk reads it through one guard: a read failure
    (a damaged or missing chunk of a partly copied file: h5py's OSError, zarr's errors, ...)
    raises an :class:`InputError` naming the file and the pixels, and a chunk with NaN/inf
    raises one too. Every streamed computation (fit, score, the GUI) reads through it."""
    import dask.array as da

    def read(block_info: dict | None = None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        where = tuple(slice(lo, hi) for lo, hi in loc)
        try:
            block = np.asarray(data[where].compute(scheduler="synchronous"))
        except (InputError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # any read failure of the file is the file's
            (y0, y1), (x0, x1) = loc[0], loc[1]
            raise InputError(
                f"{label}: could not read pixels y={y0}:{y1}, x={x0}:{x1} "
                f"({type(exc).__name__}: {_one_line(exc, 160)}). The file is damaged or "
                "incomplete (a partly copied or still-written acquisition?); expected a complete "
                "file. Copy or export it again.") from exc
        bad = ~np.isfinite(block)
        if bad.any():
            first = np.argwhere(bad)[0] + np.asarray([lo for lo, _ in loc])
            raise InputError(
                f"{label}: expected finite values, found {int(bad.sum())} NaN/inf values in one "
                f"chunk (first at pixel y={first[0]}, x={first[1]}, channel {first[2]}). "
                "Replace them first, e.g. in HyperSpy: s.data = np.nan_to_num(s.data), or crop "
                "the affected pixels/channels.")
        return block

    return da.map_blocks(read, chunks=data.chunks, dtype=data.dtype,
                         meta=np.empty((0,) * data.ndim, dtype=data.dtype))


# --------------------------------------------------------------------------- when to stream
def stream_threshold_bytes() -> int:
    """Cube size (bytes) above which eelsanom streams: ``$EELSANOM_STREAM_BYTES``, else a
    quarter of the available memory (``psutil.virtual_memory().available``).

    Returns
    -------
    int
        Threshold in bytes (a float32 cube larger than this is streamed).

    Raises
    ------
    InputError
        When ``$EELSANOM_STREAM_BYTES`` is set but is not a number, or is negative.
    """
    env = os.environ.get(STREAM_ENV, "").strip()
    if env:
        try:
            v = int(float(env))
        except ValueError as exc:
            raise InputError(f"{STREAM_ENV}: expected a number of bytes, found {env!r}.") from exc
        if v < 0:
            raise InputError(f"{STREAM_ENV}: expected a number of bytes >= 0, found {env!r}.")
        return v
    import psutil  # imported on use only

    return int(psutil.virtual_memory().available // 4)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def should_stream(si: SpectrumImage, *, threshold_bytes: int | None = None) -> tuple[bool, str]:
    """Whether to stream ``si`` (as float32) and why, in words for the log.

    Parameters
    ----------
    si : SpectrumImage
        Usually loaded lazily (only its shape is used).
    threshold_bytes : int, optional
        Default :func:`stream_threshold_bytes`.

    Returns
    -------
    (bool, str)
        Whether to stream, and the sizes and rule behind the decision (for the log).
    """
    return stream_decision(si.shape, threshold_bytes=threshold_bytes)


def stream_decision(shape: tuple[int, ...], *, threshold_bytes: int | None = None
                    ) -> tuple[bool, str]:
    """:func:`should_stream` for a data shape (what a loader knows before reading the data).

    Parameters
    ----------
    shape : tuple of int
        Data shape, ``(ny, nx, n_energy)`` (or ``(n, n_energy)`` for a line scan).
    threshold_bytes : int, optional
        Default :func:`stream_threshold_bytes`.

    Returns
    -------
    (bool, str)
        Whether to stream, and the sizes and rule behind the decision (for the log).
    """
    size = 4 * math.prod(int(n) for n in shape)
    env = os.environ.get(STREAM_ENV, "").strip()
    if threshold_bytes is None:
        threshold_bytes = stream_threshold_bytes()
        rule = (f"{STREAM_ENV}={env}" if env else "a quarter of the available memory")
    else:
        rule = "the threshold given"
    if size > threshold_bytes:
        dims = " x ".join(str(int(n)) for n in shape)
        return True, (f"the cube ({dims}, {_gb(size)} as float32) is larger than "
                      f"{_gb(threshold_bytes)} ({rule})")
    return False, (f"the cube ({_gb(size)}) fits under {_gb(threshold_bytes)} ({rule})")
