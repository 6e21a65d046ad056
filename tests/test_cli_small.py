"""Small CLI points of issue 15 (item 6): ``eelsanom info`` prints a readable table."""

from __future__ import annotations

import json

from tests.realdata import REAL, need_real
from tests.test_cli import run_cli


@need_real
def test_info_prints_a_table(tmp_path):
    r = run_cli("info", str(REAL / "EELS_SI.dm4"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "EELS_SI.dm4: 1 signal"
    header, rule, row = lines[1], lines[2], lines[3]
    assert header.split()[:3] == ["#", "title", "type"] and "energy axis" in header
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.split()[:4] == ["0", "EELS_SI", "EELS", "2"]
    assert "300 to 2347 eV, 1 eV/channel" in row and row.rstrip().endswith("yes")
    assert "{" not in r.stdout  # no raw JSON
    # columns line up: each header word starts where its column starts
    assert row.index("2 x 2") == header.index("navigation")


@need_real
def test_info_says_a_single_spectrum_is_not_a_spectrum_image():
    r = run_cli("info", str(REAL / "test-EELS_spectrum.dm3"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[3].rstrip().endswith("no")


@need_real
def test_info_json_keeps_one_line_per_signal():
    r = run_cli("info", "--json", str(REAL / "LSMO_STO_linescan.hspy"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["nav_shape"] == [10] and rows[0]["is_candidate"]
