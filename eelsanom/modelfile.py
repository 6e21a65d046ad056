"""The eelsanom model file: one HDF5 file, no pickle.

Layout::

    /                     attrs: format="eelsanom-model", format_version, eelsanom_version,
                                 detector (class key), created (ISO time)
    /                     attr  "params"  JSON: the detector's __init__ hyperparameters
    /                     attr  "state"   JSON: fitted scalars, axes, threshold, ...
    /arrays/<name>        datasets: fitted arrays (weights, means, components, ...)

Loading reads JSON and arrays only, so a model file cannot execute code.
Writes go to a temporary name in the same folder and are renamed into place,
so an interrupted save never leaves a file that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import _registry
from .errors import InputError
from .io._files import atomic_write_bytes

FORMAT = "eelsanom-model"
FORMAT_VERSION = 1


def write_model(path: str | os.PathLike, *, detector: str, params: dict[str, Any],
                state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a model file atomically and return its path.

    The file is built in memory, then written by :func:`eelsanom.io.atomic_write_bytes` (a
    temporary name in the same folder, flushed, renamed into place); the temporary file is
    removed if writing fails (a full disk: :class:`~eelsanom.io.WriteFailed`).
    Missing parent folders are created (by :func:`~eelsanom.io.atomic_write`).

    Parameters
    ----------
    path : str or os.PathLike
        Where to write the model (HDF5, conventionally ``*.h5``).
    detector : str
        Class key of the detector, stored in the ``detector`` attribute.
    params : dict
        The detector's ``__init__`` hyperparameters; must be JSON-serialisable.
    state : dict
        Fitted scalars, axes, threshold, ...; must be JSON-serialisable.
    arrays : dict of str to ndarray
        Fitted arrays of any shape, stored as gzip-compressed datasets under
        ``/arrays/<name>``.

    Returns
    -------
    pathlib.Path
        ``path`` as a ``Path``.
    """
    import h5py

    from . import __version__

    buf = io.BytesIO()  # built in memory (the model is small): a disk that fills is then met
    with h5py.File(buf, "w") as f:  # by a plain write, never inside HDF5 (whose failed close
        f.attrs["format"] = FORMAT  # leaves handles that crash the process at exit)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["eelsanom_version"] = __version__
        f.attrs["detector"] = detector
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        f.attrs["params"] = json.dumps(params)
        f.attrs["state"] = json.dumps(state)
        g = f.create_group("arrays")
        for name, arr in arrays.items():
            g.create_dataset(name, data=np.asarray(arr), compression="gzip", compression_opts=1)
    return atomic_write_bytes(path, buf.getvalue(), record=False)


#: bounds of what a model file may declare (checked before anything is read or built)
MAX_JSON_CHARS = 4 << 20
MAX_JSON_DEPTH = 32
MAX_CHANNELS = 1 << 20
MAX_ARRAY_BYTES = 4 << 30
MAX_MEMBERS = 256
#: hyperparameters that name files: never taken from a model file (reset to None on load)
PATH_PARAMS = ("checkpoint",)


class _Refusal(InputError):
    pass


def _bad(path: Path, expected: str, found: str) -> InputError:
    return _Refusal(f"model file {str(path)!r}: expected {expected}, found {found}. The file is "
                    "damaged or was not written by eelsanom: train the model again (`eelsanom "
                    "train ... --model-out MODEL.h5`) or use another model file.")


def _one_line(exc: Any, n: int = 200) -> str:
    t = " ".join(str(exc).split())
    return t if len(t) <= n else t[: n - 3] + "..."


def _short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (strings skipped), without parsing it."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _attr_bytes(f: Any, name: str) -> int:
    """Stored size of the root attribute ``name`` (read from its header, not its value)."""
    try:
        return int(f.attrs.get_id(name).get_storage_size())
    except Exception:  # noqa: BLE001 - a variable-length string: its value is read then
        return 0


