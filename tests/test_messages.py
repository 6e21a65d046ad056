"""Messages and progress (issue 23, item 4): the detector's own name and the right number in
every caution, the command line's words for command-line users, warnings on their own line
and not on a progress bar's, no "1/1" bars, a per-epoch time for the 3D-CVAE, the few-pixels
caution for every detector, and a note when detectors or seeds disagree."""

from __future__ import annotations

import re

import numpy as np
import pytest

from eelsanom import cautions
from eelsanom.detectors import get_detector
from eelsanom.errors import InputError
from eelsanom.simulate import simulate
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    sim = simulate(shape=(12, 12), window="fe-l", anomaly="shift", magnitude=2.4, seed=4)
    return sim, sim.save(tmp_path_factory.mktemp("msg") / "small.hspy")


def test_cautions_name_the_detector_and_count_right():
    (msg,) = [c for c in cautions.fit_cautions("context-pca", 5, 50, n_components=1)
              if "fitted on only" in c]
    assert msg.startswith("context PCA was fitted on only 5 pixels")
    comp = cautions.fit_cautions("context-pca", 8, 50, n_components=1)[1]
    assert "context PCA fitted 1 component on 8 pixels" in comp
    assert "1 components" not in " ".join(cautions.fit_cautions("pca", 1, 50, n_components=1))
    assert "only 1 pixel (" in cautions.fit_cautions("pca", 1, 50)[0]
    assert cautions.fit_cautions("rx", 150, 200)[0].startswith("RX's covariance")
    assert cautions.display_name("cvae") == "3D-CVAE"
    assert cautions.plural(1, "pixel") == "1 pixel" and cautions.plural(0, "pixel") == "0 pixels"


def test_a_context_pca_fit_says_context_pca(small):
    sim, _ = small
    mask = np.zeros((12, 12), bool)
    mask[:3, :4] = True
    det = get_detector("context-pca").fit(sim.si, mask)
    text = " ".join(det.fit_cautions_)
    assert "context PCA was fitted on only" in text
    assert not re.search(r"(?<!context )PCA was fitted", text)


def test_the_3d_cvae_gets_the_few_pixels_caution():
    assert cautions.network_fit_cautions("cvae", 500) == []
    (msg,) = cautions.network_fit_cautions("cvae", 20)
    assert msg.startswith("the 3D-CVAE was trained on only 20 pixels")
    sim = simulate(shape=(8, 10), window="fe-l", anomaly="shift", magnitude=2.4, seed=5)
    mask = np.zeros((8, 10), bool)
    mask[:2] = True  # 20 training pixels, as on the 40-position line scan of the issue
    det = get_detector("cvae", epochs=1, latent_dim=2, seed=0, device="cpu").fit(sim.si, mask)
    res = det.score(sim.si)
    assert any("3D-CVAE was trained on only 20 pixels" in c for c in res.info["cautions"])


def test_disagreement_note_lists_positions_and_how_far_to_trust():
    a = np.zeros((1, 40), bool)
    a[0, [2, 19, 30, 37]] = True
    b = np.zeros((1, 40), bool)
    b[0, 14] = True
    (note,) = cautions.disagreement_notes({"context PCA": a, "3D-CVAE": b})
    assert "context PCA and 3D-CVAE disagree" in note
    assert "context PCA flags 4 pixels (positions 2, 19, 30, 37)" in note
    assert "3D-CVAE flags 1 pixel (position 14)" in note
    assert "On 40 pixels" in note and "neither list is reliable" in note
    assert cautions.disagreement_notes({"a": a, "b": a.copy()}) == []  # agreeing: no note
    assert cautions.disagreement_notes({"a": a}) == []
    with pytest.raises(InputError, match="one shape"):
        cautions.disagreement_notes({"a": a, "b": np.zeros((2, 20), bool)})


def test_train_roi_error_speaks_the_command_line(small, tmp_path):
    _, path = small
    r = run_cli("detect", str(path), "--method", "cvae", "--train-roi", "0:1,0:2", "--out",
                str(tmp_path))
    assert r.returncode == 2, r.stderr
    err = r.stderr
    assert "--train-roi 0:1,0:2: the bulk region covers 2 pixels" in err
    assert "train_mask" not in err and "Draw" not in err and "--train-roi Y0:Y1,X0:X1" in err


def test_warnings_get_their_own_line_and_no_one_step_bars(small, tmp_path):
    _, path = small
    r = run_cli("detect", str(path), "--method", "pca", "--train-roi", "0:2,0:5", "--out",
                str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.split("\n") if "WARNING" in ln]
    assert lines, r.stderr  # 10 training pixels: cautions
    for ln in lines:  # each warning starts its line (after tqdm clears the bars with \r)
        assert re.search(r"(^|\r|\x1b\[A)WARNING", ln), repr(ln)
    assert "1/1" not in r.stderr


def test_cvae_bars_show_time_per_epoch(small, tmp_path):
    _, path = small
    r = run_cli("detect", str(path), "--method", "cvae", "--epochs", "2", "--latent-dim", "2",
                "--device", "cpu", "--train-mask", "file", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "s_per_epoch=" in r.stderr and "epoch" in r.stderr
    # the batch bar restarts each epoch: its count never passes its total
    for m in re.finditer(r"batch:.*?\| *(\d+)/(\d+)", r.stderr):
        assert int(m.group(1)) <= int(m.group(2))
