"""Reading and writing files — the only module of eelsanom that knows file formats.

Reading goes through HyperSpy/RosettaSciIO (imported lazily, inside the
functions, so ``import eelsanom.io`` stays cheap and the core never needs
HyperSpy): :func:`load_spectrum_image` turns a ``.dm3/.dm4/.hspy/.zspy/.emd/...``
file into a validated :class:`~eelsanom.spectrum.SpectrumImage`, eagerly or
lazily (dask). :func:`list_signals` says what a file holds.

Writing is atomic everywhere: every output is written under a temporary name
in its destination folder and renamed into place, so an interrupted run never
leaves a half-written file that looks complete, and the input file is never
opened for writing (:func:`save_signal` refuses to write onto a ``protect``-ed
path).

Examples
--------
>>> import numpy as np
>>> from eelsanom.spectrum import Axis, SpectrumImage
>>> si = SpectrumImage(np.ones((2, 3, 8), np.float32), Axis(8, 0.5, 280.0, "eV"))
>>> s = to_signal(si)                         # doctest: +SKIP
>>> s.axes_manager.signal_axes[0].offset      # doctest: +SKIP
280.0
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .spectrum import Axis, SpectrumImage, _units_are_ev, as_spectrum_image

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_EXTENSIONS", "list_signals", "format_signal_list", "load_spectrum_image",
    "to_signal", "map_to_signal", "save_signal", "save_png_map", "write_json", "save_result",
    "load_result_maps", "result_paths", "check_outputs", "record_outputs", "is_own_output",
    "RUN_MARKER",
]

#: Extensions we advertise for EELS spectrum images (lower case). Any other file
#: HyperSpy can read is still tried by :func:`load_spectrum_image`.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".dm3", ".dm4", ".hspy", ".zspy", ".emd", ".hdf5", ".nxs", ".rpl", ".emi", ".ser",
)

_SIGNAL_FORMATS = ("hspy", "zspy")
_RESULT_FORMATS = ("hspy", "zspy", "png", "tiff")
_MAX_META_LIST = 64


# --------------------------------------------------------------------------- helpers


def _hs() -> Any:
    import hyperspy.api as hs  # noqa: PLC0415 - heavy, imported on use only

    return hs


class _DropRsciioAdvice(logging.Filter):
    """Hide HyperSpy's "please report this error" log line: we raise a clearer InputError."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003
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


def _tmp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name in ``path``'s folder that keeps the extension (writers pick by it)."""
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _commit(tmp: Path, path: Path) -> None:
    """Move the complete ``tmp`` onto ``path``; an old directory is removed only afterwards."""
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        old = _tmp_sibling(path, "old")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
        _own(path)
        return
    if tmp.is_dir() and path.exists():
        path.unlink()
    os.replace(tmp, path)
    _own(path)


def _own(path: Path) -> None:
    """Record ``path`` in its folder's run marker as soon as it is written.

    Each output is recorded the moment it lands under its final name, not when the
    run ends, so a run interrupted half-way (a killed batch worker, Ctrl-C) leaves
    outputs that the next run recognises as its own and may replace.
    """
    if Path(path).name != RUN_MARKER:
        record_outputs([path])


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_output(path: Path, *, overwrite: bool, protect: Iterable[Any]) -> Path:
    path = Path(path).expanduser()
    for p in protect or ():
        if p is not None and _same_path(path, Path(p).expanduser()):
            raise InputError(
                f"refusing to write {path}: expected an output path different from the input, "
                f"found the input file {p}. Choose another output folder or name.")
    if path.exists() and not overwrite:
        raise InputError(
            f"{path} already exists; expected a new output path. Allow overwriting "
            "(overwrite=True, CLI --overwrite) or choose another name.")
    if path.is_dir() and not path.is_symlink() and path.suffix.lower() != ".zspy":
        raise InputError(f"cannot write {path}: it is an existing directory, expected a file "
                         "path. Choose another name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write_bytes(path: Path, payload: bytes) -> Path:
    tmp = _tmp_sibling(path)
    try:
        with _writing(path), open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        with _writing(path):
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _own(path)
    return path


# --------------------------------------------------------------------------- output safety
#: marker file an eelsanom run leaves in each folder it writes into: the names (with size and
#: modification time) of the outputs it wrote, so a later run can tell its own earlier outputs
#: (which it may replace) from the user's files (which it never replaces without --overwrite)
RUN_MARKER = ".eelsanom-run.json"
_MARKER_MAX_BYTES = 1 << 20


def _real(p: Any) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(p)))))


