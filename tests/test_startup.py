"""Start-up (issue 24): help and ``info`` import neither torch nor exspy (nor HyperSpy for a .hspy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "sample_fe-l_shift1.5.hspy"

_PROBE = """
import sys
from eelsanom import cli
sys.argv = ["eelsanom"] + {argv!r}
try:
    cli.main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "exspy", "hyperspy", "dask.array") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def _heavy_imports(argv: list[str]) -> tuple[list[str], str]:
    p = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True,
                       text=True, timeout=300)
    line = [x for x in p.stdout.splitlines() if x.startswith("HEAVY:")]
    assert line, p.stdout + p.stderr
    return [m for m in line[-1][len("HEAVY:"):].split(",") if m], p.stdout


@pytest.mark.parametrize("argv", [["--help"], ["detect", "--help"], ["train", "--help"],
                                  ["info", str(SAMPLE)]])
def test_help_and_info_import_neither_torch_nor_exspy(argv):
    heavy, out = _heavy_imports(argv)
    assert heavy == [], heavy
    if argv[0] == "info":
        assert "64 x 64" in out and "680 to 759.8 eV" in out


def test_detect_help_still_shows_the_detectors_defaults():
    from eelsanom.detectors.params import defaults

    _, out = _heavy_imports(["detect", "--help"])
    text = " ".join(out.split())
    assert f"early stopping may end sooner; 1 to 100000 (default: {defaults('cvae')['epochs']})" \
        in text


def _both(path):
    from eelsanom.io.read import _describe, _describe_hspy, _read_all

    fast = _describe_hspy(Path(path))
    slow = [_describe(s, i) for i, s in enumerate(_read_all(Path(path), lazy=True))]
    return fast, slow


@pytest.mark.parametrize("kind", ["sample", "line", "untyped", "two-d"])
def test_info_header_path_equals_hyperspy(tmp_path, kind):
    """The h5py header reader gives what HyperSpy's lazy load gives, or steps aside (None)."""
    import hyperspy.api as hs

    if kind == "sample":
        path = SAMPLE
    else:
        rng = np.random.default_rng(0)
        shape = {"line": (7, 33), "untyped": (5, 6, 21), "two-d": (4, 9, 11)}[kind]
        s = (hs.signals.Signal2D if kind == "two-d" else hs.signals.Signal1D)(
            rng.poisson(5.0, shape).astype(np.float32))
        if kind == "line":
            s.set_signal_type("EELS")
        s.axes_manager[-1].offset, s.axes_manager[-1].scale = 400.0, 0.25
        s.axes_manager[-1].units = "eV"
        s.metadata.General.title = f"{kind} test"
        path = tmp_path / f"{kind}.hspy"
        s.save(path)
    fast, slow = _both(path)
    if kind == "two-d":
        assert fast is None
    else:
        assert fast == slow
