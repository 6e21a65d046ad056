"""The README's Python example runs as written (from the repository root)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    assert "## Python API" in text, "README has no Python API section"
    section = text.split("## Python API", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Python API section has no example"
    code = blocks[0].replace('"sample_data/', f'"{ROOT.as_posix()}/sample_data/')
    monkeypatch.chdir(tmp_path)  # det.save("pca.h5") lands in tmp, not in the checkout
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # our own documentation
    res = ns["res"]
    assert res.nll.shape == (64, 64)
    assert res.evaluate()["roc_auc"] > 0.95
    assert os.path.exists(tmp_path / "pca.h5")
