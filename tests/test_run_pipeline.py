"""The pipeline layer: one owner of loading, fitting, scoring and the run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eelsanom import pipeline
from eelsanom.detectors import get_detector
from eelsanom.errors import InputError
from eelsanom.io import RUN_MARKER
from eelsanom.simulate import simulate
from eelsanom.spectrum import Axis, SpectrumImage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    sim = simulate(shape=(12, 14), seed=3, concentration=0.05)
    path = sim.save(tmp / "sim.hspy")
    si = pipeline.load_input(path)
    det = pipeline.fit_input(get_detector("pca", n_components=3, pooling=0.0), si,
                             np.asarray(sim.bulk_mask))
    res = pipeline.score_input(det, si)
    return tmp, path, si, res


def test_write_run_then_load_run_round_trip(scored):
    tmp, path, si, res = scored
    res.maps["seed_disagreement"] = np.linspace(0, 1, res.nll.size).reshape(res.nll.shape)
    out = tmp / "run"
    summary = pipeline.write_run(res, si, out, "sim", formats=("hspy",), protect=[path])
    assert summary["method"] == "pca" and summary["input"] == str(path)
    assert Path(summary["outputs"]["summary"]).name == "sim_summary.json"
    # the naming rule that checks a run's paths first is the one that wrote them
    planned = set(pipeline.planned_outputs(out, "sim", "pca", formats="hspy"))
    written = {Path(v) for k, v in summary["outputs"].items() if not k.startswith("seed_")}
    assert planned == written
    for ref in (out, out / "sim_summary.json"):  # the folder, or its summary
        run = pipeline.load_run(ref)
        assert run.stem == "sim" and run.summary["counts"] == summary["counts"]
        np.testing.assert_allclose(run.maps["nll"], res.nll, rtol=1e-6)
        np.testing.assert_array_equal(run.maps["mask"], res.mask)
        np.testing.assert_allclose(run.maps["seed_disagreement"],
                                   res.maps["seed_disagreement"], rtol=1e-6)
    marker = json.loads((out / RUN_MARKER).read_text())["outputs"]
    assert {"sim_summary.json", "sim_nll.hspy", "sim_seed_disagreement.npy"} <= set(marker)


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        pipeline.load_run(tmp_path / "nope")
    with pytest.raises(InputError, match="found none"):
        pipeline.load_run(tmp_path)


def test_load_input_refuses_blank_data_and_checks_the_energy_window(tmp_path, scored):
    _, path, _, _ = scored
    with pytest.raises(InputError, match="energy window 1.0-2.0 eV keeps 0 channels"):
        pipeline.load_input(path, energy_range=(1.0, 2.0))
    blank = SpectrumImage(np.ones((4, 5, 16), np.float32), Axis(16, 1.0, 700.0, "eV"))
    with pytest.raises(InputError, match="every value"):
        pipeline.check_content(blank, "blank")


def test_run_formats_and_stems():
    assert pipeline.run_formats(None) == ("hspy", "png")
    assert pipeline.run_formats(None, streamed=True) == ("zspy", "hspy", "png")
    assert pipeline.run_formats(" png, tiff ") == ("png", "tiff")
    assert pipeline.input_stem("/data/scan.v2.dm4") == "scan.v2"
    assert pipeline.input_stem("x/scan.zspy/") == "scan"


def test_batch_and_pipeline_do_not_import_the_cli():
    code = ("import sys, eelsanom.batch, eelsanom.pipeline, eelsanom.io; "
            "assert 'eelsanom.cli' not in sys.modules, 'the core imports the CLI'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