def _same_or_inside(out: str, inp: str) -> bool:
    """``out`` is ``inp``, or lies inside ``inp`` (a ``.zspy`` folder), or holds it."""
    return out == inp or out.startswith(inp + os.sep) or inp.startswith(out + os.sep)


def _stamp(p: Path) -> dict[str, Any]:
    st = p.stat()
    return {"dir": True} if p.is_dir() else {"size": int(st.st_size),
                                             "mtime_ns": int(st.st_mtime_ns)}


def _read_marker(folder: Path) -> dict[str, Any]:
    m = folder / RUN_MARKER
    try:
        if not m.is_file() or m.stat().st_size > _MARKER_MAX_BYTES:
            return {}
        d = json.loads(m.read_text(encoding="utf-8"))
        out = d.get("outputs") if isinstance(d, dict) else None
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _is_own_model(p: Path) -> bool:
    """An eelsanom model file (HDF5 whose ``format`` attribute says so)."""
    try:
        import h5py  # noqa: PLC0415

        with h5py.File(p, "r") as f:
            return f.attrs.get("format") == "eelsanom-model"
    except Exception:  # noqa: BLE001 - not HDF5, unreadable: not ours
        return False


def is_own_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an output an earlier eelsanom run wrote and nobody changed since.

    Parameters
    ----------
    path : str or Path
        An existing file or ``.zspy`` folder.

    Returns
    -------
    bool
        True when the folder's :data:`RUN_MARKER` lists the name with the file's
        current size and modification time (any size for a ``.zspy`` folder), or the
        file is an eelsanom model file.
    """
    p = Path(path).expanduser()
    if p.is_symlink() or not p.exists():
        return False
    rec = _read_marker(p.parent).get(p.name)
    if isinstance(rec, dict):
        try:
            if rec == _stamp(p) or (rec.get("dir") and p.is_dir()):
                return True
        except OSError:
            return False
    return p.is_file() and p.suffix.lower() in (".h5", ".hdf5") and _is_own_model(p)


def _nearest_existing(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_folder(folder: Path, what: str) -> None:
    """Refuse a folder that is a file, or lies under a file, or cannot be written into."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise InputError(
            f"{what}: cannot write into {folder}: {base} is an existing file, expected a folder. "
            "Choose another output folder (--out) or move that file away.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".eelsanom-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"{what}: cannot write into {base} ({exc.strerror or exc}); expected a writable "
            "folder. Choose a folder you can write (--out), or fix its permissions.") from exc


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[Any] = (), *,
                  overwrite: bool = False, what: str = "output") -> list[Path]:
    """The one rule for every output path of a run, checked before any data is read.

    1. No output may be, lie inside or hold any input of the run (data, mask and
       model files), however spelled: symlinks, ``..`` and hard links are resolved.
    2. Its folder must be a folder (not an existing file) that can be written into.
    3. An existing file is replaced only when an earlier eelsanom run wrote it (the
       folder's :data:`RUN_MARKER` lists it unchanged, or it is an eelsanom model file),
       or with ``overwrite``; an existing folder is never replaced by a file.

    Parameters
    ----------
    outputs : iterable of str or Path
        Every path the run will write.
    inputs : iterable of str or Path or None
        Every file the run reads (``None`` entries are ignored).
    overwrite : bool
        Also replace existing files that eelsanom did not write (CLI ``--overwrite``).
    what : str
        The option that chose the outputs, for the messages (``--out``, ``--model-out``).

    Returns
    -------
    list of Path
        The output paths, absolute.

    Raises
    ------
    InputError
        Naming the path and the fix, when any rule is broken.
    """
    ins = [(i, _real(i)) for i in inputs if i is not None]
    outs = [Path(os.path.abspath(os.path.expanduser(os.fspath(o)))) for o in outputs]
    probed: set[Path] = set()
    for p in outs:
        rp = _real(p)
        for i, ri in ins:
            same = _same_or_inside(rp, ri)
            if not same and p.exists() and Path(i).exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(p, i)
            if same:
                raise InputError(
                    f"{what}: refusing to write {p}: it is (or resolves to) the input {i}, and "
                    "inputs are never modified. Expected an output path that is none of the "
                    "run's inputs; choose another output folder or name.")
        if p.parent not in probed:
            _probe_folder(p.parent, what)
            probed.add(p.parent)
        if p.exists() or p.is_symlink():
            if p.is_dir() and not p.is_symlink() and p.suffix.lower() != ".zspy":
                raise InputError(f"{what}: cannot write {p}: it is an existing folder, expected "
                                 "a file name. Choose another output folder or name.")
            if not overwrite and not is_own_output(p):
                raise InputError(
                    f"{what}: {p} already exists and is not an output that an earlier eelsanom "
                    "run left there (its maps, summaries and models are replaced; other files "
                    "never silently); expected a new output path. Choose another output folder "
                    "or name, or pass --overwrite to replace it.")
    return outs


