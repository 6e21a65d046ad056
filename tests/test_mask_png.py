"""Mask PNGs: two colours and a legend, an empty mask not mid-grey (issue 15, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.image import imread

from eelsanom.io import MASK_COLOURS, save_png_map
from eelsanom.spectrum import Axis, SpectrumImage


def _si(ny=12, nx=16):
    return SpectrumImage(np.zeros((ny, nx, 4), np.float32), Axis(4, 1.0, 0.0, "eV"))


def _share(img, colour, tol=0.02):
    rgb = np.asarray(mcolors.to_rgb(colour))
    return float(np.mean(np.all(np.abs(img[..., :3] - rgb) < tol, axis=-1)))


@pytest.mark.parametrize("n_flagged", [0, 5, 12 * 16])
def test_mask_png_uses_two_colours(tmp_path, n_flagged):
    mask = np.zeros((12, 16), bool)
    mask.flat[:n_flagged] = True
    p = save_png_map(mask, tmp_path / "m.png", si_or_result=_si(), title="mask",
                     cbar_label="flagged: NLL > 3")
    img = imread(p)
    no, yes = _share(img, MASK_COLOURS[0]), _share(img, MASK_COLOURS[1])
    assert _share(img, "0.5", tol=0.03) < 0.01  # no mid-grey map
    if n_flagged == 0:
        assert no > 0.1 and yes < 0.005  # the legend patch only
    elif n_flagged == mask.size:
        assert yes > 0.1 and no < 0.005
    else:
        assert no > 0.1 and yes > 0.002


def test_float_map_keeps_its_colour_bar(tmp_path):
    arr = np.linspace(0, 1, 12 * 16).reshape(12, 16)
    p = save_png_map(arr, tmp_path / "f.png", si_or_result=_si(), title="nll", cbar_label="NLL")
    img = imread(p)
    assert _share(img, MASK_COLOURS[1]) < 0.001
