"""The AnomalyResult layer (summarize, compare), saved runs, the report, the CLI, and scale."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from eelsanom import latent
from eelsanom.cli import main
from eelsanom.errors import InputError
from eelsanom.result import AnomalyResult
from eelsanom.spectrum import Axis

NY, NX, D = 24, 30, 5


def make_result(latent_codes: np.ndarray | None, nll: np.ndarray,
                method: str = "cvae") -> AnomalyResult:
    ny, nx = nll.shape
    t = float(np.percentile(nll, 95))
    return AnomalyResult(nll=nll.astype(np.float32), threshold=t, threshold_method="5%",
                         mask=nll > t, method=method, y=Axis(ny, 0.4, 0.0, "nm", "y"),
                         x=Axis(nx, 0.4, 0.0, "nm", "x"), energy=Axis(16, 0.5, 700.0, "eV"),
                         latent=latent_codes)


@pytest.fixture(scope="module")
def pair() -> tuple[AnomalyResult, AnomalyResult]:
    """Two "seeds": B is a rotated, rescaled A plus a little noise; a planted anomaly."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(NY, NX, D)) * np.array([2.0, 1.5, 1.0, 0.5, 0.3])
    z[5:9, 10:14, 1] += 8.0
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    zb = 3.0 * z @ q + 0.05 * rng.normal(size=z.shape)
    nll_a = np.sum(z ** 2, axis=2)
    nll_b = nll_a + 0.1 * rng.normal(size=nll_a.shape)
    return make_result(z, nll_a), make_result(zb, nll_b, method="pca")


def test_summarize_result(pair):
    a, _ = pair
    s = latent.summarize(a, dse_points=300)
    assert (s.n_pixels, s.latent_dim, s.shape, s.method) == (NY * NX, D, (NY, NX), "cvae")
    assert s.local_dimension.shape == (NY, NX) and s.latent_score.shape == (NY, NX)
    assert 1.0 <= s.effective_rank <= D
    assert s.dsmi_mask > 0 and np.isfinite(s.rate_reduction_mask)
    # the planted anomaly has the largest latent scores
    assert s.latent_score[5:9, 10:14].mean() > np.percentile(s.latent_score, 95)
    assert s.quantization is not None and "float16" in s.quantization.kinds
    md = s.to_markdown()
    assert md.startswith("| quantity | value | meaning |") and "TwoNN" in md
    assert all(np.isfinite(v) for _, v, _ in s.table() if isinstance(v, float))
    assert len(s.plot().axes) >= 3


def test_summarize_accepts_arrays_and_tensors(pair):
    a, _ = pair
    s_np = latent.summarize(a.latent, quantization=False, dse_points=200)
    s_t = latent.summarize(torch.from_numpy(a.latent), quantization=False, dse_points=200)
    assert s_np.twonn == pytest.approx(s_t.twonn)
    assert np.isnan(s_np.dsmi_mask)  # no mask given with a bare array
    assert any("mask" in n for n in s_np.notes)
    assert latent.intrinsic_dimension(a) == pytest.approx(s_np.twonn)
    assert latent.intrinsic_dimension(torch.from_numpy(a.latent.reshape(-1, D)),
                                      "mle") == pytest.approx(s_np.mle)


def test_compare_two_results(pair):
    a, b = pair
    c = latent.compare(a, b, k=8, cca_points=500)
    assert c.methods == ("cvae", "pca") and c.latent_dims == (D, D)
    assert c.cka > 0.99 and c.cknna > 0.8
    assert c.mutual_knn_map.shape == (NY, NX) and 0.3 < c.mutual_knn <= 1.0
    assert c.procrustes.relative_residual < 0.05
    assert c.procrustes.residual_map.shape == (NY, NX)
    assert np.nanmean(c.relative_agreement) > 0.95
    assert c.nll_spearman > 0.99 and c.mask_jaccard > 0.5
    assert np.all(c.cca.correlations > 0.99)
    assert "linear CKA" in c.to_markdown() and len(c.plot().axes) >= 3


def test_compare_with_itself_is_perfect(pair):
    a, _ = pair
    c = latent.compare(a, a, k=8, cca_points=500)
    assert c.cka == pytest.approx(1.0) and c.mutual_knn == 1.0
    assert c.cknna == pytest.approx(1.0)
    assert c.units.mean_abs_correlation == pytest.approx(1.0)
    assert c.nll_spearman == pytest.approx(1.0) and c.mask_jaccard == 1.0


def test_results_without_latents_or_of_other_images_are_refused(pair):
    a, _ = pair
    rx = make_result(None, a.nll, method="rx")
    with pytest.raises(InputError, match=r"'rx' result has no latent codes.*cvae, pca"):
        latent.summarize(rx)
    with pytest.raises(InputError, match="same pixels"):
        latent.compare(a, a.latent[:10])
    with pytest.raises(InputError, match="neighbours"):
        latent.compare(a.latent[:2, :3], a.latent[:2, :3], k=10)
    bad = a.latent.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        latent.summarize(bad)


