"""One spectrum image from file to run folder, as plain keyword functions.

The command line (``detect``, ``train``, ``apply``), ``eelsanom batch``, the
napari Export button and notebooks all go through these steps, so that each
behaviour (what is refused, when a cube is streamed, what a run folder holds)
has one owner:

- :func:`load_input`: read a file (eagerly, or lazily to be streamed when it is
  too large) and refuse data with nothing to learn;
- :func:`fit_input`: train a detector, block by block for streamed data;
- :func:`score_input`: score it, block by block for streamed data (the ``.zspy``
  maps written as they are scored);
- :func:`write_run` / :func:`load_run`: the run folder, written and read back.

A run folder holds, per input ``STEM``: the maps (``STEM_nll``, ``STEM_mask``,
``STEM_latent`` in the formats asked for, named by
:func:`eelsanom.io.result_paths`), the seed-ensemble maps
(``STEM_seed_disagreement.npy``, ``STEM_seed_std_nll.npy``), and
``STEM_summary.json`` (input, method, parameters, threshold, counts, timings,
cautions, version; ROC-AUC/AP/F1 when the input carries ground truth), written
last. Every file goes through :mod:`eelsanom.io`'s atomic writers, and the
folder's run marker records them, so a later run may replace them and nothing
else.

Examples
--------
>>> from eelsanom import pipeline                       # doctest: +SKIP
>>> si = pipeline.load_input("scan.dm4")                 # doctest: +SKIP
>>> det = pipeline.fit_input(get_detector("pca"), si)    # doctest: +SKIP
>>> res = pipeline.score_input(det, si)                  # doctest: +SKIP
>>> summary = pipeline.write_run(res, si, "out", "scan")  # doctest: +SKIP
"""

from __future__ import annotations

import io as _bytes_io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from . import io as _io  # load_spectrum_image is looked up on the module at each call
from .errors import InputError
from .io import (
    atomic_write_bytes,
    load_result_maps,
    result_paths,
    save_result,
    write_json,
)
from .progress import ProgressCallback
from .spectrum import SpectrumImage
from .stream import fit_streaming, score_streaming

log = logging.getLogger("eelsanom")

__all__ = ["SEED_MAPS", "SUMMARY_SUFFIX", "SavedRun", "input_stem", "run_formats",
           "planned_outputs", "load_input", "check_content", "fit_input", "score_input",
           "write_run", "check_run_owner", "find_stem", "load_run"]

#: seed-ensemble maps saved beside the run as ``STEM_<name>.npy`` (3D-CVAE ``n_seeds > 1``)
SEED_MAPS = ("seed_disagreement", "seed_std_nll")
#: the summary of a run: ``STEM_summary.json``, written last
SUMMARY_SUFFIX = "_summary.json"


# ----------------------------------------------------------------------------- naming
def input_stem(path: str | os.PathLike) -> str:
    """The stem of a run's outputs for input ``path``: its file name without the extension.

    Parameters
    ----------
    path : str or Path
        The input file (or ``.zspy`` folder).

    Returns
    -------
    str
        ``scan`` for ``/data/scan.dm4`` or ``scan.zspy/``.
    """
    return Path(path).stem


def run_formats(formats: str | Sequence[str] | None, *, streamed: bool = False
                ) -> tuple[str, ...]:
    """The map formats a run writes: ``formats``, or by default ``hspy,png`` (plus ``zspy``,
    written block by block as it is scored, when the input is streamed).

    Parameters
    ----------
    formats : str or sequence of str or None
        Comma-separated (``"hspy,png"``) or a sequence; None for the default.
    streamed : bool
        Whether the input is streamed (lazily loaded).

    Returns
    -------
    tuple of str
        The formats, as given (checked by :func:`eelsanom.io.save_result`).
    """
    if formats is None:
        formats = "zspy,hspy,png" if streamed else "hspy,png"
    if isinstance(formats, str):
        formats = formats.split(",")
    return tuple(f.strip() for f in formats if f.strip())


