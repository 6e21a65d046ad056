"""Panel 5, the export: the run folder ``eelsanom detect`` writes (maps, summary JSON, seed
maps) and the model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
)

from eelsanom.errors import InputError

from . import _notify
from ._panel import (
    _Panel,
)


class ExportWidget(_Panel):
    """Write the run folder (as ``eelsanom detect``: maps, summary JSON, seed maps) and the model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=True)
        self._folder = FileEdit(label="folder", mode="d")
        self._stem = LineEdit(label="name", value="")
        self._hspy = CheckBox(text="HyperSpy (.hspy)", value=True)
        self._tiff = CheckBox(text="TIFF", value=False)
        self._png = CheckBox(text="PNG", value=True)
        self._model = CheckBox(text="model (.h5)", value=True)
        self._export_btn = PushButton(text="Export")
        self._written = Label(label="written", value="")
        fmt = Container(widgets=[self._hspy, self._tiff, self._png, self._model],
                        layout="horizontal", labels=False)
        self.extend([self._folder, self._stem, fmt, self._export_btn, self._written])
        self._export_btn.changed.connect(self._on_export)
        self._session.result_changed.connect(self._default_stem)

    def _default_stem(self, res: Any = None) -> None:
        if self._closed or str(self._stem.value).strip():
            return
        cube = self._session.result_cube
        base = Path(str(getattr(cube, "name", "") or "eelsanom")).stem
        self._stem.value = f"{base}_{res.method}" if res is not None else base

    def _on_export(self, *_: Any) -> dict[str, Path] | None:
        """Write the run folder ``eelsanom detect`` writes (maps, seed maps, summary JSON; see
        :func:`eelsanom.run.write_run`) and the model file; returns ``{key: path}``.

        Every path is checked first (:func:`eelsanom.io.check_outputs`): an input is never
        written, and a file that eelsanom did not write is never replaced.
        """
        from eelsanom.io import check_outputs, result_paths
        from eelsanom.pipeline import SEED_MAPS, write_run

        s = self._session
        res = s.result
        if res is None:
            _notify.error("nothing to export yet: train a model (or load one and Apply) first.")
            return None
        folder = str(self._folder.value or "").strip()
        if not folder or folder == ".":
            _notify.error("choose an output folder first.")
            return None
        self._default_stem(res)
        stem = str(self._stem.value).strip()
        fmts = [f for f, w in (("hspy", self._hspy), ("tiff", self._tiff), ("png", self._png))
                if w.value]
        si = getattr(s.raw_result, "_si", None)
        inputs = [p for p in (getattr(si, "source", None),) if p]
        written: dict[str, Path] = {}
        try:
            planned = list(result_paths(folder, stem, fmts, latent=res.latent is not None)
                           .values()) if fmts else []
            planned += [Path(folder) / f"{stem}_{m}.npy" for m in SEED_MAPS if m in res.maps]
            planned.append(Path(folder) / f"{stem}_summary.json")
            if self._model.value and s.detector is not None:
                planned.append(Path(folder) / f"{stem}_model.h5")
            check_outputs(planned, inputs, what="export")
            if si is not None:
                summary = write_run(res, si, folder, stem, formats=fmts, protect=inputs,
                                    extra={"exported_from": "napari"})
                written.update({k: Path(v) for k, v in summary["outputs"].items()})
            elif fmts:  # a result without its data (cannot happen through the panels)
                from eelsanom.io import save_result

                written.update(save_result(res, folder, stem=stem, formats=fmts))
            if self._model.value and s.detector is not None:
                written["model"] = s.detector.save(Path(folder) / f"{stem}_model.h5")
        except (InputError, OSError) as exc:
            _notify.error(f"export failed: {exc}")
            return None
        if not written:
            _notify.warning("nothing selected to export.")
            return written
        self._written.value = f"{len(written)} files in {folder}"
        _notify.info("eelsanom wrote " + ", ".join(p.name for p in written.values()))
        return written
