"""Issue 16: never lose a user's file, refuse hostile inputs early and clearly.

The CLI is run as a user runs it (a subprocess) wherever the outcome is visible from
outside; the cases that must prove *when* something happens (before the data is read,
before fitting) or simulate a fault of the machine (a full disk, a read-only folder)
run :func:`eelsanom.cli.main` in-process with the loader, the fit or the writer
replaced by one that fails loudly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from eelsanom import cli
from eelsanom.detectors import get_detector
from eelsanom.io import RUN_MARKER, save_signal, to_signal
from eelsanom.simulate import simulate
from eelsanom.spectrum import Axis, SpectrumImage

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "eelsanom", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def digest(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rel")
    c = simulate(shape=(10, 10), seed=1)
    b = simulate(shape=(10, 10), seed=2)
    out = {"dir": d, "c": c.save(d / "c.hspy"), "b": b.save(d / "b.hspy")}
    out["model"] = get_detector("pca").fit(c.si).save(d / "m.h5")
    return out


def _folder_with(files, tmp_path, *names: str) -> Path:
    """A user's folder holding c.hspy and copies of b.hspy under ``names``."""
    f = tmp_path / "user"
    f.mkdir()
    shutil.copy(files["c"], f / "c.hspy")
    for n in names:
        shutil.copy(files["b"], f / n)
    return f


