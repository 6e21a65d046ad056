"""The README's Python example runs as written (from the repository root)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")  # res.plot() without a display
    text = (ROOT / "README.md").read_text()
    assert "## Python API" in text, "README has no Python API section"
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2, "README's Python API section lacks its HyperSpy and plain examples"
    monkeypatch.chdir(tmp_path)  # files the examples save land in tmp, not in the checkout
    # the HyperSpy session: a signal in, a ROI as bulk, signals out that round-trip
    ns: dict = {}
    code = blocks[0].replace('"sample_data/', f'"{ROOT.as_posix()}/sample_data/')
    exec(compile(code, "README.md", "exec"), ns)  # our own documentation
    hs, s, res = ns["hs"], ns["s"], ns["res"]
    assert res.evaluate()["roc_auc"] > 0.95
    back = hs.load(tmp_path / "nll.hspy")
    assert back.data.shape == (64, 64)
    for a, b in zip(s.axes_manager.navigation_axes, back.axes_manager.signal_axes):
        assert (a.name, a.units, a.scale, a.offset) == (b.name, b.units, b.scale, b.offset)
    assert hs.load(tmp_path / "mask.hspy").data.dtype == bool
    matplotlib.pyplot.close("all")
    # eelsanom's own objects
    ns = {}
    code = blocks[1].replace('"sample_data/', f'"{ROOT.as_posix()}/sample_data/')
    exec(compile(code, "README.md", "exec"), ns)
    res = ns["res"]
    assert res.nll.shape == (64, 64)
    assert res.evaluate()["roc_auc"] > 0.95
    assert os.path.exists(tmp_path / "pca.h5")
