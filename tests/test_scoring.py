"""Thresholds and metrics of eelsanom.scoring."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eelsanom import scoring
from eelsanom.errors import InputError


def bimodal(seed=0, n_normal=3800, n_anom=200, offset=0.0):
    """NLL-like map: 0.5 * chi-square(120) bulk, anomalies far above (5 %)."""
    rng = np.random.default_rng(seed)
    normal = 0.5 * rng.chisquare(120, n_normal) + offset
    anom = rng.normal(150.0, 8.0, n_anom) + offset
    nll = np.concatenate([normal, anom])
    truth = np.r_[np.zeros(n_normal, bool), np.ones(n_anom, bool)]
    perm = rng.permutation(nll.size)
    return nll[perm].reshape(80, 50), truth[perm].reshape(80, 50)


# ----------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("offset", [0.0, -500.0, 1e4])  # NLLs carry arbitrary constants
@pytest.mark.parametrize("spec", ["otsu", "gmm"])
def test_threshold_between_the_modes(spec, offset):
    nll, truth = bimodal(offset=offset)
    t, label = scoring.compute_threshold(nll, spec)
    assert label == spec
    assert nll[~truth].max() - 5 < t < nll[truth].min() + 5
    f1 = scoring.precision_recall_f1(nll > t, truth)["f1"]
    assert f1 >= 0.97


@pytest.mark.parametrize("fn", [scoring.threshold_otsu, scoring.threshold_gmm])
def test_threshold_does_not_split_off_the_minimum(fn):
    # regression: with a vanishing epsilon in log(nll - min + eps), the minimum pixel
    # landed far below all others on the log scale and Otsu flagged every other pixel
    nll, truth = bimodal(seed=0)
    t = fn(nll)
    assert np.sum(nll > t) < 0.1 * nll.size


def test_threshold_unimodal_and_degenerate():
    assert scoring.threshold_otsu(np.full(50, 3.0)) == 3.0  # nothing flagged
    assert scoring.threshold_gmm(np.full(50, 3.0)) == 3.0
    assert scoring.threshold_otsu(np.array([1.0])) == 1.0


@pytest.mark.parametrize("spec,label", [(2, "2%"), (2.0, "2%"), ("2", "2%"), ("2%", "2%"),
                                        (" 0.5 % ", "0.5%"), (np.float64(10), "10%")])
def test_percent_flags_the_right_count(spec, label):
    nll = np.random.default_rng(1).normal(size=(40, 50))  # 2000 distinct values
    t, lab = scoring.compute_threshold(nll, spec)
    assert lab == label
    p = float(label.rstrip("%"))
    assert np.sum(nll > t) == round(p / 100 * nll.size)


def test_value_threshold():
    nll = np.arange(10.0)
    assert scoring.compute_threshold(nll, "value:3.5") == (3.5, "value")
    assert scoring.compute_threshold(nll, "VALUE:-2") == (-2.0, "value")


def test_non_finite_values_are_ignored():
    nll, truth = bimodal()
    t_ref, _ = scoring.compute_threshold(nll, "otsu")
    bad = nll.copy()
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    t, _ = scoring.compute_threshold(bad, "otsu")
    assert nll[~truth].max() - 5 < t < nll[truth].min() + 5
    assert t == pytest.approx(t_ref, rel=0.02)
    with pytest.raises(InputError, match="no finite"):
        scoring.compute_threshold(np.full(5, np.nan), "otsu")


@pytest.mark.parametrize("spec", [
    "bogus",        # unknown name
    0, 100, -1,     # percent outside (0, 100)
    "150%",
    "value:abc",    # value without a number
    "value:",
    True,           # a bool is not a percentage
    None,
])
def test_parse_threshold_errors(spec):
    with pytest.raises(InputError, match="threshold"):
        scoring.parse_threshold(spec)


def test_parse_threshold_kinds():
    assert scoring.parse_threshold("OTSU") == ("otsu", None)
    assert scoring.parse_threshold("gmm") == ("gmm", None)
    assert scoring.parse_threshold(5) == ("percent", 5.0)
    assert scoring.parse_threshold("value:1e3") == ("value", 1000.0)


def test_contamination_range():
    with pytest.raises(InputError, match="percentage"):
        scoring.threshold_contamination(np.arange(5.0), 0)


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_and_ap_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((30, 30)) < 0.1
    scores = rng.normal(size=(30, 30)) + 1.5 * truth
    scores[:2] = np.round(scores[:2])  # some ties
    assert scoring.roc_auc(scores, truth) == pytest.approx(
        roc_auc_score(truth.ravel(), scores.ravel()), abs=1e-12)
    assert scoring.average_precision(scores, truth) == pytest.approx(
        average_precision_score(truth.ravel(), scores.ravel()), abs=1e-12)


def test_metrics_single_class_and_shape_errors():
    s = np.arange(6.0)
    assert np.isnan(scoring.roc_auc(s, np.zeros(6, bool)))
    assert np.isnan(scoring.roc_auc(s, np.ones(6, bool)))
    assert np.isnan(scoring.average_precision(s, np.zeros(6, bool)))
    assert all(np.isnan(v) for v in scoring.best_f1(s, np.zeros(6, bool)))
    with pytest.raises(InputError, match="shape"):
        scoring.roc_auc(s, np.zeros(5, bool))


def test_precision_recall_f1_hand_case():
    mask = np.array([1, 1, 0, 0, 1, 0], bool)
    truth = np.array([1, 0, 1, 0, 1, 0], bool)
    out = scoring.precision_recall_f1(mask, truth)  # tp 2, fp 1, fn 1
    assert out == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    none = scoring.precision_recall_f1(np.zeros(6, bool), truth)
    assert none == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    perfect = scoring.precision_recall_f1(truth, truth)
    assert perfect == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_best_f1_beats_every_fixed_mask(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(500) < 0.08
    scores = rng.normal(size=500) + 2.0 * truth
    best, thr = scoring.best_f1(scores, truth)
    f1s = [scoring.precision_recall_f1(scores > t, truth)["f1"]
           for t in np.quantile(scores, np.linspace(0, 1, 201))]
    assert best >= max(f1s) - 1e-12
    # the reported threshold reaches it (flag scores >= threshold)
    assert scoring.precision_recall_f1(scores >= thr, truth)["f1"] == pytest.approx(best)
    assert 0 < best <= 1


def test_bimodality():
    nll, _ = bimodal()
    bi = scoring.bimodality(nll)
    assert bi["ashman_d"] > 3
    assert bi["upper_weight"] == pytest.approx(0.05, abs=0.01)
    uni = scoring.bimodality(0.5 * np.random.default_rng(0).chisquare(120, 4000))
    assert uni["ashman_d"] < 2
    assert scoring.bimodality(np.ones(10)) == {"ashman_d": 0.0, "upper_weight": 0.0}


def test_evaluate_keys():
    nll, truth = bimodal()
    out = scoring.evaluate(nll, nll > 100, truth)
    assert set(out) == {"roc_auc", "average_precision", "best_f1", "best_f1_threshold",
                        "precision", "recall", "f1"}
    assert out["roc_auc"] > 0.99 and out["f1"] > 0.97
    assert "f1" not in scoring.evaluate(nll, None, truth)


def test_robust_threshold_flags_rare_outliers_where_otsu_splits_the_bulk():
    # 98 % chi-square-like normal scores, 2 % well-separated anomalies: the k-sigma MAD rule
    # isolates the anomalies (the case the benchmark showed Otsu failing on).
    rng = np.random.default_rng(1)
    normal = rng.chisquare(267, size=4014)
    anomalous = rng.chisquare(267, size=82) + 160.0
    nll = np.concatenate([normal, anomalous])
    truth = np.r_[np.zeros(4014, bool), np.ones(82, bool)]
    t, label = scoring.compute_threshold(nll, "robust")
    assert label == "robust"
    f1 = scoring.precision_recall_f1(nll > t, truth)["f1"]
    assert f1 > 0.95
    med = np.median(nll)
    mad = 1.4826 * np.median(np.abs(nll - med))
    assert t == pytest.approx(med + 4 * mad)
    t6, label6 = scoring.compute_threshold(nll, "robust:6")
    assert label6 == "robust:6" and t6 > t


@pytest.mark.parametrize("spec", ["robust:0", "robust:-1", "robust:x"])
def test_robust_threshold_rejects_bad_k(spec):
    with pytest.raises(InputError, match="threshold"):
        scoring.parse_threshold(spec)
