"""No module of the library or the plugin over 900 lines (issue 21): a room holds one job.

A module that grows past the limit is split where it does two jobs (as bench, batch, simulate,
the plugin's panels and the 3D-CVAE's PPCA initialisation were), not trimmed of comments.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 900


def test_no_module_over_900_lines():
    files = sorted([*(ROOT / "eelsanom").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
    assert len(files) > 50  # the tree was found
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in files}
    over = {k: n for k, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them where they do two jobs): {over}"
