"""Checks of the command line that need no data, or only the input's axes.

Split from :mod:`eelsanom.cli` so that the parser module stays small: the training region
(``--train-roi``/``--train-mask``), the energy range, every output path of a run (against the
inputs and each other), all checked before any data is read (issue 15, item 2; issue 20).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .detectors.base import check_train_mask
from .errors import InputError
from .io import check_outputs, check_run_outputs
from .io.write import _normalise_formats
from .pipeline import planned_outputs
from .scoring import held_out_groups, parse_threshold


def _parse_slice(part: str, n: int | None, what: str) -> slice:
    part = part.strip()
    if part in ("", ":"):
        return slice(0, n)
    if ":" not in part:
        raise InputError(f"{what}: expected START:STOP pixel indices, got {part!r}.")
    a, b = part.split(":", 1)
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else (n if n is not None else 0)
    except ValueError as exc:
        raise InputError(f"{what}: expected integers in START:STOP, got {part!r}.") from exc
    if n is None:  # the syntax only (the image size is not known yet)
        if a.strip() and b.strip() and (lo < 0) == (hi < 0) and lo >= hi:
            raise InputError(f"{what}: {part!r} is empty (START must be below STOP); expected "
                             "START:STOP pixel indices, stop exclusive.")
        return slice(lo, hi)
    if lo < 0:
        lo += n
    if hi < 0:
        hi += n
    if not 0 <= lo < hi <= n:
        raise InputError(f"{what}: {part!r} is outside 0:{n} or empty.")
    return slice(lo, hi)


def parse_roi(text: str, nav_shape: tuple[int, int]) -> np.ndarray:
    """``'Y0:Y1,X0:X1'`` (pixel indices, stop exclusive) -> boolean mask of ``nav_shape``.

    A line scan (ny == 1) also accepts a single ``'X0:X1'``. An empty part or ``:``
    means the whole range, an omitted start or stop the edge, and negative indices
    count from the end.

    Parameters
    ----------
    text : str
        The ``--train-roi`` value, ``'Y0:Y1,X0:X1'`` in pixel indices.
    nav_shape : (int, int)
        The image's navigation shape ``(ny, nx)``, in pixels.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        ``True`` inside the rectangle.

    Raises
    ------
    InputError
        When ``text`` is not two ``START:STOP`` parts of integers, or a range is
        empty or outside the image.
    """
    parts = text.split(",")
    ny, nx = nav_shape
    if len(parts) == 1 and ny == 1:
        parts = ["0:1", parts[0]]
    if len(parts) != 2:
        raise InputError(f"--train-roi: expected 'Y0:Y1,X0:X1' (pixel indices), got {text!r}.")
    sy = _parse_slice(parts[0], ny, "--train-roi rows")
    sx = _parse_slice(parts[1], nx, "--train-roi columns")
    m = np.zeros(nav_shape, dtype=bool)
    m[sy, sx] = True
    return m


def load_mask_file(path: str, nav_shape: tuple[int, int]) -> np.ndarray:
    """Read a bulk mask: ``.npy``/``.npz`` array, an image (``.png``/``.tif``: nonzero = bulk)
    or a HyperSpy file holding a 2-D signal.

    Parameters
    ----------
    path : str
        Mask file: ``.npy``, ``.npz`` (its first array), ``.png``/``.tif``/``.tiff``/
        ``.bmp`` (colour images: the maximum of R, G, B), or anything HyperSpy reads.
    nav_shape : (int, int)
        The image's navigation shape ``(ny, nx)``, in pixels.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        ``True`` where the file is nonzero (bulk pixels).

    Raises
    ------
    InputError
        When the file does not exist or cannot be read, its shape is not ``nav_shape``,
        or it selects no pixel.
    """
    p = _mask_path(path)
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            m = np.load(p, allow_pickle=False)
        elif ext == ".npz":
            with np.load(p, allow_pickle=False) as z:
                m = z[z.files[0]]
        elif ext in (".png", ".tif", ".tiff", ".bmp"):
            from PIL import Image

            m = np.asarray(Image.open(p))
            if m.ndim == 3:
                m = m[..., :3].max(axis=-1)
        else:
            import hyperspy.api as hs

            m = np.asarray(hs.load(str(p)).data)
    except InputError:
        raise
    except Exception as exc:  # any reader failure is a bad input
        raise InputError(f"--train-mask: could not read {path!r} as a mask ({exc}).") from exc
    return check_train_mask(np.asarray(m) != 0, nav_shape, what=f"--train-mask {path!r}")


def _train_mask(args: argparse.Namespace, si) -> np.ndarray | None:
    if getattr(args, "train_roi", None) and getattr(args, "train_mask", None):
        raise InputError("give either --train-roi or --train-mask, not both.")
    if getattr(args, "train_roi", None):
        return parse_roi(args.train_roi, si.nav_shape)
    if getattr(args, "train_mask", None):
        if args.train_mask == "file":
            bm = si.metadata.get("bulk_mask")
            if bm is None:
                raise InputError("--train-mask file: the input carries no bulk mask in its "
                                 "metadata (only files written by `eelsanom simulate` do). Use "
                                 "--train-roi Y0:Y1,X0:X1 or a mask file.")
            return np.asarray(bm, dtype=bool)
        return load_mask_file(args.train_mask, si.nav_shape)
    return None


def _energy_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = (float(v) for v in text.split(":"))
    except ValueError as exc:
        raise InputError(f"--energy-range: expected START:STOP in eV, got {text!r}.") from exc
    if not (np.isfinite(a) and np.isfinite(b) and a < b):
        raise InputError(f"--energy-range: expected finite START < STOP in eV, got {text!r}.")
    return (a, b)


def _run_inputs(args: argparse.Namespace) -> list[str]:
    """Every file the run reads (data, mask file, model): none of them is ever written."""
    files = [getattr(args, "input", None), *(getattr(args, "inputs", None) or [])]
    mask = getattr(args, "train_mask", None)
    if mask and mask != "file":
        files.append(mask)
    files.append(getattr(args, "model", None))
    return [str(f) for f in files if f]


def _precheck(args: argparse.Namespace) -> None:
    """Parse and validate every option that needs no data, before any file is read: the
    threshold, energy range, ROI syntax, mask file and map formats (issue 15, item 2)."""
    if getattr(args, "threshold", None) is not None:
        parse_threshold(args.threshold)
    _energy_range(getattr(args, "energy_range", None))
    roi, mask = getattr(args, "train_roi", None), getattr(args, "train_mask", None)
    if roi and mask:
        raise InputError("give either --train-roi or --train-mask, not both.")
    if getattr(args, "command", None) in ("detect", "train") and not (roi or mask):
        check_calibration_region(SimpleNamespace(threshold=getattr(args, "threshold", None)),
                                 None)
    if roi:
        parts = roi.split(",")
        if len(parts) not in (1, 2):
            raise InputError(f"--train-roi: expected 'Y0:Y1,X0:X1' (pixel indices), got {roi!r}.")
        for part in parts:  # the syntax now; the ranges against the image once it is read
            _parse_slice(part, None, "--train-roi")
    if mask and mask != "file":
        _mask_path(mask)
    if getattr(args, "formats", None) is not None:
        fm = [f for f in args.formats.split(",") if f.strip()]
        if not fm:
            raise InputError(f"--formats: expected some of hspy,zspy,png,tiff, got "
                             f"{args.formats!r}.")
        _normalise_formats(fm)


def _planned_outputs(args: argparse.Namespace, stem: str, method: str, *,
                     streamed: bool = False) -> list[Path]:
    """The files a detect/apply run writes for one input (checked before it is read)."""
    return planned_outputs(args.out, stem, method, formats=getattr(args, "formats", None),
                           streamed=streamed, n_seeds=getattr(args, "n_seeds", None))


def _check_outputs(args: argparse.Namespace, paths: Sequence[Any], what: str) -> None:
    check_outputs(paths, _run_inputs(args), overwrite=bool(getattr(args, "overwrite", False)),
                  what=what)


def _check_run_outputs(args: argparse.Namespace, maps: Sequence[Any]) -> None:
    """Every output of the run (the maps and ``--model-out``), against the inputs and each
    other (:func:`eelsanom.io.check_run_outputs`)."""
    model = [args.model_out] if getattr(args, "model_out", None) else []
    check_run_outputs({"--out": maps, "--model-out": model}, _run_inputs(args),
                      overwrite=bool(getattr(args, "overwrite", False)))


def _check_streamed_outputs(args: argparse.Namespace, si, stem: str, method: str) -> None:
    """Once the input is read: a streamed one also writes ``.zspy`` maps by default, so those
    paths are checked too (before anything is scored)."""
    if si.is_lazy and getattr(args, "formats", None) is None:
        _check_run_outputs(args, _planned_outputs(args, stem, method, streamed=True))


def check_calibration_region(det: Any, mask: np.ndarray | None) -> None:
    """With ``--threshold calibrated``: refuse a missing or too small bulk region from the
    mask alone, before the data is read and long before the main fit (the calibration's
    held-out split, :meth:`~eelsanom.detectors.base.BaseDetector.held_out_scores` with its
    default 4 folds of 8 x 8 squares, is computed here the same way)."""
    rule = getattr(det, "threshold", None)
    if rule is None or isinstance(rule, (int, float)) or parse_threshold(rule)[0] != "calibrated":
        return
    if mask is None:
        raise InputError("--threshold calibrated is set from held-out bulk pixels, so it needs a "
                         "bulk region; expected --train-roi Y0:Y1,X0:X1 or --train-mask MASK. "
                         "Give one, or choose another rule (robust, otsu, gmm, PERCENT).")
    folds, block, need = 4, 8, int(getattr(det, "min_train_pixels", 2))
    n_squares, groups = held_out_groups(mask, folds=folds, block=block,
                                        seed=int(getattr(det, "seed", 0) or 0))
    short = None
    if int(mask.sum()) < 2 * need:
        short = f"it holds {int(mask.sum())} pixels, fewer than {2 * need}"
    elif not groups:
        short = (f"it covers {n_squares} square(s) of {block} x {block} pixels, fewer than the "
                 f"{folds} groups held out in turn")
    else:
        for held in groups:
            rest = mask & ~held
            if int(rest.sum()) < need:
                short = (f"holding out one group of its squares leaves {int(rest.sum())} pixels "
                         f"to fit on, fewer than {need}")
                break
    if short:
        raise InputError(f"--threshold calibrated: the bulk region is too small to calibrate on "
                         f"({short}); expected a larger bulk region. Draw a larger one, or "
                         "choose another rule (robust, otsu, gmm, PERCENT).")


def _mask_path(path: str) -> Path:
    """A ``--train-mask`` path that is a file (a folder or a missing path refused)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"--train-mask: {path!r} is a folder; expected a mask file (.npy, .npz, "
                         ".png, .tif or .hspy, nonzero = bulk). Give the path of the file itself.")
    if not p.exists():
        raise InputError(f"--train-mask: file {path!r} does not exist; expected a mask file "
                         "(.npy, .npz, .png, .tif or .hspy, nonzero = bulk).")
    return p


