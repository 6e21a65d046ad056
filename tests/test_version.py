"""The version is declared once, in ``eelsanom/__init__.py``; packaging reads it from there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import eelsanom
from eelsanom.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_declared_only_in_the_package():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^\s*version\s*=", project, re.M), "pyproject repeats the version"
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M)
    assert re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"eelsanom.__version__"\s*\}', text, re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", eelsanom.__version__)


def test_setuptools_reads_the_package_version():
    pyprojecttoml = pytest.importorskip("setuptools.config.pyprojecttoml")
    conf = pyprojecttoml.read_configuration(ROOT / "pyproject.toml", expand=True)
    assert conf["project"]["version"] == eelsanom.__version__


def test_cli_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"eelsanom {eelsanom.__version__}"
