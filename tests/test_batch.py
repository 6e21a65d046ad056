"""``eelsanom batch``: many files on Dask distributed (LocalCluster and a loopback scheduler)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eelsanom.batch import (
    DONE_NAME,
    SUMMARY_CSV,
    SUMMARY_JSON,
    expand_inputs,
    folder_names,
    run_batch,
)
from eelsanom.errors import Cancelled, InputError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
FORMATS = "hspy"  # no PNGs: keeps the workers light (apply's tests cover the pictures)
GOOD = ("a/s1.hspy", "b/s1.hspy", "s2.zspy")
BAD = {"corrupt.hspy": "could not be read", "single.hspy": "single spectrum",
       "shifted.hspy": "energy"}


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eelsanom", *args], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Six small inputs (three good, two sharing a stem; a truncated file, a single spectrum,
    a shifted energy axis), a PCA model, and the serial NLL map of every good file."""
    from eelsanom.detectors import get_detector, load_detector
    from eelsanom.io import load_spectrum_image
    from eelsanom.simulate import simulate

    root = tmp_path_factory.mktemp("batch")
    d = root / "data"
    sims = {}
    for i, rel in enumerate(GOOD):
        sims[rel] = simulate(shape=(12, 12), magnitude=2.4, concentration=0.05, seed=10 + i)
        sims[rel].save(d / rel)
    payload = (d / "a/s1.hspy").read_bytes()
    (d / "corrupt.hspy").write_bytes(payload[: len(payload) // 3])
    sig = sims["a/s1.hspy"].to_signal()
    sig.inav[0, 0].save(d / "single.hspy")
    shifted = sims["s2.zspy"].to_signal()
    shifted.axes_manager.signal_axes[0].offset += 150.0
    shifted.save(d / "shifted.hspy")
    model = root / "pca.h5"
    get_detector("pca", n_components=3, seed=0).fit(
        sims["a/s1.hspy"].si, sims["a/s1.hspy"].bulk_mask).save(model)
    det = load_detector(model)
    ref = {rel: det.score(load_spectrum_image(d / rel)).nll for rel in GOOD}
    return {"dir": d, "model": model, "ref": ref, "root": root}


def _summary(out: Path) -> tuple[dict, list[dict]]:
    js = json.loads((out / SUMMARY_JSON).read_text())
    with open(out / SUMMARY_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return js, rows


def _by_input(data: dict, rows: list[dict], key: str = "input") -> dict[str, dict]:
    return {str(Path(r[key]).relative_to(data["dir"])): r for r in rows}


def _check_results(data: dict, out: Path) -> dict[str, dict]:
    """Every good file done with the serial NLL map; every bad one failed with its error."""
    from eelsanom.io import load_result_maps

    js, rows = _summary(out)
    assert len(rows) == len(js["files"]) == len(GOOD) + len(BAD)
    recs = _by_input(data, js["files"])
    csv_rows = _by_input(data, rows)
    for rel in GOOD:
        r = recs[rel]
        assert r["status"] in ("done", "skipped"), r
        assert csv_rows[rel]["status"] == r["status"]
        assert r["n_pixels"] == 144 and 0 < r["anomaly_fraction"] < 0.5
        folder = Path(r["output"])
        assert folder.parent == out and (folder / DONE_NAME).exists()
        maps = load_result_maps(folder, r["name"])
        np.testing.assert_allclose(maps["nll"], data["ref"][rel], rtol=1e-4, atol=1e-3)
    assert len({recs[rel]["output"] for rel in GOOD}) == len(GOOD)  # equal stems kept apart
    for rel, words in BAD.items():
        r = recs[rel]
        assert r["status"] == "failed" and words in r["error"].lower(), r
        assert csv_rows[rel]["status"] == "failed" and csv_rows[rel]["error"] == r["error"]
        assert r["output"] == "" and not (out / r["name"] / DONE_NAME).exists()
    return recs


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()}


# ----------------------------------------------------------------------------- units
def test_inputs_from_folders_and_globs_and_unique_names(data, tmp_path):
    d = data["dir"]
    out = d / "results"
    (out / "s1").mkdir(parents=True)
    (out / "s1" / "s1_nll.hspy").write_bytes(b"x")  # an output folder inside is not scanned
    files, missing = expand_inputs([d, str(d / "*.hspy"), str(d / "none*.dm4")], exclude=[out])
    rels = [str(f.relative_to(d)) for f in files]
    assert sorted(rels) == sorted([*GOOD, *BAD])  # duplicates from the glob dropped
    assert missing == [str(d / "none*.dm4")]
    names = folder_names(files)
    assert len({n.lower() for n in names}) == len(names)
    by = dict(zip(rels, names))
    assert by["a/s1.hspy"] == "a_s1" and by["b/s1.hspy"] == "b_s1" and by["s2.zspy"] == "s2"
    assert folder_names([Path("x/y.hspy"), Path("x/y.dm4")]) == ["x_y_hspy", "x_y_dm4"]
    shutil.rmtree(out)


def test_bad_arguments_are_refused_before_any_cluster(data, tmp_path):
    with pytest.raises(InputError, match="not a file"):
        run_batch([data["dir"]], tmp_path / "missing.h5", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input files"):
        run_batch([tmp_path / "empty"], data["model"], tmp_path / "o")
    with pytest.raises(InputError, match="at most one"):
        run_batch([data["dir"]], data["model"], tmp_path / "o", workers=2, scheduler="tcp://x:1")
    with pytest.raises(InputError, match="threshold"):
        run_batch([data["dir"]], data["model"], tmp_path / "o", threshold="bogus")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- LocalCluster
@pytest.fixture(scope="module")
def first_batch(data):
    out = data["root"] / "out_local"
    events = []
    s = run_batch([data["dir"]], data["model"], out, workers=2, progress=events.append,
                  formats=FORMATS)
    return s, out, events


def test_two_worker_local_cluster_matches_serial_and_reports_failures(data, first_batch):
    s, out, events = first_batch
    assert s.workers == 2
    assert s.counts["done"] == len(GOOD) and s.counts["failed"] == len(BAD) and not s.ok
    _check_results(data, out)
    spans: dict[str, list] = {}  # one file at a time per single-thread worker
    for r in json.loads((out / SUMMARY_JSON).read_text())["files"]:
        spans.setdefault(r["worker"], []).append((r["started"], r["started"] + r["seconds"]))
    assert len(spans) == 2
    for sp in spans.values():
        sp.sort()
        assert all(b[0] >= a[1] - 0.05 for a, b in zip(sp, sp[1:])), sp
    steps = [e.step for e in events if e.stage == "batch"]
    assert steps[-1] == len(GOOD) + len(BAD) and steps == sorted(steps)
    per_file = json.loads((out / "s2" / "s2_summary.json").read_text())  # apply's summary
    assert per_file["method"] == "pca" and per_file["model_sha256"] == s.model_sha256


# ----------------------------------------------------------------------------- scheduler
def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def loopback_scheduler(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (random ports)."""
    d = tmp_path_factory.mktemp("dask")
    sfile = d / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(*args: str, log: str) -> subprocess.Popen:
        fh = open(d / log, "w")  # closed at teardown
        logs.append(fh)
        p = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=d, env=ENV, stdout=fh,
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        sched = start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(sfile), log="scheduler.log")
        deadline = time.monotonic() + 60
        while not sfile.exists():
            assert sched.poll() is None, (d / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "dask scheduler did not start in 60 s"
            time.sleep(0.2)
        time.sleep(0.2)
        address = json.loads(sfile.read_text())["address"]
        for i in range(2):
            start("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                  "--host", "127.0.0.1", "--name", f"w{i}", "--local-directory", str(d),
                  log=f"worker{i}.log")
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=90)
        yield address
    finally:
        _stop(procs)
        for fh in logs:
            fh.close()


def test_batch_through_a_running_scheduler(data, loopback_scheduler, tmp_path):
    out = tmp_path / "out"
    r = run_cli("batch", str(data["dir"]), "--model", str(data["model"]), "--out", str(out),
                "--scheduler", loopback_scheduler, "--formats", FORMATS)
    assert r.returncode == 1, r.stderr  # some files failed, the others were scored
    recs = _check_results(data, out)
    assert all(recs[rel]["status"] == "done" for rel in GOOD)
    assert all(recs[rel]["worker"].startswith("tcp://127.0.0.1:") for rel in GOOD)
    for rel in BAD:
        assert f"{data['dir'] / rel}" in r.stderr  # one error line per failed file
    assert "3 done, 0 skipped, 3 failed" in r.stdout
    # only good files: exit 0; a rerun skips them all
    good = [str(data["dir"] / rel) for rel in GOOD]
    out2 = tmp_path / "good"
    for expect in ("3 done", "3 skipped"):
        r = run_cli("batch", *good, "--model", str(data["model"]), "--out", str(out2),
                    "--scheduler", loopback_scheduler, "--formats", FORMATS)
        assert r.returncode == 0, r.stderr
        assert expect in r.stdout
    _, rows = _summary(out2)
    assert [row["status"] for row in rows] == ["skipped"] * 3


def test_rerun_skips_complete_files_and_force_redoes_them(data, first_batch, loopback_scheduler):
    _, out, _ = first_batch
    before = _mtimes(out)
    s = run_batch([data["dir"]], data["model"], out, scheduler=loopback_scheduler, formats=FORMATS)
    recs = _check_results(data, out)
    assert all(recs[rel]["status"] == "skipped" for rel in GOOD)
    assert s.counts["skipped"] == len(GOOD) and s.counts["failed"] == len(BAD)
    assert _mtimes(out) == before  # outputs untouched
    # a changed input is redone, the others stay skipped
    src = data["dir"] / "s2.zspy"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s = run_batch([data["dir"]], data["model"], out, scheduler=loopback_scheduler, formats=FORMATS)
    assert {r.name: r.status for r in s.records if r.status != "failed"} == {
        "a_s1": "skipped", "b_s1": "skipped", "s2": "done"}
    s = run_batch([data["dir"]], data["model"], out, scheduler=loopback_scheduler, force=True,
                  formats=FORMATS)
    recs = _check_results(data, out)
    assert all(recs[rel]["status"] == "done" for rel in GOOD)
    after = _mtimes(out)
    assert all(after[p] > before[p] for p in before if p.endswith(DONE_NAME))


def test_streamed_batch_gives_the_eager_maps_and_zspy_stores(data, loopback_scheduler,
                                                              tmp_path):
    """``lazy=True``: each file is streamed block by block (eelsanom.stream); the maps equal
    the serial eager ones and, by default, the NLL map is also written as a ``.zspy`` store."""
    out = tmp_path / "out"
    s = run_batch([data["dir"] / rel for rel in GOOD], data["model"], out,
                  scheduler=loopback_scheduler, lazy=True)
    assert s.ok and s.counts["done"] == len(GOOD)
    from eelsanom.io import load_result_maps

    for r in s.records:
        folder = Path(r.output)
        assert (folder / f"{r.name}_nll.zspy").is_dir() and (folder / f"{r.name}_nll.hspy").exists()
        rel = str(Path(r.input).relative_to(data["dir"]))
        maps = load_result_maps(folder, r.name)
        np.testing.assert_allclose(maps["nll"], data["ref"][rel], rtol=1e-4, atol=1e-3)
        summary = json.loads((folder / f"{r.name}_summary.json").read_text())
        assert "streaming" in summary  # recorded by the streamed path


def test_cancelling_keeps_the_finished_files(data, loopback_scheduler, tmp_path):
    out = tmp_path / "out"

    def stop_after_first(ev):
        return not (ev.step >= 1 and "last" in ev.metrics)

    with pytest.raises(Cancelled):
        run_batch([data["dir"] / rel for rel in GOOD], data["model"], out,
                  scheduler=loopback_scheduler, progress=stop_after_first,
                  formats=FORMATS)
    js, rows = _summary(out)
    status = [r["status"] for r in js["files"]]
    assert [row["status"] for row in rows] == status
    assert status.count("done") >= 1 and status.count("done") + status.count("cancelled") == 3
    for r in js["files"]:
        if r["status"] == "done":
            assert (out / r["name"] / DONE_NAME).exists(), r
    # a file still running on a worker when the batch stopped may complete too: never half-done
    s = run_batch([data["dir"] / rel for rel in GOOD], data["model"], out,
                  scheduler=loopback_scheduler, formats=FORMATS)
    assert s.ok and s.counts["skipped"] >= status.count("done")


def test_cli_exit_status_for_bad_arguments(data, tmp_path):
    r = run_cli("batch", str(data["dir"]), "--model", str(tmp_path / "no.h5"), "--out",
                str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--model" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("batch", str(tmp_path / "empty"), "--model", str(data["model"]), "--out",
                str(tmp_path / "o"))
    assert r.returncode == 2 and "no input files" in r.stderr
    r = run_cli("batch", str(data["dir"]), "--model", str(data["model"]), "--out",
                str(tmp_path / "o"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "not allowed with" in r.stderr
