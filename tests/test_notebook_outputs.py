"""Committed notebook outputs name no folder of the machine that ran them (issue 15, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
#: absolute folders of a user's or CI machine (home folders, the CI workspace, scratch)
MACHINE_PATHS = ("/work/", "/root/", "/home/", "/tmp/", "/Users/", "C:\\\\Users")


def _texts(output: dict):
    """The text an output shows: stream text, text/* and JSON data, tracebacks (not images)."""
    if "text" in output:
        yield "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
    for mime, val in (output.get("data") or {}).items():
        if mime.startswith("image/") and not mime.endswith("svg+xml"):
            continue
        yield val if isinstance(val, str) else json.dumps(val)
    yield "\n".join(output.get("traceback") or [])


def test_notebooks_are_found():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_hold_no_absolute_machine_paths(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    bad = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            for text in _texts(out):
                text = "".join(text) if isinstance(text, list) else text
                for p in MACHINE_PATHS:
                    at = text.find(p)
                    if at >= 0:
                        bad.append(f"cell {i}: ...{text[max(0, at - 40):at + 60]!r}...")
    assert not bad, (f"{path.name} has outputs naming folders of the machine that ran it; "
                     "scrub them (print paths relative to the repository):\n" + "\n".join(bad))


def test_readme_says_how_to_open_the_notebooks():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = NB_DIR.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras["notebooks"])
    readme = (root / "README.md").read_text()
    section = readme.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    assert 'pip install -e ".[notebooks]"' in section and "jupyter lab notebooks/" in section
    for p in NOTEBOOKS:
        assert f"`{p.name}`" in section
    row02 = [ln for ln in section.splitlines() if "02_paper_reproduction" in ln][0]
    assert "15 minutes" in row02
