"""Streaming (eelsanom.stream): lazy block-by-block scoring equals eager scoring, never
computes the whole cube, writes HyperSpy-readable .zspy maps; the CLI's --lazy and auto mode."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

from eelsanom.detectors import get_detector
from eelsanom.io import RUN_MARKER
from eelsanom.simulate import simulate
from eelsanom.stream import (
    STREAM_ENV,
    fit_streaming,
    plan_blocks,
    score_streaming,
    should_stream,
)

ROOT = Path(__file__).resolve().parents[1]


def lazy(si, chunks):
    return replace(si, data=da.from_array(np.asarray(si.data), chunks=chunks))


def line_scan(si, row):
    return replace(si, data=si.data[row:row + 1], y=replace(si.y, size=1), ground_truth=None)


@pytest.fixture(scope="module")
def sim():
    return simulate(shape=(16, 21), magnitude=2.4, concentration=0.05, seed=2)


@pytest.fixture(scope="module")
def cvae(sim):
    return get_detector("cvae", epochs=1, width=4, device="cpu", seed=0).fit(sim.si,
                                                                             sim.bulk_mask)


def assert_same(eager, streamed, rtol=1e-6):
    scale = np.abs(eager.nll).max()
    np.testing.assert_allclose(streamed.nll, eager.nll, rtol=0, atol=rtol * scale)
    assert streamed.threshold == pytest.approx(eager.threshold, rel=rtol)
    assert streamed.threshold_method == eager.threshold_method
    assert (streamed.mask == eager.mask).all()
    assert streamed.nll.shape == eager.nll.shape and streamed.y == eager.y and streamed.x == eager.x
    if eager.latent is None:
        assert streamed.latent is None
    else:
        np.testing.assert_allclose(streamed.latent, eager.latent, rtol=1e-5, atol=1e-5)
    assert sorted(streamed.maps) == sorted(eager.maps)
    for k, v in eager.maps.items():
        np.testing.assert_allclose(streamed.maps[k], v, rtol=1e-6,
                                   atol=rtol * max(np.abs(v).max(), 1.0))


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize("method", ["pca", "rx"])
@pytest.mark.parametrize("chunk_pixels", [40, 7, 10_000])
def test_pca_rx_streamed_equal_eager(sim, method, chunk_pixels):
    det = get_detector(method, seed=0).fit(sim.si, sim.bulk_mask)
    eager = det.score(sim.si)
    res = score_streaming(det, lazy(sim.si, (5, 6, -1)), chunk_pixels=chunk_pixels)
    assert_same(eager, res, rtol=1e-9)
    assert res.info["streaming"]["blocks"] > 1 or chunk_pixels > 16 * 21
    # a 1-row line scan, blocks that do not divide it
    ls = line_scan(sim.si, 4)
    assert_same(det.score(ls), score_streaming(det, lazy(ls, (1, 4, -1)), chunk_pixels=6),
                rtol=1e-9)


def test_cvae_streamed_equal_eager_with_context(sim, cvae):
    assert cvae.score_context == 22  # 2 conv layers + the 10-px-sigma background kernel
    eager = cvae.score(sim.si)
    # blocks of 16 x 15 and 16 x 6 pixels, each needs context from outside it
    res = score_streaming(cvae, lazy(sim.si, (4, 5, -1)), chunk_pixels=300)
    assert res.info["streaming"]["block_shape"] == [16, 15]
    assert_same(eager, res)
    ls = line_scan(sim.si, 7)
    assert_same(cvae.score(ls), score_streaming(cvae, lazy(ls, (1, 5, -1)), chunk_pixels=5))


def test_score_block_equals_that_block_of_score(sim, cvae):
    eager = cvae.score(sim.si)
    nll, latent, maps = cvae.score_block(lazy(sim.si, (4, 4, -1)), (3, 9, 15, 21))
    np.testing.assert_allclose(nll, eager.nll[3:9, 15:21], rtol=1e-6)
    np.testing.assert_allclose(latent, eager.latent[3:9, 15:21], rtol=1e-5, atol=1e-5)
    assert maps["kl"].shape == (6, 6)
    with pytest.raises(Exception, match="region"):
        cvae.score_block(sim.si, (0, 20, 0, 5))


def test_fit_streaming_equals_fit_and_caps_training(sim):
    lz = lazy(sim.si, (5, 6, -1))
    for method in ("pca", "rx"):
        eager = get_detector(method, seed=0).fit(sim.si, sim.bulk_mask).score(sim.si)
        res = fit_streaming(get_detector(method, seed=0), lz, sim.bulk_mask,
                            chunk_pixels=30).score(sim.si)
        np.testing.assert_allclose(res.nll, eager.nll, rtol=1e-9)
    robust = get_detector("rx").fit(sim.si).score(sim.si)  # no mask: all pixels, robustly
    np.testing.assert_allclose(fit_streaming(get_detector("rx"), lz).score(sim.si).nll,
                               robust.nll, rtol=1e-9)
    capped = fit_streaming(get_detector("pca", seed=0), lz, sim.bulk_mask, max_train_pixels=50)
    assert capped.n_train_ == 50 and capped.trained_on_mask_


# ----------------------------------------------------------------------------- memory
class MaxResult(Callback):
    """Largest numpy array any dask task of the computations produced."""

    def __init__(self):
        super().__init__()
        self.max_nbytes = 0
        self.tasks = 0

    def _posttask(self, key, result, dsk, state, id):  # dask's signature
        self.tasks += 1
        if isinstance(result, np.ndarray):
            self.max_nbytes = max(self.max_nbytes, result.nbytes)


class Reader:
    """An array-like dask reads chunk by chunk (so no task result is the whole array)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return np.array(self.a[key])


