"""HyperSpy in and out (issue 23, item 1): a result's maps as signals with the input's axes and
metadata, round-tripping through .hspy; a line scan as a profile; a HyperSpy ROI or boolean
signal as the bulk region; ``res.plot()`` with HyperSpy's plotting."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from eelsanom.detectors import get_detector
from eelsanom.detectors.base import roi_to_mask
from eelsanom.errors import InputError
from eelsanom.simulate import simulate

hs = pytest.importorskip("hyperspy.api")
pytest.importorskip("exspy")
matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sig():
    """A small simulated EELS spectrum image as a HyperSpy signal (with its ground truth)."""
    sim = simulate(shape=(16, 20), window="fe-l", anomaly="shift", magnitude=2.4, seed=3)
    s = sim.to_signal()
    s.axes_manager.navigation_axes[0].scale = 0.25  # x: distinct from y
    s.axes_manager.navigation_axes[0].offset = 1.0
    s.axes_manager.navigation_axes[1].scale = 0.5
    s.axes_manager.navigation_axes[1].offset = -2.0
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300.0)
    s.metadata.General.title = "crafted SI"
    return s


@pytest.fixture(scope="module")
def line(sig):
    return sig.inav[:, 5]  # one row: a line scan along x


def _fit_score(s, mask=None, method="pca"):
    det = get_detector(method)
    det.fit(s, mask)
    return det.score(s)


def test_image_maps_round_trip_through_hspy(sig, tmp_path):
    res = _fit_score(sig)
    for which in ("nll", "mask"):
        out = res.to_signal(which)
        assert out.axes_manager.signal_dimension == 2
        assert out.axes_manager.navigation_dimension == 0
        p = tmp_path / f"{which}.hspy"
        out.save(p)
        back = hs.load(p)
        np.testing.assert_array_equal(back.data, res.nll if which == "nll" else res.mask)
        if which == "mask":
            assert back.data.dtype == bool
        for ax_in, ax_out in zip(sig.axes_manager.navigation_axes, back.axes_manager.signal_axes):
            assert ax_out.name == ax_in.name
            assert ax_out.units == ax_in.units
            assert ax_out.scale == pytest.approx(ax_in.scale)
            assert ax_out.offset == pytest.approx(ax_in.offset)
        md = back.metadata
        assert md.General.title.startswith("crafted SI: ")
        assert md.Acquisition_instrument.TEM.beam_energy == 300.0
        assert md.eelsanom.method == "pca"
        assert md.eelsanom.threshold == pytest.approx(res.threshold)
        assert md.eelsanom.map == which
    assert set(res.to_signals()) >= {"nll", "mask"}
    with pytest.raises(InputError, match="not a map of this result"):
        res.to_signal("nope")


def test_line_scan_maps_are_profiles_and_round_trip(line, tmp_path):
    res = _fit_score(line)
    nll = res.to_signal()
    assert nll.axes_manager.signal_dimension == 1 and nll.data.shape == (20,)
    nll.save(tmp_path / "nll.hspy")
    back = hs.load(tmp_path / "nll.hspy")
    np.testing.assert_allclose(back.data, res.nll[0])
    ax_in, ax_out = line.axes_manager.navigation_axes[0], back.axes_manager.signal_axes[0]
    assert (ax_out.name, ax_out.units) == (ax_in.name, ax_in.units)
    assert (ax_out.scale, ax_out.offset) == pytest.approx((ax_in.scale, ax_in.offset))
    assert res.to_signal("mask").data.shape == (20,)


def test_rectangular_roi_is_the_bulk_region(sig):
    # calibrated units: x 1.0 + 0.25/px, y -2.0 + 0.5/px
    roi = hs.roi.RectangularROI(left=2.0, top=0.0, right=4.0, bottom=3.0)
    m = roi_to_mask(roi, *_axes(sig))
    cut = roi(sig)  # HyperSpy's own cut selects the same pixels
    ys, xs = np.nonzero(m)
    assert m.sum() == cut.axes_manager.navigation_size
    ax_x, ax_y = cut.axes_manager.navigation_axes
    assert ax_x.offset == pytest.approx(1.0 + 0.25 * xs.min())
    assert ax_y.offset == pytest.approx(-2.0 + 0.5 * ys.min())
    by_roi = _fit_score(sig, roi)
    by_mask = _fit_score(sig, m)
    np.testing.assert_array_equal(by_roi.nll, by_mask.nll)
    assert by_roi._detector.n_fit_pixels_ == int(m.sum())
    # a boolean HyperSpy signal works too
    msig = hs.signals.Signal2D(m)
    np.testing.assert_array_equal(_fit_score(sig, msig).nll, by_mask.nll)


def test_roi_outside_the_image_is_refused(sig):
    roi = hs.roi.RectangularROI(left=50.0, top=0.0, right=60.0, bottom=3.0)
    with pytest.raises(InputError, match="selects no pixel.*move or enlarge"):
        get_detector("pca").fit(sig, roi)


def test_span_roi_on_a_line_scan(line):
    span = hs.roi.SpanROI(left=1.5, right=4.0)
    res = _fit_score(line, span)
    assert res._detector.n_fit_pixels_ == 10  # (4.0 - 1.5) / 0.25 px


def test_fit_on_a_roi_cut_signal(sig):
    """``fit(roi(s))``: the cut keeps the whole image's ground-truth metadata, which no longer
    fits and is dropped (it was refused with a message about ground truth)."""
    roi = hs.roi.RectangularROI(left=1.0, top=-2.0, right=3.5, bottom=2.0)
    det = get_detector("pca").fit(roi(sig))
    assert det.n_fit_pixels_ == roi(sig).axes_manager.navigation_size
    assert det.score(sig).nll.shape == (16, 20)


def test_plot_shows_data_model_nll_and_mask(sig, line):
    import matplotlib.pyplot as plt

    plt.close("all")
    shown = _fit_score(sig).plot(residual=True)
    assert set(shown) == {"nll", "mask", "data", "model", "residual"}
    assert shown["model"].data.shape == shown["data"].data.shape
    assert len(plt.get_fignums()) >= 4  # navigator (NLL), data, model, residual, mask
    plt.close("all")
    shown = _fit_score(line).plot()
    assert shown["nll"].axes_manager.signal_dimension == 1
    plt.close("all")


def _axes(s):
    from eelsanom.spectrum import as_spectrum_image

    si = as_spectrum_image(s)
    return si.y, si.x
