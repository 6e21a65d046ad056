"""The speed benchmark's fit ratios and the benchmark header (issue 15, items 1 and 6)."""

from __future__ import annotations

import math

from eelsanom.bench import Condition, cvae_parameter_count, quick_conditions, speed_ratios
from eelsanom.detectors import get_detector
from eelsanom.simulate import simulate


def test_header_counts_the_network_the_benchmark_trains():
    conds = quick_conditions()
    window = conds[0].sim.get("window", "fe-l")
    sim = simulate(shape=(10, 10), window=window, seed=0)
    det = get_detector("cvae", epochs=1, device="cpu", seed=0).fit(sim.si, sim.bulk_mask)
    assert cvae_parameter_count(conds, device="cpu") == str(det.n_parameters)
    # another window, another network: both named
    two = [Condition("a", {"window": "fe-l"}), Condition("b", {"window": "bfo"})]
    text = cvae_parameter_count(two, device="cpu")
    assert "(fe-l)" in text and "(bfo)" in text


def test_speed_ratios_measure_against_the_dense_reference(capsys):
    from eelsanom.bench.speed import scaling_summary
    from eelsanom.detectors import DEFAULT_METHOD

    rows = speed_ratios(device="cpu", fit_shape=(4, 5, 300), hyperspy_shape=None,
                        scaling_sides=(8, 16), channel_counts=(64, 128), channel_side=8)
    a = [r for r in rows if r["comparison"] == "a"]
    assert {r["what"].split()[0] for r in a} == {"pca", "rx", "cvae"}
    assert all(r["ratio"] > 0 and math.isfinite(r["ratio"]) for r in a)
    c = [r for r in rows if r["comparison"] == "c"]
    assert {r["size"] for r in c} == {"8x8x267", "16x16x267"}
    assert all(r["per_mpixel_s"] > 0 for r in c)
    # every detector a user runs, in pixels (c) and in channels (d)
    whats = {f"default ({DEFAULT_METHOD}) fit", "pca pooled 0.8 score", "pca fit", "rx score"}
    assert whats <= {r["what"] for r in c}
    d = [r for r in rows if r["comparison"] == "d"]
    assert {r["size"] for r in d} == {"8x8x64", "8x8x128"} and whats <= {r["what"] for r in d}
    assert all(r["per_mvalue_s"] > 0 for r in d)
    summary = "\n".join(scaling_summary(rows))
    assert "(d) rx fit: seconds per million pixel-channels" in summary
    assert "(c) pca pooled 0.8 score: seconds per million pixels" in summary
    out = capsys.readouterr().out
    assert "x faster" in out and "(a) 4x5x300" in out
    # the header names what was compared and the host's state
    assert "what each ratio compares" in out and "dense D x D" in out
    assert "load average" in out and "OMP_NUM_THREADS" in out


def test_speed_header_names_the_hyperspy_comparison():
    from eelsanom.bench import speed_header

    text = "\n".join(speed_header(hyperspy_shape=(192, 192)))
    assert "decomposition(algorithm='SVD', output_dimension=8)" in text
    assert "get_decomposition_model(8)" in text and "192x192x1334" in text
    assert "drawn pixels" in text  # says the fit subsamples
    assert "(b)" not in "\n".join(speed_header(hyperspy_shape=None))


def test_speed_ratios_time_every_detector_against_hyperspy(capsys):
    """(b): the default detector, pooled PCA, RX and the 3D-CVAE against HyperSpy's time."""
    import pytest

    pytest.importorskip("hyperspy")
    from eelsanom.detectors import DEFAULT_METHOD

    rows = speed_ratios(device="cpu", fit_shape=(4, 5, 300), hyperspy_shape=(10, 12),
                        scaling_sides=(), channel_counts=(), cvae=True)
    b = {r["what"]: r for r in rows if r["comparison"] == "b"}
    for what in (f"default ({DEFAULT_METHOD}) fit+score", "pca pooled 0.8 fit+score",
                 "rx fit+score", "rx pooled 0.8 fit+score", "cvae fit", "cvae score"):
        assert what in b and math.isfinite(b[what]["ratio"]), what
    assert 0.0 <= b["cvae fit"]["after_best_fraction"] <= 1.0
    assert "% of the training after the best epoch" in capsys.readouterr().out