def planned_outputs(out: str | os.PathLike, stem: str, method: str, *,
                    formats: str | Sequence[str] | None = None, streamed: bool = False,
                    n_seeds: int | None = None) -> list[Path]:
    """Every file a run writes for one input, so that all can be checked before it is read.

    Parameters
    ----------
    out : str or Path
        The run folder.
    stem : str
        The outputs' stem (:func:`input_stem`).
    method : str
        The detector's method (``"cvae"`` and ``"pca"`` results carry latent codes).
    formats : str or sequence of str, optional
        As :func:`run_formats`.
    streamed : bool
        Whether the input is streamed (adds ``zspy`` to the default formats).
    n_seeds : int, optional
        3D-CVAE seed-ensemble size (more than 1 adds the seed maps).

    Returns
    -------
    list of Path
        The maps, the seed maps and ``STEM_summary.json`` (last).

    Raises
    ------
    InputError
        When a format is unknown or ``stem`` is empty or contains a folder.
    """
    out = Path(out)
    paths = list(result_paths(out, stem, run_formats(formats, streamed=streamed),
                              latent=method in ("cvae", "pca")).values())
    if method == "cvae" and (n_seeds or 1) > 1:
        paths += [out / f"{stem}_{n}.npy" for n in SEED_MAPS]
    return [*paths, out / f"{stem}{SUMMARY_SUFFIX}"]


# ----------------------------------------------------------------------------- loading
def load_input(path: str | os.PathLike, *, signal: int | None = None, lazy: bool | None = None,
               energy_range: tuple[float, float] | None = None,
               on_axes: Callable[[SpectrumImage], Any] | None = None) -> SpectrumImage:
    """Read one input: eagerly, or lazily to be streamed, then refuse data with nothing to learn.

    Parameters
    ----------
    path : str or Path
        Any file :func:`eelsanom.io.load_spectrum_image` reads.
    signal : int, optional
        Which signal of a file holding several.
    lazy : bool, optional
        True: stream the file block by block; False: load it whole; None: stream when
        the cube is too large to hold (:func:`eelsanom.io.read.stream_decision`, logged).
    energy_range : (float, float), optional
        Energy window in eV the run will use: refused (before the data is read) when it
        lies outside the file's energy axis. The data is not cropped here.
    on_axes : callable, optional
        ``on_axes(si)`` runs further checks that need only the axes, before the data
        is read (a training region against the image size, ...).

    Returns
    -------
    SpectrumImage
        ``(ny, nx, n_energy)``; dask-backed when streamed. ``metadata["warnings"]``
        says when every pixel holds the same spectrum.

    Raises
    ------
    InputError
        When the file cannot be read or is not an EELS spectrum image, the energy window
        is outside the data, or every value is equal or none is positive.
    """
    def checks(si: SpectrumImage) -> None:
        if energy_range is not None:
            si.crop_energy(energy_range[0], energy_range[1])  # refuses a window outside the data
        if on_axes is not None:
            on_axes(si)

    si = _io.load_spectrum_image(path, lazy="auto" if lazy is None else bool(lazy),
                                 signal=signal, on_axes=checks)
    if lazy:
        log.info("streaming %s block by block: --lazy given", Path(path).name)
    return check_content(si, str(path))


def check_content(si: SpectrumImage, path: str) -> SpectrumImage:
    """Refuse data with nothing to learn or score; warn when every pixel holds the same spectrum.

    Streamed (dask-backed) data is not read for this.

    Parameters
    ----------
    si : SpectrumImage
        The loaded data.
    path : str
        The input's name, for the messages.

    Returns
    -------
    SpectrumImage
        ``si``, with the warning added to ``metadata["warnings"]`` (and logged) when
        every pixel holds the same spectrum.

    Raises
    ------
    InputError
        When every value is equal, or no value is positive.
    """
    if si.is_lazy:
        return si
    d = si.data
    lo, hi = float(np.min(d)), float(np.max(d))
    if lo == hi:
        raise InputError(f"{path}: every value in the spectrum image is {lo:g}; expected EELS "
                         "counts that vary (this looks like a blank or empty acquisition). "
                         "Check that this is the file you meant.")
    if hi <= 0:
        raise InputError(f"{path}: expected EELS counts (mostly positive), found no positive "
                         f"value (values from {lo:g} to {hi:g}). Check the file (a dark reference, "
                         "a sign flip, or dark-subtracted data clipped to 0?).")
    if si.nav_shape[0] * si.nav_shape[1] > 1 and not np.ptp(d, axis=(0, 1)).any():
        msg = (f"{path}: every pixel holds the same spectrum, so no pixel can stand out (the NLL "
               "map will be flat); check that this is the file you meant")
        log.warning(msg)
        si = replace(si, metadata={**si.metadata,
                                   "warnings": [*si.metadata.get("warnings", []), msg]})
    return si


