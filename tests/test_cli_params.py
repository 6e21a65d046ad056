"""The detector options of ``detect``/``train`` come from the one parameter table."""

from __future__ import annotations

import pytest

from eelsanom.cli import _DETECTOR_OPTIONS, _detector_params, build_parser, main
from eelsanom.detectors import get_detector
from eelsanom.detectors.params import METHODS, detector_params

GIVEN = ["--components", "3", "--pooling", "0.5", "--device", "cpu", "--seed", "7",
         "--epochs", "2", "--latent-dim", "4", "--patch", "8", "--context", "pixel",
         "--beta", "0.5", "--lr", "0.01", "--n-seeds", "2", "--nested-latent", "1,2",
         "--extend-bulk", "off",
         "--scale", "free"]


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["detect", "train"])
def test_help_gives_each_option_its_table_text_and_the_detectors_defaults(capsys, command):
    text = _help(capsys, command)
    cvae, pca = get_detector("cvae"), get_detector("pca")
    for dest, name in _DETECTOR_OPTIONS.items():
        flag = "--" + dest.replace("_", "-")
        assert flag in text, flag
        table = next(detector_params(m)[name] for m in METHODS if name in detector_params(m))
        assert " ".join(table.help.split()) in text, name
    assert f"(default: {cvae.epochs})" in text
    assert f"(default: {cvae.latent_dim})" in text
    assert f"(default: {cvae.patch_size})" in text
    assert f"3D-CVAE {cvae.pooling:g}" in text and f"PCA {pca.pooling:g}" in text
    assert f"(default: {pca.device})" in text and f"(default: {pca.seed})" in text


@pytest.mark.parametrize("method", list(METHODS))
def test_options_reach_exactly_the_detectors_that_take_them(method):
    args = build_parser().parse_args(["detect", "x.hspy", "--method", method, "--out", "o",
                                      *GIVEN])
    p = _detector_params(args)
    takes = set(detector_params(method))
    want = {name for name in _DETECTOR_OPTIONS.values() if name in takes}
    assert set(p) - {"energy_range", "threshold"} == want
    det = get_detector(method, **p)
    det._validate_params()
    assert det.get_params()["seed"] == 7
    if "pooling" in takes:
        assert det.get_params()["pooling"] == 0.5
    if "scale" in takes:  # the PPCA family's per-pixel scale
        assert det.get_params()["scale"] == "free"


@pytest.mark.parametrize("method", list(METHODS))
def test_options_not_given_leave_the_detectors_defaults(method):
    args = build_parser().parse_args(["train", "x.hspy", "--method", method,
                                      "--model-out", "m.h5"])
    assert _detector_params(args) == {"energy_range": None}
    assert get_detector(method, **_detector_params(args)).get_params() == \
        get_detector(method).get_params()
