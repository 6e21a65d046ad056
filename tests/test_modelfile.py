"""Damaged or tampered model files are refused with a clear message (exit 2), never crash.

Each case copies a good model file (PCA, RX or a tiny 3D-CVAE, trained here), damages it
with h5py the way issue 16 describes, and runs ``eelsanom apply`` on it through
:func:`eelsanom.cli.main`: every case must end with exit status 2 and a message
"model file M: expected ..., found ...", not an internal error, and nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from eelsanom.cli import main
from eelsanom.detectors import get_detector, load_detector
from eelsanom.errors import InputError
from eelsanom.simulate import simulate


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("models")
    sim = simulate(shape=(10, 10), seed=1)
    data = sim.save(d / "data.hspy")
    out = {"data": data, "scores": {}}
    from eelsanom.io import load_spectrum_image

    si = load_spectrum_image(data)
    for method, kw in (("pca", {}), ("rx", {}),
                       ("cvae", {"epochs": 1, "latent_dim": 2, "width": 4, "patch_size": 8,
                                 "device": "cpu"})):
        det = get_detector(method, **kw).fit(sim.si)
        out[method] = det.save(d / f"{method}.h5")
        out["scores"][method] = det.score(si).nll  # what the fitted detector gives, to compare
    return out


def _attr_json(name, fn):
    def edit(f):
        obj = json.loads(f.attrs[name])
        fn(obj)
        f.attrs[name] = json.dumps(obj)
    return edit


def _replace(name, data=None, **kw):
    def edit(f):
        del f["arrays"][name]
        if data is not None:
            f["arrays"].create_dataset(name, data=data)
        else:
            f["arrays"].create_dataset(name, **kw)
    return edit


def _set(path_in_params, value, attr="state"):
    def fn(obj):
        node = obj
        for k in path_in_params[:-1]:
            node = node[k]
        node[path_in_params[-1]] = value
    return _attr_json(attr, fn)


def _external(tmp: Path):
    def edit(f):
        other = tmp / "elsewhere.h5"
        with h5py.File(other, "w") as g:
            g["mean"] = np.zeros(3)
        del f["arrays"]["mean"]
        f["arrays"]["mean"] = h5py.ExternalLink(str(other), "/mean")
    return edit


def _virtual(f):
    n = f["arrays"]["mean"].shape[0]
    del f["arrays"]["mean"]
    layout = h5py.VirtualLayout(shape=(n,), dtype="f8")
    layout[:] = h5py.VirtualSource("/etc/passwd", "x", shape=(n,))
    f["arrays"].create_virtual_dataset("mean", layout, fillvalue=0)


def _scale(name, factor):
    def edit(f):
        a = f["arrays"][name][()] * factor
        _replace(name, a)(f)
    return edit


def _nan(name):
    def edit(f):
        a = np.array(f["arrays"][name][()], dtype=np.float64)
        a.flat[0] = np.nan
        _replace(name, a.astype(f["arrays"][name].dtype))(f)
    return edit


def _first_weight(f):
    return sorted(k for k in f["arrays"] if k.startswith("net.") and k.endswith("weight"))[0]


def _cvae_shape(f):
    k = _first_weight(f)
    _replace(k, np.zeros((3, 3), np.float32))(f)


def _cvae_nan(f):
    _nan(_first_weight(f))(f)


CASES = {
    # generic (PCA model)
    "version-string": ("pca", lambda f: f.attrs.__setitem__("format_version", "one")),
    "version-float": ("pca", lambda f: f.attrs.__setitem__("format_version", 1.5)),
    "version-missing": ("pca", lambda f: f.attrs.__delitem__("format_version")),
    "detector-unknown": ("pca", lambda f: f.attrs.__setitem__("detector", "isolation-forest")),
    "params-list": ("pca", lambda f: f.attrs.__setitem__("params", "[1, 2]")),
    "params-deep": ("pca", lambda f: f.attrs.__setitem__("params",
                                                         "[" * 100000 + "]" * 100000)),
    "params-not-json": ("pca", lambda f: f.attrs.__setitem__("params", "{'a': 1")),
    "params-unknown-key": ("pca", _set(["rm_rf"], "/", attr="params")),
    "params-bad-threshold": ("pca", _set(["threshold"], "value:nan", attr="params")),
    "params-bad-transform": ("pca", _set(["transform"], "exp", attr="params")),
    "state-no-energy-axis": ("pca", _attr_json("state", lambda s: s.pop("energy_axis"))),
    "state-axis-negative-scale": ("pca", _set(["energy_axis", "scale"], -0.3)),
    "state-axis-huge": ("pca", _set(["energy_axis", "size"], 10**12)),
    "no-arrays": ("pca", lambda f: f.__delitem__("arrays")),
    "no-mean": ("pca", lambda f: f["arrays"].__delitem__("mean")),
    "mean-wrong-shape": ("pca", _replace("mean", np.zeros(7))),
    "mean-strings": ("pca", _replace("mean", np.array([b"a", b"b"]))),
    "mean-8TB": ("pca", _replace("mean", shape=(2**40,), dtype="f8", chunks=(1024,))),
    "components-nan": ("pca", _nan("components")),
    "variance-negative": ("pca", _scale("explained_variance", -1.0)),
    "noise-variance-negative": ("pca", _set(["noise_variance"], -1.0)),
    "rx-var-negative": ("rx", _scale("var", -1.0)),
    "rx-whitener-shape": ("rx", _replace("whitener", np.eye(5))),
    "cvae-arch-unknown-key": ("cvae", _set(["arch", "exec"], 1)),
    "cvae-arch-negative-width": ("cvae", _set(["arch", "width"], -4)),
    "cvae-arch-huge-width": ("cvae", _set(["arch", "width"], 10**9)),
    "cvae-arch-n-energy": ("cvae", _set(["arch", "n_energy"], 5)),
    "cvae-state-dict-shape": ("cvae", _cvae_shape),
    "cvae-nan-weights": ("cvae", _cvae_nan),
    "cvae-scaler-negative": ("cvae", _set(["scaler", "scale"], -1.0)),
}


def _damaged(models, tmp_path, kind, edit):
    p = tmp_path / f"{kind}_damaged.h5"
    shutil.copy(models[kind], p)
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_model_file_is_refused_naming_the_model(models, tmp_path, capsys, case):
    kind, edit = CASES[case]
    model = _damaged(models, tmp_path, kind, edit)
    out = tmp_path / "out"
    rc = main(["apply", str(model), str(models["data"]), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "internal error" not in err
    assert str(model) in err and "expected" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_virtual_and_external_data_in_a_model_is_never_followed(models, tmp_path):
    for edit in (_external(tmp_path), _virtual):
        model = _damaged(models, tmp_path, "pca", edit)
        with pytest.raises(InputError, match="model file .*inside the file"):
            load_detector(model)


def test_good_models_still_load_and_score_the_same(models):
    from eelsanom.io import load_spectrum_image

    si = load_spectrum_image(models["data"])
    for kind in ("pca", "rx", "cvae"):
        det = load_detector(models[kind])
        res = det.score(si)
        assert np.isfinite(res.nll).all()
        np.testing.assert_array_equal(res.nll, models["scores"][kind], err_msg=kind)


@pytest.mark.slow
def test_a_model_file_never_chooses_a_file_to_write(models, tmp_path):
    """Item 5: a saved 3D-CVAE ``checkpoint`` naming a file is ignored on load, so refitting
    the loaded model never writes there."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    model = _damaged(models, tmp_path, "cvae", _set(["checkpoint"], str(victim), attr="params"))
    det = load_detector(model)
    assert det.checkpoint is None
    det.set_params(epochs=1)
    det.fit(simulate(shape=(8, 8), seed=2).si)
    assert victim.read_text() == "precious"
    assert not list(tmp_path.glob("victim.txt.*"))
