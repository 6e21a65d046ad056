"""The 3D-CVAE's latent training options: Matryoshka nested latents and seed ensembles."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eelsanom import scoring  # noqa: E402
from eelsanom.detectors import load_detector  # noqa: E402
from eelsanom.detectors.cvae3d import CVAE3DDetector  # noqa: E402
from eelsanom.errors import Cancelled, InputError  # noqa: E402
from eelsanom.latent import prefix_curve, seed_ensemble  # noqa: E402
from eelsanom.modelfile import read_model, write_model  # noqa: E402
from eelsanom.spectrum import Axis, SpectrumImage  # noqa: E402

TINY = dict(latent_dim=3, width=4, spatial_layers=1, patch_size=8, epochs=3, patience=50,
            device="cpu", seed=0)


def _smooth_si(ny: int = 12, nx: int = 12, ne: int = 40, seed: int = 0) -> SpectrumImage:
    e = np.arange(ne, dtype=np.float64)
    yy, xx = np.mgrid[0:ny, 0:nx]
    thick = 1.0 + 0.1 * np.sin(yy / 5.0) * np.cos(xx / 7.0)
    lam = thick[..., None] * (60.0 * np.exp(-e / 30.0)
                              + 120.0 * np.exp(-0.5 * ((e - ne / 2) / 1.5) ** 2))
    data = np.random.default_rng(seed).poisson(lam).astype(np.float32)
    return SpectrumImage(data=data, energy=Axis(ne, 0.3, 700.0, "eV", "Energy loss"))


def _manifold_si(n: int = 16, ne: int = 40) -> SpectrumImage:
    """A bulk on a 1-D non-linear manifold: a peak whose position varies smoothly (+-6 channels).

    PCA needs several axes for it, a non-linear decoder only one coordinate.
    """
    e = np.arange(ne, dtype=np.float64)
    yy, xx = np.mgrid[0:n, 0:n]
    pos = ne / 2 + 6.0 * np.sin(2 * np.pi * (yy + 0.7 * xx) / n)
    lam = 30.0 + 400.0 * np.exp(-0.5 * ((e - pos[..., None]) / 2.0) ** 2)
    data = np.random.default_rng(0).poisson(lam).astype(np.float32)
    return SpectrumImage(data=data, energy=Axis(ne, 0.3, 700.0, "eV", "Energy loss"))


MANIFOLD = dict(TINY, epochs=15, lr=1e-2, pooling=0.0)


@pytest.fixture(scope="module")
def manifold_pair() -> tuple[CVAE3DDetector, CVAE3DDetector, SpectrumImage]:
    si = _manifold_si()
    plain = CVAE3DDetector(**MANIFOLD).fit(si)
    nested = CVAE3DDetector(**MANIFOLD, nested_prefixes=(1, 3)).fit(si)
    return plain, nested, si


@pytest.fixture(scope="module")
def ensemble() -> tuple[CVAE3DDetector, SpectrumImage]:
    si = _smooth_si()
    return CVAE3DDetector(**TINY, n_seeds=2).fit(si), si


@pytest.fixture(scope="module")
def single(ensemble) -> CVAE3DDetector:
    return CVAE3DDetector(**TINY).fit(ensemble[1])


# ----------------------------------------------------------------------------- Matryoshka
@pytest.mark.slow
def test_nested_training_makes_the_first_dimension_a_working_code(manifold_pair):
    """Known answer: the bulk is a 1-D manifold, so a 1-dimensional code suffices.

    Ordinary training keeps the PCA start's first axis (a linear 1-D code, which
    misses most of a moving peak); nested training teaches the decoder to read the
    position off the first dimension. Measured (seed 0): median own NLL of prefix 1
    about 90 nats (nested) vs about 280 (ordinary); noise alone scores about 57.
    """
    plain, nested, si = manifold_pair
    rec_plain = [float(np.median(plain.prefix_scorer(si, kind="recon_nll")(m))) for m in (1, 3)]
    rec_nest = [float(np.median(nested.prefix_scorer(si, kind="recon_nll")(m))) for m in (1, 3)]
    assert rec_nest[0] < 0.6 * rec_plain[0]
    # every prefix of the nested model is a code: its prefix-1 is within 2x of its full model,
    # while the ordinary model's prefix 1 is > 3x worse than its full code
    assert rec_nest[0] < 2.0 * rec_nest[1]
    assert rec_plain[0] > 3.0 * rec_plain[1]


@pytest.mark.slow
def test_prefix_scorer_last_prefix_is_the_full_score(manifold_pair):
    plain, nested, si = manifold_pair
    for det in (plain, nested):
        sc = det.prefix_scorer(si)
        full = det.score(si)
        np.testing.assert_allclose(sc(3), full.nll, rtol=1e-6, atol=1e-6)
        rec = det.prefix_scorer(si, kind="recon_nll")(3)
        np.testing.assert_allclose(rec, full.maps["recon_nll"], rtol=1e-6, atol=1e-6)
    assert nested.prefix_scorer(si).prefixes == (1, 3)
    assert plain.prefix_scorer(si).prefixes == (1, 2, 3)
    assert not plain.prefix_scorer(si).nested and nested.prefix_scorer(si).nested


@pytest.mark.slow
def test_prefix_curve_reads_the_scorer(manifold_pair):
    plain, _, si = manifold_pair
    truth = np.zeros(si.nav_shape, bool)
    truth[:4, :4] = True  # any labelling: the curve's bookkeeping is what is tested
    sc = plain.prefix_scorer(si)
    curve = prefix_curve(sc, truth=truth)  # prefixes come from the scorer
    assert curve.prefixes.tolist() == [1, 2, 3]
    assert curve.auc[-1] == pytest.approx(scoring.roc_auc(plain.score(si).nll, truth))
    # the score is a NLL: more code dimensions explain the bulk better (median NLL falls)
    assert curve.median_nll[0] > curve.median_nll[-1]
    with pytest.raises(InputError, match="expected an integer in 1..latent_dim"):
        sc(4)
    with pytest.raises(InputError, match="kind"):
        plain.prefix_scorer(si, kind="elbo")


@pytest.mark.slow
def test_nested_model_round_trips(manifold_pair, tmp_path):
    _, nested, si = manifold_pair
    path = nested.save(tmp_path / "nested.h5")
    back = load_detector(path)
    assert back.nested_prefixes_ == (1, 3)
    assert list(back.nested_prefixes) == [1, 3]
    np.testing.assert_allclose(back.prefix_scorer(si)(1), nested.prefix_scorer(si)(1),
                               rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ((0, 3), "1..latent_dim"),
    ((1, 4), "1..latent_dim"),
    ((2, 1, 3), "strictly increasing"),
    ((1, 1), "strictly increasing"),
    ((), "1..latent_dim"),
    ("some", "the string"),
    (2.5, "sequence of integers"),
])
def test_bad_nested_prefixes_refused(bad, match):
    with pytest.raises(InputError, match=match) as exc:
        CVAE3DDetector(**TINY, nested_prefixes=bad).fit(_smooth_si(6, 6))
    msg = str(exc.value)
    assert "expected" in msg and "found" in msg and "Fix" in msg


def test_nested_prefixes_include_the_full_code():
    assert CVAE3DDetector(latent_dim=8, nested_prefixes=[1, 2, 4])._prefixes() == (1, 2, 4, 8)
    assert CVAE3DDetector(latent_dim=3, nested_prefixes="all")._prefixes() == (1, 2, 3)
    assert CVAE3DDetector(latent_dim=3)._prefixes() is None


# ----------------------------------------------------------------------------- seed ensembles
@pytest.mark.slow
def test_ensemble_score_is_the_mean_of_its_members(ensemble):
    det, si = ensemble
    res = det.score(si)
    members = det.seed_results(si)
    assert [r.info["seed"] for r in members] == [0, 1]
    assert all(r.latent.shape == (*si.nav_shape, 3) for r in members)
    np.testing.assert_allclose(res.nll, np.mean([r.nll for r in members], axis=0), rtol=1e-12)
    np.testing.assert_allclose(res.maps["seed_mean_nll"], res.nll, rtol=1e-12)
    ens = seed_ensemble(members)
    np.testing.assert_allclose(res.maps["seed_disagreement"], ens.disagreement, atol=1e-12)
    np.testing.assert_allclose(res.maps["seed_std_nll"], ens.std_nll, atol=1e-12)
    # different seeds train different networks: the maps differ somewhere, but stay close
    assert res.maps["seed_std_nll"].max() > 0
    assert 0.0 <= res.maps["seed_disagreement"].max() <= 0.5
    assert res.latent.shape == (*si.nav_shape, 6)
    np.testing.assert_array_equal(res.latent[..., :3], members[0].latent)
    assert ens.latent.shape == res.latent.shape
    mean, sigma = det.reconstruct(si)
    assert mean.shape == si.shape and (sigma > 0).all()
    px = res.pixel(3, 4)
    np.testing.assert_allclose(px.channel_nll.sum(), res.maps["neighbourhood_nll"][3, 4],
                               rtol=1e-5)


@pytest.mark.slow
def test_first_member_is_the_single_seed_model(ensemble, single):
    det, si = ensemble
    np.testing.assert_allclose(det.seed_results(si)[0].nll, single.score(si).nll, rtol=1e-5)
    assert "seed_disagreement" not in single.score(si).maps
    assert len(single.seed_results(si)) == 1


def test_seed_maps_disagreement_is_scale_free():
    a = np.random.default_rng(0).normal(size=(5, 6))
    m = scoring.seed_maps([a, 3.0 * a + 7.0])
    assert np.abs(m["disagreement"]).max() == 0.0  # same ranking: full agreement
    np.testing.assert_allclose(m["std"], np.abs(a + 3.5))  # population std of (a, 3a + 7)
    flipped = scoring.seed_maps([a, -a])["disagreement"]
    assert flipped.max() > 0.4  # opposite rankings: the extremes disagree most


@pytest.mark.slow
def test_ensemble_round_trips(ensemble, tmp_path):
    det, si = ensemble
    path = det.save(tmp_path / "ens.h5")
    back = load_detector(path)
    assert back.n_seeds == 2 and len(back.models_) == 2 and back.member_seeds_ == [0, 1]
    res, res_back = det.score(si), back.score(si)
    np.testing.assert_allclose(res_back.nll, res.nll, rtol=1e-6)
    np.testing.assert_allclose(res_back.maps["seed_disagreement"],
                               res.maps["seed_disagreement"], atol=1e-9)
    assert back.n_parameters == det.n_parameters == 2 * det.model_.n_parameters


@pytest.mark.slow
def test_model_file_without_the_new_keys_loads(ensemble, single, tmp_path):
    """A model file from before these options (no n_seeds / nested_prefixes) still loads."""
    si, det = ensemble[1], single
    path = det.save(tmp_path / "m.h5")
    header, params, state, arrays = read_model(path)
    assert "members" not in state and "nested_prefixes" not in state  # format unchanged
    params = {k: v for k, v in params.items() if k not in ("n_seeds", "nested_prefixes")}
    old = write_model(tmp_path / "old.h5", detector=header["detector"], params=params,
                      state=state, arrays=arrays)
    back = load_detector(old)
    assert back.n_seeds == 1 and back.nested_prefixes is None and len(back.models_) == 1
    np.testing.assert_allclose(back.score(si).nll, det.score(si).nll, rtol=1e-6)


@pytest.mark.slow
def test_progress_over_members_and_cancel():
    si = _smooth_si(8, 8)
    events = []
    CVAE3DDetector(**dict(TINY, epochs=2), n_seeds=2).fit(si, progress=events.append)
    seeds = [(e.step, e.total) for e in events if e.stage == "seeds"]
    assert seeds == [(1, 2), (2, 2)]
    train = [e for e in events if e.stage == "train"]
    assert [e.metrics["member"] for e in train] == [1, 1, 2, 2]
    assert all(e.metrics["members"] == 2 for e in train)

    def stop_in_second(ev):
        return not (ev.stage == "train" and ev.metrics.get("member") == 2)

    det = CVAE3DDetector(**dict(TINY, epochs=2), n_seeds=2)
    with pytest.raises(Cancelled):
        det.fit(si, progress=stop_in_second)
    assert not det.is_fitted


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, 100])
def test_bad_n_seeds_refused(bad):
    with pytest.raises(InputError, match="n_seeds") as exc:
        CVAE3DDetector(**TINY, n_seeds=bad).fit(_smooth_si(6, 6))
    msg = str(exc.value)
    assert "expected" in msg and "got" in msg and "Fix" in msg


@pytest.mark.slow
def test_latent_report_shows_the_seed_disagreement(ensemble, tmp_path):
    from eelsanom.latent.report import write_report

    det, si = ensemble
    report = write_report(det.score(si), out=tmp_path / "rep", quantization=False,
                          k_local=10, dse_points=100)
    assert (tmp_path / "rep" / "A_seed_disagreement.png").is_file()
    assert "seed-disagreement map" in report.read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, want", [
    ([], {}),
    (["--n-seeds", "3"], {"n_seeds": 3}),
    (["--nested-latent"], {"nested_prefixes": "all"}),
    (["--nested-latent", "1,2,4"], {"nested_prefixes": [1, 2, 4]}),
])
def test_cli_reaches_the_options(argv, want):
    from eelsanom.cli import _detector_params, build_parser

    args = build_parser().parse_args(["detect", "x.hspy", "--method", "cvae", "--out", "o",
                                      *argv])
    p = _detector_params(args)
    for k in ("n_seeds", "nested_prefixes"):
        assert p.get(k) == want.get(k)


def test_cli_refuses_a_bad_prefix_list():
    from eelsanom.cli import _detector_params, build_parser

    args = build_parser().parse_args(["detect", "x.hspy", "--method", "cvae", "--out", "o",
                                      "--nested-latent", "1,a"])
    with pytest.raises(InputError, match="--nested-latent"):
        _detector_params(args)
