"""eelsanom.io: loading rules on real and crafted files, calibrated outputs, atomic writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eelsanom import io
from eelsanom.errors import InputError
from eelsanom.result import AnomalyResult
from eelsanom.spectrum import Axis, SpectrumImage, as_spectrum_image

hs = pytest.importorskip("hyperspy.api")
h5py = pytest.importorskip("h5py")

NY, NX, NE = 3, 4, 40
E_AXIS = ("Energy loss", "eV", 0.5, 280.0)
Y_AXIS = ("y", "nm", 0.25, 1.0)
X_AXIS = ("x", "nm", 0.25, 2.0)


def _names(folder):
    """File names in ``folder``, without the run marker every eelsanom write records itself in
    (its own test: test_reliability.py)."""
    return sorted(p.name for p in folder.iterdir() if p.name != io.RUN_MARKER)


def _signal(data, axes, *, eels=True, title="crafted", signal2d=False):
    """A HyperSpy signal with ``axes`` = [(name, units, scale, offset), ...] in array order."""
    cls = hs.signals.Signal2D if signal2d else hs.signals.Signal1D
    s = cls(data)
    for ax, (name, units, scale, offset) in zip(s.axes_manager._axes, axes):
        ax.name, ax.scale, ax.offset = name, scale, offset
        if units is not None:
            ax.units = units
    if eels and not signal2d:
        s.set_signal_type("EELS")
    s.metadata.General.title = title
    return s


def _counts(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(50.0, size=shape).astype(np.float32)


def _digest(path: Path) -> tuple[str, int]:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.relative_to(path).as_posix().encode())
                h.update(f.read_bytes())
        return h.hexdigest(), path.stat().st_mtime_ns
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict[str, Path]:
    """Small crafted files, good and bad, written once per module."""
    d = tmp_path_factory.mktemp("crafted")
    files: dict[str, Path] = {}

    def save(name, sig):
        files[name] = d / name
        sig.save(files[name], overwrite=True)

    good = _signal(_counts((NY, NX, NE)), [Y_AXIS, X_AXIS, E_AXIS], title="good SI")
    good.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300.0)
    save("good.hspy", good)
    save("good.zspy", good)
    save("good[1].hspy", good)  # square brackets: not a glob pattern
    save("int.hspy", _signal(_counts((NY, NX, NE)).astype(np.uint16), [Y_AXIS, X_AXIS, E_AXIS]))
    nan = _counts((NY, NX, NE))
    nan[1, 2, 5] = np.nan
    save("nan.hspy", _signal(nan, [Y_AXIS, X_AXIS, E_AXIS]))
    save("decreasing.hspy", _signal(_counts((NY, NX, NE)),
                                    [Y_AXIS, X_AXIS, ("Energy loss", "eV", -0.5, 300.0)]))
    save("no_units.hspy", _signal(_counts((NY, NX, NE)),
                                  [Y_AXIS, X_AXIS, ("Energy loss", None, 1.0, 0.0)]))
    save("kev.hspy", _signal(_counts((NY, NX, NE)),
                             [Y_AXIS, X_AXIS, ("Energy", "keV", 0.01, 0.1)]))
    save("spectrum.hspy", _signal(_counts((NE,)), [E_AXIS]))
    save("image.hspy", _signal(_counts((NY, NX)), [Y_AXIS, X_AXIS], signal2d=True))
    save("4d.hspy", _signal(_counts((2, NY, NX, NE)), [("t", "s", 1.0, 0.0), Y_AXIS, X_AXIS,
                                                        E_AXIS]))
    save("linescan.hspy", _signal(_counts((NX, NE)), [X_AXIS, E_AXIS], title="line"))
    # HyperSpy's own .emd (NCEM) writer: loads back without a navigation/signal split.
    save("one.emd", good)
    second = good.deepcopy()
    second.data = second.data * 2
    second.metadata.General.title = "second SI"
    save("two.emd", good)
    save("second.emd", second)
    with h5py.File(files["two.emd"], "a") as fa, h5py.File(files["second.emd"], "r") as fb:
        (name,) = list(fb["signals"])
        fb.copy(fb["signals"][name], fa["signals"], name="second SI")
    raw = files["good.hspy"].read_bytes()
    files["truncated.hspy"] = d / "truncated.hspy"
    files["truncated.hspy"].write_bytes(raw[: len(raw) // 2])
    rng = np.random.default_rng(1)
    for name in ("random.dm4", "random.xyz"):
        files[name] = d / name
        files[name].write_bytes(rng.bytes(4096))
    return files


def _result(si_like: SpectrumImage, *, latent: bool = True, seed: int = 0) -> AnomalyResult:
    rng = np.random.default_rng(seed)
    ny, nx = si_like.nav_shape
    nll = rng.normal(size=(ny, nx)).astype(np.float32)
    thr = float(np.quantile(nll, 0.8))
    return AnomalyResult(nll=nll, threshold=thr, threshold_method="20%", mask=nll > thr,
                         method="pca", y=si_like.y, x=si_like.x, energy=si_like.energy,
                         latent=rng.normal(size=(ny, nx, 3)).astype(np.float32) if latent
                         else None, info={"n_components": np.int64(3), "bad": np.nan})


# --------------------------------------------------------------------------- real files


def test_real_dm4_spectrum_image_loads_with_calibration(real_file):
    path = real_file("EELS_SI.dm4")
    si = io.load_spectrum_image(path)
    assert si.shape == (2, 2, 2048) and si.data.dtype == np.float32
    assert (si.energy.offset, si.energy.scale, si.energy.units) == (300.0, 1.0, "eV")
    assert si.x.units == si.y.units == "µm"
    assert si.x.scale == pytest.approx(0.0019921, rel=1e-4)
    assert si.title == "EELS_SI" and si.source == str(path)
    om = si.metadata["original_metadata"]
    assert om["Acquisition_instrument"]["TEM"]["beam_energy"] == 200.0
    json.dumps(si.metadata)  # small and JSON-able
    assert as_spectrum_image(si) is si  # already validated: a no-op


def test_real_single_spectrum_is_refused(real_file):
    with pytest.raises(InputError, match=r"test-EELS_spectrum\.dm3.*single spectrum.*"
                                         r"line scan or spectrum image"):
        io.load_spectrum_image(real_file("test-EELS_spectrum.dm3"))
    (info,) = io.list_signals(real_file("test-EELS_spectrum.dm3"))
    assert not info["is_candidate"] and info["nav_shape"] == ()


@pytest.mark.parametrize("name, nx, ne, offset, scale", [
    ("LSMO_STO_linescan.hspy", 10, 512, 395.0, 1.0),
    ("LSMO_STO_linescan_low_loss.hspy", 10, 512, -50.0, 1.0),
    ("LSMO_linescan.hspy", 40, 586, 428.5, 0.5),
])
def test_real_line_scans_load_as_one_pixel_high_images(real_file, name, nx, ne, offset, scale):
    si = io.load_spectrum_image(real_file(name))
    assert si.shape == (1, nx, ne) and si.is_linescan
    assert (si.energy.offset, si.energy.scale, si.energy.units) == (offset, scale, "eV")
    assert si.y.size == 1 and si.x.size == nx and si.x.units in ("nm", "µm")
    assert si.title.startswith("EELS Spectrum Image")


@pytest.mark.parametrize("name", ["EELS_SI.dm4", "LSMO_linescan.hspy"])
def test_real_lazy_and_eager_loads_are_identical(real_file, name):
    eager = io.load_spectrum_image(real_file(name))
    lazy = io.load_spectrum_image(real_file(name), lazy=True)
    assert lazy.is_lazy and not eager.is_lazy
    assert lazy.data.dtype == np.float32
    assert lazy.energy == eager.energy and lazy.x == eager.x and lazy.y == eager.y
    np.testing.assert_array_equal(lazy.compute().data, eager.data)


@pytest.mark.parametrize("name", ["EELS_SI.dm4", "LSMO_linescan.hspy"])
def test_real_file_cut_in_half_is_refused(real_file, tmp_path, name):
    raw = real_file(name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(raw[: len(raw) // 2])
    for lazy in (False, True):
        with pytest.raises(InputError, match=rf"{name}: could not be read.*not truncated"):
            io.load_spectrum_image(cut, lazy=lazy)


def test_real_files_are_not_modified(real_data_dir):
    files = sorted(p for p in real_data_dir.iterdir() if p.suffix in io.SUPPORTED_EXTENSIONS)
    assert files, "no real EELS files found"
    before = {p: _digest(p) for p in files}
    for p in files:
        for lazy in (False, True):
            try:
                si = io.load_spectrum_image(p, lazy=lazy)
                si.compute()
            except InputError:
                pass  # the single spectrum
        io.list_signals(p)
    assert {p: _digest(p) for p in files} == before


# --------------------------------------------------------------------------- crafted files


def test_crafted_si_loads_calibrated(crafted):
    si = io.load_spectrum_image(crafted["good.hspy"])
    assert si.shape == (NY, NX, NE) and si.data.dtype == np.float32
    assert si.energy == Axis(NE, 0.5, 280.0, "eV", "Energy loss")
    assert si.y == Axis(NY, 0.25, 1.0, "nm", "y") and si.x == Axis(NX, 0.25, 2.0, "nm", "x")
    assert si.title == "good SI"
    assert si.metadata["original_metadata"]["Acquisition_instrument"]["TEM"]["beam_energy"] == 300
    assert si.metadata["signal_index"] == 0 and si.metadata["n_signals"] == 1


@pytest.mark.parametrize("name", ["good.hspy", "good.zspy", "good[1].hspy", "one.emd"])
def test_formats_and_names_give_the_same_cube(crafted, name):
    ref = io.load_spectrum_image(crafted["good.hspy"])
    si = io.load_spectrum_image(crafted[name])
    np.testing.assert_array_equal(si.data, ref.data)
    assert si.energy.same_as(ref.energy) and si.x.same_as(ref.x) and si.y.same_as(ref.y)


@pytest.mark.parametrize("name", ["good.hspy", "good.zspy", "int.hspy"])
def test_lazy_load_is_dask_with_identical_values(crafted, name):
    eager = io.load_spectrum_image(crafted[name])
    lazy = io.load_spectrum_image(crafted[name], lazy=True)
    import dask.array as da

    assert isinstance(lazy.data, da.Array) and lazy.data.dtype == np.float32
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)


def test_integer_counts_become_float32(crafted):
    si = io.load_spectrum_image(crafted["int.hspy"])
    assert si.data.dtype == np.float32
    raw = hs.load(crafted["int.hspy"]).data
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(si.data, raw.astype(np.float32))


def test_crafted_line_scan_is_one_pixel_high(crafted):
    si = io.load_spectrum_image(crafted["linescan.hspy"])
    assert si.shape == (1, NX, NE) and si.x == Axis(NX, 0.25, 2.0, "nm", "x")
    assert si.y.size == 1 and si.y.units == "nm"


@pytest.mark.parametrize("name, match", [
    # wrong dimensionality
    ("spectrum.hspy", r"spectrum\.hspy: expected a spectrum image.*single spectrum of 40"),
    ("image.hspy", r"image\.hspy: expected an EELS spectrum image.*2 signal axes"),
    ("4d.hspy", r"4d\.hspy: expected one or two navigation axes, found 3.*inav"),
    # non-finite values (eager)
    ("nan.hspy", r"nan\.hspy: expected finite values, found 1 NaN.*y=1, x=2, channel 5"),
    # energy axis
    ("decreasing.hspy", r"decreasing\.hspy: expected an increasing energy axis.*isig\[::-1\]"),
    ("no_units.hspy", r"no_units\.hspy: expected an energy-loss axis calibrated in eV, found "
                      r"no units \(uncalibrated\).*units = 'eV'"),
    ("kev.hspy", r"kev\.hspy: expected an energy-loss axis calibrated in eV, found 'keV'"),
    # damaged / foreign files
    ("truncated.hspy", r"truncated\.hspy: could not be read.*not truncated"),
    ("random.dm4", r"random\.dm4: could not be read"),
    ("random.xyz", r"random\.xyz: could not be read"),
])
def test_bad_inputs_are_refused_with_expected_found_fix(crafted, name, match):
    with pytest.raises(InputError, match=match):
        io.load_spectrum_image(crafted[name])


def test_lazy_nan_is_refused_when_computed(crafted):
    si = io.load_spectrum_image(crafted["nan.hspy"], lazy=True)
    with pytest.raises(InputError, match=r"nan\.hspy: expected finite.*y=1, x=2, channel 5"):
        si.compute()


def test_missing_file_and_plain_directory_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"nope\.dm4: file not found"):
        io.load_spectrum_image(tmp_path / "nope.dm4")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"folder is a directory; expected a file"):
        io.load_spectrum_image(tmp_path / "folder")


def test_crafted_inputs_are_not_modified(crafted):
    before = {n: _digest(p) for n, p in crafted.items()}
    for p in crafted.values():
        for lazy in (False, True):
            try:
                io.load_spectrum_image(p, lazy=lazy).compute()
            except InputError:
                pass
    assert {n: _digest(p) for n, p in crafted.items()} == before


# --------------------------------------------------------------------------- several signals


def test_real_multi_signal_emd_needs_a_choice(crafted):
    path = crafted["two.emd"]
    infos = io.list_signals(path)
    assert [i["is_candidate"] for i in infos] == [True, True]
    assert infos[0]["nav_shape"] == (NY, NX) and infos[0]["energy_units"] == "eV"
    with pytest.raises(InputError, match=r"two\.emd: expected one EELS spectrum image, found 2 "
                                         r"signals.*\[0\].*\[1\] 'second SI'.*280 to 299\.5 eV"
                                         r".*--signal INDEX.*signal=INDEX"):
        io.load_spectrum_image(path)
    si = io.load_spectrum_image(path, signal=1)
    assert si.title == "second SI" and si.metadata["signal_index"] == 1
    ref = io.load_spectrum_image(crafted["good.hspy"])
    np.testing.assert_array_equal(si.data, 2 * ref.data)
    assert si.energy.same_as(ref.energy) and si.x.same_as(ref.x)
    with pytest.raises(InputError, match=r"signal index 2 is out of range; expected 0 to 1"):
        io.load_spectrum_image(path, signal=2)
    with pytest.raises(InputError, match=r"signal: expected an integer index"):
        io.load_spectrum_image(path, signal="1")


@pytest.fixture
def velox_like(monkeypatch, tmp_path):
    """A fake .emd whose HyperSpy load returns EDS, EELS (x2 optional) and an image."""
    path = tmp_path / "velox.emd"
    path.write_bytes(b"not really read")

    def install(n_eels: int):
        eds = _signal(_counts((NY, NX, 30)), [Y_AXIS, X_AXIS, ("Energy", "keV", 0.01, 0.0)],
                      eels=False, title="EDS")
        eds.set_signal_type("EDS_TEM")
        eels = [_signal(_counts((NY, NX, NE), seed=k), [Y_AXIS, X_AXIS, E_AXIS],
                        title=f"EELS {k}") for k in range(n_eels)]
        haadf = _signal(_counts((NY, NX)), [Y_AXIS, X_AXIS], signal2d=True, title="HAADF")
        signals = [eds, *eels, haadf]
        monkeypatch.setattr(hs, "load", lambda *a, **k: list(signals))
        return signals

    return path, install


def test_single_eels_candidate_is_picked_among_other_signals(velox_like):
    path, install = velox_like
    signals = install(1)
    infos = io.list_signals(path)
    assert [i["is_candidate"] for i in infos] == [False, True, False]
    assert infos[0]["signal_type"] == "EDS_TEM" and infos[2]["signal_shape"] == (NY, NX)
    si = io.load_spectrum_image(path)
    assert si.title == "EELS 0" and si.metadata["signal_index"] == 1
    np.testing.assert_array_equal(si.data, signals[1].data)
    with pytest.raises(InputError, match=r"signal \[2\] 'HAADF'.*2 signal axes"):
        io.load_spectrum_image(path, signal=2)


def test_two_eels_candidates_are_refused_with_a_listing(velox_like):
    path, install = velox_like
    install(2)
    with pytest.raises(InputError) as exc:
        io.load_spectrum_image(path)
    msg = str(exc.value)
    assert "2 of them could be" in msg and "--signal INDEX" in msg and "\n" not in msg
    for frag in ("[0] 'EDS' EDS_TEM (3, 4|30) 0 to 0.29 keV", "[1] 'EELS 0'", "[2] 'EELS 1'",
                 "[3] 'HAADF'", "no energy axis"):
        assert frag in msg
    assert io.load_spectrum_image(path, signal=-2).title == "EELS 1"


# --------------------------------------------------------------------------- HyperSpy outputs


def test_to_signal_round_trip_keeps_calibration_and_ground_truth(crafted, tmp_path):
    si = io.load_spectrum_image(crafted["good.hspy"])
    gt = np.zeros(si.nav_shape, bool)
    gt[0, 1] = True
    si.ground_truth = gt
    s = io.to_signal(si)
    assert type(s).__name__ == "EELSSpectrum"
    assert s.axes_manager.navigation_shape == (NX, NY)
    assert s.axes_manager["x"].scale == 0.25 and s.axes_manager["y"].offset == 1.0
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 300.0
    out = io.save_signal(s, tmp_path / "rt.hspy")
    back = io.load_spectrum_image(out)
    np.testing.assert_array_equal(back.data, si.data)
    assert (back.energy, back.x, back.y) == (si.energy, si.x, si.y)
    np.testing.assert_array_equal(back.ground_truth, gt)
    assert back.title == "good SI"


def test_to_signal_line_scan_and_lazy(crafted):
    si = io.load_spectrum_image(crafted["linescan.hspy"], lazy=True)
    s = io.to_signal(si)
    assert s._lazy and s.axes_manager.navigation_dimension == 1
    assert s.axes_manager.navigation_axes[0].scale == 0.25
    np.testing.assert_array_equal(np.asarray(s.data.compute()), si.compute().data[0])
    assert io.as_spectrum_image(s).shape == (1, NX, NE)


def test_map_to_signal_calibration_and_bool(crafted, tmp_path):
    si = io.load_spectrum_image(crafted["good.hspy"])
    m = np.zeros(si.nav_shape, bool)
    m[2, 3] = True
    s = io.map_to_signal(m, si, title="mask", quantity="flag")
    assert s.data.dtype == bool and s.data.shape == (NY, NX)
    ax_y, ax_x = s.axes_manager.signal_axes[1], s.axes_manager.signal_axes[0]
    assert (ax_x.scale, ax_x.offset, ax_x.units) == (0.25, 2.0, "nm")
    assert (ax_y.scale, ax_y.offset, ax_y.units) == (0.25, 1.0, "nm")
    for ext in ("hspy", "zspy"):
        back = hs.load(io.save_signal(s, tmp_path / f"m.{ext}"))
        assert back.data.dtype == bool and np.array_equal(back.data, m)
        assert back.metadata.Signal.quantity == "flag"
    with pytest.raises(InputError, match=r"expected a map of shape \(3, 4\).*\(4, 3\)"):
        io.map_to_signal(m.T, si, title="x")


# --------------------------------------------------------------------------- atomic writing


def test_save_signal_protects_inputs_and_existing_files(crafted, tmp_path):
    src = tmp_path / "in.hspy"
    shutil.copy(crafted["good.hspy"], src)
    s = hs.load(src)
    before = _digest(src)
    with pytest.raises(InputError, match="refusing to write .*input file"):
        io.save_signal(s, tmp_path / "." / "in.hspy", protect=[src])
    assert _digest(src) == before
    out = io.save_signal(s, tmp_path / "out.hspy")
    with pytest.raises(InputError, match="already exists.*overwrite"):
        io.save_signal(s, out, overwrite=False)
    with pytest.raises(InputError, match=r"expected an extension HyperSpy writes.*found \.foo"):
        io.save_signal(s, tmp_path / "x.foo")
    assert _names(tmp_path) == ["in.hspy", "out.hspy"]


def test_failed_write_leaves_old_output_and_no_temp(crafted, tmp_path, monkeypatch):
    s = hs.load(crafted["good.hspy"])
    out = io.save_signal(s, tmp_path / "out.hspy")
    before = _digest(out)
    real_save = type(s).save

    def half_then_fail(self, filename, *a, **k):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(type(s), "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        io.save_signal(s, out)
    monkeypatch.setattr(type(s), "save", real_save)
    assert _digest(out) == before
    assert _names(tmp_path) == ["out.hspy"]


def test_zspy_overwrite_replaces_the_folder(crafted, tmp_path):
    s = hs.load(crafted["good.hspy"])
    out = io.save_signal(s, tmp_path / "o.zspy")
    s2 = s.deepcopy()
    s2.data = s2.data + 1
    io.save_signal(s2, out)
    np.testing.assert_array_equal(hs.load(out).data, s.data + 1)
    assert _names(tmp_path) == ["o.zspy"]


def test_write_json_is_strict_and_atomic(tmp_path):
    obj = {"a": np.float32(1.5), "b": np.arange(3), "nan": np.nan, "inf": [np.inf, 1],
           "p": tmp_path, "axis": Axis(3, 0.5, 1.0, "eV"), "i": np.int64(7), "t": (np.bool_(1),)}
    path = io.write_json(obj, tmp_path / "r.json")

    def refuse(c):
        raise AssertionError(f"non-strict JSON constant {c}")

    back = json.loads(path.read_text(), parse_constant=refuse)
    assert back == {"a": 1.5, "b": [0, 1, 2], "nan": None, "inf": [None, 1], "p": str(tmp_path),
                    "axis": {"size": 3, "scale": 0.5, "offset": 1.0, "units": "eV", "name": ""},
                    "i": 7, "t": [True]}
    assert _names(tmp_path) == ["r.json"]


@pytest.mark.parametrize("shape, log", [((NY, NX), False), ((1, 7), True)])
def test_save_png_map(tmp_path, shape, log):
    si = SpectrumImage(np.ones((*shape, 4), np.float32), Axis(4, 1.0, 0.0, "eV"),
                       y=Axis(shape[0], 2.0, 0.0, "nm"), x=Axis(shape[1], 2.0, 0.0, "nm"))
    arr = np.linspace(-1.0, 5.0, shape[0] * shape[1]).reshape(shape)
    arr[0, 0] = np.nan
    out = io.save_png_map(arr, tmp_path / "m.png", si_or_result=si, title="NLL",
                          cbar_label="NLL", mask_overlay=arr > 2, log=log, threshold=2.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _names(tmp_path) == ["m.png"]
    with pytest.raises(InputError, match="expected a map of shape"):
        io.save_png_map(arr[:, :1], tmp_path / "bad.png", si_or_result=si, title="t",
                        cbar_label="c")


# --------------------------------------------------------------------------- results


def test_save_result_round_trip(crafted, tmp_path):
    si = io.load_spectrum_image(crafted["good.hspy"])
    res = _result(si)
    written = io.save_result(res, tmp_path / "out", stem="good",
                             formats=("hspy", "zspy", "png", "tif"))
    names = _names(tmp_path / "out")
    assert names == ["good_latent.hspy", "good_latent.zspy", "good_mask.hspy", "good_mask.png",
                     "good_mask.tif", "good_mask.zspy", "good_nll.hspy", "good_nll.png",
                     "good_nll.tif", "good_nll.zspy"]
    assert set(written) == {"nll_hspy", "mask_hspy", "latent_hspy", "nll_zspy", "mask_zspy",
                            "latent_zspy", "nll_png", "mask_png", "nll_tiff", "mask_tiff"}
    maps = io.load_result_maps(tmp_path / "out", "good")
    np.testing.assert_array_equal(maps["nll"], res.nll)
    assert maps["mask"].dtype == bool and np.array_equal(maps["mask"], res.mask)
    np.testing.assert_array_equal(maps["latent"], res.latent)
    assert float(maps["threshold"]) == pytest.approx(res.threshold)
    nll_sig = hs.load(written["nll_hspy"])
    assert nll_sig.axes_manager.signal_axes[0].scale == si.x.scale
    assert nll_sig.metadata.eelsanom.threshold_method == "20%"
    assert json.loads(nll_sig.metadata.eelsanom.info_json) == {"n_components": 3, "bad": None}
    lat = hs.load(written["latent_hspy"])
    assert lat.axes_manager.navigation_shape == (NX, NY) and lat.axes_manager.signal_shape == (3,)
    iio = pytest.importorskip("imageio.v3")
    np.testing.assert_array_equal(iio.imread(written["nll_tiff"]), res.nll)
    np.testing.assert_array_equal(iio.imread(written["mask_tiff"]), res.mask.astype(np.uint8))


def test_save_result_line_scan_without_latent(crafted, tmp_path):
    si = io.load_spectrum_image(crafted["linescan.hspy"])
    res = _result(si, latent=False)
    written = io.save_result(res, tmp_path, stem="ls")
    assert set(written) == {"nll_hspy", "mask_hspy", "nll_png", "mask_png"}
    maps = io.load_result_maps(tmp_path, "ls")
    assert maps["nll"].shape == (1, NX) and "latent" not in maps


def test_save_result_refusals(crafted, tmp_path):
    si = io.load_spectrum_image(crafted["good.hspy"])
    res = _result(si)
    with pytest.raises(InputError, match=r"output format: expected some of .*found 'jpg'"):
        io.save_result(res, tmp_path, stem="s", formats=("jpg",))
    with pytest.raises(InputError, match="stem: expected a file-name stem"):
        io.save_result(res, tmp_path, stem="../s")
    victim = tmp_path / "s_nll.hspy"
    victim.write_bytes(b"the user's input")
    with pytest.raises(InputError, match="refusing to write"):
        io.save_result(res, tmp_path, stem="s", protect=[victim])
    assert victim.read_bytes() == b"the user's input"
    with pytest.raises(InputError, match=r"expected s_nll\.hspy or s_nll\.zspy"):
        io.load_result_maps(tmp_path / "empty", "s")


def test_import_is_cheap():
    code = "import sys, eelsanom.io; print('hyperspy' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_check_finite_names_the_first_bad_value_anywhere():
    """The quick pass by runs finds a NaN or inf wherever it is (first and last pixel,
    a strided view) and the error still names the first one."""
    from eelsanom.errors import InputError
    from eelsanom.spectrum import Axis, SpectrumImage

    base = np.ones((9, 11, 300), np.float32)
    for where, bad in (((0, 0, 0), np.nan), ((8, 10, 299), np.inf), ((4, 5, 17), -np.inf)):
        data = base.copy()
        data[where] = bad
        si = SpectrumImage(data, Axis(300, 0.5, 100.0, "eV"))
        with pytest.raises(InputError, match=f"y={where[0]}, x={where[1]}, channel {where[2]}"):
            si.check_finite()
    SpectrumImage(base[:, :, ::2].copy(), Axis(150, 1.0, 100.0, "eV")).check_finite()