# ----------------------------------------------------------------- saved runs and the CLI


def _save_run(res: AnomalyResult, folder, stem: str = "scan") -> None:
    from eelsanom.io import save_result, write_json

    save_result(res, folder, stem=stem, formats=("hspy",))
    write_json({"method": res.method, "threshold": {"method": res.threshold_method,
                                                    "value": res.threshold},
                "navigation": {"y": res.y.to_dict(), "x": res.x.to_dict()},
                "model_energy_axis": res.energy.to_dict()}, folder / f"{stem}_summary.json")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pair):
    a, b = pair
    root = tmp_path_factory.mktemp("runs")
    _save_run(a, root / "a")
    _save_run(b, root / "b")
    _save_run(make_result(None, a.nll, method="rx"), root / "rx")
    return root


def test_load_run_round_trip(runs, pair):
    a, _ = pair
    r = latent.load_run(runs / "a")
    assert r.method == "cvae" and r.shape == (NY, NX)
    assert np.allclose(r.latent, a.latent, atol=1e-5)
    assert np.array_equal(r.mask, a.mask) and r.threshold == pytest.approx(a.threshold)
    assert r.y == a.y and r.info["stem"] == "scan"


def test_cli_latent_report_single_and_pair(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["latent", str(runs / "a"), str(runs / "b"), "--out", str(out),
               "--dse-points", "200", "--k-local", "20"])
    assert rc == 0
    md = (out / "latent_report.md").read_text()
    assert "## Run A: cvae" in md and "## Run B: pca" in md and "## Comparison A vs B" in md
    for name in ("A_local_dimension.png", "B_covariance_spectrum.png",
                 "compare_mutual_knn.png", "compare_procrustes_residual.png",
                 "compare_cca.png"):
        assert (out / name).stat().st_size > 1000
        assert f"]({name})" in md
    js = json.loads((out / "latent_report.json").read_text())
    assert js["comparison"]["table"]["linear CKA"] > 0.99
    rc = main(["latent", str(runs / "a"), "--out", str(tmp_path / "single"),
               "--no-quantization", "--dse-points", "200"])
    assert rc == 0
    assert "Comparison" not in (tmp_path / "single" / "latent_report.md").read_text()


def test_cli_latent_refuses_run_without_latents(runs, tmp_path, capsys):
    rc = main(["latent", str(runs / "rx"), "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no latent codes" in err and "cvae, pca" in err and "'rx'" in err
    assert main(["latent", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2


def test_folder_with_several_runs_needs_a_stem(runs, pair, tmp_path):
    a, _ = pair
    _save_run(a, tmp_path, "one")
    _save_run(a, tmp_path, "two")
    with pytest.raises(InputError, match="several runs"):
        latent.load_run(tmp_path)
    assert latent.load_run(tmp_path, "two").info["stem"] == "two"


# ----------------------------------------------------------------- scale


def test_map_tools_scale_to_a_192_by_192_image():
    # 36,864 codes, d = 8, lying near a 3-D set as real latents do (a few physical factors
    # plus noise): every per-pixel map tool runs without an n x n matrix. Timings of the
    # worst case (isotropic random codes, d = 8 and 16) are in scripts/bench_latent.py; here
    # the bound is loose because the CPU is shared.
    rng = np.random.default_rng(1)
    factors = rng.normal(size=(192 * 192, 3))
    z = np.tanh(factors @ rng.normal(size=(3, 8))) + 0.001 * rng.normal(size=(192 * 192, 8))
    z = z.reshape(192, 192, 8).astype(np.float32)
    zb = z @ np.linalg.qr(rng.normal(size=(8, 8)))[0] + 0.001 * rng.normal(size=z.shape)
    t0 = time.perf_counter()
    maps = {
        "mutual_knn_map": latent.mutual_knn_map(z, zb, k=10),
        "local_dimension_map": latent.local_dimension_map(z, k=30),
        "relative_agreement": latent.relative_agreement(z, zb, n_anchors=32),
        "procrustes": latent.procrustes(z, zb).residual_map,
        "latent_anomaly_score": latent.latent_anomaly_score(z),
    }
    elapsed = time.perf_counter() - t0
    for name, m in maps.items():
        assert m.shape == (192, 192), name
        assert np.isfinite(m).all(), name
    # the codes' 3-D structure is visible (noise 0.001 is below the neighbour spacing)
    assert 2.5 < np.median(maps["local_dimension_map"]) < 4.0
    assert elapsed < 60, f"map tools took {elapsed:.1f} s on 36,864 codes"
