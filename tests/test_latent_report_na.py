"""The latent report embeds no figure for a quantity it marks n/a (issue 15, item 6)."""

from __future__ import annotations

import json

import numpy as np

from eelsanom.detectors import get_detector
from eelsanom.latent.report import write_report
from eelsanom.simulate import simulate


def _run(q, seed):
    sim = simulate(shape=(16, 16), window="fe-l", magnitude=2.4, concentration=0.05, seed=0)
    det = get_detector("pca", n_components=q, device="cpu", seed=seed)
    return det.fit(sim.si, sim.bulk_mask).score(sim.si)


def test_one_dimensional_codes_get_no_relative_agreement_figure(tmp_path):
    a, b = _run(1, 0), _run(1, 1)
    report = write_report(a, b, out=tmp_path / "rep", quantization=False, dse_points=100,
                          k_local=20)
    md = report.read_text()
    row = [ln for ln in md.splitlines() if ln.startswith("| relative-representation agreement")]
    assert len(row) == 1 and "| n/a |" in row[0]
    assert "compare_relative_agreement.png" not in md
    assert not (tmp_path / "rep" / "compare_relative_agreement.png").exists()
    js = json.loads((tmp_path / "rep" / "latent_report.json").read_text())
    assert "relative_agreement" not in js["comparison"]["figures"]
    # every figure the report embeds exists and shows a finite quantity
    for name in js["comparison"]["figures"].values():
        assert (tmp_path / "rep" / name).is_file() and f"({name})" in md


def test_two_dimensional_codes_keep_the_figure(tmp_path):
    a, b = _run(2, 0), _run(2, 1)
    report = write_report(a, b, out=tmp_path / "rep", quantization=False, dse_points=100,
                          k_local=20)
    assert "compare_relative_agreement.png" in report.read_text()
    assert np.isfinite(a.latent).all()
