"""Every figure the CLI writes: no text leaves the figure, no label sits on another text, every
axis and colour bar labelled (issue 23, item 2). The GUI's figures are checked the same way in
``tests/plugins/test_gui_layout.py``.

The CLI runs as a subprocess whose ``Figure.savefig`` first checks the figure with
:func:`tests.figtext.text_problems` (matplotlib's renderer and each text's
``get_window_extent``) and reports to a JSON-lines file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.figtext import text_problems

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("hyperspy.api")

_HOOK = ("import sys; from tests import figtext; figtext.install(sys.argv.pop(1)); "
         "from eelsanom.cli import main; sys.exit(main(sys.argv[1:]))")


def _checked_cli(report: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, "-c", _HOOK, str(report), "-q", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _problems(report: Path) -> tuple[list[str], list[dict]]:
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return [pr for r in rows for pr in r["problems"]], rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from eelsanom.simulate import simulate

    d = tmp_path_factory.mktemp("figtext")
    img = simulate(shape=(24, 28), window="fe-l", anomaly="shift", magnitude=2.4, seed=1)
    line = simulate(shape=(8, 40), window="fe-l", anomaly="shift", magnitude=2.4, seed=2)
    line.to_signal().inav[:, 3].save(d / "line.hspy")  # one row: a line scan
    return {"image": img.save(d / "image_with_a_long_descriptive_name_fe-l_shift2.4.hspy"),
            "line": d / "line.hspy"}


def test_detect_and_latent_figures_keep_their_text_inside(files, tmp_path):
    report = tmp_path / "report.jsonl"
    _checked_cli(report, "detect", str(files["image"]), "--method", "pca", "--train-mask", "file",
                 "--out", str(tmp_path / "img"))
    _checked_cli(report, "detect", str(files["line"]), "--method", "pca", "--out",
                 str(tmp_path / "line"))
    _checked_cli(report, "latent", str(tmp_path / "img"), "--out", str(tmp_path / "lat"),
                 "--no-quantization", "--dse-points", "200")
    problems, rows = _problems(report)
    assert len(rows) >= 6, rows  # 2 maps x 2 runs, and the latent report's figures
    assert problems == []


def test_real_files_figures_keep_their_text_inside(real_file, tmp_path):
    report = tmp_path / "report.jsonl"
    for name in ("EELS_SI.dm4", "LSMO_linescan.hspy"):
        _checked_cli(report, "detect", str(real_file(name)), "--method", "pca", "--out",
                     str(tmp_path / name))
    problems, rows = _problems(report)
    assert len(rows) == 4 and problems == []


def test_bench_figures_keep_their_text_inside(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from eelsanom import bench

    seen: list[str] = []
    orig = Figure.savefig

    def savefig(self, fname, *a, **k):
        seen.extend(text_problems(self, where=Path(str(fname)).name))
        seen.append("saved")
        return orig(self, fname, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    rng = np.random.default_rng(0)
    truth = np.zeros((32, 32), bool)
    truth[10:14, 10:14] = True
    dets = ["cvae", "cvae-ctx", "pca", "context-pca", "rx", "hyperspy-decomposition"]
    cond = []
    for k, name in enumerate(["fe-l shift 0.5 eV (paper)", "ti-l shift 1.0 eV, drift + gradient"]):
        nll = {d: rng.normal(size=(32, 32)) + 3 * truth * (k + 1) for d in dets}
        cond.append((name, {"truth": truth, "nll": nll,
                            "thresholds": {d: 1.5 for d in dets}}))
    paths = bench._figures(cond, tmp_path)
    assert len(paths) == 3 and seen.count("saved") == 3
    assert [s for s in seen if s != "saved"] == []


def test_the_checker_finds_clipped_and_unlabelled_text():
    """The check itself: a title pushed off the figure, an unlabelled axis and colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.eye(4))
    fig.colorbar(im, ax=ax)
    ax.set_title("a title far too long to fit in a figure three inches wide, surely")
    probs = text_problems(fig, where="f")
    assert any("leaves the" in p for p in probs)
    assert any("colour bar has no label" in p for p in probs)
    assert any("x tick labels but no x label" in p for p in probs)
    # an axis label over the plot below it
    fig = Figure(figsize=(4, 2), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    fig.subplots_adjust(hspace=0.0)
    for ax in (top, bottom):
        ax.set_xlabel("energy loss (eV)")
        ax.set_ylabel("y")
    assert any("lies over another plot" in p for p in text_problems(fig, where="g"))