@pytest.mark.parametrize("method", ["pca", "cvae"])
def test_never_computes_the_whole_cube(method):
    sim = simulate(shape=(6, 150), magnitude=2.4, seed=5)
    reader = Reader(sim.si.data)
    lz = replace(sim.si, data=da.from_array(reader, chunks=(3, 15, -1)))
    px = sim.si.data.nbytes // (6 * 150)
    kw = {"epochs": 1, "width": 4, "device": "cpu"} if method == "cvae" else {}
    with MaxResult() as fit:
        det = fit_streaming(get_detector(method, **kw), lz, sim.bulk_mask, max_train_pixels=300,
                            chunk_pixels=100)
    # training reads one row at a time (PCA), or a window of <= 300 px (3 x 100) and its
    # 2-px halo (CVAE)
    assert fit.tasks > 0 and fit.max_nbytes <= (6 * 104 if method == "cvae" else 150) * px
    with MaxResult() as score:
        res = score_streaming(det, lz, chunk_pixels=100)
    assert res.info["streaming"]["block_shape"] == [6, 15]  # 15 = the chunk width
    assert score.tasks > 0 and reader.reads > 0 and res.nll.shape == (6, 150)
    # blocks of 6 x 15 px, read with the CVAE's 22 px of context each side: <= 6 x 59 px
    assert score.max_nbytes <= (6 * 59 if method == "cvae" else 6 * 15) * px
    assert max(fit.max_nbytes, score.max_nbytes) < sim.si.data.nbytes / 1.4


def test_plan_blocks_cover_once_and_follow_chunks():
    chunks = ((8,) * 6 + (2,), (16,) * 43 + (12,), (100,))
    bh, bw, blocks = plan_blocks((50, 700), 100, chunk_pixels=500, chunks=chunks)
    assert (bh, bw) == (16, 16)  # 22 x 22 rounded down to whole chunks
    seen = np.zeros((50, 700), int)
    for y0, y1, x0, x1 in blocks:
        seen[y0:y1, x0:x1] += 1
    assert (seen == 1).all()
    assert plan_blocks((1, 1000), 10, chunk_pixels=64)[:2] == (1, 64)
    assert plan_blocks((30, 40), 10, chunk_pixels=100)[:2] == (2, 40)  # whole rows
    assert plan_blocks((30, 40), 10, chunk_pixels=100, context=5)[:2] == (10, 10)  # squares
    assert plan_blocks((30, 40), 1 << 16)[:2] == (3, 40)  # default: 32 MiB of float32


def test_should_stream_threshold(monkeypatch, sim):
    monkeypatch.setenv(STREAM_ENV, "1000")
    stream, why = should_stream(sim.si)
    assert stream and STREAM_ENV in why and "larger than" in why
    monkeypatch.setenv(STREAM_ENV, str(10 ** 12))
    assert not should_stream(sim.si)[0]
    monkeypatch.delenv(STREAM_ENV)
    assert should_stream(sim.si, threshold_bytes=0)[0]
    assert not should_stream(sim.si)[0]  # a quarter of the available memory


