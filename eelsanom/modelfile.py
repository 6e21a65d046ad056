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
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io._files import atomic_write

FORMAT = "eelsanom-model"
FORMAT_VERSION = 1


def write_model(path: str | os.PathLike, *, detector: str, params: dict[str, Any],
                state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a model file atomically and return its path.

    The file is written by :func:`eelsanom.io.atomic_write` (a temporary name in the
    same folder, renamed into place); the temporary file is removed if writing fails.
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

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["eelsanom_version"] = __version__
            f.attrs["detector"] = detector
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            f.attrs["params"] = json.dumps(params)
            f.attrs["state"] = json.dumps(state)
            g = f.create_group("arrays")
            for name, arr in arrays.items():
                g.create_dataset(name, data=np.asarray(arr), compression="gzip", compression_opts=1)

    return atomic_write(path, write)


#: bounds of what a model file may declare (checked before anything is read or built)
MAX_JSON_CHARS = 4 << 20
MAX_JSON_DEPTH = 32
MAX_CHANNELS = 1 << 20
MAX_ARRAY_BYTES = 4 << 30
MAX_MEMBERS = 256
#: 3D-CVAE architecture keys and their allowed integer ranges (``raw_init``: any finite number)
CVAE_ARCH = {"n_energy": (1, MAX_CHANNELS), "latent_dim": (1, 4096), "width": (1, 4096),
             "levels": (0, 16), "spatial_layers": (0, 64), "hidden": (1, 16384)}
#: architecture keys only some models have: the blind-spot context radius (pixels)
CVAE_ARCH_OPTIONAL = {"context_radius": (0, 64)}
#: hyperparameters that name files: never taken from a model file (reset to None on load)
PATH_PARAMS = ("checkpoint",)


class _Refusal(InputError):
    pass


def _bad(path: Path, expected: str, found: str) -> InputError:
    return _Refusal(f"model file {str(path)!r}: expected {expected}, found {found}. The file is "
                    "damaged or was not written by eelsanom: train the model again (`eelsanom "
                    "train ... --model-out MODEL.h5`) or use another model file.")


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


def _read_arrays(path: Path, f: Any) -> dict[str, np.ndarray]:
    """The ``/arrays`` datasets, each checked before it is read: a hard link (no soft or
    external links followed), not virtual, no external raw storage, a numeric dtype, and all
    together within the memory budget; floats must be finite."""
    import h5py

    link = f.get("arrays", getlink=True)
    if link is None:
        raise _bad(path, "a group /arrays holding the fitted arrays", "no /arrays")
    if not isinstance(link, h5py.HardLink) or not isinstance(f["arrays"], h5py.Group):
        raise _bad(path, "/arrays to be a group inside the file", f"a {type(link).__name__}")
    g = f["arrays"]
    budget, total, dsets = _memory_budget(), 0, {}
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
        total += int(ds.size) * ds.dtype.itemsize
        if total > budget:
            raise _bad(path, f"arrays of at most {budget / 2**30:.2g} GiB in all (the memory "
                       "budget)", f"/arrays/{name} of shape {ds.shape} declaring "
                       f"{int(ds.size) * ds.dtype.itemsize / 2**30:.3g} GiB")
        dsets[name] = ds
    arrays = {}
    for name, ds in dsets.items():
        a = np.asarray(ds[()])
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise _bad(path, f"finite values in /arrays/{name}",
                       f"{int((~np.isfinite(a)).sum())} NaN/inf values")
        arrays[name] = a
    return arrays


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _shape(path: Path, arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in arrays:
        raise _bad(path, f"the array /arrays/{name}", "none")
    a = arrays[name]
    if a.shape != shape:
        raise _bad(path, f"/arrays/{name} of shape {shape} (from the energy axis and detector)",
                   f"shape {a.shape}")
    return a


def _positive(path: Path, what: str, a: Any) -> None:
    a = np.asarray(a, dtype=np.float64)
    if not (np.isfinite(a).all() and (a > 0).all()):
        raise _bad(path, f"positive finite {what}", f"values down to {np.nanmin(a):.4g}")


def validate_model(path: str | os.PathLike, header: dict[str, Any], params: dict[str, Any],
                   state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Check a model file's content against the schema of its detector, before anything is built.

    Checks the energy axis, that every hyperparameter is one of the detector's, and per
    detector the arrays' shapes against the energy axis (PCA: mean, components,
    explained variance > 0, noise variance > 0; RX: mean, whitener, variances > 0;
    3D-CVAE: known, bounded architecture keys, the scaler, and every state-dict array's
    shape against the architecture).

    Parameters
    ----------
    path : str or os.PathLike
        The model file (for the messages).
    header, params, state, arrays
        As :func:`read_model` returns them.

    Raises
    ------
    InputError
        "model file M: expected ..., found ..." for the first violation.
    """
    from .detectors import detector_class

    path = Path(path)
    try:
        cls = detector_class(str(header.get("detector")))
    except InputError as exc:
        raise _bad(path, "a detector eelsanom knows", f"{exc}") from None
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
    D = int(ax["size"])
    tv = state.get("threshold_value")
    if tv is not None and not isinstance(tv, (int, float)):
        raise _bad(path, "a number as threshold_value", _short(tv))
    cal = arrays.get("calibration_scores")  # a calibrated threshold's held-out bulk scores
    if cal is not None and np.ndim(cal) != 1:
        raise _bad(path, "calibration_scores: a 1-D array of held-out scores",
                   f"shape {np.shape(cal)}")
    method = cls.method
    if method == "pca":
        comp = arrays.get("components")
        q = comp.shape[1] if comp is not None and comp.ndim == 2 else 1
        if not 1 <= q <= D:
            raise _bad(path, f"1..{D} PCA components", str(q))
        _shape(path, arrays, "mean", (D,))
        _shape(path, arrays, "components", (D, q))
        _positive(path, "explained variances", _shape(path, arrays, "explained_variance", (q,)))
        nv = state.get("noise_variance")
        if not (_num(nv) and nv > 0):
            raise _bad(path, "a positive finite noise_variance", _short(nv))
    elif method == "rx":
        _shape(path, arrays, "mean", (D,))
        wh = arrays.get("whitener")
        r = wh.shape[1] if wh is not None and wh.ndim == 2 else D
        if not 1 <= r <= D:
            raise _bad(path, f"1..{D} whitened directions", str(r))
        _shape(path, arrays, "whitener", (D, r))
        if "basis" in arrays:  # fitted on fewer pixels than channels (Woodbury form)
            _shape(path, arrays, "basis", (D, r))
            iso = state.get("iso_precision")
            if not (_num(iso) and iso > 0):
                raise _bad(path, "a positive finite iso_precision with /arrays/basis", _short(iso))
        elif r != D:
            raise _bad(path, f"/arrays/whitener of shape ({D}, {D}) or an /arrays/basis",
                       f"shape {wh.shape} and no basis")
        _positive(path, "channel variances (var)", _shape(path, arrays, "var", (D,)))
        for k in ("logdet", "shrinkage"):
            if not _num(state.get(k)):
                raise _bad(path, f"a finite number as {k}", _short(state.get(k)))
    elif method == "cvae":
        _validate_cvae(path, state, arrays, D)


def _validate_cvae(path: Path, state: dict[str, Any], arrays: dict[str, np.ndarray],
                   D: int) -> None:
    arch = state.get("arch")
    required = set(CVAE_ARCH) | {"raw_init"}
    if not isinstance(arch, dict) or not required <= set(arch) \
            or set(arch) - required - set(CVAE_ARCH_OPTIONAL):
        raise _bad(path, f"a CVAE architecture with the keys {sorted(required)} (optionally "
                   f"{sorted(CVAE_ARCH_OPTIONAL)})", _short(arch))
    for k, (lo, hi) in {**CVAE_ARCH, **CVAE_ARCH_OPTIONAL}.items():
        if k in arch and not _int(arch[k], lo, hi):
            raise _bad(path, f"arch.{k} an integer in {lo}..{hi}", _short(arch[k]))
    if arch.get("context_radius", 0) and arch["spatial_layers"]:
        raise _bad(path, "arch.spatial_layers 0 in a context (blind-spot) model",
                   str(arch["spatial_layers"]))
    if not _num(arch["raw_init"]):
        raise _bad(path, "arch.raw_init a finite number", _short(arch["raw_init"]))
    if arch["n_energy"] != D:
        raise _bad(path, f"arch.n_energy equal to the energy axis size {D}", str(arch["n_energy"]))
    sc = state.get("scaler")
    if not isinstance(sc, dict) or not all(_num(sc.get(k)) for k in ("scale", "noise", "floor")) \
            or sc["scale"] <= 0 or sc["floor"] <= 0 or sc["noise"] < 0:
        raise _bad(path, "a scaler with finite scale > 0, noise >= 0 and floor > 0", _short(sc))
    _shape(path, arrays, "scaler_mean", (D,))
    for key in ("excess_stats",):
        v = state.get(key)
        if v is not None and not (isinstance(v, list) and len(v) == 2 and all(map(_num, v))):
            raise _bad(path, f"{key}: two finite numbers", _short(v))
    members = state.get("members", [])
    if not isinstance(members, list) or len(members) > MAX_MEMBERS or not all(
            isinstance(m, dict) and isinstance(m.get("excess_stats"), list)
            and len(m["excess_stats"]) == 2 and all(map(_num, m["excess_stats"]))
            for m in members):
        raise _bad(path, f"members: a list of at most {MAX_MEMBERS} objects with two finite "
                   "excess_stats", _short(members))
    nested = state.get("nested_prefixes")
    if nested is not None and not (isinstance(nested, list) and nested and all(
            _int(p, 1, arch["latent_dim"]) for p in nested)):
        raise _bad(path, f"nested_prefixes: sizes in 1..{arch['latent_dim']}", _short(nested))
    import torch

    from .nn.model import CVAE3D

    with torch.device("meta"):  # shapes only: nothing is allocated
        want = {k: tuple(v.shape) for k, v in CVAE3D(**arch).state_dict().items()}
    prefixes = ["net."] + [f"member{i}.net." for i in range(1, len(members) + 1)]
    expected = {p + k: s for p in prefixes for k, s in want.items()}
    found = {k: a.shape for k, a in arrays.items()
             if k not in ("scaler_mean", "calibration_scores")}
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise _bad(path, "the network weights of its architecture",
                   f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                   f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
    for k, s in expected.items():
        if found[k] != s:
            raise _bad(path, f"/arrays/{k} of shape {s} (from the architecture)",
                       f"shape {found[k]}")


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
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist. Train one with "
                         "`eelsanom train ... --model-out MODEL.h5` or detector.save(path).")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{str(path)!r} is not an eelsanom model file (expected HDF5 written by "
                         f"detector.save; could not open it: {exc}).") from exc
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
        arrays = _read_arrays(path, f)
    validate_model(path, header, params, state, arrays)
    return header, params, state, arrays
