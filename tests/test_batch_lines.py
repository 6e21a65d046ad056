"""Batch error lines name each failed file once (issue 15, item 6)."""

from __future__ import annotations

import numpy as np

from eelsanom.batch import error_line
from eelsanom.detectors import get_detector
from eelsanom.spectrum import Axis, SpectrumImage
from tests.realdata import REAL, need_real
from tests.test_cli import run_cli


def test_error_line_names_the_path_once(tmp_path):
    p = tmp_path / "a.dm4"
    assert error_line(p, f"cannot read {p}: truncated") == f"eelsanom: error: cannot read {p}: truncated"
    assert error_line(p, "energy axis differs") == f"eelsanom: error: {p}: energy axis differs"
    assert error_line(p, "a.dm4: not a spectrum image") == f"eelsanom: error: {p}: not a spectrum image"


@need_real
def test_batch_stderr_names_each_failed_file_once(tmp_path):
    rng = np.random.default_rng(0)
    si = SpectrumImage(rng.poisson(50.0, size=(8, 8, 40)).astype(np.float32),
                       Axis(40, 1.0, 300.0, "eV"))
    model = get_detector("pca", n_components=2, device="cpu").fit(si).save(tmp_path / "m.h5")
    corrupt = tmp_path / "in" / "broken.hspy"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not an hdf5 file at all")
    single = REAL / "test-EELS_spectrum.dm3"
    r = run_cli("batch", str(corrupt), str(single), "--model", str(model),
                "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("eelsanom: error:")]
    assert len(lines) == 2, r.stderr
    for path in (corrupt, single):
        hit = [ln for ln in lines if path.name in ln]
        assert len(hit) == 1, r.stderr
        assert hit[0].count(path.name) == 1, hit[0]  # the path once, not twice
