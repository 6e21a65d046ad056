"""The npe2 reader: EELS spectrum images in any format :mod:`eelsanom.io` loads.

:func:`napari_get_reader` only looks at the path (extension, file or ``.zspy``
folder) and returns None for anything else. The reader then loads the file
through :func:`eelsanom.io.load_spectrum_image`, so every refusal the core knows
(a single spectrum, a 2-D image, a truncated or corrupted file, an energy axis
that is not in eV, NaN values...) arrives as an :class:`~eelsanom.errors.InputError`
whose message says what was expected and how to fix it. That message is shown
as a napari notification and the reader returns napari's "read, nothing to
add" sentinel ``[(None,)]``: nothing crashes and no layer is half-made, since
layers are only built from a completely validated spectrum image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _notify
from ._layers import spectrum_image_layers

log = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "read_eels", "claims"]

#: napari's "the file was read but gives no layers" value (see napari.plugins.io).
NOTHING = [(None,)]


def _extensions() -> tuple[str, ...]:
    from eelsanom.io import SUPPORTED_EXTENSIONS  # cheap module

    return SUPPORTED_EXTENSIONS


def claims(path: str | os.PathLike) -> bool:
    """Cheap check: an existing file (or ``.zspy`` folder) with an EELS extension."""
    try:
        p = Path(path)
    except TypeError:
        return False
    suffix = p.suffix.lower()
    if suffix not in _extensions():
        return False
    if suffix == ".zspy":
        return p.exists()
    return p.is_file()


def napari_get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]
                      ) -> Callable[[Any], list[tuple]] | None:
    """The reader for ``path`` (one path or a list of them), or None if it is not ours."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(claims(p) for p in paths):
        return None
    return read_eels


def _read_one(path: str | os.PathLike) -> list[tuple]:
    from eelsanom.errors import InputError
    from eelsanom.io import load_spectrum_image

    try:
        si = load_spectrum_image(path)
        return spectrum_image_layers(si, name=Path(path).stem)
    except InputError as exc:
        msg, name = str(exc), Path(path).name
        _notify.error(f"eelsanom: {msg}" if name in msg else f"eelsanom: {name}: {msg}")
    except MemoryError:
        _notify.error(f"eelsanom cannot open {Path(path).name}: it does not fit in memory. "
                      "Crop it first (HyperSpy: s.inav[...] / s.isig[...]) or use the "
                      "command line (`eelsanom detect --lazy`).")
    except Exception as exc:  # a reader must never crash the viewer
        log.exception("reading %s failed", path)
        _notify.error(f"eelsanom cannot open {Path(path).name}: unexpected "
                      f"{type(exc).__name__}: {exc}")
    return []


def read_eels(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple]:
    """Read one or more EELS spectrum images into napari layer data.

    Returns
    -------
    list of (data, meta, layer_type)
        Per file (see :func:`~eelsanom_napari._layers.spectrum_image_layers`): the cube
        (energy axis first, the dims slider, calibrated in eV), the summed intensity,
        and the ground truth / bulk region when the file stores them. ``[(None,)]``
        when no file could be used (each refusal was shown as a notification).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[tuple] = []
    for p in paths:
        out.extend(_read_one(p))
    return out or NOTHING
