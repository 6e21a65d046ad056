"""Reading and writing files — the only part of eelsanom that knows file formats.

- :mod:`eelsanom.io.read`: what a file holds (:func:`list_signals`), loading an EELS
  spectrum image (:func:`load_spectrum_image`), the file extensions, the "is this an
  EELS spectrum image" rule, the checks that refuse crafted or truncated files, and
  the decision to stream a cube block by block.
- :mod:`eelsanom.io.signals`: spectrum images and maps as HyperSpy signals.
- :mod:`eelsanom.io.write`: signals, PNG maps, JSON and a result's maps, written
  atomically under one naming rule.
- :mod:`eelsanom.io._files`: the one atomic write of the package, the rule every output
  path obeys (:func:`check_outputs`) and the run marker (:data:`RUN_MARKER`).

HyperSpy, h5py and matplotlib are imported inside the functions that need them, so
``import eelsanom.io`` stays cheap and the core never needs HyperSpy. Reading never
opens the input for writing; writing never touches a ``protect``-ed path.
"""

from __future__ import annotations

# names ``eelsanom.io`` has always offered, kept importable from here
from ..spectrum import Axis as Axis
from ..spectrum import SpectrumImage as SpectrumImage
from ..spectrum import as_spectrum_image as as_spectrum_image
from ._files import (
    RUN_MARKER,
    WriteFailed,
    atomic_write,
    atomic_write_bytes,
    check_outputs,
    check_run_outputs,
    is_own_output,
    record_outputs,
)
from .read import (
    SCANNED_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    format_signal_list,
    is_eels_spectrum_image,
    list_signals,
    load_spectrum_image,
)
from .signals import map_to_signal, to_signal
from .write import (
    MASK_COLOURS,
    load_result_maps,
    result_paths,
    save_png_map,
    save_result,
    save_signal,
    write_json,
)

__all__ = [
    "SUPPORTED_EXTENSIONS", "SCANNED_EXTENSIONS", "is_eels_spectrum_image", "list_signals",
    "format_signal_list", "load_spectrum_image", "to_signal", "map_to_signal", "save_signal",
    "save_png_map", "write_json", "save_result", "load_result_maps", "result_paths",
    "check_outputs", "check_run_outputs", "record_outputs", "is_own_output", "RUN_MARKER", "WriteFailed",
    "atomic_write", "atomic_write_bytes", "MASK_COLOURS",
]
