"""Issue 20: the reliability second pass, one regression test per item.

Each item's reproduction is run as the issue gives it: the CLI as a subprocess where the
issue's reproduction is a CLI command, the library in-process where it proves *when*
something is refused (before the data is read, before the fit).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eelsanom.detectors import get_detector
from eelsanom.errors import InputError
from eelsanom.io import RUN_MARKER, check_run_outputs, is_own_output
from eelsanom.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "eelsanom", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
                          **kw)


def digest(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def one_line_refusal(r: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, one line on stderr naming every one of ``names``, no traceback."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, err
    for n in names:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rel2")
    sim = simulate(shape=(16, 16), seed=1)
    out = {"dir": d, "sim": sim.save(d / "in" / "sim.hspy")}
    det = get_detector("pca").fit(sim.si, sim.bulk_mask)
    out["pca"] = det.save(d / "models" / "pca.h5")
    return out


# ----------------------------------------------------------------------------- item 2
def test_a_changed_zspy_output_folder_is_not_replaced(files, tmp_path):
    args = ("detect", files["sim"], "--method", "pca", "--train-mask", "file",
            "--formats", "zspy", "--out", tmp_path / "o", "-q")
    assert run_cli(*args).returncode == 0
    z = tmp_path / "o" / "sim_nll.zspy"
    assert is_own_output(z)
    assert run_cli(*args).returncode == 0  # its own, unchanged: replaced without --overwrite
    (z / "NOTES.txt").write_text("notes")
    assert not is_own_output(z)
    one_line_refusal(run_cli(*args), "sim_nll.zspy", "--overwrite")
    assert (z / "NOTES.txt").read_text() == "notes"
    rec = json.loads((tmp_path / "o" / RUN_MARKER).read_text())["outputs"]["sim_nll.zspy"]
    assert rec["entries"] > 0 and len(rec["sha256"]) == 64  # the folder's content, not {"dir": 1}


def test_an_old_marker_without_the_folder_content_does_not_vouch_for_it(files, tmp_path):
    z = tmp_path / "sim_nll.zspy"
    z.mkdir()
    (z / "x").write_text("user")
    (tmp_path / RUN_MARKER).write_text(json.dumps({"outputs": {"sim_nll.zspy": {"dir": True}}}))
    assert not is_own_output(z)


# ----------------------------------------------------------------------------- item 3
@pytest.mark.parametrize("where", ["a map", "the out folder"])
def test_model_out_may_not_be_another_output_of_the_run(files, tmp_path, where):
    out = tmp_path / "o"
    model = out / "sim_nll.hspy" if where == "a map" else out
    r = run_cli("detect", files["sim"], "--method", "pca", "--train-mask", "file",
                "--out", out, "--model-out", model, "-q")
    one_line_refusal(r, "--model-out", str(model))
    assert not out.exists()  # refused before any work


def test_outputs_are_compared_with_each_other(tmp_path):
    a = tmp_path / "o" / "x.hspy"
    with pytest.raises(InputError, match="--model-out"):
        check_run_outputs({"--out": [a], "--model-out": [tmp_path / "o" / ".." / "o" / "x.hspy"]})
    with pytest.raises(InputError, match="holds or lies inside"):
        check_run_outputs({"--out": [a], "--model-out": [tmp_path / "o"]})
    assert len(check_run_outputs({"--out": [a], "--model-out": [tmp_path / "m.h5"]})) == 2
