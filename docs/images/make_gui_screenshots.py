"""Regenerate the README's workstation screenshots (run once per screen size).

    xvfb-run -a -s "-screen 0 1366x768x24" env QT_QPA_PLATFORM=xcb \\
        python docs/images/make_gui_screenshots.py
    xvfb-run -a -s "-screen 0 1920x1080x24" env QT_QPA_PLATFORM=xcb \\
        python docs/images/make_gui_screenshots.py

``eelsanom gui`` on the bundled sample, the default detector (bulk + context PCA, ``DEFAULT_METHOD``) trained
through the Detector panel, a flagged pixel inspected; the whole window is saved as
``docs/images/workstation_<W>x<H>.png`` (the screen's size). Look at each: Train and
Apply in view without scrolling, no clipped text.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    import napari
    from eelsanom_napari._launch import launch, panels_of
    from eelsanom_napari._session import get_session
    from eelsanom_napari.layout import size_docks

    app = napari.qt.get_qapp()

    def wait(seconds: float, until=lambda: False) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not until():
            app.processEvents()
            time.sleep(0.01)

    viewer = launch(block=False, show=True)
    window = viewer.window._qt_window
    geo = window.screen().availableGeometry()
    w, h = geo.width(), geo.height()
    window.move(0, 0)
    window.resize(w, h)
    panels = panels_of(viewer)
    wait(1.0)
    size_docks(panels)
    det = panels["Detector"]
    det._device.value = "cpu"  # the default method, as a user first meets it
    det._on_train()
    wait(300, lambda: not det.busy)
    s = get_session(viewer)
    intensity = next(ly for ly in viewer.layers if ly.name.endswith("summed intensity"))
    intensity.visible = False  # show the energy slice under the NLL map and mask
    iy, ix = map(int, np.argwhere(s.result.mask & s.raw_result._si.ground_truth)[3])
    insp = panels["Spectrum inspector"]
    insp.inspect(iy, ix)
    wait(60, lambda: insp.spectrum is not None)
    panels["Detector"]._dock.raise_()
    insp._dock.raise_()
    viewer.reset_view()
    wait(1.5)
    try:  # the "N pixels flagged" toast fades by itself; not over the colour bar in the picture
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in window.findChildren(NapariQtNotification):
            toast.close()
        wait(0.5)
    except ImportError:
        pass
    out = Path(__file__).resolve().parent / f"workstation_{w}x{h}.png"
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out} ({window.width()} x {window.height()} window, minimum size hint "
          f"{window.minimumSizeHint().width()} x {window.minimumSizeHint().height()})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
