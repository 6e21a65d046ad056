"""Reader, sample data, manifest and `eelsanom gui` without a display (napari needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ._gui import require_napari

require_napari()

from eelsanom_napari import _sample_data, make_sample_data, napari_get_reader  # noqa: E402
from eelsanom_napari._launch import display_problem  # noqa: E402
from eelsanom_napari._reader import NOTHING  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[2] / "plugins" / "eelsanom_napari" / "napari.yaml"


# ----------------------------------------------------------------------------- manifest
def test_npe2_validate_passes():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(MANIFEST)
    pm.validate_imports()  # every python_name imports
    assert {c.command for c in pm.contributions.widgets} == {
        "eelsanom.bulk_region", "eelsanom.detector", "eelsanom.results",
        "eelsanom.spectrum_inspector", "eelsanom.export", "eelsanom.latent_space"}
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    if exe is None:
        pytest.skip("npe2 command-line tool not found")
    out = subprocess.run([exe, "validate", str(MANIFEST), "--imports"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_manifest_registered_as_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="napari.manifest")}
    if "eelsanom" not in eps:
        pytest.skip("eelsanom is not installed (pip install -e '.[dev]') in this environment")
    assert eps["eelsanom"] == "eelsanom_napari:napari.yaml"


# ----------------------------------------------------------------------------- reader
@pytest.mark.parametrize("name", [
    "notes.txt",          # not an EELS extension
    "missing.hspy",       # does not exist
    "folder.dm4",         # a directory with a file extension
])
def test_get_reader_declines_cheaply(tmp_path, name):
    p = tmp_path / name
    if name == "notes.txt":
        p.write_text("x")
    elif name == "folder.dm4":
        p.mkdir()
    assert napari_get_reader(str(p)) is None


def test_reader_layers_calibrated(sample_file):
    reader = napari_get_reader(str(sample_file))
    assert callable(reader)
    layers = reader(str(sample_file))
    kinds = [t[2] for t in layers]
    assert kinds == ["image", "image", "labels", "labels"]
    (cube, cm, _), (total, tm, _), (truth, gm, _), (bulk, bm, _) = layers
    assert cube.shape == (267, 64, 64) and cube.dtype == np.float32
    np.testing.assert_allclose(cm["scale"], (0.3, 0.2, 0.2))
    np.testing.assert_allclose(cm["translate"], (680.0, 0.0, 0.0))
    assert cm["axis_labels"][0] == "energy loss (eV)" and cm["axis_labels"][1:] == ("y (nm)",
                                                                                     "x (nm)")
    si = cm["metadata"]["eelsanom"]["si"]
    assert np.shares_memory(cube, si.data)  # the layer shows the SpectrumImage, no copy
    np.testing.assert_allclose(total, si.data.sum(axis=2), rtol=1e-5)
    np.testing.assert_allclose(tm["scale"], (0.2, 0.2))
    assert truth.dtype == np.uint8 and truth.sum() == 82
    np.testing.assert_array_equal(truth.astype(bool), si.ground_truth)
    assert bulk.sum() == 1216 and bm["metadata"]["eelsanom"]["role"] == "bulk"


@pytest.mark.parametrize("kind,words", [
    ("single spectrum", "single spectrum"),   # Signal1D without navigation axes
    ("2-D image", "signal axes"),             # Signal2D
    ("truncated", "could not be read"),       # damaged HDF5
    ("garbage", "could not be read"),         # not a DM file at all
])
def test_reader_refuses_with_notification(bad_files, notifications, kind, words):
    path = bad_files[kind]
    reader = napari_get_reader(str(path))
    assert reader is not None  # the cheap check accepts the extension...
    assert reader(str(path)) == NOTHING  # ...the read gives no layer at all
    errors = [m for s, m in notifications if "error" in s]
    assert errors and path.name in errors[-1] and words in errors[-1], notifications


# ----------------------------------------------------------------------------- sample
def test_sample_regenerated_when_file_absent(monkeypatch, sample_file):
    from_file = make_sample_data()
    monkeypatch.setattr(_sample_data, "sample_path", lambda: None)
    regenerated = make_sample_data()
    assert [t[2] for t in regenerated] == [t[2] for t in from_file]
    for (a, ma, _), (b, mb, _) in zip(from_file, regenerated):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(ma["scale"], mb["scale"])
        np.testing.assert_allclose(ma["translate"], mb["translate"])


# ----------------------------------------------------------------------------- gui command
@pytest.mark.parametrize("env,words", [
    ({}, "DISPLAY is not set"),                                   # plain headless box
    ({"DISPLAY": ":93"}, "no X server answers"),                  # DISPLAY set, nothing there
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, "offscreen"),  # cannot show windows
])
def test_display_problem(env, words):
    msg = display_problem(env, platform="linux")
    assert msg is not None and words in msg and "xvfb-run" in msg


def test_display_problem_none_with_wayland():
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, platform="linux") is None


def test_gui_command_without_display_exits_cleanly(monkeypatch, capsys):
    from eelsanom.cli import main

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["gui"]) == 2
    err = capsys.readouterr().err
    assert "no display" in err and "xvfb-run" in err
    assert "Traceback" not in err