def record_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """Add ``paths`` (just written by this run) to their folders' :data:`RUN_MARKER`.

    Parameters
    ----------
    paths : iterable of str or Path
        Files or ``.zspy`` folders this run wrote; missing ones are skipped.
    """
    by_folder: dict[Path, dict[str, Any]] = {}
    for q in paths:
        p = Path(os.path.abspath(os.path.expanduser(os.fspath(q))))
        if p.exists() and not p.is_symlink():
            by_folder.setdefault(p.parent, {})[p.name] = _stamp(p)
    from . import __version__  # noqa: PLC0415

    for folder, new in by_folder.items():
        rec = _read_marker(folder)
        rec.update(new)
        text = json.dumps({"written_by": "eelsanom", "eelsanom_version": __version__,
                           "note": "outputs of eelsanom runs in this folder; eelsanom replaces "
                                   "only these (unchanged) without --overwrite",
                           "outputs": rec}, indent=1) + "\n"
        _atomic_write_bytes(folder / RUN_MARKER, text.encode("utf-8"))


_WRITE_FIX = {
    errno.ENOSPC: "free some disk space or choose an output folder on another disk (--out)",
    errno.EDQUOT: "free some of your quota or choose another output folder (--out)",
    errno.EACCES: "choose a folder you can write (--out) or fix its permissions",
    errno.EPERM: "choose a folder you can write (--out) or fix its permissions",
    errno.EROFS: "the disk is read-only: choose an output folder on a writable disk (--out)",
}