#: options whose value may begin with "-" (negative indices, negative energies)
_DASH_VALUE_OPTIONS = ("--train-roi", "--energy-range")


def join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--train-roi -5:,-5:`` as ``--train-roi=-5:,-5:``: argparse takes a value that begins
    with "-" for an option (and refuses it) unless it is joined with ``=``."""
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a in _DASH_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and ":" in argv[i + 1]:
            out.append(f"{a}={argv[i + 1]}")
            next(it, None)
        else:
            out.append(a)
    return out


#: bytes the simulator holds per value of the cube (the noisy counts, the expected spectra with
#: and without the anomaly, the nuisance terms; measured ~20, rounded up)
_SIM_BYTES_PER_VALUE = 32


def check_simulate_size(shape: Sequence[int], window: str) -> None:
    """Refuse ``simulate --shape`` that is not positive or needs more memory than is
    available, before any array is made (instead of a MemoryError half-way)."""
    from .simulate import WINDOWS  # scipy: imported by simulate anyway

    ny, nx = (int(v) for v in shape)
    if ny < 1 or nx < 1:
        raise InputError(f"--shape: expected two positive pixel counts NY NX, got {ny} {nx}.")
    e0, e1 = WINDOWS.get(window, (0.0, 0.0))
    n_energy = int((e1 - e0) / 0.3) + 1
    need = ny * nx * max(n_energy, 1) * _SIM_BYTES_PER_VALUE
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - cannot tell: let it try
        return
    if need > avail:
        raise InputError(
            f"--shape {ny} {nx}: simulating {ny} x {nx} pixels x {n_energy} channels needs about "
            f"{need / 2**30:.3g} GiB of memory, more than the {avail / 2**30:.3g} GiB available; "
            "expected a smaller image. Simulate a smaller --shape (e.g. 256 256).")
