"""The one dialect of parameter checking (eelsanom.checks) and its use by the detectors and
the latent tools: the parameter named, what was expected, what came, bools never numbers."""

from __future__ import annotations

import numpy as np
import pytest

from eelsanom import checks
from eelsanom.detectors.cvae3d import CVAE3DDetector
from eelsanom.errors import InputError
from eelsanom.latent import _common


@pytest.mark.parametrize("value", [True, 1.5, "3", None, np.float64(2.0)])
def test_check_int_refuses_what_is_not_an_integer(value):
    with pytest.raises(InputError, match=r"^k: expected an integer >= 1, got "):
        checks.check_int("k", value, 1)


def test_check_int_bounds_none_and_fix():
    assert checks.check_int("k", np.int64(4), 1, 8) == 4 and type(checks.check_int("k", 4)) is int
    assert checks.check_int("k", None, 1, allow_none=True) is None
    with pytest.raises(InputError, match=r"expected an integer in \[1, 8\], got 9\. Use 8\."):
        checks.check_int("k", 9, 1, 8, fix="Use 8.")
    with pytest.raises(InputError, match=r"expected None \(automatic\) or an integer >= 1"):
        checks.check_int("k", 0, 1, allow_none=True)


@pytest.mark.parametrize("value, ok", [(0.5, True), (0.0, False), (1.0, True), (1.01, False),
                                       (float("nan"), False), (True, False), ("0.5", False)])
def test_check_number_open_and_closed_bounds(value, ok):
    if ok:
        assert checks.check_number("lr", value, 0.0, 1.0, low_open=True) == value
    else:
        with pytest.raises(InputError, match=r"^lr: expected a number > 0.0 and <= 1.0, got "):
            checks.check_number("lr", value, 0.0, 1.0, low_open=True)


def test_choice_positive_and_window():
    assert checks.check_choice("transform", "none", ("anscombe", "none")) == "none"
    with pytest.raises(InputError, match=r"transform: expected one of \['anscombe', 'none'\]"):
        checks.check_choice("transform", "log", ("anscombe", "none"))
    assert checks.check_positive("sigma", "2.5") == 2.5
    for bad in (0, -1, float("inf"), "x", True):
        with pytest.raises(InputError, match="sigma: expected a positive number"):
            checks.check_positive("sigma", bad)
    assert checks.check_window("energy_range", None) is None
    assert checks.check_window("energy_range", [700, None]) == (700, None)
    for bad in ((740, 700), (1, 2, 3), 5, ("a", 3)):
        with pytest.raises(InputError, match=r"energy_range: expected \(start_eV, stop_eV\)"):
            checks.check_window("energy_range", bad)


def test_detectors_and_latent_tools_speak_the_same_dialect():
    with pytest.raises(InputError, match=r"^epochs: expected an integer >= 1, got 0\.$"):
        CVAE3DDetector(epochs=0)._validate_params()
    with pytest.raises(InputError, match=r"^lr: expected a number > 0.0 and <= 1.0, got 2\.$"):
        CVAE3DDetector(lr=2)._validate_params()
    with pytest.raises(InputError, match=r"^energy_range: expected \(start_eV, stop_eV\) with "
                                         r"start < stop, got \(740, 700\)\.$"):
        CVAE3DDetector(energy_range=(740, 700))._validate_params()
    with pytest.raises(InputError, match=r"^k: expected an integer >= 1, got 0\.$"):
        _common.check_int(0, "k", 1)
    with pytest.raises(InputError, match=r"^sigma: expected a positive number, got -1\.$"):
        _common.check_positive(-1, "sigma")