class WriteFailed(InputError, OSError):
    """Writing an output failed for a reason of the machine (a full disk, no permission):
    an :class:`~eelsanom.errors.InputError` (the CLI exits 2 naming the path and the fix)
    that is also an ``OSError``, so callers catching the operating-system error still do."""


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an operating-system failure while writing ``path`` into an InputError that names
    the path and the fix (a full disk, a read-only folder, ...)."""
    try:
        yield
    except InputError:
        raise
    except OSError as exc:
        fix = _WRITE_FIX.get(exc.errno or 0, "check the output folder (space, permissions)")
        raise WriteFailed(
            f"could not write {path}: {exc.strerror or exc}; expected a writable folder with free "
            f"space. {fix[0].upper() + fix[1:]}. Nothing partial was left under that name.") from exc


def _jsonify(obj: Any, *, max_list: int | None = None, _depth: int = 0) -> Any:
    """Convert ``obj`` to plain JSON types: numpy scalars/arrays, NaN/inf -> None, Path -> str.

    With ``max_list``, sequences longer than that are dropped (returned as ``_DROP``)
    and so are objects of unknown type; without it they become ``str(obj)``.
    """
    if _depth > 20:
        return _DROP
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.complexfloating, complex)):
        return _DROP if max_list is not None else str(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Axis):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            jv = _jsonify(v, max_list=max_list, _depth=_depth + 1)
            if jv is not _DROP:
                out[str(k)] = jv
        return out
    if isinstance(obj, np.ndarray) or isinstance(obj, (list, tuple, set, frozenset)):
        seq = obj.tolist() if isinstance(obj, np.ndarray) else list(obj)
        if isinstance(obj, np.ndarray) and obj.ndim == 0:
            return _jsonify(seq, max_list=max_list, _depth=_depth + 1)
        if max_list is not None and len(seq) > max_list:
            return _DROP
        out_l = [_jsonify(v, max_list=max_list, _depth=_depth + 1) for v in seq]
        return [v for v in out_l if v is not _DROP]
    if hasattr(obj, "as_dictionary"):  # HyperSpy DictionaryTreeBrowser
        return _jsonify(obj.as_dictionary(), max_list=max_list, _depth=_depth + 1)
    return _DROP if max_list is not None else str(obj)


_DROP = object()


# --------------------------------------------------------------------------- reading


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
    import h5py  # noqa: PLC0415

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


def _check_declared_zarr(path: Path) -> None:
    """:func:`_check_declared` for a ``.zspy`` (zarr) folder: each array's declared size
    against the bytes its folder stores."""
    for root, _dirs, names in os.walk(path):
        if ".zarray" not in names:
            continue
        try:
            meta = json.loads((Path(root) / ".zarray").read_text(encoding="utf-8"))
            shape = [int(n) for n in meta["shape"]]
            nbytes = math.prod(shape) * np.dtype(meta["dtype"]).itemsize
        except (OSError, ValueError, KeyError, TypeError):
            continue  # the reader refuses it with its own message
        if nbytes <= _BOMB_MIN_BYTES:
            continue
        stored = sum(e.stat().st_size for e in os.scandir(root) if e.is_file())
        for sub_root, _d, sub in os.walk(root):
            if sub_root != root:
                stored += sum(os.path.getsize(os.path.join(sub_root, n)) for n in sub)
        if stored * _BOMB_RATIO < nbytes:
            where = os.path.relpath(root, path)
            raise InputError(
                f"{path}: {where} declares shape {tuple(shape)} ({nbytes / 1e9:.3g} GB) but stores "
                f"only {stored} bytes. The file is incomplete, damaged or crafted; expected a "
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
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
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
        info["is_candidate"] = bool(
            1 <= len(nav_axes) <= 2 and _units_are_ev(units)
            and (stype == "" or "EELS" in stype.upper()))
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
        from rsciio.utils.file import get_file_handle  # noqa: PLC0415

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
            from .stream import stream_decision

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
            except Exception as exc:  # noqa: BLE001 - e.g. a truncated dataset
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
        import psutil  # noqa: PLC0415

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
    """Wrap a dask array so that computing a chunk with NaN/inf raises InputError."""

    def check(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        bad = ~np.isfinite(block)
        if bad.any():
            first = np.argwhere(bad)[0]
            if block_info and None not in block_info:
                starts = [lo for lo, _ in block_info[0]["array-location"]]
                first = first + np.asarray(starts)
            raise InputError(
                f"{label}: expected finite values, found {int(bad.sum())} NaN/inf values in one "
                f"chunk (first at pixel y={first[0]}, x={first[1]}, channel {first[2]}). "
                "Replace them first, e.g. in HyperSpy: s.data = np.nan_to_num(s.data), or crop "
                "the affected pixels/channels.")
        return block

    return data.map_blocks(check, dtype=data.dtype, meta=np.empty((0, 0, 0), dtype=data.dtype))


def _acquisition_info(sig: Any) -> dict[str, Any]:
    """A small JSON-able digest of the file's metadata (acquisition, sample, date)."""
    md = sig.metadata
    out: dict[str, Any] = {}
    for key in ("Acquisition_instrument", "Sample"):
        if md.has_item(key):
            node = _jsonify(md.get_item(key), max_list=_MAX_META_LIST)
            if node not in (_DROP, {}, None):
                out[key] = node
    general = {}
    for key in ("date", "time", "original_filename", "authors"):
        if md.has_item(f"General.{key}"):
            v = _jsonify(md.get_item(f"General.{key}"), max_list=_MAX_META_LIST)
            if v is not _DROP:
                general[key] = v
    if general:
        out["General"] = general
    if md.has_item("Signal.quantity"):
        out["quantity"] = str(md.get_item("Signal.quantity"))
    return out