# ----------------------------------------------------------------------------- fit and score
def fit_input(detector: Any, si: SpectrumImage, train_mask: np.ndarray | None = None, *,
              seed: int = 0, progress: ProgressCallback | None = None) -> Any:
    """Train ``detector`` on ``si`` (block by block when ``si`` is streamed).

    Parameters
    ----------
    detector : BaseDetector
        Unfitted detector.
    si : SpectrumImage
        From :func:`load_input`.
    train_mask : ndarray of bool, shape (ny, nx), optional
        Bulk pixels; None: every pixel, robustly.
    seed : int
        Seed of the training-pixel subsample of a streamed input.
    progress : callable, optional
        Receives the training's progress events.

    Returns
    -------
    BaseDetector
        ``detector``, fitted.

    Raises
    ------
    InputError
        When the mask or the data do not suit the detector.
    """
    if si.is_lazy:  # never reads the whole cube (eelsanom.stream)
        fit_streaming(detector, si, train_mask, seed=seed, progress=progress)
    else:
        detector.fit(si, train_mask, progress=progress)
    return detector


def score_input(detector: Any, si: SpectrumImage, *, out: str | os.PathLike | None = None,
                stem: str | None = None, formats: str | Sequence[str] | None = None,
                protect: Iterable[Any] = (), progress: ProgressCallback | None = None) -> Any:
    """Score ``si``: ``detector.score(si)``, or block by block when ``si`` is streamed.

    Parameters
    ----------
    detector : BaseDetector
        Fitted.
    si : SpectrumImage
        From :func:`load_input`.
    out : str or Path, optional
        The run folder: for a streamed input with ``zspy`` among the formats, the
        ``.zspy`` maps are written there block by block as they are scored.
    stem : str, optional
        The outputs' stem (default: from the input's file name).
    formats : str or sequence of str, optional
        As :func:`run_formats`.
    protect : iterable of path
        Files never written (the run's inputs; ``si.source`` is added).
    progress : callable, optional
        Receives the scoring's progress events.

    Returns
    -------
    AnomalyResult
        ``info["outputs"]`` lists the ``.zspy`` maps already written (streamed input).

    Raises
    ------
    InputError
        When ``si`` does not suit the fitted detector (its energy axis, ...).
    """
    try:
        if not si.is_lazy:
            return detector.score(si, progress=progress)
        fmts = {f.lower().lstrip(".") for f in run_formats(formats, streamed=True)}
        return score_streaming(detector, si,
                               out=out if out is not None and "zspy" in fmts else None,
                               stem=stem, protect=[*protect, *([si.source] if si.source else [])],
                               progress=progress)
    except InputError as exc:
        if "NLL map with no finite values" not in str(exc):
            raise
        # the data passed its checks (finite, positive): a model that scores no pixel finitely
        # is the model's fault (absurd weights, a diverged fit), not the data file's
        raise InputError(
            f"the {getattr(detector, 'method', 'fitted')} model gives no finite score on any "
            f"pixel of {si.source or 'the data'} (every NLL is NaN/inf); expected a model whose "
            "weights suit this data. The model (or the model file it was loaded from) is "
            "damaged or its fit diverged: train it again.") from None


