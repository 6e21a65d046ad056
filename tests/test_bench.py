"""The benchmark machinery: suites, pooled variants, references, verdict, outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from eelsanom import bench
from eelsanom.errors import InputError

TINY = dict(shape=(24, 24), window="fe-l", anomaly="shift", anomaly_shape="clusters",
            concentration=0.04, dose=200.0)


def test_realistic_suite_covers_the_conditions_the_issue_asks_for():
    conds = bench.realistic_conditions(quick=True)
    names = [c.name for c in conds]
    for family in ("drift /", "valence /", "thickness /", "drift+thickness+gain /"):
        assert sum(n.startswith(family) and n.endswith(" eV") for n in names) == 3, family
    assert any("isolated pixels" in n for n in names)
    assert any("bulk not spanning" in n and c.sim["concentration"] > 0
               for n, c in zip(names, conds))
    assert sum(c.sim["concentration"] == 0 for c in conds) == 3
    # the calibrated false-positive rate is measured first where the bulk spans the nuisance
    assert bench.calibration_conditions(conds)[0].bulk == "spanning"
    assert all(c.oracle for c in conds)
    assert all(c.sim["shape"] == (64, 64) for c in conds)
    assert all(c.sim["shape"] == (128, 128) for c in bench.realistic_conditions(quick=False))
    with pytest.raises(InputError, match="suite: expected one of"):
        bench.suite_conditions("toy", True)


def test_a_spanning_bulk_region_covers_the_image_and_leaves_anomalies_out():
    from eelsanom.simulate import simulate

    cond = bench.Condition("c", dict(TINY, shape=(32, 40)), bulk="spanning")
    sim = simulate(**cond.sim, seed=0)
    region = bench.bulk_region(cond, sim)
    assert region.shape == (32, 40) and not (region & sim.truth).any()
    b = bench.SPANNING_BLOCK
    squares = region.reshape(32 // b, b, 40 // b, b).any(axis=(1, 3))
    assert squares[::2, ::2].all() and not squares[1::2, ::2].any()  # every other square
    assert 0.4 < region.mean() < 0.5
    assert bench.bulk_region(bench.Condition("c", cond.sim), sim) is sim.bulk_mask
    assert bench.bulk_region(bench.Condition("c", cond.sim, supervised=False), sim) is None
    with pytest.raises(InputError, match="bulk expected"):
        bench.bulk_region(bench.Condition("c", cond.sim, bulk="all"), sim)


@pytest.mark.slow
def test_run_benchmark_scores_pooled_and_unpooled_variants_with_all_references(tmp_path):
    conds = [bench.Condition("drift / shift 0.9 eV", {**TINY, "drift": 0.8, "magnitude": 0.9},
                             oracle="drift_eV"),
             bench.Condition("anomaly-free", {**TINY, "drift": 0.8, "magnitude": 0.9,
                                              "concentration": 0.0}, oracle="drift_eV")]
    rows = bench.run_benchmark(tmp_path, methods=["pca", "rx"], device="cpu", quiet=True,
                               conditions=conds, suite="realistic", calibration_seeds=0)
    dets = {r["detector"] for r in rows}
    assert {"pca", "pca+pool", "rx", "rx+pool", "supervised-limit", "perfect-bulk",
            "perfect-bulk+pool", "manifold-oracle"} <= dets
    free = [r for r in rows if r["condition"] == "anomaly-free"]
    assert all(np.isnan(r["roc_auc"]) and 0.0 <= r["fpr"] <= 1.0 for r in free)
    by = {(r["condition"], r["detector"]): r for r in rows}
    # the references bound the detectors: nothing beats the supervised limit
    c = "drift / shift 0.9 eV"
    assert by[c, "supervised-limit"]["roc_auc"] >= max(by[c, d]["roc_auc"] for d in dets
                                                       if (c, d) in by) - 1e-9
    # one fit, two scorings: same fit time for both variants
    assert by[c, "pca"]["fit_s"] == by[c, "pca+pool"]["fit_s"]
    for name in ("results.csv", "results.md", "roc_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "results.md").read_text()
    assert "False-positive rate" in md and "manifold-oracle" in md and "suite: realistic" in md


def test_manifold_oracle_is_no_better_than_the_perfect_bulk_model():
    from eelsanom.simulate import simulate

    sim = simulate(**{**TINY, "drift": 0.8, "magnitude": 0.6}, seed=1)
    refs = bench.reference_scores(sim, oracle="drift_eV")
    # the oracle minimises over a grid of the nuisance, so its deviance exceeds the true one by
    # at most the grid's discretisation (measured <= 0.07 nats of ~270), and a shift smaller
    # than the drift hides inside the bulk family pixel by pixel
    d = refs["manifold-oracle"] - refs["perfect-bulk"]
    assert d.max() < 0.5 and np.median(d) < 0
    from eelsanom.scoring import roc_auc

    assert roc_auc(refs["manifold-oracle"], sim.truth) < 0.75 < roc_auc(refs["perfect-bulk"],
                                                                       sim.truth)


def _row(cond, det, ap):
    return {"condition": cond, "detector": det, "average_precision": ap}


def test_verdict_says_plainly_when_the_cvae_does_not_beat_a_simpler_detector():
    rows = [_row("a", "cvae+pool", 0.60), _row("a", "pca+pool", 0.70), _row("a", "pca", 0.1),
            _row("b", "cvae+pool", 0.99), _row("b", "pca+pool", 0.99)]
    text = "\n".join(bench.verdict(rows))
    assert "does not beat the simpler detectors" in text and "pca+pool" in text
    assert "trails the best of them by more than 0.02 in 1" in text
    rows = [_row("a", "cvae+pool", 0.90), _row("a", "pca+pool", 0.70),
            _row("b", "cvae+pool", 0.99), _row("b", "pca+pool", 0.99)]
    text = "\n".join(bench.verdict(rows))
    assert "leads every other eelsanom detector by >= 0.05 AP in 1 of 2" in text
    assert "beats the simpler detectors" in text


def test_cli_refuses_an_unknown_suite():
    p = subprocess.run([sys.executable, "-m", "eelsanom", "bench", "--suite", "toy", "--out",
                        "x"], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_variants_read_the_default_pooling_from_the_parameter_table():
    from eelsanom.detectors.params import defaults

    for method in ("cvae", "context-pca"):  # pooled by default: the default scoring first
        assert bench.variants(method) == ((f"{method}+pool", defaults(method)["pooling"]),
                                          (method, 0.0))
    for method in ("pca", "rx"):  # not pooled by default: the bench's own pooled sigma second
        assert defaults(method)["pooling"] == 0
        assert bench.variants(method) == ((method, 0.0), (f"{method}+pool", bench.POOLED_SIGMA))
    assert bench.variants("cvae-ctx")[0] == ("cvae-ctx+pool", defaults("cvae")["pooling"])
    assert bench._detector_params("rx", "cpu", 3) == {"seed": 3}  # RX has no device
    assert bench._detector_params("context-pca", "cpu", 3) == {"seed": 3, "device": "cpu"}


def test_run_benchmark_measures_the_calibrated_false_positive_rate(tmp_path):
    """Anomaly-free conditions get the calibrated threshold's FPR over seeds (calibration.csv)."""
    conds = [bench.Condition("shift", {**TINY, "shape": (32, 32), "magnitude": 0.9}),
             bench.Condition("anomaly-free", {**TINY, "shape": (32, 32), "drift": 0.8,
                                              "magnitude": 0.9, "concentration": 0.0})]
    assert bench.calibration_conditions(conds) == conds[1:]
    bench.run_benchmark(tmp_path, methods=["pca", "context-pca"], device="cpu", quiet=True,
                        conditions=conds, suite="realistic", calibration_seeds=2)
    import csv

    with open(tmp_path / "calibration.csv") as f:
        cal = list(csv.DictReader(f))
    assert {r["detector"] for r in cal} == {"pca", "pca+pool", "context-pca", "context-pca+pool"}
    assert {r["seed"] for r in cal} == {"0", "1"} and {r["condition"] for r in cal} == {
        "anomaly-free"}
    for r in cal:
        assert int(r["n_pixels"]) == 32 * 32
        assert 0 <= int(r["n_calibrated"]) <= int(r["n_pixels"])
        # the CSV keeps 6 significant digits (0.0117188 for 12/1024)
        assert float(r["fpr_calibrated"]) == pytest.approx(int(r["n_calibrated"]) / 1024,
                                                           rel=1e-5)
    md = (tmp_path / "results.md").read_text()
    assert "## Calibrated false-positive rate (anomaly-free images, 2 seeds)" in md
    assert "| anomaly-free | context-pca+pool |" in md
    with pytest.raises(InputError, match="anomaly-free"):
        bench.calibration_fpr(conds[:1], ["pca"], device="cpu", seeds=1)
