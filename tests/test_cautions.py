"""Cautions on tiny inputs and notes on silent changes (issue 15, items 3 and 4)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from eelsanom import cautions
from eelsanom.detectors import get_detector
from eelsanom.spectrum import Axis, SpectrumImage
from tests.realdata import REAL, need_real
from tests.test_cli import run_cli


def _summary(out, stem):
    return json.loads((out / f"{stem}_summary.json").read_text())


# ----------------------------------------------------------------------------- CLI, real files
@need_real
@pytest.mark.parametrize("method", ["rx", "pca"])
def test_dm4_two_by_two_gets_cautions(tmp_path, method):
    r = run_cli("detect", str(REAL / "EELS_SI.dm4"), "--method", method, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = _summary(tmp_path, "EELS_SI")
    text = " ".join(s["cautions"])
    assert "threshold rests on only 4 pixel scores" in text
    assert f"{method.upper()} was fitted on only 4 pixels" in text
    assert "larger region" in text and "--energy-range" in text  # says what to do
    for c in s["cautions"]:  # each caution also on stderr, once
        assert r.stderr.count(c) == 1, c


@need_real
def test_ten_pixel_line_scan_rx_gets_a_caution(tmp_path):
    r = run_cli("detect", str(REAL / "LSMO_STO_linescan.hspy"), "--method", "rx",
                "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    s = _summary(tmp_path, "LSMO_STO_linescan")
    assert s["counts"]["pixels"] == 10
    assert any(re.search(r"RX was fitted on only \d+ pixels", c) for c in s["cautions"])
    assert re.search(r"caution: RX was fitted on only \d+ pixels", r.stderr)


@need_real
def test_forty_pixel_line_scan_rx_says_covariance_rests_on_few_pixels(tmp_path):
    r = run_cli("detect", str(REAL / "LSMO_linescan.hspy"), "--method", "rx",
                "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    s = _summary(tmp_path, "LSMO_linescan")
    n = s["counts"]["pixels"]
    assert n == 40
    hits = [c for c in s["cautions"] if re.search(r"covariance rests on (\d+) pixels for 586 ", c)]
    assert len(hits) == 1
    assert int(re.search(r"rests on (\d+) pixels", hits[0]).group(1)) <= n  # minus trimmed


@need_real
def test_energy_range_partly_outside_is_clipped_out_loud(tmp_path):
    r = run_cli("detect", str(REAL / "EELS_SI.dm4"), "--method", "pca", "--out", str(tmp_path),
                "--energy-range", "250:400", "--quiet")
    assert r.returncode == 0, r.stderr
    s = _summary(tmp_path, "EELS_SI")
    clip = [c for c in s["cautions"] if "energy range" in c]
    assert len(clip) == 1
    assert "250-400 eV reaches beyond the data (300-2347 eV); used 300-400 eV (101 channels)" \
        in clip[0]
    assert r.stderr.count("energy range 250-400 eV reaches beyond") == 1
    assert s["model_energy_axis"]["size"] == 101


@need_real
def test_cvae_on_dm4_says_no_validation_split_not_nan(tmp_path):
    r = run_cli("detect", str(REAL / "EELS_SI.dm4"), "--method", "cvae", "--epochs", "1",
                "--energy-range", "300:400", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = _summary(tmp_path, "EELS_SI")
    assert "no validation split (4 training pixels)" in " ".join(s["notes"])
    assert "no validation split (4 training pixels)" in r.stderr
    assert "val_nll=nan" not in r.stderr


def test_a_large_enough_fit_gets_no_caution():
    rng = np.random.default_rng(0)
    si = SpectrumImage(rng.poisson(50.0, size=(12, 12, 40)).astype(np.float32),
                       Axis(40, 0.3, 680.0, "eV"))
    for method in ("pca", "rx"):
        kw = {"device": "cpu", "n_components": 2} if method == "pca" else {}
        res = get_detector(method, **kw).fit(si).score(si)
        assert res.info["cautions"] == [] and res.info["notes"] == []


# ----------------------------------------------------------------------------- library rules
def test_threshold_caution_rule():
    assert cautions.threshold_cautions(29, "robust")
    assert not cautions.threshold_cautions(30, "robust")
    assert not cautions.threshold_cautions(4, "value")  # a given threshold needs no sample


def test_fit_caution_rules():
    assert not cautions.fit_cautions("rx", 300, 200)
    assert "covariance rests on 150 pixels for 200" in cautions.fit_cautions("rx", 150, 200)[0]
    assert not cautions.fit_cautions("pca", 150, 2000, n_components=3)  # PPCA is low-rank
    assert "fewer components" in cautions.fit_cautions("pca", 30, 50, n_components=5)[0]
    assert "only 5 pixels" in cautions.fit_cautions("pca", 5, 50, n_components=1)[0]


@pytest.mark.slow
def test_cvae_early_stop_is_said_with_epochs():
    from eelsanom.simulate import simulate

    sim = simulate(shape=(12, 12), window="fe-l", seed=0)
    det = get_detector("cvae", epochs=4, patience=1, lr=1e-12, device="cpu", seed=0)
    det.fit(sim.si, sim.bulk_mask)
    h = det.history_
    assert h["stopped_early"] and h["epochs_run"] < 4
    notes = det.score(sim.si).info["notes"]
    assert f"training stopped early at epoch {h['epochs_run']} (best epoch {h['best_epoch']})" \
        in notes


def test_energy_clip_rule():
    assert not cautions.energy_clip_caution((300.0, 400.0), 300.0, 2347.0, 101)
    assert not cautions.energy_clip_caution((None, 400.0), 300.0, 2347.0, 101)
    (msg,) = cautions.energy_clip_caution((None, 3000.0), 300.0, 2347.0, 2048)
    assert "start-3000 eV reaches beyond the data (300-2347 eV); used 300-2347 eV" in msg


def test_every_option_a_caution_names_exists_in_the_cli():
    """A caution that says what to do names options the user can actually type."""
    import argparse
    import re
    from pathlib import Path

    from eelsanom.cli import build_parser

    options: set[str] = set()

    def collect(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            options.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)

    collect(build_parser())
    source = Path(cautions.__file__).read_text()
    named = set(re.findall(r"(--[a-z][a-z-]*[a-z])", source))
    assert named, "no option found in the cautions: the scan is broken"
    assert named <= options, f"cautions name options the CLI does not have: {named - options}"
