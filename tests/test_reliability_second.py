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

import h5py
import numpy as np
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


# ----------------------------------------------------------------------------- item 4
def flip_chunk(src: Path, dst: Path, *, min_size: int = 100) -> None:
    """Copy ``src`` to ``dst`` with bytes flipped inside one compressed chunk of its largest
    chunked dataset (a damaged copy: the header is intact, the chunk does not decompress)."""
    dst.write_bytes(Path(src).read_bytes())
    found = []
    with h5py.File(dst, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks and obj.compression \
                    and obj.size >= min_size:
                found.append((obj.size, obj.id.get_chunk_info(obj.id.get_num_chunks() // 2)))
        f.visititems(visit)
    _, info = max(found, key=lambda t: t[0])
    with open(dst, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 4)
        fh.write(b"\xff" * 16)


def test_a_damaged_chunk_of_a_streamed_file_is_refused_naming_it(files, tmp_path):
    bad = tmp_path / "damaged.hspy"
    flip_chunk(files["sim"], bad)
    before = digest(bad)
    for lazy in ("--lazy", "--no-lazy"):
        r = run_cli("detect", bad, "--method", "pca", "--train-mask", "file", "--out",
                    tmp_path / f"o{lazy}", lazy, "-q")
        one_line_refusal(r, "damaged.hspy")
    assert digest(bad) == before


def test_a_model_with_a_damaged_chunk_is_refused_naming_it(files, tmp_path):
    bad = tmp_path / "damaged.h5"
    flip_chunk(files["pca"], bad)
    r = run_cli("apply", bad, files["sim"], "--out", tmp_path / "o", "-q")
    one_line_refusal(r, "damaged.h5")
    assert not (tmp_path / "o").exists()


def test_main_never_lets_an_oserror_through_as_a_traceback(monkeypatch, capsys):
    from eelsanom import cli

    def boom(args):
        raise OSError(5, "Input/output error", "/some/file.hspy")

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert cli.main(["info", "x.hspy"]) == 2
    err = capsys.readouterr().err
    assert "/some/file.hspy" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- item 7
def _fsize_limit(n: int):
    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return limit


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file-size limit")
@pytest.mark.parametrize("what", ["maps", "model"])
def test_a_disk_that_fills_inside_an_hdf5_write_exits_2_naming_the_path(files, tmp_path, what):
    if what == "maps":
        args = ("detect", files["sim"], "--method", "pca", "--train-mask", "file",
                "--out", tmp_path / "o", "--formats", "hspy")
        name = "sim_nll.hspy"
    else:
        args = ("train", files["sim"], "--method", "pca", "--train-mask", "file",
                "--model-out", tmp_path / "o" / "m.h5")
        name = "m.h5"
    r = run_cli(*args, "-q", preexec_fn=_fsize_limit(6000))
    one_line_refusal(r, name, "File too large")
    left = [p.name for p in (tmp_path / "o").iterdir()] if (tmp_path / "o").exists() else []
    assert name not in left and not [n for n in left if ".tmp-" in n], left


def test_an_hdf5_runtime_error_with_an_errno_is_a_write_failure(tmp_path):
    from eelsanom.io import WriteFailed
    from eelsanom.io._files import _writing

    with pytest.raises(WriteFailed, match="No space left on device"):
        with _writing(tmp_path / "x.h5"):
            raise RuntimeError("Can't decrement id ref count (file write failed: time = now\n, "
                               "filename = 'x', errno = 28, error message = 'No space')")
    with pytest.raises(RuntimeError, match="not a write"):  # not the machine's: left alone
        with _writing(tmp_path / "x.h5"):
            raise RuntimeError("not a write")


# ----------------------------------------------------------------------------- item 5
def _edit_model(src: Path, dst: Path, edit) -> Path:
    dst.write_bytes(Path(src).read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


@pytest.fixture(scope="module")
def ctx_model(files) -> Path:
    sim = simulate(shape=(16, 16), seed=1)
    det = get_detector("context-pca", neighbourhood=3).fit(sim.si, sim.bulk_mask)
    return det.save(files["dir"] / "models" / "ctx.h5")


def _replace(f, name, value):
    del f["arrays"][name]
    f["arrays"].create_dataset(name, data=value)


@pytest.mark.parametrize("case", ["mean length", "noise variance", "explained variance"])
def test_context_pca_model_files_are_validated(ctx_model, tmp_path, case):
    from eelsanom.detectors import load_detector

    def edit(f):
        if case == "mean length":
            _replace(f, "mean", np.zeros(f["arrays/mean"].shape[0] - 1))
        elif case == "noise variance":
            st = json.loads(f.attrs["state"])
            st["noise_variance"] = -1.0
            f.attrs["state"] = json.dumps(st)
        else:
            _replace(f, "explained_variance", -np.ones(f["arrays/explained_variance"].shape))

    bad = _edit_model(ctx_model, tmp_path / "bad.h5", edit)
    with pytest.raises(InputError, match="bad.h5"):
        load_detector(bad)
    r = run_cli("apply", bad, files_sim(ctx_model), "--out", tmp_path / "o", "-q")
    one_line_refusal(r, "bad.h5")


def files_sim(model: Path) -> Path:
    return model.parent.parent / "in" / "sim.hspy"


def test_a_detector_without_its_own_validator_does_not_load(ctx_model, tmp_path):
    from eelsanom import _registry
    from eelsanom.detectors import load_detector
    from eelsanom.detectors.context_pca import ContextPCADetector

    class Unchecked(ContextPCADetector):  # inherits its parent's validator, has none of its own
        method = "unchecked"

    def edit(f):
        f.attrs["detector"] = "unchecked"

    bad = _edit_model(ctx_model, tmp_path / "unchecked.h5", edit)
    _registry.register("unchecked", lambda: Unchecked)
    try:
        with pytest.raises(InputError, match="unchecked.h5.*no model-file validator"):
            load_detector(bad)
    finally:
        _registry._LOADERS.pop("unchecked")
    for cls in ("pca", "rx", "cvae", "context-pca"):  # every built-in one has its own
        assert "validate_model_file" in vars(_registry.detector_class(cls))


# ----------------------------------------------------------------------------- item 6 (models)
def test_an_unknown_array_in_a_model_file_is_refused_before_it_is_read(files, tmp_path,
                                                                        monkeypatch):
    def edit(f):
        f["arrays"].create_dataset("junk", shape=(20000, 20000), dtype="f8",
                                   chunks=(100, 100), compression="gzip")

    bad = _edit_model(files["pca"], tmp_path / "junk.h5", edit)
    assert bad.stat().st_size < 1 << 20
    import h5py as h5

    reads = []
    orig = h5.Dataset.__getitem__
    monkeypatch.setattr(h5.Dataset, "__getitem__",
                        lambda self, k: reads.append(self.name) or orig(self, k))
    from eelsanom.detectors import load_detector

    with pytest.raises(InputError, match="junk.h5.*unknown.*junk"):
        load_detector(bad)
    assert reads == []  # refused from the header: nothing read


def test_absurd_finite_weights_are_refused_as_the_model_s_fault(files, tmp_path):
    def edit(f):
        _replace(f, "mean", np.full(f["arrays/mean"].shape, 1e30))

    bad = _edit_model(files["pca"], tmp_path / "absurd.h5", edit)
    r = run_cli("apply", bad, files["sim"], "--out", tmp_path / "o", "-q")
    one_line_refusal(r, "absurd.h5")


# ----------------------------------------------------------------------------- item 6 (data)
def _zspy_bomb(src: Path, dst: Path, chunks: list[int]) -> Path:
    """A copy of ``src`` (.zspy) whose data declares 4000 x 4000 pixels (16 GB) in ``chunks``,
    none written, padded with a 17 MB junk file."""
    import shutil

    shutil.copytree(src, dst)
    za = next(p for p in dst.rglob(".zarray") if p.parent.name == "data")
    meta = json.loads(za.read_text())
    meta["shape"] = [4000, 4000, meta["shape"][2]]
    meta["chunks"] = chunks[:2] + [meta["shape"][2]]
    za.write_text(json.dumps(meta))
    for f in za.parent.iterdir():
        if f.name[0].isdigit():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    (za.parent / "junk.bin").write_bytes(np.random.default_rng(0).bytes(17 << 20))
    return dst


@pytest.mark.parametrize("chunks", [[4000, 4000], [100, 100]], ids=["one 16 GB chunk",
                                                                    "chunks never written"])
def test_a_zspy_memory_bomb_is_refused_before_it_is_read(tmp_path, chunks):
    src = simulate(shape=(8, 8), seed=1).save(tmp_path / "z.zspy")
    bomb = _zspy_bomb(src, tmp_path / "bomb.zspy", chunks)
    r = run_cli("detect", bomb, "--method", "pca", "--out", tmp_path / "o", "-q", timeout=120)
    err = one_line_refusal(r, "bomb.zspy")
    assert ("chunks of" in err) if chunks[0] == 4000 else ("stores only" in err)


def test_an_hdf5_dataset_with_huge_chunks_is_refused(tmp_path):
    from eelsanom.io import load_spectrum_image

    p = tmp_path / "huge.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data", shape=(4000, 4000, 300), dtype="f4", chunks=(4000, 4000, 30))
    with pytest.raises(InputError, match="huge.h5.*chunks of"):
        load_spectrum_image(p)


# ----------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("region", [(), ("--train-roi", "0:4,0:4")], ids=["none", "too small"])
def test_calibrated_without_a_usable_bulk_region_is_refused_before_any_work(files, tmp_path,
                                                                            region):
    out = tmp_path / "o"
    r = run_cli("detect", files["sim"], "--method", "pca", "--threshold", "calibrated",
                *region, "--out", out, "-q")
    one_line_refusal(r, "--threshold calibrated")
    assert not out.exists()


def test_calibrated_is_fine_with_a_large_enough_region(files, tmp_path):
    r = run_cli("detect", files["sim"], "--method", "pca", "--threshold", "calibrated",
                "--train-roi", "0:16,0:16", "--out", tmp_path / "o", "-q")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("command", ["apply", "batch"])
def test_calibrated_with_an_uncalibrated_model_is_refused_naming_the_model(files, tmp_path,
                                                                           command):
    if command == "apply":
        r = run_cli("apply", files["pca"], files["sim"], "--threshold", "calibrated",
                    "--out", tmp_path / "o", "-q")
    else:
        r = run_cli("batch", files["sim"], "--model", files["pca"], "--threshold",
                    "calibrated", "--out", tmp_path / "o", "--workers", "1", "-q")
    one_line_refusal(r, "pca.h5", "holds no calibration")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- item 10
@pytest.mark.parametrize("scale", [0.0, float("nan")])
def test_an_uncalibrated_energy_scale_is_not_told_to_reverse(scale):
    from eelsanom.spectrum import Axis, validate_energy_axis

    with pytest.raises(InputError) as e:
        validate_energy_axis(Axis(size=5, scale=scale, offset=0.0, units="eV"))
    assert "Reverse" not in str(e.value) and "calibrated" in str(e.value)


def test_messages_of_the_second_pass(files, tmp_path):
    sim = files["sim"]
    r = run_cli("detect", sim, "--method", "pca", "--train-roi", "-5:,-5:", "--out",
                tmp_path / "o1", "-q")  # a value beginning with "-", given with a space
    assert r.returncode == 0, r.stderr
    err = one_line_refusal(run_cli("detect", sim, "--method", "pca", "--train-roi", "0:4,40:50",
                                   "--out", tmp_path / "o2", "-q"), "outside 0:16")
    assert "4611686018427387904" not in err
    folder = tmp_path / "a folder"
    folder.mkdir()
    one_line_refusal(run_cli("detect", sim, "--method", "pca", "--train-mask", folder,
                             "--out", tmp_path / "o3", "-q"), "is a folder")
    one_line_refusal(run_cli("apply", folder, sim, "--out", tmp_path / "o3", "-q"), "is a folder")
    one_line_refusal(run_cli("simulate", "--shape", "100000", "100000", "--out",
                             tmp_path / "big.hspy"), "--shape", "GiB")
    assert not (tmp_path / "o3").exists() and not (tmp_path / "big.hspy").exists()


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_a_run_marker_that_is_not_a_plain_file_is_refused_before_the_work(files, tmp_path, kind):
    out = tmp_path / "o"
    out.mkdir()
    if kind == "folder":
        (out / RUN_MARKER).mkdir()
    else:
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps({"outputs": {"sim_nll.hspy": {"size": 1}}}))
        (out / RUN_MARKER).symlink_to(elsewhere)
    r = run_cli("detect", files["sim"], "--method", "pca", "--out", out, "-q")
    one_line_refusal(r, RUN_MARKER, "plain file")
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER]  # nothing written