# ----------------------------------------------------------------------------- item 1
def test_no_output_may_be_an_input_however_spelled(files, tmp_path, capsys):
    f = _folder_with(files, tmp_path, "c_nll.hspy")
    before = {p.name: digest(p) for p in f.iterdir()}
    (f / "link.h5").symlink_to(f / "c.hspy")
    cases = [
        ("train", f / "c.hspy", "--method", "pca", "--model-out", f / "c.hspy"),
        ("detect", f / "c.hspy", "--method", "pca", "--out", tmp_path / "o",
         "--model-out", f"{f}/../{f.name}/c.hspy"),
        ("train", f / "c.hspy", "--method", "pca", "--model-out", f / "link.h5"),
        ("apply", files["model"], f / "c.hspy", f / "c_nll.hspy", "--out", f),
    ]
    for i, args in enumerate(cases):
        if i < 2:  # as a user runs it
            r = run_cli(*args, "-q")
            rc, err = r.returncode, r.stderr
        else:  # the same CLI in-process (faster)
            rc = cli.main([*map(str, args), "-q"])
            err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert "input" in err and "internal error" not in err
        assert {p.name: digest(p) for p in f.iterdir() if p.name != "link.h5"} == before
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_user_files_are_replaced_only_with_overwrite_own_outputs_always(files, tmp_path):
    f = _folder_with(files, tmp_path, "c_mask.hspy")
    user = digest(f / "c_mask.hspy")
    r = run_cli("detect", f / "c.hspy", "--method", "pca", "--out", f, "-q")
    assert r.returncode == 2, r.stderr
    assert "c_mask.hspy" in r.stderr and "--overwrite" in r.stderr
    assert digest(f / "c_mask.hspy") == user and not (f / "c_nll.hspy").exists()

    r = run_cli("detect", f / "c.hspy", "--method", "pca", "--out", f, "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    assert digest(f / "c_mask.hspy") != user
    marker = json.loads((f / RUN_MARKER).read_text())["outputs"]
    assert {"c_nll.hspy", "c_mask.hspy", "c_summary.json", "c_nll.png"} <= set(marker)
    assert "c.hspy" not in marker

    r = run_cli("detect", f / "c.hspy", "--method", "pca", "--out", f, "-q")  # its own outputs
    assert r.returncode == 0, r.stderr

    with open(f / "c_nll.png", "ab") as fh:  # the user edits an output: it is theirs now
        fh.write(b"user's annotations")
    r = run_cli("detect", f / "c.hspy", "--method", "pca", "--out", f, "-q")
    assert r.returncode == 2 and "c_nll.png" in r.stderr
    assert (f / "c_nll.png").read_bytes().endswith(b"user's annotations")


# ----------------------------------------------------------------------------- item 3
def _craft(src: Path, dst: Path, *, shape=None, axis_size=None) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        g = f["Experiments"][next(iter(f["Experiments"]))]
        if shape is not None:  # declared, never written: costs no disk
            del g["data"]
            g.create_dataset("data", shape=shape, dtype="float32",
                             chunks=(1, 64, shape[2]))
            for i, n in enumerate(shape):
                g[f"axis-{i}"].attrs["size"] = n
        if axis_size is not None:
            g["axis-2"].attrs["size"] = axis_size
    return dst


def test_declared_sizes_are_checked_before_reading(files, tmp_path):
    bomb = _craft(files["c"], tmp_path / "bomb.hspy", shape=(200000, 200000, 2048))
    axis = _craft(files["c"], tmp_path / "axis.hspy", axis_size=9999)
    r = run_cli("detect", bomb, "--method", "pca", "--out", tmp_path / "o1", "-q", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "200000" in r.stderr and "chunks" in r.stderr
    r = run_cli("detect", axis, "--method", "pca", "--out", tmp_path / "o2", "-q", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "9999" in r.stderr and "267" in r.stderr

    import hyperspy.api as hs

    zbomb = tmp_path / "bomb.zspy"
    hs.load(files["c"]).save(zbomb)
    (zarray,) = [p for p in zbomb.rglob(".zarray") if p.parent.name == "data"]
    meta = json.loads(zarray.read_text())
    meta["shape"] = [200000, 200000, meta["shape"][2]]
    zarray.write_text(json.dumps(meta))
    r = run_cli("detect", zbomb, "--method", "pca", "--out", tmp_path / "o3", "-q", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "200000" in r.stderr and "stores only" in r.stderr


# ----------------------------------------------------------------------------- items 4 and 6
@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the CLI reads any data file."""
    import eelsanom.io as io

    def refuse(*a, **k):
        raise AssertionError("the data was read before the options were checked")

    monkeypatch.setattr(io, "load_spectrum_image", refuse)


def test_options_and_outputs_are_checked_before_the_data_is_read(files, tmp_path, capsys,
                                                                 no_loading):
    c = str(files["c"])
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    cases = [
        (["detect", c, "--formats", "jpeg", "--out", str(tmp_path / "o")], "jpeg"),
        (["detect", c, "--threshold", "value:nan", "--out", str(tmp_path / "o")], "value:nan"),
        (["detect", c, "--threshold", "bogus", "--out", str(tmp_path / "o")], "bogus"),
        (["detect", c, "--energy-range", "720:700", "--out", str(tmp_path / "o")], "720:700"),
        (["detect", c, "--train-roi", "0:x,0:4", "--out", str(tmp_path / "o")], "0:x"),
        (["detect", c, "--train-roi", "5:2,0:4", "--out", str(tmp_path / "o")], "5:2"),
        (["detect", c, "--train-mask", str(tmp_path / "nomask.npy"), "--out",
          str(tmp_path / "o")], "nomask.npy"),
        (["detect", c, "--method", "cvae", "--epochs", "-3", "--out", str(tmp_path / "o")],
         "epochs"),
        (["detect", c, "--out", str(afile)], "afile"),
        (["detect", c, "--out", str(afile / "sub")], "afile"),
        (["train", c, "--model-out", c], "input"),
        (["apply", str(files["model"]), c, "--formats", "jpeg", "--out", str(tmp_path / "o")],
         "jpeg"),
        (["apply", str(files["model"]), c, "--out", str(afile)], "afile"),
    ]
    for argv, needle in cases:
        rc = cli.main([*argv, "-q"])
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert needle in err, (argv, err)


def test_unwritable_output_folder_refused_before_reading(files, tmp_path, capsys, no_loading,
                                                         monkeypatch):
    import eelsanom.io._files as io

    def read_only(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    rc = cli.main(["detect", str(files["c"]), "--method", "pca", "--out", str(tmp_path / "ro"),
                   "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Permission denied" in err and "--out" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_subprocess(files, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_cli("detect", files["c"], "--method", "pca", "--out", ro, "-q")
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and str(ro) in r.stderr


def test_out_that_is_a_file_subprocess(files, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    r = run_cli("detect", files["c"], "--method", "pca", "--out", f, "-q")
    assert r.returncode == 2 and str(f) in r.stderr and "folder" in r.stderr
    assert f.read_text() == "keep me"


def test_full_disk_leaves_nothing_partial_under_a_final_name(files, tmp_path, capsys,
                                                             monkeypatch):
    from hyperspy.signal import BaseSignal

    def full_disk(self, filename=None, *a, **k):
        Path(filename).write_bytes(b"\x89HDF half")  # a half-written file under the temp name
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(BaseSignal, "save", full_disk)
    out = tmp_path / "out"
    rc = cli.main(["detect", str(files["c"]), "--method", "pca", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "c_nll.hspy" in err and "disk space" in err
    assert not (out / "c_nll.hspy").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".c_")]


def test_ranges_needing_the_axes_are_checked_before_reading_and_fitting(files, tmp_path, capsys,
                                                            monkeypatch):
    from hyperspy._signals.lazy import LazySignal

    from eelsanom.detectors.pca import PCADetector

    def no_fit(*a, **k):
        raise AssertionError("fitted (or read) before the ranges were checked")

    monkeypatch.setattr(PCADetector, "fit", no_fit)
    monkeypatch.setattr(LazySignal, "compute", no_fit)  # checked once the axes are known
    np.save(tmp_path / "mask.npy", np.ones((3, 3), bool))
    for extra, needle in ((["--train-roi", "0:50,0:4"], "0:50"),
                          (["--energy-range", "100:200"], "energy"),
                          (["--train-mask", str(tmp_path / "mask.npy")], "shape")):
        rc = cli.main(["detect", str(files["c"]), "--method", "pca", *extra, "--out",
                       str(tmp_path / "o"), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, (extra, err)


# ----------------------------------------------------------------------------- item 7
def _write_si(path: Path, data: np.ndarray) -> Path:
    si = SpectrumImage(data.astype(np.float32), Axis(data.shape[2], 0.5, 500.0, "eV"))
    return save_signal(to_signal(si), path)


def test_degenerate_data_is_refused_or_warned(tmp_path, capsys):
    shape = (6, 6, 40)
    zero = _write_si(tmp_path / "zero.hspy", np.zeros(shape))
    const = _write_si(tmp_path / "const.hspy", np.full(shape, 7.0))
    neg = _write_si(tmp_path / "neg.hspy", -np.random.default_rng(0).uniform(1, 5, shape))
    same = _write_si(tmp_path / "same.hspy",
                     np.broadcast_to(np.linspace(1, 50, 40), shape).copy())
    r = run_cli("detect", zero, "--method", "pca", "--out", tmp_path / "o", "-q")
    assert r.returncode == 2 and "every value" in r.stderr, r.stderr
    for p, needle in ((const, "every value"), (neg, "no positive")):
        rc = cli.main(["detect", str(p), "--method", "pca", "--out", str(tmp_path / "o"), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, (p, err)
    rc = cli.main(["detect", str(same), "--method", "rx", "--out", str(tmp_path / "o"), "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "same_summary.json").read_text())
    assert any("same spectrum" in w for w in summary["warnings"])
    assert any("NLL map is constant" in w for w in summary["warnings"])


# ----------------------------------------------------------------------------- item 8
def test_batch_refuses_to_replace_a_users_summary(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("my own table")
    r = run_cli("batch", files["c"], "--model", files["model"], "--out", out, "-q")
    assert r.returncode == 2 and "summary.csv" in r.stderr and "--overwrite" in r.stderr
    assert (out / "summary.csv").read_text() == "my own table"


def test_batch_under_sigterm_writes_the_summary_and_exits_130(files, tmp_path):
    inputs = []
    for i in range(4):
        p = tmp_path / f"in{i}.hspy"
        shutil.copy(files["c"] if i % 2 else files["b"], p)
        inputs.append(p)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "eelsanom", "batch", *map(str, inputs),
                             "--model", str(files["model"]), "--out", str(out), "--workers", "1",
                             "-q"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (out / "summary.json").exists() and proc.poll() is None:
            assert time.monotonic() - t0 < 120, "batch never wrote its first summary"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    status = [f["status"] for f in summary["files"]]
    assert len(status) == 4 and "pending" not in status, status
    assert "cancelled" in status
    assert "cancelled" in (out / "summary.csv").read_text()
