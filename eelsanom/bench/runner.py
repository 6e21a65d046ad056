"""Running the benchmark: one condition, the calibration measurement, the whole sweep."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import scoring
from ..errors import InputError
from .conditions import Condition, bulk_region
from .figures import _figures
from .measure import (
    PeakRSS,
    _cuda_peak_mb,
    _cuda_reset,
    _hyperspy_available,
    _resolved_device,
    _tqdm,
)
from .references import reference_scores
from .report import _header, _write_csv, _write_markdown, calibration_table, markdown_table, verdict
from .settings import (
    ALIASES,
    CALIBRATION_ALPHA,
    CALIBRATION_SEEDS,
    DEFAULT_METHODS,
    QUICK_CALIBRATION_EPOCHS,
    QUICK_CVAE_EPOCHS,
    variants,
)
from .suites import suite_conditions

log = logging.getLogger(__package__)  # "eelsanom.bench", as before the split


def hyperspy_decomposition_score(si) -> tuple[np.ndarray, dict[str, Any]]:
    """HyperSpy's ``decomposition()`` on the whole image; score = squared reconstruction error.

    Poisson-normalised SVD (``normalize_poissonian_noise=True``), number of
    components from HyperSpy's own elbow estimate (at least 2) — the workflow a
    microscopist uses today. Returns ``(score map (ny, nx), info)``.

    Needs HyperSpy (imported here). Negative counts are clipped at 0 before
    the decomposition; the error is computed against the unclipped data.

    Parameters
    ----------
    si : SpectrumImage
        Data of shape ``(ny, nx, n_energy)`` in counts.

    Returns
    -------
    score : ndarray of shape (ny, nx)
        Squared reconstruction error summed over energy (counts^2); higher =
        more anomalous.
    info : dict
        ``{"n_components": k}``, the number of components used (2 to 20; 5
        when the elbow estimate fails).
    """
    import hyperspy.api as hs

    data = np.maximum(np.asarray(si.data, np.float32), 0)
    s = hs.signals.Signal1D(data)
    s.axes_manager[-1].scale = si.energy.scale
    s.axes_manager[-1].offset = si.energy.offset
    s.decomposition(normalize_poissonian_noise=True, print_info=False)
    try:
        k = int(s.estimate_elbow_position()) + 1
    except Exception:  # noqa: BLE001
        k = 5
    k = int(np.clip(k, 2, 20))
    model = s.get_decomposition_model(k)
    err = np.sum((np.asarray(si.data, np.float64) - model.data) ** 2, axis=-1)
    return err, {"n_components": k}


def _detector_params(method: str, device: str, seed: int) -> dict[str, Any]:
    """The bench's run settings (seed, device) for the detectors that take them."""
    from ..detectors.params import defaults

    names = defaults(method)
    return {k: v for k, v in (("seed", seed), ("device", device)) if k in names}


def _metrics(nll: np.ndarray, truth: np.ndarray, threshold_spec: Any = "robust") -> dict[str, Any]:
    t, label = scoring.compute_threshold(nll, threshold_spec)
    mask = nll > t
    if truth.any():
        m = scoring.evaluate(nll, mask, truth)
    else:  # an anomaly-free image: only the false-positive rate means something
        m = {k: float("nan") for k in ("roc_auc", "average_precision", "best_f1",
                                       "best_f1_threshold", "precision", "recall", "f1")}
    m.update(scoring.bimodality(nll))
    m["fpr"] = float(np.mean(mask[~truth])) if (~truth).any() else float("nan")
    m["n_flagged"] = int(mask.sum())
    m["flagged_fraction"] = float(np.mean(mask))
    m["true_fraction"] = float(np.mean(truth))
    m["threshold"] = t
    m["threshold_method"] = label
    return m


def _training_record(det: Any) -> dict[str, Any]:
    """Held-out bulk NLL of the 3D-CVAE's initialisation and best epoch (from ``history_``)."""
    h = getattr(det, "history_", None) or {}
    return {"init_val": float(h.get("init_val", float("nan"))),
            "best_val": float(h.get("best_val", float("nan"))),
            "best_epoch": int(h.get("best_epoch", -1)), "epochs_run": int(h.get("epochs_run", 0)),
            "init_won": bool(h.get("init_won", False)),
            "best_step": int(h.get("best_step", -1)), "steps_run": int(h.get("steps_run", 0)),
            "lowest_step": int(h.get("lowest_step", h.get("best_step", -1))),
            "init_floor_gap": float(h.get("init_floor_gap", float("nan"))),
            "at_noise_floor": bool(h.get("at_noise_floor", False)),
            "train_s": float(h.get("train_seconds", float("nan"))),
            "after_best_fraction": float(h.get("after_best_fraction", float("nan"))),
            "after_best_fit_fraction": float(h.get("after_best_fit_fraction", float("nan")))}


