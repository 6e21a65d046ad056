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

FORMAT = "eelsanom-model"
FORMAT_VERSION = 1


def atomic_path(path: str | os.PathLike) -> Path:
    """Temporary sibling path used while writing ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Final path of the model file.

    Returns
    -------
    pathlib.Path
        ``.<name>.<pid>.tmp`` in the same folder as ``path`` (same file system,
        so the final rename is atomic).
    """
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


def write_model(path: str | os.PathLike, *, detector: str, params: dict[str, Any],
                state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a model file atomically and return its path.

    The file is written to :func:`atomic_path` and renamed into place; the
    temporary file is removed if writing fails. Missing parent folders are
    created.

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

    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
        ``format`` attribute), or written in a newer format version than this
        eelsanom reads.
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
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise InputError(f"{str(path)!r} uses model format {version}; this eelsanom reads up "
                             f"to {FORMAT_VERSION}. Upgrade eelsanom.")
        header = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()
                  if k not in ("params", "state")}
        header = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in header.items()}
        params = json.loads(f.attrs["params"])
        state = json.loads(f.attrs["state"])
        arrays = {k: np.asarray(v[()]) for k, v in f["arrays"].items()}
    return header, params, state, arrays
