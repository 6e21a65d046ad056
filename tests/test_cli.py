"""The CLI run as a user runs it: a subprocess, on simulated and real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.realdata import REAL, need_real

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "eelsanom", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "sim.hspy"
    r = run_cli("simulate", "--out", str(out), "--shape", "32", "32", "--magnitude", "2.4",
                "--concentration", "0.03", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert out.exists()
    return out


def test_simulate_refuses_to_overwrite(sim_file):
    before = sim_file.stat().st_mtime_ns
    r = run_cli("simulate", "--out", str(sim_file), "--shape", "8", "8")
    assert r.returncode == 2
    assert "exists" in r.stderr.lower()
    assert sim_file.stat().st_mtime_ns == before


@pytest.mark.parametrize("method", ["pca", "rx"])
def test_detect_writes_maps_pictures_and_summary(sim_file, tmp_path, method):
    before = sim_file.stat().st_mtime_ns
    out = tmp_path / "out"
    r = run_cli("detect", str(sim_file), "--method", method, "--train-roi", "0:9,0:32",
                "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "sim_summary.json").read_text())
    assert summary["method"] == method
    assert summary["counts"]["pixels"] == 32 * 32
    assert summary["threshold"]["method"] == "robust"
    assert summary["metrics"]["roc_auc"] > 0.9
    assert summary["eelsanom_version"]
    for key in ("nll_hspy", "mask_hspy"):
        assert Path(summary["outputs"][key]).exists()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "sim_nll.png" in pngs and "sim_mask.png" in pngs
    import hyperspy.api as hs

    nll = hs.load(summary["outputs"]["nll_hspy"])
    assert nll.data.shape == (32, 32)
    assert nll.axes_manager[0].units == "nm"
    assert sim_file.stat().st_mtime_ns == before  # the input is never modified


def test_train_then_apply(sim_file, tmp_path):
    model = tmp_path / "pca.h5"
    r = run_cli("train", str(sim_file), "--method", "pca", "--train-mask", "file",
                "--model-out", str(model), "--quiet")
    assert r.returncode == 0, r.stderr
    assert model.exists()
    r = run_cli("apply", str(model), str(sim_file), "--out", str(tmp_path / "applied"), "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "applied" / "sim_summary.json").read_text())
    assert s["method"] == "pca" and s["metrics"]["roc_auc"] > 0.9


def test_apply_to_another_energy_axis_is_refused(sim_file, tmp_path):
    model = tmp_path / "pca.h5"
    assert run_cli("train", str(sim_file), "--method", "pca", "--model-out", str(model),
                   "--quiet").returncode == 0
    other = tmp_path / "bfo.hspy"
    assert run_cli("simulate", "--out", str(other), "--shape", "8", "8", "--window", "bfo",
                   "--concentration", "0").returncode == 0
    r = run_cli("apply", str(model), str(other), "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "energy axis" in r.stderr and "680" in r.stderr and "420" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["detect", "missing.hspy", "--out", "o"], "not found"),  # missing file
        (["detect", "{sim}", "--method", "pca", "--train-roi", "0:99,0:5", "--out", "o"],
         "outside"),  # ROI out of range
        (["detect", "{sim}", "--method", "pca", "--threshold", "banana", "--out", "o"],
         "threshold"),  # bad threshold
        (["detect", "{sim}", "--method", "pca", "--energy-range", "900:950", "--out", "o"],
         "energy window"),  # window outside the data
    ],
)
def test_refused_inputs_exit_2_with_one_line(sim_file, tmp_path, args, message):
    args = [a.replace("{sim}", str(sim_file)) for a in args]
    args = [str(tmp_path / a) if a in ("o", "missing.hspy") else a for a in args]
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("eelsanom: error")]
    assert len(lines) == 1 and message in lines[0].lower(), r.stderr


@need_real
def test_single_spectrum_is_refused(tmp_path):
    r = run_cli("detect", str(REAL / "test-EELS_spectrum.dm3"), "--method", "pca",
                "--out", str(tmp_path))
    assert r.returncode == 2
    assert "spectrum image" in r.stderr and "single spectrum" in r.stderr


@need_real
@pytest.mark.parametrize("name", ["LSMO_STO_linescan.hspy", "LSMO_linescan.hspy"])
def test_real_line_scans_run_end_to_end(tmp_path, name):
    r = run_cli("detect", str(REAL / name), "--method", "pca", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    stem = name.rsplit(".", 1)[0]
    s = json.loads((tmp_path / f"{stem}_summary.json").read_text())
    n = s["shape"][1]
    assert s["shape"][0] == 1 and s["counts"]["pixels"] == n
    assert np.isfinite(s["nll_stats"]["max"])


@need_real
def test_real_dm4_spectrum_image_runs_end_to_end(tmp_path):
    r = run_cli("detect", str(REAL / "EELS_SI.dm4"), "--method", "rx", "--out", str(tmp_path),
                "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "EELS_SI_summary.json").read_text())
    assert s["shape"] == [2, 2, 2048]
    assert s["energy_axis"]["offset"] == pytest.approx(300.0)
    assert s["navigation"]["x"]["units"] in ("µm", "um")