# ----------------------------------------------------------------------------- outputs
def test_streamed_zspy_maps_load_in_hyperspy_like_save_result(sim, cvae, tmp_path, caplog):
    import hyperspy.api as hs

    from eelsanom.io import load_result_maps, save_result

    eager = cvae.score(sim.si)
    save_result(eager, tmp_path / "eager", stem="s", formats=("zspy",))
    with caplog.at_level(logging.INFO, logger="eelsanom.stream"):
        res = score_streaming(cvae, lazy(sim.si, (6, 6, -1)), out=tmp_path / "lazy", stem="s",
                              chunk_pixels=150)
    assert "streaming CVAE3DDetector over 4 block(s) of up to 12 x 12 px" in caplog.text
    def names_in(folder):  # the run marker records every write (tests/test_reliability.py)
        return sorted(p.name for p in folder.iterdir() if p.name != RUN_MARKER)

    names = names_in(tmp_path / "lazy")
    assert names == names_in(tmp_path / "eager")
    assert names == ["s_latent.zspy", "s_mask.zspy", "s_nll.zspy"]  # no temporary left
    assert set(res.info["outputs"]) == {"nll_zspy", "mask_zspy", "latent_zspy"}
    for name in ("nll", "mask", "latent"):
        a = hs.load(tmp_path / "eager" / f"s_{name}.zspy")
        b = hs.load(tmp_path / "lazy" / f"s_{name}.zspy")
        assert type(a) is type(b) and b.data.shape == a.data.shape and b.data.dtype == a.data.dtype
        for ax_a, ax_b in zip(a.axes_manager._axes, b.axes_manager._axes):
            assert (ax_b.name, ax_b.scale, ax_b.offset, ax_b.units) == (
                ax_a.name, ax_a.scale, ax_a.offset, ax_a.units)
        assert b.metadata.General.title == a.metadata.General.title
        ma, mb = a.metadata.eelsanom.as_dictionary(), b.metadata.eelsanom.as_dictionary()
        assert mb.pop("threshold") == pytest.approx(ma.pop("threshold"), rel=1e-6)
        assert mb == ma
        np.testing.assert_allclose(np.asarray(b.data, float), np.asarray(a.data, float),
                                   rtol=1e-5, atol=1e-5)
    assert hs.load(tmp_path / "lazy" / "s_mask.zspy").metadata.Signal.quantity == \
        hs.load(tmp_path / "eager" / "s_mask.zspy").metadata.Signal.quantity
    back = load_result_maps(tmp_path / "lazy", "s")
    assert float(back["threshold"]) == pytest.approx(eager.threshold)
    assert (back["mask"] == eager.mask).all()


def run_cli(*args, env=None):
    e = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "eelsanom", *args], capture_output=True,
                          text=True, cwd=ROOT, env=e, timeout=300)


def test_cli_detect_lazy_and_auto_stream_match_eager(sim, tmp_path):
    import hyperspy.api as hs

    src = sim.save(tmp_path / "sim.zspy")
    common = ("--method", "pca", "--train-mask", "file", "--formats", "zspy,hspy,png")
    small = {STREAM_ENV: "1000"}  # any cube is "large": auto mode streams
    r = run_cli("-v", "detect", str(src), *common, "--out", str(tmp_path / "eager"),
                "--no-lazy", "--model-out", str(tmp_path / "pca.h5"), env=small)
    assert r.returncode == 0, r.stderr
    assert "streaming" not in r.stderr  # --no-lazy wins over the size rule
    r = run_cli("-v", "detect", str(src), *common, "--out", str(tmp_path / "auto"), env=small)
    assert r.returncode == 0, r.stderr
    assert "streaming sim.zspy block by block: the cube (16 x 21 x 267" in r.stderr
    assert f"({STREAM_ENV}=1000)" in r.stderr
    r = run_cli("apply", str(tmp_path / "pca.h5"), str(src), "--lazy", "--formats", "zspy,png",
                "--out", str(tmp_path / "applied"), "-q")
    assert r.returncode == 0, r.stderr
    eager = sorted(p.name for p in (tmp_path / "eager").iterdir())
    assert eager == sorted(p.name for p in (tmp_path / "auto").iterdir())
    assert "sim_nll.zspy" in eager and "sim_latent.hspy" in eager and "sim_mask.png" in eager
    se = json.loads((tmp_path / "eager" / "sim_summary.json").read_text())
    sa = json.loads((tmp_path / "auto" / "sim_summary.json").read_text())
    assert sa["threshold"] == se["threshold"] and sa["counts"] == se["counts"]
    assert "streaming" in sa and "streaming" not in se
    ref = hs.load(tmp_path / "eager" / "sim_nll.hspy").data
    for path in (tmp_path / "auto" / "sim_nll.zspy", tmp_path / "auto" / "sim_nll.hspy",
                 tmp_path / "applied" / "sim_nll.zspy"):
        np.testing.assert_allclose(np.asarray(hs.load(path).data), ref, rtol=1e-6)
    # default formats: hspy and png, plus the .zspy stores written block by block when streamed
    r = run_cli("apply", str(tmp_path / "pca.h5"), str(src), "--lazy",
                "--out", str(tmp_path / "default"), "-q")
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "default").iterdir()}
    assert {"sim_nll.zspy", "sim_mask.zspy", "sim_nll.hspy", "sim_nll.png"} <= names, names
