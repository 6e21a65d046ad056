"""scikit-learn compatibility of every detector (eelsanom.detectors.base): get_params(deep),
set_params, sklearn.base.clone, and score() leaving the fitted state alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest

sklearn_base = pytest.importorskip("sklearn.base")

from eelsanom.detectors import get_detector  # noqa: E402
from eelsanom.detectors.params import METHODS  # noqa: E402
from eelsanom.errors import InputError  # noqa: E402
from eelsanom.spectrum import Axis, SpectrumImage  # noqa: E402

#: a non-default setting of each detector, with tuples where a parameter takes one
CHANGED = {"pca": dict(n_components=3, energy_range=(701.0, 708.0), threshold="robust:4"),
           "rx": dict(energy_range=(701.0, 708.0), robust_fraction=0.1),
           "context-pca": dict(n_components=2, energy_range=(701.0, 708.0)),
           "bulk-context": dict(n_components=2, neighbourhood=5, energy_range=(701.0, 708.0)),
           "cvae": dict(latent_dim=2, width=4, epochs=2, energy_range=(701.0, 708.0),
                        nested_prefixes=(1, 2), device="cpu")}


def _si(ny: int = 12, nx: int = 12, ne: int = 40, seed: int = 0) -> SpectrumImage:
    rng = np.random.default_rng(seed)
    e = np.arange(ne, dtype=np.float64)
    lam = 300.0 * (np.exp(-e / 25.0) + 0.4 * np.exp(-0.5 * ((e - 20) / 3.0) ** 2))
    data = rng.poisson(np.broadcast_to(lam, (ny, nx, ne))).astype(np.float32)
    data[3, 4] = rng.poisson(1.6 * lam)
    return SpectrumImage(data=data, energy=Axis(ne, 0.25, 700.0, "eV", "Energy loss"))


def test_every_method_has_a_changed_setting():
    assert set(CHANGED) == set(METHODS)


@pytest.mark.parametrize("method", sorted(CHANGED))
def test_clone_copies_the_parameters_and_nothing_fitted(method):
    det = get_detector(method, **CHANGED[method])
    twin = sklearn_base.clone(det)
    assert type(twin) is type(det) and twin is not det
    assert twin.get_params() == det.get_params()
    assert twin.get_params(deep=False) == twin.get_params(deep=True)
    for k, v in CHANGED[method].items():
        assert twin.get_params()[k] == v and type(twin.get_params()[k]) is type(v)
    assert not twin.is_fitted
    assert repr(twin) == repr(det)


@pytest.mark.parametrize("method", ["pca", "rx", "context-pca", "bulk-context"])
def test_clone_of_a_fitted_detector_is_unfitted_and_fits_the_same(method):
    si = _si()
    det = get_detector(method, **CHANGED[method]).fit(si)
    twin = sklearn_base.clone(det)
    assert det.is_fitted and not twin.is_fitted
    np.testing.assert_allclose(twin.fit(si).score(si).nll, det.score(si).nll, rtol=1e-10)


@pytest.mark.parametrize("method", sorted(CHANGED))
def test_set_params_follows_sklearn(method):
    det = get_detector(method)
    before = det.get_params()
    assert det.set_params(**CHANGED[method]) is det
    assert {k: det.get_params()[k] for k in CHANGED[method]} == CHANGED[method]
    det2 = get_detector(method)
    # an unknown name is refused (a ValueError, as scikit-learn raises) and nothing is set
    with pytest.raises(ValueError, match="no parameter 'not_a_param'") as exc:
        det2.set_params(threshold="otsu", not_a_param=1)
    assert isinstance(exc.value, InputError)
    assert det2.get_params() == before


@pytest.mark.parametrize("method, threshold", [("pca", "calibrated:0.05"), ("rx", "robust"),
                                               ("context-pca", "gmm")])
def test_score_leaves_the_fitted_state_alone(method, threshold):
    si = _si()
    mask = np.ones(si.nav_shape, bool)
    mask[3, 4] = False
    det = get_detector(method, threshold=threshold).fit(si, mask)
    # a deep copy: an array or dict changed in place must not compare equal to itself
    state = copy.deepcopy({k: v for k, v in vars(det).items() if k.endswith("_")})
    other = _si(seed=3)
    det.score(other)
    det.score(si)
    after = {k: v for k, v in vars(det).items() if k.endswith("_")}
    assert after.keys() == state.keys()
    for k, v in state.items():
        _assert_same(after[k], v, k)


def _assert_same(a, b, where: str) -> None:
    """``a == b`` through dicts, lists and tuples; arrays elementwise, NaN equal to NaN."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for key, v in b.items():
            _assert_same(a[key], v, f"{where}[{key!r}]")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(b, float) and np.isnan(b):
        assert isinstance(a, float) and np.isnan(a), where
    else:
        assert a == b, where