def _json_attr(path: Path, f: Any, name: str) -> dict[str, Any]:
    if _attr_bytes(f, name) > 4 * MAX_JSON_CHARS:
        raise _bad(path, f"{name} JSON of at most {MAX_JSON_CHARS} characters",
                   f"an attribute of {_attr_bytes(f, name)} bytes")
    raw = f.attrs.get(name)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise _bad(path, f"a JSON text in the root attribute {name!r}",
                   "none" if raw is None else type(raw).__name__)
    if len(raw) > MAX_JSON_CHARS:
        raise _bad(path, f"{name} JSON of at most {MAX_JSON_CHARS} characters", f"{len(raw)}")
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise _bad(path, f"{name} JSON nested at most {MAX_JSON_DEPTH} deep", f"depth {depth}")
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise _bad(path, f"valid JSON in {name!r}", f"{exc}") from None
    if not isinstance(obj, dict):
        raise _bad(path, f"{name} to be a JSON object", f"a {type(obj).__name__}")
    return obj


def _memory_budget() -> int:
    try:
        import psutil

        return int(min(MAX_ARRAY_BYTES, psutil.virtual_memory().available // 2))
    except Exception:  # noqa: BLE001 - psutil missing: the fixed cap
        return MAX_ARRAY_BYTES


#: largest magnitude a stored value may have unless its validator says otherwise (a value of
#: 1e30 in a model's weights is damage, not training: it scores every pixel NaN/inf)
MAX_ABS = 1e18
#: most held-out calibration scores a model file may hold
MAX_CALIBRATION = 1 << 24
#: the largest one stored chunk of an array may decompress to
MAX_CHUNK_BYTES = 256 << 20


def _declared(path: Path, f: Any) -> dict[str, Any]:
    """The ``/arrays`` datasets, checked from their headers only (nothing is read): hard links
    inside the file (no soft or external links followed), not virtual, no external raw
    storage, a real numeric dtype, chunks of bounded size, all within the memory budget."""
    import h5py

    link = f.get("arrays", getlink=True)
    if link is None:
        raise _bad(path, "a group /arrays holding the fitted arrays", "no /arrays")
    if not isinstance(link, h5py.HardLink) or not isinstance(f["arrays"], h5py.Group):
        raise _bad(path, "/arrays to be a group inside the file", f"a {type(link).__name__}")
    g = f["arrays"]
    budget, total, dsets = _memory_budget(), 0, {}
    if len(g) > 4 * MAX_MEMBERS * 64:
        raise _bad(path, "a bounded number of arrays", f"{len(g)} entries in /arrays")
    for name in g:
        lk = g.get(name, getlink=True)
        if not isinstance(lk, h5py.HardLink):
            raise _bad(path, f"/arrays/{name} stored inside the file",
                       f"a {type(lk).__name__} (links out of the file are never followed)")
        ds = g[name]
        if not isinstance(ds, h5py.Dataset):
            raise _bad(path, f"/arrays/{name} to be a dataset", f"a {type(ds).__name__}")
        if ds.is_virtual or ds.external:
            raise _bad(path, f"/arrays/{name} stored inside the file",
                       "a virtual dataset or external storage (never followed)")
        if ds.dtype.kind not in "fiu" or ds.dtype.itemsize > 8:
            raise _bad(path, f"/arrays/{name} of a real numeric dtype", f"dtype {ds.dtype}")
        if ds.shape is None:
            raise _bad(path, f"/arrays/{name} holding an array", "an empty (null) dataspace")
        if ds.chunks is not None:
            cb = int(np.prod(ds.chunks, dtype=np.float64)) * ds.dtype.itemsize
            if cb > MAX_CHUNK_BYTES:
                raise _bad(path, f"/arrays/{name} stored in chunks of at most "
                           f"{MAX_CHUNK_BYTES >> 20} MiB", f"chunks {ds.chunks} ({cb >> 20} MiB)")
        total += int(ds.size) * ds.dtype.itemsize
        if total > budget:
            raise _bad(path, f"arrays of at most {budget / 2**30:.2g} GiB in all (the memory "
                       "budget)", f"/arrays/{name} of shape {ds.shape} declaring "
                       f"{int(ds.size) * ds.dtype.itemsize / 2**30:.3g} GiB")
        dsets[name] = ds
    return dsets


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


class ModelCheck:
    """What a detector's model-file validator sees, before any array is read.

    A detector class's ``validate_model_file(check)`` classmethod (found through the
    class, :func:`eelsanom._registry.model_validator`) reads ``params``, ``state`` and the
    arrays' declared shapes, refuses what its detector cannot use (:meth:`bad`), and names
    every array its detector reads (:meth:`expect`). Any array it does not name is then
    refused before anything is read, and the named ones are read and checked (finite,
    bounded, positive where asked).

    Attributes
    ----------
    path : Path
        The model file.
    params, state : dict
        The hyperparameters and the fitted state (JSON).
    shapes : dict of str to tuple of int
        Each stored array's declared shape (nothing read).
    n_energy : int
        The size of the energy axis the model was trained on (checked already).
    """

    def __init__(self, path: Path, params: dict[str, Any], state: dict[str, Any],
                 shapes: dict[str, tuple[int, ...]], n_energy: int) -> None:
        self.path, self.params, self.state = path, params, state
        self.shapes, self.n_energy = shapes, n_energy
        self.expected: dict[str, tuple[bool, float]] = {}

    def bad(self, expected: str, found: str) -> InputError:
        """The refusal "model file M: expected ..., found ..." (raise it).

        Parameters
        ----------
        expected, found : str
            What the detector needs, and what the file holds.

        Returns
        -------
        InputError
            The refusal, naming the file and the fix.
        """
        return _bad(self.path, expected, found)

    def expect(self, name: str, shape: tuple[int, ...], *, positive: bool = False,
               limit: float = MAX_ABS) -> None:
        """Require the array ``name`` of ``shape``; its values are checked once read: finite,
        of magnitude at most ``limit``, and > 0 with ``positive``.

        Parameters
        ----------
        name : str
            The array, ``/arrays/<name>``.
        shape : tuple of int
            Its shape, from the energy axis and the detector's state.
        positive : bool
            Every value must be > 0.
        limit : float
            Largest magnitude allowed.

        Raises
        ------
        InputError
            When the array is missing or declared with another shape.
        """
        if name not in self.shapes:
            raise self.bad(f"the array /arrays/{name}", "none")
        if tuple(self.shapes[name]) != tuple(shape):
            raise self.bad(f"/arrays/{name} of shape {tuple(shape)} (from the energy axis and "
                           "detector)", f"shape {tuple(self.shapes[name])}")
        self.expected[name] = (positive, limit)

    def number(self, key: str, *, positive: bool = False, limit: float = MAX_ABS) -> float:
        """The state's ``key``: a finite number of magnitude at most ``limit`` (> 0 with
        ``positive``).

        Parameters
        ----------
        key : str
            The state entry.
        positive : bool
            It must be > 0.
        limit : float
            Largest magnitude allowed.

        Returns
        -------
        float
            Its value.

        Raises
        ------
        InputError
            When it is missing, not a finite number, or out of bounds.
        """
        v = self.state.get(key)
        if not (_num(v) and abs(v) <= limit and (v > 0 or not positive)):
            raise self.bad(f"a {'positive ' if positive else ''}finite number of magnitude at "
                           f"most {limit:g} as {key}", _short(v))
        return float(v)


def _check_common(path: Path, cls: Any, params: dict[str, Any], state: dict[str, Any]) -> int:
    """What every model file holds: the detector's hyperparameters, the energy axis, the
    threshold value; returns the energy axis size."""
    known = set(cls._param_names())
    unknown = sorted(set(params) - known - set(cls.renamed_params))
    if unknown:
        raise _bad(path, f"{cls.__name__} hyperparameters ({', '.join(sorted(known))})",
                   f"unknown {unknown}")
    er = params.get("energy_range")
    if er is not None and not (isinstance(er, list) and len(er) == 2
                               and all(v is None or _num(v) for v in er)):
        raise _bad(path, "energy_range null or [start_eV, stop_eV]", _short(er))
    ax = state.get("energy_axis")
    if not isinstance(ax, dict):
        raise _bad(path, "state.energy_axis (the energy axis it was trained on)", _short(ax))
    if not (_int(ax.get("size"), 2, MAX_CHANNELS) and _num(ax.get("scale"))
            and ax.get("scale") > 0 and _num(ax.get("offset"))
            and isinstance(ax.get("units", ""), str) and isinstance(ax.get("name", ""), str)):
        raise _bad(path, f"an energy axis with an integer size in 2..{MAX_CHANNELS}, a finite "
                   "positive scale and a finite offset", _short(ax))
    tv = state.get("threshold_value")
    if tv is not None and not isinstance(tv, (int, float)):
        raise _bad(path, "a number as threshold_value", _short(tv))
    return int(ax["size"])


def _read_checked(path: Path, dsets: dict[str, Any], check: ModelCheck) -> dict[str, np.ndarray]:
    """Refuse the arrays no validator named, then read the named ones and check their values
    (a read failure of a damaged chunk is a refusal naming the file)."""
    unknown = sorted(set(dsets) - set(check.expected))
    if unknown:
        raise _bad(path, f"only the arrays its detector reads ({', '.join(sorted(check.expected))})",
                   f"unknown {_short(unknown)}")
    arrays = {}
    for name, (positive, limit) in check.expected.items():
        try:
            a = np.asarray(dsets[name][()])
        except Exception as exc:  # noqa: BLE001 - a damaged chunk: h5py's OSError, ...
            raise _bad(path, f"/arrays/{name} readable",
                       f"a read error ({type(exc).__name__}: {' '.join(str(exc).split())})"
                       ) from None
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise _bad(path, f"finite values in /arrays/{name}",
                       f"{int((~np.isfinite(a)).sum())} NaN/inf values")
        if a.size and float(np.max(np.abs(a))) > limit:
            raise _bad(path, f"values of magnitude at most {limit:g} in /arrays/{name}",
                       f"values up to {float(np.max(np.abs(a))):.4g}")
        if positive and a.size and not (a > 0).all():
            raise _bad(path, f"positive values in /arrays/{name}",
                       f"values down to {float(np.min(a)):.4g}")
        arrays[name] = a
    return arrays


def validate_model(path: str | os.PathLike, header: dict[str, Any], params: dict[str, Any],
                   state: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> ModelCheck:
    """Check a model file's content against the schema of its detector, before any array is read.

    Checks that the detector is registered and has a validator of its own, that every
    hyperparameter is one of the detector's, the energy axis, then calls the detector
    class's ``validate_model_file`` (PCA and context PCA: mean, components, explained
    variance > 0, noise variance > 0; RX: mean, whitener, variances > 0; 3D-CVAE: known,
    bounded architecture keys, the scaler, every state-dict array's shape against the
    architecture).

    Parameters
    ----------
    path : str or os.PathLike
        The model file (for the messages).
    header, params, state : dict
        As :func:`read_model` returns them.
    shapes : dict of str to tuple of int
        Each stored array's declared shape.

    Returns
    -------
    ModelCheck
        With ``expected``: the arrays to read and how to check their values.

    Raises
    ------
    InputError
        "model file M: expected ..., found ..." for the first violation.
    """
    path = Path(path)
    try:
        cls = _registry.detector_class(str(header.get("detector")))
        validator = _registry.model_validator(cls)
    except LookupError as exc:
        raise _bad(path, "a detector eelsanom knows and can check", f"{exc}") from None
    D = _check_common(path, cls, params, state)
    check = ModelCheck(path, params, state, dict(shapes), D)
    if "calibration_scores" in shapes:  # a calibrated threshold's held-out bulk scores
        n = shapes["calibration_scores"]
        if len(n) != 1 or n[0] > MAX_CALIBRATION:
            raise _bad(path, f"calibration_scores: a 1-D array of at most {MAX_CALIBRATION} "
                       "held-out scores", f"shape {tuple(n)}")
        check.expect("calibration_scores", tuple(n), limit=np.inf)
    validator(check)
    return check


def check_threshold_override(path: str | os.PathLike, threshold: Any, calibrated: bool) -> None:
    """Refuse ``--threshold calibrated`` for a model that holds no calibration, before any
    data is scored (it would be scored, then refused once per data file).

    Parameters
    ----------
    path : str or Path
        The model file (for the message).
    threshold : str or None
        The threshold rule asked for (None: the model's own).
    calibrated : bool
        Whether the model holds a calibration (``calibration_``, the file's
        ``state.calibration``).

    Raises
    ------
    InputError
        Naming the model file and the fix.
    """
    from .scoring import parse_threshold

    if threshold is None or calibrated or parse_threshold(threshold)[0] != "calibrated":
        return
    raise InputError(
        f"model file {str(path)!r} holds no calibration (it was trained without --threshold "
        "calibrated), so --threshold calibrated cannot be used with it; expected a calibrated "
        "model. Train it again with --threshold calibrated and a bulk region (--train-roi or "
        "--train-mask), or choose another rule (robust, otsu, gmm, PERCENT, value:X).")


def read_model(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                                   dict[str, np.ndarray]]:
    """Read a model file: ``(header, params, state, arrays)``.

    Only JSON and arrays are read, so loading a model file cannot execute code.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`write_model`.

    Returns
    -------
    header : dict
        Root attributes other than ``params`` and ``state`` (``format``,
        ``format_version``, ``eelsanom_version``, ``detector``, ``created``),
        decoded to ``str``/Python scalars.
    params : dict
        The detector's hyperparameters.
    state : dict
        Fitted scalars, axes, threshold, ...
    arrays : dict of str to ndarray
        Fitted arrays, each with the shape it was saved with.

    Raises
    ------
    InputError
        When the file is missing, not HDF5, not an eelsanom model (wrong
        ``format`` attribute), written in a newer format version than this
        eelsanom reads, or breaks the schema (:func:`validate_model`; JSON not an
        object or nested too deep, arrays missing, of the wrong shape or dtype,
        non-finite, declared larger than the memory budget, links out of the file).
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        raise InputError(f"model file {str(path)!r} is a folder; expected a model file (.h5) "
                         "written by `eelsanom train ... --model-out MODEL.h5` or "
                         "detector.save(path). Give the path of the file itself.")
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist. Train one with "
                         "`eelsanom train ... --model-out MODEL.h5` or detector.save(path).")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - not HDF5, truncated, unreadable
        raise InputError(f"{str(path)!r} is not an eelsanom model file (expected HDF5 written by "
                         f"detector.save; could not open it: {_one_line(exc)}).") from None
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                raise InputError(f"{str(path)!r} is an HDF5 file but not an eelsanom model (format "
                                 f"attribute {f.attrs.get('format')!r}, expected {FORMAT!r}).")
            version = f.attrs.get("format_version", 0)
            if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
                raise _bad(path, "an integer format_version", _short(version))
            version = int(version)
            if version > FORMAT_VERSION:
                raise InputError(f"{str(path)!r} uses model format {version}; this eelsanom reads up "
                                 f"to {FORMAT_VERSION}. Upgrade eelsanom.")
            if version < 1:
                raise _bad(path, f"format_version 1..{FORMAT_VERSION}", str(version))
            header = {}
            for k in f.attrs:
                if k in ("params", "state"):
                    continue
                if _attr_bytes(f, k) > 1 << 16:
                    raise _bad(path, f"a short root attribute {k!r}",
                               f"{_attr_bytes(f, k)} bytes")
                v = f.attrs[k]
                v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                header[k] = v.item() if isinstance(v, np.generic) else v
            if not isinstance(header.get("detector"), str):
                raise _bad(path, "a detector name (pca, rx, cvae) in the root attributes",
                           _short(header.get("detector")))
            params = _json_attr(path, f, "params")
            state = _json_attr(path, f, "state")
            dsets = _declared(path, f)
            check = validate_model(path, header, params, state,
                                   {k: tuple(d.shape) for k, d in dsets.items()})
            arrays = _read_checked(path, dsets, check)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure of a damaged file is a refusal
        raise _bad(path, "a model file that reads without errors",
                   f"a read error ({type(exc).__name__}: {_one_line(exc)})") from None
    return header, params, state, arrays