def run_condition(cond: Condition, methods: list[str], *, device: str, seed: int,
                  progress=None, cvae_epochs: int | None = None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Simulate one condition and run every detector and reference on it.

    Each eelsanom detector is fitted once and scored without and with the
    shared pooling stage (:func:`variants`).

    Parameters
    ----------
    cond : Condition
        The test case.
    methods : list of str
        Detectors to run (``"cvae"``, ``"pca"``, ``"rx"``, ``"hyperspy"``); the
        references always run. ``"hyperspy"`` is skipped, with a warning, when
        HyperSpy is not installed.
    device : str
        Torch device for the CVAE and PCA (see :func:`eelsanom.device.resolve_device`).
    seed : int
        Seed of the simulation and of the detectors.
    progress : callable, optional
        Progress callback passed to each detector's ``fit``.
    cvae_epochs : int, optional
        The 3D-CVAE's most epochs (the quick suites' :data:`QUICK_CVAE_EPOCHS`);
        None: the detector's default.

    Returns
    -------
    rows : list of dict
        One row per detector variant and reference: condition, simulation
        parameters, metrics (see :func:`eelsanom.scoring.evaluate`, plus
        bimodality, the false-positive rate ``fpr`` and the automatic threshold),
        fit/score seconds, device, peak memory (MiB); the 3D-CVAE's rows carry
        its training record (``init_val``, ``best_val``, ``best_epoch``,
        ``init_won``, ``best_step`` (the check kept), ``lowest_step`` (the lowest
        check), ``steps_run``, ``init_floor_gap``,
        ``at_noise_floor``, ``train_s``, ``after_best_fraction`` of the training
        and ``after_best_fit_fraction`` of the whole fit, both after the check kept).
    maps : dict
        ``"truth"`` (bool, ``(ny, nx)``), ``"nll"`` (detector -> ``(ny, nx)``
        NLL map) and ``"thresholds"`` (detector -> float).
    """
    from ..detectors import get_detector

    sim = cond.simulate(seed)
    truth = sim.truth
    train_mask = bulk_region(cond, sim)
    rows: list[dict[str, Any]] = []
    maps: dict[str, Any] = {"truth": truth, "nll": {}, "thresholds": {}}
    base = {"condition": cond.name, "supervised": cond.supervised, "bulk": cond.bulk, "seed": seed,
            **{f"sim_{k}": (list(v) if isinstance(v, tuple) else v) for k, v in cond.sim.items()}}
    t0 = time.perf_counter()
    refs = reference_scores(sim, cond.oracle)
    ref_s = time.perf_counter() - t0
    for name, nll in refs.items():
        m = _metrics(nll, truth)
        rows.append({**base, "detector": name, **m, "fit_s": 0.0, "score_s": ref_s / len(refs),
                     "device": "n/a", "n_parameters": 0})
        maps["nll"][name] = nll
        maps["thresholds"][name] = m["threshold"]
    for method in methods:
        if method == "hyperspy":
            if not _hyperspy_available():
                log.warning("HyperSpy is not installed: skipping its decomposition peer")
                continue
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                nll, info = hyperspy_decomposition_score(sim.si)
                dt = time.perf_counter() - t0
            m = _metrics(nll, truth)
            rows.append({**base, "detector": "hyperspy-decomposition", **m, "fit_s": dt,
                         "score_s": 0.0, "device": "cpu", "peak_rss_mb": mem.peak_mb,
                         "n_parameters": 0, "notes": f"k={info['n_components']}, fit on the image"})
            maps["nll"]["hyperspy-decomposition"] = nll
            maps["thresholds"]["hyperspy-decomposition"] = m["threshold"]
            continue
        base_method, settings = ALIASES.get(method, (method, {}))
        if base_method == "cvae" and cvae_epochs is not None:
            settings = {**settings, "epochs": int(cvae_epochs)}
        det = get_detector(base_method, **_detector_params(base_method, device, seed), **settings)
        _cuda_reset(device)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            det.fit(sim.si, train_mask, progress=progress)
            fit_s = time.perf_counter() - t0
        extra = _training_record(det) if base_method == "cvae" else {}
        for label, sigma in variants(method):
            det.set_params(pooling=sigma)
            with PeakRSS() as mem_s:
                t1 = time.perf_counter()
                res = det.score(sim.si)
                score_s = time.perf_counter() - t1
            m = _metrics(res.nll, truth, getattr(det, "threshold", "robust"))
            rows.append({**base, "detector": label, **m, "fit_s": fit_s, "score_s": score_s,
                         "device": _resolved_device(device) if "device" in det.get_params()
                         else "cpu", "peak_rss_mb": max(mem.peak_mb, mem_s.peak_mb),
                         "peak_gpu_mb": _cuda_peak_mb(device),
                         "n_parameters": int(getattr(det, "n_parameters", 0) or 0), **extra})
            maps["nll"][label] = res.nll
            maps["thresholds"][label] = m["threshold"]
    return rows, maps


def calibration_conditions(conds: list[Condition]) -> list[Condition]:
    """The anomaly-free, bulk-trained conditions of a suite: where the calibrated FPR is measured.

    Parameters
    ----------
    conds : list of Condition

    Returns
    -------
    list of Condition
        Those whose truth is empty (:attr:`Condition.anomaly_free`: ``concentration
        == 0``; in the general suite the must-not-flag and anomaly-free kinds) that
        train on the bulk region.
    """
    return [c for c in conds if c.supervised and c.anomaly_free]


def calibration_fpr(conds: list[Condition], methods: list[str], *, device: str = "auto",
                    seed: int = 0, seeds: int = CALIBRATION_SEEDS, folds: int = 4,
                    alpha: float = CALIBRATION_ALPHA, cvae_epochs: int | None = None,
                    quiet: bool = True) -> list[dict[str, Any]]:
    """False-positive rate of the calibrated threshold on anomaly-free images, over seeds.

    For every condition, seed and detector: one fit on the bulk region (the
    detector's defaults, :func:`_detector_params`), the cross-fitted held-out
    bulk scores of :meth:`~eelsanom.detectors.base.BaseDetector.held_out_scores`
    (``folds`` extra fits, each scored with and without pooling,
    :func:`variants`), the ``1 - alpha`` threshold of their null distribution
    (:func:`eelsanom.scoring.null_calibration`; what ``threshold="calibrated"``
    sets), and the pixels of the image it flags, beside the automatic
    ``robust`` threshold of the same map.

    Parameters
    ----------
    conds : list of Condition
        Anomaly-free conditions (every pixel normal), trained on the bulk.
    methods : list of str
        Benchmark methods (``"hyperspy"`` is left out: it has no held-out model).
    device : str, default "auto"
    seed : int, default 0
        First seed; the images are ``seed .. seed + seeds - 1``.
    seeds : int, default :data:`CALIBRATION_SEEDS`
    folds : int, default 4
        Cross-fitting folds (the library's default).
    alpha : float, default :data:`CALIBRATION_ALPHA`
        Nominal false-positive rate.
    cvae_epochs : int, optional
        3D-CVAE epochs (the bench's quick choice); None: the detector's default.
    quiet : bool, default True
        Do not print one line per condition, seed and detector.

    Returns
    -------
    list of dict
        One row per condition, seed and detector label: ``n_pixels``,
        ``n_calibrated`` / ``n_robust`` (pixels flagged), ``fpr_calibrated`` /
        ``fpr_robust``, both thresholds, ``fit_s`` (the detector's fit plus the
        folds', seconds) and ``epochs`` (the 3D-CVAE's; else empty).

    Raises
    ------
    InputError
        When a condition has anomalies or trains without a bulk region, or a method
        is unknown.
    """
    from ..detectors import get_detector

    rows: list[dict[str, Any]] = []
    for cond in conds:
        if not calibration_conditions([cond]):
            raise InputError(f"calibration_fpr: expected anomaly-free conditions trained on the "
                             f"bulk region, got {cond.name!r}.")
        for s in range(int(seed), int(seed) + int(seeds)):
            sim = cond.simulate(s)
            bulk, normal = bulk_region(cond, sim), ~np.asarray(sim.truth, bool)
            for method in methods:
                if method == "hyperspy":
                    continue
                base_method, settings = ALIASES.get(method, (method, {}))
                params = {**_detector_params(base_method, device, s), **settings}
                if base_method == "cvae" and cvae_epochs is not None:
                    params["epochs"] = int(cvae_epochs)
                vs = variants(method)
                t0 = time.perf_counter()
                det = get_detector(base_method, **params).fit(sim.si, bulk)
                try:
                    held = det.held_out_scores(sim.si, bulk, folds=folds,
                                               variants=[{"pooling": sg} for _, sg in vs])
                except InputError as exc:  # a bulk region too small to hold out squares
                    log.warning("calibration of %s on %s skipped: %s", method, cond.name, exc)
                    continue
                fit_s = time.perf_counter() - t0
                for (label, sigma), h in zip(vs, held):
                    det.set_params(pooling=sigma)
                    nll = det.score(sim.si).nll
                    t_cal = scoring.calibrated_threshold(scoring.null_calibration(h[bulk]), alpha)
                    t_rob = scoring.compute_threshold(nll, "robust")[0]
                    n_cal, n_rob = int((nll > t_cal)[normal].sum()), int((nll > t_rob)[normal].sum())
                    n = int(normal.sum())
                    rows.append({"condition": cond.name, "seed": s, "detector": label,
                                 "n_pixels": n, "n_calibrated": n_cal, "n_robust": n_rob,
                                 "fpr_calibrated": n_cal / n, "fpr_robust": n_rob / n,
                                 "threshold_calibrated": t_cal, "threshold_robust": t_rob,
                                 "alpha": alpha, "folds": folds, "fit_s": fit_s,
                                 "epochs": params.get("epochs", det.get_params().get("epochs", ""))
                                 if base_method == "cvae" else ""})
                    if not quiet:
                        print(f"  calibration {cond.name:44s} seed {s} {label:18s} calibrated "
                              f"{n_cal:4d} / {n} flagged, robust {n_rob:4d}  ({fit_s:.1f} s)",
                              flush=True)
    return rows


def cvae_parameter_count(conds: list[Condition], *, device: str = "auto",
                         seed: int = 0) -> str:
    """Trainable parameters of the 3D-CVAE the benchmark trains on ``conds``.

    The network depends on the number of energy channels, so the count is that
    of the detector built as :func:`run_condition` builds it, for each energy
    window the conditions simulate (``"N"``, or ``"N (window), M (window)"``).

    Parameters
    ----------
    conds : list of Condition
    device : str, default "auto"
    seed : int, default 0

    Returns
    -------
    str
    """
    from ..detectors import get_detector
    from ..nn.model import CVAE3D, energy_levels_for

    det = get_detector("cvae", **_detector_params("cvae", device, seed))
    counts = {}
    for cond in conds:
        window, ne = cond.energy_channels()
        if window in counts:
            continue
        net = CVAE3D(ne, int(det.latent_dim), int(det.width), energy_levels_for(ne),
                     int(det.spatial_layers))
        counts[window] = int(net.n_parameters) * max(1, int(getattr(det, "n_seeds", 1) or 1))
    if len(set(counts.values())) == 1:
        return str(next(iter(counts.values())))
    return ", ".join(f"{n} ({w})" for w, n in counts.items())


def run_benchmark(out: Path, *, quick: bool = True, methods: list[str] | None = None,
                  device: str = "auto", quiet: bool = False, seed: int = 0,
                  conditions: list[Condition] | None = None,
                  suite: str = "paper",
                  calibration_seeds: int | None = None) -> list[dict[str, Any]]:
    """Run the benchmark sweep and write CSV, Markdown and figures into ``out``.

    Returns the rows (one per condition x detector).

    ``results.csv`` is rewritten after each condition, so an interrupted run
    keeps what it finished; ``results.md`` and the figures (``roc_curves.png``,
    ``maps_<condition>.png``) are written at the end. Then, on the anomaly-free
    conditions (:func:`calibration_conditions`), the calibrated threshold's
    false-positive rate over ``calibration_seeds`` images
    (:func:`calibration_fpr`; ``calibration.csv`` and a section of
    ``results.md``; the quick suite measures its first anomaly-free condition
    only, and the 3D-CVAE trains :data:`QUICK_CALIBRATION_EPOCHS` epochs there,
    which the section says).

    Parameters
    ----------
    out : path-like
        Output folder (created if missing).
    quick : bool, default True
        The suite's CPU-sized subset (:func:`quick_conditions`,
        :func:`realistic_conditions` at 64 x 64, the general suite's 20
        conditions at 48 x 48 and 64 x 64) rather than the full one.
    methods : list of str or None, default None
        Detectors to run: ``"cvae"``, ``"cvae-ctx"`` (its blind-spot context
        mode), ``"pca"``, ``"context-pca"``, ``"bulk-context"``, ``"rx"`` and ``"hyperspy"``
        (HyperSpy's decomposition peer, skipped when HyperSpy is not
        installed). ``None`` runs all of them (:data:`DEFAULT_METHODS`).
    device : str, default "auto"
        Torch device for the CVAE and PCA.
    quiet : bool, default False
        Do not print the header, per-detector lines, table and progress bar.
    seed : int, default 0
        Seed of every simulation and detector.
    conditions : list of Condition, optional
        Run these instead of the suite's.
    suite : {"paper", "realistic", "general"}, default "paper"
        Which conditions (:func:`suite_conditions`).
    calibration_seeds : int, optional
        Seeds of the calibrated-FPR measurement; ``None``: :data:`CALIBRATION_SEEDS`
        for the realistic suite, none for the paper suite (which has no anomaly-free
        condition) and the general suite (whose measure is the flagged fraction at
        the automatic threshold); 0 skips it.

    Returns
    -------
    list of dict
        The rows written to ``results.csv`` (see :func:`run_condition`).

    Raises
    ------
    InputError
        When a method, the suite or ``device`` is unknown or unavailable.
    """
    from ..detectors import detector_class

    tqdm = _tqdm()
    methods = list(methods or DEFAULT_METHODS)
    for m in methods:
        if m != "hyperspy":
            detector_class(ALIASES.get(m, (m, {}))[0])  # unknown methods refused before any work
    _resolved_device(device)
    conds = conditions if conditions is not None else suite_conditions(suite, quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(quick, device, seed, methods, suite)
    if "cvae" in methods or "cvae-ctx" in methods:
        header["cvae_parameters"] = cvae_parameter_count(conds, device=device, seed=seed)
        if quick and QUICK_CVAE_EPOCHS is not None:
            header["cvae_epochs"] = (f"at most {QUICK_CVAE_EPOCHS} in every condition (quick; "
                                     "the full suite: the detector's default)")
    if not quiet:
        print(" | ".join(f"{k}: {v}" for k, v in header.items()))
    rows: list[dict[str, Any]] = []
    cond_maps = []
    t0 = time.perf_counter()
    for cond in tqdm(conds, desc="conditions", disable=quiet):
        r, maps = run_condition(cond, methods, device=device, seed=seed,
                                cvae_epochs=QUICK_CVAE_EPOCHS if quick else None)
        rows += r
        cond_maps.append((cond.name, maps))
        if not quiet:
            for row in r:
                tqdm.write(f"  {cond.name:44s} {row['detector']:24s} AUC {row['roc_auc']:.3f}  "
                           f"AP {row['average_precision']:.3f}  F1 {row['f1']:.3f}  "
                           f"FPR {row['fpr']:.4f}  flagged {row['flagged_fraction']:.3f} "
                           f"(true {row['true_fraction']:.3f})  fit {row['fit_s']:.1f}s  "
                           f"score {row['score_s']:.2f}s")
        _write_csv(rows, out / "results.csv")  # after each condition: nothing lost on interrupt
    n_cal = (CALIBRATION_SEEDS if suite == "realistic" else 0) if calibration_seeds is None \
        else int(calibration_seeds)
    cal_conds = calibration_conditions(conds) if n_cal > 0 else []
    if quick and conditions is None:  # the quick suite: its first anomaly-free image only
        cal_conds = cal_conds[:1]
    cal_rows: list[dict[str, Any]] = []
    if cal_conds:
        epochs = QUICK_CALIBRATION_EPOCHS if quick else None
        header["calibration"] = (f"{n_cal} seeds from {seed}, alpha {CALIBRATION_ALPHA:g}, "
                                 f"3D-CVAE epochs {epochs or 'default'}")
        cal_rows = calibration_fpr(cal_conds, methods, device=device, seed=seed, seeds=n_cal,
                                   cvae_epochs=epochs, quiet=quiet)
        _write_csv(cal_rows, out / "calibration.csv")
    total = time.perf_counter() - t0
    _write_markdown(rows, header, out / "results.md", total, calibration=cal_rows,
                    cvae_epochs=QUICK_CALIBRATION_EPOCHS if quick else None)
    _figures(cond_maps, out)
    if not quiet:
        print(markdown_table(rows, "roc_auc"))
        print(markdown_table(rows, "average_precision"))
        print("\n".join(verdict(rows)))
        if cal_rows:
            print("\n".join(calibration_table(cal_rows)))
        print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and figures ({total:.0f} s)")
    return rows
