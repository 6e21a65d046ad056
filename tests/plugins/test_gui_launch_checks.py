"""Issue 20, item 9: ``eelsanom gui`` on a machine without Qt's xcb libraries (or without a
display) prints one line naming what to install and exits 2, instead of Qt aborting (134)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._gui import require_napari

require_napari()

from eelsanom_napari import _launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("soname, package", [
    ("libxcb-icccm.so.4", "libxcb-icccm4"), ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
    ("libxcb-render-util.so.0", "libxcb-render-util0"), ("libxcb-cursor.so.0", "libxcb-cursor0")])
def test_the_package_of_a_missing_library(soname, package):
    assert _launch.package_of(soname) == package


def test_missing_xcb_libraries_exit_2_naming_the_packages(tmp_path, monkeypatch, capsys):
    if _launch._xcb_plugin() is None:
        pytest.skip("no Qt binding with an X11 platform plugin installed")
    fake = tmp_path / "bin"  # an ldd that reports two of Qt's xcb libraries missing
    fake.mkdir()
    (fake / "ldd").write_text("#!/bin/sh\necho '\tlibxcb-icccm.so.4 => not found'\n"
                              "echo '\tlibxcb-keysyms.so.1 => not found'\n"
                              "echo '\tlibc.so.6 => /lib/libc.so.6 (0x0)'\n")
    (fake / "ldd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(_launch, "display_problem", lambda: None)  # a display is there
    monkeypatch.setattr(sys, "platform", "linux")
    from eelsanom import cli

    assert cli.main(["gui"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install libxcb-icccm4 libxcb-keysyms1" in err


def test_the_libraries_present_here_pass():
    if _launch._xcb_plugin() is None:
        pytest.skip("no Qt binding with an X11 platform plugin installed")
    assert _launch.qt_platform_problem(env={"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"},
                                       platform="linux") is None


def test_gui_without_a_display_exits_2_naming_the_fix(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                              "QT_QPA_PLATFORM")}
    r = subprocess.run([sys.executable, "-m", "eelsanom", "gui"], capture_output=True, text=True,
                       cwd=ROOT, env={**env, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "xvfb-run" in err