# ----------------------------------------------------------------------------- the run folder
def write_run(result: Any, si: Any, out: str | Path, stem: str, *,
              formats: Sequence[str] = ("hspy", "png"), protect: Iterable[Any] = (),
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run folder of one scored spectrum image; return its summary.

    Parameters
    ----------
    result : AnomalyResult
        The scored result (``nll`` of shape (ny, nx), mask, threshold, maps).
    si : SpectrumImage
        The data as loaded (gives the source path, axes, ground truth and
        loader warnings).
    out : str or Path
        Output folder (created if missing).
    stem : str
        File-name stem of every output (``STEM_nll.hspy``, ...).
    formats : sequence of str
        Map formats: any of ``"hspy"``, ``"zspy"``, ``"tiff"``, ``"png"``.
    protect : iterable of path
        Files that must never be written (the run's inputs).
    extra : dict, optional
        Added to the summary (e.g. the model file, the training region).

    Returns
    -------
    dict
        The summary as written to ``STEM_summary.json``; ``summary["outputs"]``
        maps each output's name to its path.

    Raises
    ------
    InputError
        When an output cannot be written (the path and the fix are named).
    """
    out = Path(out)
    protect = [*protect, *([si.source] if getattr(si, "source", None) else [])]
    streamed = {k: Path(v) for k, v in (result.info.get("outputs") or {}).items()}
    if streamed:  # written block by block by eelsanom.stream.score_streaming
        formats = tuple(f for f in formats if f.lower().lstrip(".") != "zspy")
    paths = save_result(result, out, stem=stem, formats=tuple(formats), protect=protect)
    paths.update(streamed)
    for name in SEED_MAPS:  # seed ensembles (3D-CVAE n_seeds > 1)
        if name in result.maps:
            buf = _bytes_io.BytesIO()
            np.save(buf, np.asarray(result.maps[name], np.float32))
            paths[f"{name}_npy"] = atomic_write_bytes(out / f"{stem}_{name}.npy", buf.getvalue())
    warnings = list(si.metadata.get("warnings", []))
    finite = np.asarray(result.nll)[np.isfinite(result.nll)]
    if finite.size > 1 and float(np.ptp(finite)) == 0.0:
        warnings.append("the NLL map is constant: no pixel differs from the others under this "
                        "model, so none can be flagged")
        log.warning("%s: %s", stem, warnings[-1])
    summary: dict[str, Any] = {
        "eelsanom_version": __version__,
        "input": si.source,
        "title": si.title,
        "shape": list(si.shape),
        "energy_axis": si.energy.to_dict(),
        "model_energy_axis": result.energy.to_dict(),
        "navigation": {"y": si.y.to_dict(), "x": si.x.to_dict()},
        "method": result.method,
        "params": result.info.get("params", {}),
        "threshold": {"method": result.threshold_method, "value": result.threshold},
        "counts": {"pixels": int(result.nll.size), "flagged": result.n_flagged,
                   "flagged_fraction": result.n_flagged / result.nll.size},
        "nll_stats": {"min": float(np.min(result.nll)), "median": float(np.median(result.nll)),
                      "max": float(np.max(result.nll))},
        "timings_s": result.timings,
        **({"streaming": result.info["streaming"]} if "streaming" in result.info else {}),
        "outputs": {k: str(v) for k, v in paths.items()},
        "cautions": list(result.info.get("cautions", [])),
        "notes": list(result.info.get("notes", [])),
    }
    logged = set(getattr(getattr(result, "_detector", None), "fit_cautions_", None) or [])
    for c in summary["cautions"]:  # fit cautions were logged by the detector as it fitted
        if c not in logged:
            log.warning("caution: %s", c)
    for note in summary["notes"]:
        log.warning("%s", note)
    summary.update(extra or {})
    if warnings:
        summary["warnings"] = warnings
    if si.ground_truth is not None and si.ground_truth.any() and not si.ground_truth.all():
        summary["metrics"] = result.evaluate(si.ground_truth)
    summary_path = write_json(summary, out / f"{stem}{SUMMARY_SUFFIX}", protect=protect)
    summary["outputs"]["summary"] = str(summary_path)
    return summary


def check_run_owner(out: str | os.PathLike, stem: str, si: Any) -> None:
    """Refuse to write a run over the results of another input that share its stem.

    The run marker lets a run replace eelsanom's own earlier outputs; this check keeps it
    from replacing the outputs of a *different* input written under the same name (two
    images exported to one folder under one name, the second over the first).

    Parameters
    ----------
    out : str or Path
        The run folder.
    stem : str
        The outputs' stem.
    si : SpectrumImage
        The data about to be written (its ``source`` and ``title``).

    Raises
    ------
    InputError
        When ``STEM_summary.json`` exists and names another input (or, for data not
        read from a file, another title).
    """
    path = Path(out) / f"{stem}{SUMMARY_SUFFIX}"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not a summary eelsanom can read: check_outputs decides about it
    if not isinstance(old, dict):
        return
    src = getattr(si, "source", None)
    if src or old.get("input"):
        same = bool(src and old.get("input")) and \
            os.path.realpath(str(old["input"])) == os.path.realpath(str(src))
    else:
        same = old.get("title") == getattr(si, "title", None)
    if not same:
        raise InputError(
            f"{path} holds the results of {old.get('input') or old.get('title')!r}, not of "
            f"{src or getattr(si, 'title', None)!r}; expected a name of its own for each image's "
            "results. Choose another name or folder, so that neither image's results are lost.")


def find_stem(run_dir: str | os.PathLike, stem: str | None = None) -> str:
    """The output stem of a run folder, from its ``<stem>_summary.json``.

    Parameters
    ----------
    run_dir : str or os.PathLike
        Folder written by ``eelsanom detect --out`` (``~`` is expanded).
    stem : str, optional
        The run to pick when the folder holds several (default: the only one).

    Returns
    -------
    str
        The stem: ``<stem>_summary.json`` exists in ``run_dir``.

    Raises
    ------
    InputError
        When ``run_dir`` is not a folder, holds no ``*_summary.json``, holds no
        ``<stem>_summary.json`` for the given ``stem``, or holds several runs and
        ``stem`` is not given.
    """
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise InputError(f"{d}: expected a run folder written by `eelsanom detect --out`, found "
                         "no such directory.")
    stems = sorted(p.name[: -len(SUMMARY_SUFFIX)] for p in d.glob(f"*{SUMMARY_SUFFIX}"))
    if stem is not None:
        if stem not in stems:
            raise InputError(f"{d}: expected {stem}{SUMMARY_SUFFIX}, found "
                             f"{', '.join(s + SUMMARY_SUFFIX for s in stems) or 'none'}.")
        return stem
    if not stems:
        raise InputError(f"{d}: expected a run folder with a *{SUMMARY_SUFFIX} (written by "
                         "`eelsanom detect --out`), found none.")
    if len(stems) > 1:
        raise InputError(f"{d} holds several runs ({', '.join(stems)}); choose one with "
                         "--stem (stem=...).")
    return stems[0]


@dataclass(frozen=True)
class SavedRun:
    """A run folder read back by :func:`load_run`.

    Attributes
    ----------
    folder : Path
        The run folder.
    stem : str
        The run's stem.
    summary : dict
        ``STEM_summary.json`` as written by :func:`write_run`.
    maps : dict of str -> ndarray
        ``"nll"`` (ny, nx) float32 (a line scan as (1, nx)), ``"mask"`` (ny, nx) bool,
        ``"latent"`` (ny, nx, d), ``"threshold"`` (0-d) when stored, and the
        :data:`SEED_MAPS` (ny, nx) when written.
    """

    folder: Path
    stem: str
    summary: dict[str, Any]
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def load_run(folder_or_summary: str | os.PathLike, stem: str | None = None) -> SavedRun:
    """Read a run folder back: its summary and its maps (the reader of :func:`write_run`).

    Parameters
    ----------
    folder_or_summary : str or Path
        The run folder, or its ``STEM_summary.json``.
    stem : str, optional
        Which run, when the folder holds several.

    Returns
    -------
    SavedRun
        The folder, stem, summary and maps.

    Raises
    ------
    InputError
        When the folder holds no (or not that) run, the summary cannot be read, or the
        NLL map is missing.
    """
    p = Path(folder_or_summary).expanduser()
    if p.is_file() and p.name.endswith(SUMMARY_SUFFIX):
        p, stem = p.parent, p.name[: -len(SUMMARY_SUFFIX)]
    stem = find_stem(p, stem)
    path = p / f"{stem}{SUMMARY_SUFFIX}"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: could not read the run summary ({exc}).") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{path}: expected a run summary (a JSON object), found "
                         f"{type(summary).__name__}.")
    maps = dict(load_result_maps(p, stem))
    nll = np.asarray(maps["nll"], dtype=np.float32)
    maps["nll"] = nll = nll[None, :] if nll.ndim == 1 else nll
    for name in SEED_MAPS:  # written for 3D-CVAE seed ensembles
        f = p / f"{stem}_{name}.npy"
        if f.is_file():
            arr = np.load(f, allow_pickle=False)
            if arr.size == nll.size:
                maps[name] = arr.reshape(nll.shape)
    return SavedRun(folder=p, stem=stem, summary=summary, maps=maps)

