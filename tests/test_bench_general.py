"""The general suite of the benchmark: its conditions, columns, report and a tiny run."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from eelsanom import bench
from eelsanom.errors import InputError

TINY = dict(shape=(20, 20), dose=600.0, correlation_px=2.5, thickness_amplitude=0.3)


def test_general_suite_is_registered_and_its_quick_list_is_the_generators():
    from eelsanom.simulate import quick_general_conditions

    conds = bench.suite_conditions("general", quick=True)
    assert "general" in bench.SUITES
    assert [c.name for c in conds] == [c.name for c in quick_general_conditions()]
    assert all(c.family == "general" and c.oracle is None for c in conds)
    assert sum(c.supervised for c in conds) == sum(not c.supervised for c in conds) == 10
    # the must-not-flag and anomaly-free conditions have an empty truth
    free = [c for c in conds if c.anomaly_free]
    assert {c.sim["kind"] for c in free} == {"thickness", "intensity", "none"}
    assert bench.calibration_conditions(conds) == [c for c in free if c.supervised]
    assert {c.energy_channels() for c in conds} == {("general", 281)}
    full = bench.suite_conditions("general", quick=False)
    assert len(full) > len(conds)


def test_condition_simulates_its_family():
    c = bench.Condition("g", {**TINY, "kind": "ratio", "geometry": "line"}, family="general")
    sim = c.simulate(3)
    assert sim.params["generator"].endswith("general_image") and sim.params["seed"] == 3
    p = bench.Condition("p", {"shape": (8, 8), "concentration": 0.05}).simulate(1)
    assert p.params["generator"] == "eelsanom.simulate.simulate"
    with pytest.raises(InputError, match="family expected"):
        bench.Condition("x", {}, family="nope").simulate(0)


def test_metrics_carry_flagged_and_true_fraction():
    nll = np.random.default_rng(0).normal(0.0, 1.0, (10, 10))
    nll[:2, :5] = 50.0  # 10 pixels stand out
    truth = np.zeros((10, 10), bool)
    truth[0, :5] = True
    m = bench._metrics(nll, truth)
    assert m["flagged_fraction"] == pytest.approx(0.10) and m["true_fraction"] == pytest.approx(0.05)
    m0 = bench._metrics(nll, np.zeros((10, 10), bool))
    assert m0["true_fraction"] == 0.0 and m0["flagged_fraction"] == pytest.approx(0.10)


def _row(cond, det, ap, auc, ff, tf):
    return {"condition": cond, "detector": det, "average_precision": ap, "roc_auc": auc,
            "flagged_fraction": ff, "true_fraction": tf}


def test_worst_case_and_flagged_tables():
    nan = float("nan")
    rows = [_row("a", "pca", 0.9, 0.99, 0.03, 0.02), _row("a", "rx", 0.5, 0.9, 0.20, 0.02),
            _row("b", "pca", 0.7, 0.95, 0.02, 0.02), _row("b", "rx", 0.8, 0.97, 0.02, 0.02),
            _row("free", "pca", nan, nan, 0.004, 0.0), _row("free", "rx", nan, nan, 0.05, 0.0),
            _row("a", "supervised-limit", 1.0, 1.0, 0.02, 0.02)]
    lines = bench.worst_case_table(rows)
    text = "\n".join(lines)
    assert "supervised-limit" not in text  # references are not detectors
    pca = next(x for x in lines if x.startswith("| pca |"))
    rx = next(x for x in lines if x.startswith("| rx |"))
    assert "0.700 (b)" in pca and "0.950 (b)" in pca and "0.004 (free)" in pca
    assert pca.endswith("| 0 of 3 |")
    assert "0.500 (a)" in rx and "0.050 (free)" in rx and "2 of 3" in rx
    assert bench.fp_bound(0.0) == 0.01 and bench.fp_bound(0.2) == pytest.approx(0.41)
    table = bench.flagged_table(rows)
    assert "| condition | true | pca | rx | supervised-limit |" in table
    assert "| free | 0.000 | 0.004 | 0.050 |" in table


@pytest.mark.slow
def test_tiny_general_suite_run_writes_flagged_and_true_fraction(tmp_path):
    conds = [bench.Condition("particles / shift 1 eV; bulk region",
                             {**TINY, "kind": "shift", "geometry": "region", "fraction": 0.2,
                              "bulk": True}, family="general"),
             bench.Condition("must not flag: intensity; no bulk region",
                             {**TINY, "kind": "intensity", "geometry": "region",
                              "fraction": 0.25, "bulk": False, "detector": "ccd"},
                             supervised=False, family="general")]
    rows = bench.run_benchmark(tmp_path, methods=["pca", "rx"], device="cpu", quiet=True,
                               conditions=conds, suite="general", calibration_seeds=0)
    with open(tmp_path / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and {"flagged_fraction", "true_fraction", "roc_auc",
                                      "average_precision", "fpr"} <= set(got[0])
    by = {(r["condition"], r["detector"]): r for r in rows}
    c0, c1 = (c.name for c in conds)
    assert by[c0, "pca"]["true_fraction"] == pytest.approx(0.2)
    assert by[c1, "pca"]["true_fraction"] == 0.0 and np.isnan(by[c1, "pca"]["roc_auc"])
    assert by[c0, "supervised-limit"]["roc_auc"] > 0.95
    for d in ("pca", "pca+pool", "rx", "rx+pool", "perfect-bulk+pool"):
        assert 0.0 <= by[c1, d]["flagged_fraction"] <= 1.0
    md = (tmp_path / "results.md").read_text()
    assert "suite: general" in md and "## Worst case per detector" in md
    assert "## Flagged fraction (automatic threshold) vs true fraction" in md


def test_cli_accepts_the_general_suite():
    p = subprocess.run([sys.executable, "-m", "eelsanom", "bench", "--help"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "general" in p.stdout


def test_calibrated_fpr_runs_on_a_must_not_flag_image():
    c = bench.Condition("intensity x1.4", {**TINY, "shape": (32, 32), "kind": "intensity",
                                           "geometry": "region", "fraction": 0.25},
                        family="general")
    rows = bench.calibration_fpr([c], ["pca"], device="cpu", seeds=1)
    assert {r["detector"] for r in rows} == {"pca", "pca+pool"}
    assert all(r["n_pixels"] == 32 * 32 and 0 <= r["n_calibrated"] <= 1024 for r in rows)