# --------------------------------------------------------------------------- HyperSpy signals


def _axis_dict(ax: Axis, default_name: str, navigate: bool | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"size": int(ax.size), "scale": float(ax.scale),
                         "offset": float(ax.offset), "name": ax.name or default_name}
    if ax.units:
        d["units"] = ax.units
    if navigate is not None:
        d["navigate"] = navigate
    return d


def _nav_axes(obj: Any) -> tuple[Axis, Axis]:
    y, x = getattr(obj, "y", None), getattr(obj, "x", None)
    if not isinstance(y, Axis) or not isinstance(x, Axis):
        raise InputError(f"expected a SpectrumImage or AnomalyResult (with y and x axes), got "
                         f"{type(obj).__name__}.")
    if (y.name or "y") == (x.name or "x"):  # HyperSpy needs distinct names
        y, x = replace(y, name="y"), replace(x, name="x")
    return y, x


def _check_map(arr: Any, y: Axis, x: Axis, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != (y.size, x.size):
        raise InputError(f"{what}: expected a map of shape {(y.size, x.size)} (ny, nx), found "
                         f"{a.shape}.")
    return a


def to_signal(si: Any) -> Any:
    """The spectrum image as an exSpy ``EELSSpectrum`` (lazy when the data is dask).

    Parameters
    ----------
    si : SpectrumImage (or anything :func:`~eelsanom.spectrum.as_spectrum_image` takes)

    Returns
    -------
    exspy.signals.EELSSpectrum or LazyEELSSpectrum
        Data ``(ny, nx, n_energy)`` with calibrated axes ``(y, x | energy)``; a line
        scan (``ny == 1``) becomes a signal with one navigation axis again. The title,
        the acquisition metadata read by :func:`load_spectrum_image` and the ground
        truth (``metadata.eelsanom.ground_truth``) are carried over.
    """
    si = as_spectrum_image(si, what="to_signal")
    hs = _hs()
    y, x = _nav_axes(si)
    axes = [_axis_dict(y, "y"), _axis_dict(x, "x"), _axis_dict(si.energy, "Energy loss")]
    data = si.data
    gt = si.ground_truth
    if si.is_linescan:
        data, axes = data[0], axes[1:]
        gt = None if gt is None else gt[0]
    sig = hs.signals.Signal1D(data, axes=axes)
    if si.is_lazy:
        sig = sig.as_lazy()
    sig.set_signal_type("EELS")
    sig.metadata.General.title = si.title or "spectrum image"
    if si.source:
        sig.metadata.set_item("General.original_filename", Path(si.source).name)
    acq = (si.metadata.get("original_metadata") or {}).get("Acquisition_instrument")
    if isinstance(acq, dict) and acq:
        sig.metadata.add_dictionary({"Acquisition_instrument": acq})
    if gt is not None:
        sig.metadata.set_item("eelsanom.ground_truth", np.asarray(gt, dtype=bool))
    return sig


def map_to_signal(arr: Any, si_or_result: Any, *, title: str, quantity: str = "") -> Any:
    """A per-pixel map as a HyperSpy ``Signal2D`` with the navigation calibration.

    Parameters
    ----------
    arr : array of shape (ny, nx)
        The map (bool masks stay bool).
    si_or_result : SpectrumImage or AnomalyResult
        Source of the ``y`` and ``x`` axes (scale, offset, units).
    title, quantity : str
        Stored as ``metadata.General.title`` and ``metadata.Signal.quantity``
        (``quantity`` only when not empty).

    Returns
    -------
    hyperspy.signals.Signal2D
        Data ``arr`` of shape (ny, nx), with the ``y`` and ``x`` axes of ``si_or_result``.

    Raises
    ------
    InputError
        When ``si_or_result`` has no ``y``/``x`` :class:`Axis`, or ``arr`` is not
        of shape (ny, nx).
    """
    y, x = _nav_axes(si_or_result)
    a = _check_map(arr, y, x, title or "map")
    sig = _hs().signals.Signal2D(a, axes=[_axis_dict(y, "y"), _axis_dict(x, "x")])
    sig.metadata.General.title = title
    if quantity:
        sig.metadata.Signal.quantity = quantity
    return sig


def _latent_signal(latent: np.ndarray, res: Any, *, title: str) -> Any:
    y, x = _nav_axes(res)
    lat = np.asarray(latent, dtype=np.float32)
    if lat.ndim != 3 or lat.shape[:2] != (y.size, x.size):
        raise InputError(f"latent codes: expected shape {(y.size, x.size)} + (d,), found "
                         f"{lat.shape}.")
    axes = [_axis_dict(y, "y"), _axis_dict(x, "x"),
            {"size": int(lat.shape[2]), "name": "latent dimension"}]
    sig = _hs().signals.Signal1D(lat, axes=axes)
    sig.metadata.General.title = title
    return sig


# --------------------------------------------------------------------------- writing


def _check_writable_format(path: Path) -> None:
    ext = path.suffix.lower().lstrip(".")
    try:
        from rsciio import IO_PLUGINS  # noqa: PLC0415
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
    tmp = _tmp_sibling(path)
    try:
        with _writing(path):
            signal.save(tmp, overwrite=True)
            _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
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
    import matplotlib  # noqa: PLC0415
    from matplotlib import colors as mcolors  # noqa: PLC0415
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

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
        from matplotlib.patches import Patch  # noqa: PLC0415

        n_yes = int(raw.sum())
        handles = [Patch(facecolor=MASK_COLOURS[0], edgecolor="0.5",
                         label=f"not flagged ({raw.size - n_yes} px)"),
                   Patch(facecolor=MASK_COLOURS[1], edgecolor="0.5",
                         label=f"flagged ({n_yes} px)")]
        fig.legend(handles=handles, title=cbar_label, loc="outside right center", fontsize=9,
                   title_fontsize=9)
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
    ax.set_title(f"{title}\n{ny} x {nx} px, pixel {px}", fontsize=10)
    tmp = _tmp_sibling(path)
    try:
        with _writing(path):
            fig.savefig(tmp, format=(path.suffix.lstrip(".").lower() or "png"))
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _own(path)
    return path


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
    return _atomic_write_bytes(path, text.encode("utf-8"))


def _write_tiff(arr: np.ndarray, path: Path, protect: Iterable[Any]) -> Path | None:
    path = _check_output(path, overwrite=True, protect=protect)
    try:
        import tifffile  # noqa: PLC0415

        def write(tmp: Path) -> None:
            tifffile.imwrite(tmp, arr)
    except ImportError:
        try:
            import imageio.v3 as iio  # noqa: PLC0415
        except ImportError:
            logger.warning("TIFF output skipped for %s: install tifffile or imageio", path)
            return None

        def write(tmp: Path) -> None:
            iio.imwrite(tmp, arr, extension=".tif")
    tmp = _tmp_sibling(path)
    try:
        with _writing(path):
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _own(path)
    return path


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
