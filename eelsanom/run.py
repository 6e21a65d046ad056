"""The run folder: what one scored spectrum image leaves on disk, written in one place.

A run folder holds, per input ``STEM``: the maps (``STEM_nll``, ``STEM_mask``,
``STEM_latent`` in the formats asked for), the seed-ensemble maps
(``STEM_seed_disagreement.npy``, ``STEM_seed_std_nll.npy``) that ``eelsanom
latent`` reads back, and ``STEM_summary.json`` (input, method, parameters,
threshold, counts, timings, cautions, version; ROC-AUC/AP/F1 when the input
carries ground truth), written last. Every file goes through
:mod:`eelsanom.io`'s atomic writers, and the folder's run marker records them,
so a later run may replace them and nothing else. ``eelsanom detect`` /
``apply`` / ``batch`` and the napari Export button all write runs through
:func:`write_run`.
"""

from __future__ import annotations

import io as _bytes_io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__

log = logging.getLogger(__name__)

__all__ = ["write_run", "SEED_MAPS"]

#: seed-ensemble maps saved beside the run (read back by :mod:`eelsanom.latent.report`)
SEED_MAPS = ("seed_disagreement", "seed_std_nll")


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
    from .io import _atomic_write_bytes, record_outputs, save_result, write_json

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
            paths[f"{name}_npy"] = _atomic_write_bytes(out / f"{stem}_{name}.npy", buf.getvalue())
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
    summary_path = write_json(summary, out / f"{stem}_summary.json", protect=protect)
    summary["outputs"]["summary"] = str(summary_path)
    record_outputs(Path(v) for v in summary["outputs"].values())
    return summary
