"""Latent-space report of saved runs (``eelsanom latent RUN_DIR [RUN_DIR_B] --out DIR``).

A run folder is what ``eelsanom detect --out RUN_DIR`` writes
(:func:`eelsanom.pipeline.write_run`; read back by :func:`eelsanom.pipeline.load_run`).
:func:`load_run` turns one into an :class:`~eelsanom.result.AnomalyResult`;
:func:`write_report` runs :func:`~eelsanom.latent.summarize` on each run (and
:func:`~eelsanom.latent.compare` on two) and writes ``latent_report.md``, PNG
figures (labelled axes, colour bars) and ``latent_report.json`` into ``out``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io._files import atomic_write, atomic_write_bytes
from ..pipeline import SEED_MAPS, find_stem
from ..pipeline import load_run as read_run_folder
from ..result import AnomalyResult
from ..spectrum import Axis
from ._common import LATENT_METHODS

log = logging.getLogger(__name__)

__all__ = ["find_stem", "load_run", "write_report"]


def load_run(run_dir: str | os.PathLike, stem: str | None = None) -> Any:
    """Read a saved run back as an :class:`~eelsanom.result.AnomalyResult`.

    The result has the NLL map, the mask, the threshold, the navigation axes and
    (when the detector saved them) the latent codes; ``info["summary"]`` holds the
    run's JSON summary. It has no detector attached (no reconstructions).

    Parameters
    ----------
    run_dir : path
        Folder written by ``eelsanom detect --out RUN_DIR``.
    stem : str, optional
        Which run, when the folder holds several.

    Returns
    -------
    AnomalyResult
    """
    run = read_run_folder(run_dir, stem)
    d, stem, summary, maps = run.folder, run.stem, run.summary, run.maps
    nll = maps["nll"]
    ny, nx = nll.shape
    nav = summary.get("navigation") or {}
    try:
        y = Axis.from_dict(nav["y"]) if "y" in nav else Axis(ny, name="y")
        x = Axis.from_dict(nav["x"]) if "x" in nav else Axis(nx, name="x")
    except (KeyError, TypeError, ValueError):
        y, x = Axis(ny, name="y"), Axis(nx, name="x")
    if (y.size, x.size) != (ny, nx):
        y, x = Axis(ny, name="y"), Axis(nx, name="x")
    en = summary.get("model_energy_axis") or summary.get("energy_axis")
    try:
        energy = Axis.from_dict(en) if en else Axis(1, units="eV")
    except (KeyError, TypeError, ValueError):
        energy = Axis(1, units="eV")
    thr_info = summary.get("threshold") or {}
    thr = thr_info.get("value")
    if thr is None and "threshold" in maps:
        thr = float(maps["threshold"])
    thr = float("nan") if thr is None else float(thr)
    mask = maps.get("mask")
    mask = (np.asarray(mask, bool).reshape(ny, nx) if mask is not None
            else (nll > thr if np.isfinite(thr) else np.zeros((ny, nx), bool)))
    latent = maps.get("latent")
    if latent is not None:
        latent = np.asarray(latent, dtype=np.float32)
        if latent.ndim == 2:  # a line scan
            latent = latent[None]
    extra = {name: maps[name] for name in SEED_MAPS if name in maps}
    return AnomalyResult(nll=nll, threshold=thr,
                         threshold_method=str(thr_info.get("method", "unknown")), mask=mask,
                         method=str(summary.get("method", "unknown")), y=y, x=x, energy=energy,
                         latent=latent, maps=extra,
                         info={"run_dir": str(d), "stem": stem, "summary": summary})


def _require_latent(res: Any, label: str) -> None:
    if getattr(res, "latent", None) is None:
        where = res.info.get("run_dir", "the result") if hasattr(res, "info") else "the result"
        stem = res.info.get("stem", "<stem>") if hasattr(res, "info") else "<stem>"
        raise InputError(
            f"{label} ({where}): no latent codes ({stem}_latent.hspy/.zspy) -- the "
            f"{getattr(res, 'method', '?')!r} detector saves none. Expected a run of a method "
            f"that saves latent codes ({', '.join(LATENT_METHODS)}): rerun `eelsanom detect "
            "--method cvae|pca --out RUN_DIR`.")


def _as_result(obj: Any, stem: str | None) -> Any:
    if hasattr(obj, "nll") and hasattr(obj, "latent"):
        return obj
    return load_run(obj, stem)


def _save_fig(fig: Any, path: Path) -> Path:
    # the format follows the final name (the temporary name keeps its extension)
    return atomic_write(path, fig.savefig)


def _map_png(arr: np.ndarray, res: Any, path: Path, title: str, label: str,
             cmap: str = "viridis") -> Path | None:
    """The map as a PNG, or None (and no file) when it holds no finite value: a quantity
    the tables mark n/a gets no figure (a stale one of an earlier report is removed)."""
    from ..io import save_png_map

    a = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(a).any():
        if path.is_file():
            path.unlink()
        return None
    return save_png_map(a.reshape(res.shape), path,
                        si_or_result=res, title=title, cbar_label=label, cmap=cmap)


def _drop_missing(figs: dict[str, Path | None]) -> dict[str, Path]:
    return {k: v for k, v in figs.items() if v is not None}


def _single_figures(s: Any, res: Any, out: Path, tag: str) -> dict[str, Path]:
    from ._plot import new_axes

    figs: dict[str, Path | None] = {}
    figs["local_dimension"] = _map_png(
        s.local_dimension, res, out / f"{tag}_local_dimension.png",
        f"{tag}: local intrinsic dimension of the latent codes ({res.method})",
        f"TwoNN over {s.k_local} latent neighbours")
    figs["latent_score"] = _map_png(
        s.latent_score, res, out / f"{tag}_latent_score.png",
        f"{tag}: latent Mahalanobis distance from unflagged pixels ({res.method})",
        "squared Mahalanobis distance", cmap="magma")
    fig, ax = new_axes()
    lam = s.covariance_spectrum
    ax.bar(np.arange(1, lam.size + 1), lam, color="tab:blue")
    ax.set_xlabel("latent direction (sorted by variance)")
    ax.set_ylabel("fraction of latent variance")
    ax.set_title(f"{tag}: covariance spectrum, effective rank {s.effective_rank:.2f} of "
                 f"d = {s.latent_dim}", fontsize=10)
    figs["covariance_spectrum"] = _save_fig(fig, out / f"{tag}_covariance_spectrum.png")
    maps = getattr(res, "maps", None) or {}
    if "seed_disagreement" in maps:
        figs["seed_disagreement"] = _map_png(
            maps["seed_disagreement"], res, out / f"{tag}_seed_disagreement.png",
            f"{tag}: seed disagreement ({res.method}, seed ensemble)",
            "std of rank quantile over seeds", cmap="viridis")
    if s.quantization is not None and len(s.quantization.kinds):
        figs["quantization"] = _save_fig(s.quantization.plot(),
                                         out / f"{tag}_quantization.png")
    return _drop_missing(figs)


def _compare_figures(c: Any, res_a: Any, res_b: Any, out: Path) -> dict[str, Path]:
    from ._plot import new_axes

    figs: dict[str, Path | None] = {}
    figs["mutual_knn"] = _map_png(c.mutual_knn_map, res_a, out / "compare_mutual_knn.png",
                                  f"A vs B: mutual {c.k}-NN overlap of latent neighbourhoods",
                                  "fraction of shared neighbours")
    figs["relative_agreement"] = _map_png(
        c.relative_agreement, res_a, out / "compare_relative_agreement.png",
        "A vs B: agreement of relative representations (k-means anchors)",
        "cosine of relative codes (1 = same)", cmap="RdBu")
    figs["procrustes_residual"] = _map_png(
        c.procrustes.residual_map, res_a, out / "compare_procrustes_residual.png",
        f"A -> B: Procrustes residual (relative {c.procrustes.relative_residual:.3f})",
        "residual norm (units of B's codes)", cmap="magma")
    figs["cca"] = _save_fig(c.cca.plot(), out / "compare_cca.png")
    figs["units"] = _save_fig(c.units.plot(), out / "compare_units.png")
    fig, ax = new_axes()
    na = np.asarray(res_a.nll, float).ravel()
    nb = np.asarray(res_b.nll, float).ravel()
    h = ax.hexbin(na, nb, gridsize=60, bins="log", cmap="viridis", mincnt=1)
    fig.colorbar(h, ax=ax).set_label("pixels (log)")
    ax.set_xlabel(f"NLL of A ({res_a.method})")
    ax.set_ylabel(f"NLL of B ({res_b.method})")
    ax.set_title(f"NLL maps, pixel by pixel (Spearman {c.nll_spearman:.3f})", fontsize=10)
    figs["nll_scatter"] = _save_fig(fig, out / "compare_nll_scatter.png")
    return _drop_missing(figs)


def _run_label(res: Any) -> str:
    info = getattr(res, "info", {}) or {}
    where = info.get("run_dir")
    return f"`{where}` (stem `{info.get('stem')}`)" if where else "in-memory result"


def _json_table(rows: list[tuple[str, Any, str]]) -> dict[str, Any]:
    out = {}
    for q, v, _ in rows:
        if isinstance(v, (float, np.floating)):
            out[q] = float(v) if np.isfinite(v) else None
        elif isinstance(v, (int, np.integer)):
            out[q] = int(v)
        else:
            out[q] = str(v)
    return out


def write_report(run_a: Any, run_b: Any = None, out: str | os.PathLike = "latent_report", *,
                 stem_a: str | None = None, stem_b: str | None = None, k: int = 10,
                 k_local: int = 50, dse_points: int = 1500, quantization: bool = True,
                 seed: int = 0) -> Path:
    """Write the latent-space report of one run (or a comparison of two) into ``out``.

    Parameters
    ----------
    run_a : path or AnomalyResult
        A run folder (``eelsanom detect --out``) or a result with latent codes.
    run_b : path or AnomalyResult, optional
        A second run of the same image: adds the comparison section.
    out : path
        Output folder (created).
    stem_a, stem_b : str, optional
        Which run in a folder holding several.
    k, k_local, dse_points, quantization, seed
        See :func:`~eelsanom.latent.compare` and :func:`~eelsanom.latent.summarize`.

    Returns
    -------
    Path
        ``out / "latent_report.md"``.

    Raises
    ------
    InputError
        A run without latent codes (e.g. ``rx``), two runs of different images.
    """
    from ..io import write_json
    from .analysis import compare, summarize

    res_a = _as_result(run_a, stem_a)
    _require_latent(res_a, "run A")
    res_b = None
    if run_b is not None:
        res_b = _as_result(run_b, stem_b)
        _require_latent(res_b, "run B")
        if tuple(res_a.shape) != tuple(res_b.shape):
            raise InputError(f"run A is {res_a.shape[0]} x {res_a.shape[1]} px, run B "
                             f"{res_b.shape[0]} x {res_b.shape[1]}; expected two runs of the "
                             "same image.")
    outd = Path(out).expanduser()
    outd.mkdir(parents=True, exist_ok=True)
    runs = [("A", res_a)] + ([("B", res_b)] if res_b is not None else [])
    md = ["# Latent-space report", ""]
    js: dict[str, Any] = {"runs": {}}
    for tag, res in runs:
        s = summarize(res, k_local=min(k_local, res.nll.size - 1), dse_points=dse_points,
                      quantization=quantization, seed=seed)
        figs = _single_figures(s, res, outd, tag)
        ny, nx = res.shape
        md += [f"## Run {tag}: {res.method}, {ny} x {nx} px, latent d = {s.latent_dim}", "",
               f"Source: {_run_label(res)}; {int(res.mask.sum())} pixels flagged "
               f"({res.threshold_method} threshold).", "", s.to_markdown(), ""]
        md += ["The local intrinsic dimension map shows where the codes live on a set of "
               "higher or lower dimension than the bulk; the latent score is each code's "
               "distance from the unflagged pixels' codes.", ""]
        if "seed_disagreement" in figs:
            md += ["Seed ensemble: the NLL map is the members' mean; the seed-disagreement map "
                   "is the std over seeds of each pixel's rank quantile in its seed's map (0 = "
                   "all seeds agree; treat pixels with high values with caution).", ""]
        md += [f"![{tag} {name}]({p.name})" for name, p in figs.items()] + [""]
        if s.quantization is not None:
            md += ["### Storage of the latent codes", "",
                   "Anomaly map here: the latent Mahalanobis score (the decoder is not saved "
                   "with a run).", "", s.quantization.to_markdown(), ""]
        js["runs"][tag] = {"source": _run_label(res), "method": res.method,
                           "table": _json_table(s.table()), "timings_s": s.timings,
                           "figures": {n: p.name for n, p in figs.items()},
                           "quantization": (s.quantization.rows()
                                            if s.quantization is not None else None)}
    if res_b is not None:
        c = compare(res_a, res_b, k=k, seed=seed)
        figs = _compare_figures(c, res_a, res_b, outd)
        md += ["## Comparison A vs B", "", c.to_markdown(), "",
               "Canonical correlations: " + ", ".join(f"{v:.3f}" for v in c.cca.correlations),
               "",
               "Maps: mutual k-NN overlap (low = the two models disagree about what the pixel "
               "resembles), relative-representation agreement (same relation to anchor "
               "pixels), Procrustes residual (codes that a rotation of A cannot carry onto B).",
               ""]
        md += [f"![compare {name}]({p.name})" for name, p in figs.items()] + [""]
        js["comparison"] = {"table": _json_table(c.table()),
                            "canonical_correlations": c.cca.correlations.tolist(),
                            "cca_ks": c.cca.ks.tolist(),
                            "cca_retrieval_top1": c.cca.retrieval_top1.tolist(),
                            "cca_mutual_knn": c.cca.mutual_knn.tolist(),
                            "timings_s": c.timings,
                            "figures": {n: p.name for n, p in figs.items()}}
    report = outd / "latent_report.md"
    atomic_write_bytes(report, ("\n".join(md) + "\n").encode("utf-8"), record=False)
    write_json(js, outd / "latent_report.json")
    return report
