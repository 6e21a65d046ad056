"""Issue 20, item 1: the napari Export writes by the CLI's run-folder rules, named after the
layer it exports, with the bulk region recorded, and never over another image's results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ._gui import require_display

require_display()

from eelsanom_napari._layers import role_of  # noqa: E402
from eelsanom_napari._session import get_session  # noqa: E402
from eelsanom_napari._widgets import dock_all  # noqa: E402

from eelsanom.detectors import get_detector  # noqa: E402
from eelsanom.simulate import simulate  # noqa: E402


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _open_and_score(viewer, path: Path, seed: int):
    before = set(id(ly) for ly in viewer.layers)
    viewer.open(str(path), plugin="eelsanom")
    cube = next(ly for ly in viewer.layers if id(ly) not in before and role_of(ly) == "cube")
    session = get_session(viewer)
    session.set_cube(cube)
    si = session.spectrum_image()
    mask = simulate(shape=(16, 16), seed=seed).bulk_mask
    det = get_detector("pca", n_components=3, device="cpu").fit(si, mask)
    session.set_detector(det)
    session.set_result(det.score(si), cube)
    return int(mask.sum())


def _digests(folder: Path, prefix: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.iterdir() if p.name.startswith(prefix)}


def test_export_follows_the_layer_and_never_replaces_another_image(viewer, tmp_path,
                                                                   notifications):
    a = simulate(shape=(16, 16), seed=1).save(tmp_path / "sample_fe-l_shift1.5.hspy")
    b = simulate(shape=(16, 16), seed=2).save(tmp_path / "scanB.hspy")
    out = tmp_path / "out"
    n_bulk = _open_and_score(viewer, a, 1)
    exp = dock_all(viewer)["Export"]
    exp._folder.value = out
    written = exp._on_export()
    assert written and exp._stem.value == "sample_fe-l_shift1.5_pca"  # the ".5" kept
    summary = json.loads(written["summary"].read_text())
    assert summary["train_pixels"] == n_bulk  # the bulk region recorded, not null
    assert summary["input"] == str(a)
    a_files = _digests(out, "sample_fe-l_shift1.5_pca")
    assert len(a_files) >= 4

    _open_and_score(viewer, b, 2)  # another image, exported to the same folder
    written_b = exp._on_export()
    assert written_b and exp._stem.value == "scanB_pca"
    assert all(p.name.startswith("scanB_pca") for p in written_b.values())
    assert _digests(out, "sample_fe-l_shift1.5_pca") == a_files

    exp._stem.value = "sample_fe-l_shift1.5_pca"  # the user types A's name for B's results
    assert exp._on_export() is None
    assert any("holds the results of" in m for s, m in notifications if "error" in s)
    assert _digests(out, "sample_fe-l_shift1.5_pca") == a_files
    exp._stem.value = "my name"  # a name the user typed is kept across results
    _open_and_score(viewer, a, 1)
    assert exp._stem.value == "my name"
