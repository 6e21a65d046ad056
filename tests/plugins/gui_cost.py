"""GUI-thread cost of pixel clicks and threshold-slider ticks with a real 3D-CVAE result.

    xvfb-run -a -s "-screen 0 1920x1080x24" env QT_QPA_PLATFORM=xcb OMP_NUM_THREADS=1 \\
        python tests/plugins/gui_cost.py [EPOCHS]

Not a test (timings are machine-dependent): it prints the CPU time the GUI thread spends
(``time.thread_time`` of the main thread, so waiting for the worker does not count) per
action, and the ratio to the old behaviour, where the inspector ran the model in the GUI
thread on every click and every slider tick (``result.pixel`` there: measured too). The
detector has the library's default architecture (the model's cost per pixel depends on it,
not on how long it trained); it trains EPOCHS epochs (default 2) on the sample's bulk.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(epochs: int = 2) -> int:
    import napari
    from eelsanom_napari._launch import launch, panels_of
    from eelsanom_napari._session import get_session

    from eelsanom.detectors import get_detector

    app = napari.qt.get_qapp()

    def pump(seconds: float, until=lambda: False) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not until():
            app.processEvents()
            time.sleep(0.002)

    # where the GUI thread's time goes: the canvases' draws are counted apart (napari's
    # OpenGL canvas is software-rendered under Xvfb: a GPU does that work on a desktop)
    from eelsanom_napari._plot import _Canvas
    from vispy.scene.canvas import SceneCanvas

    spent = {"plots": 0.0, "plot paint": 0.0, "napari canvas": 0.0}

    def timed(cls, name, key):
        original = getattr(cls, name)

        def wrapper(*a, **kw):
            t = time.thread_time()
            try:
                return original(*a, **kw)
            finally:
                spent[key] += time.thread_time() - t
        setattr(cls, name, wrapper)

    timed(_Canvas, "draw", "plots")
    # Qt's paint of the plots (their image onto the screen), part of "other events" before
    timed(_Canvas, "paintEvent", "plot paint")
    timed(SceneCanvas, "on_draw", "napari canvas")
    parts: dict[str, list] = {}

    def gui_cpu(action, settle: float = 0.25, until=lambda: False, key: str = "") -> float:
        """GUI-thread CPU seconds of ``action`` and of the events it causes (redraws)."""
        before = dict(spent)
        t0 = time.thread_time()
        action()
        handler = time.thread_time() - t0
        pump(settle, until)
        pump(0.05)
        total = time.thread_time() - t0
        d = {k: spent[k] - before[k] for k in spent}
        parts.setdefault(key, []).append((handler, d["plots"], d["plot paint"],
                                          d["napari canvas"], total - handler - d["plots"]
                                          - d["plot paint"] - d["napari canvas"]))
        return total

    viewer = launch(block=False, show=True)
    panels = panels_of(viewer)
    pump(1.0)
    s = get_session(viewer)
    si = s.spectrum_image()
    det = get_detector("cvae", epochs=epochs, device="cpu", seed=0)
    t = time.perf_counter()
    det.fit(si, si.metadata["bulk_mask"].astype(bool))
    res = det.score(si)
    print(f"3D-CVAE (defaults: latent {det.latent_dim}, width {det.width}, spatial layers "
          f"{det.spatial_layers}; {epochs} epochs) trained and scored in "
          f"{time.perf_counter() - t:.1f} s")
    s.set_result(res, s.cube())
    pump(1.0)
    insp, results = panels["Spectrum inspector"], panels["Results"]
    rng = np.random.default_rng(0)
    pixels = [tuple(int(v) for v in rng.integers(0, 64, 2)) for _ in range(6)]

    # the old behaviour: the model in the GUI thread (per click and per slider tick)
    old = []
    for iy, ix in pixels[:3]:
        t0 = time.thread_time()
        res.pixel(iy, ix)
        old.append(time.thread_time() - t0)
    first = []  # first click on a pixel: observed at once, model from the worker
    for iy, ix in pixels:
        first.append(gui_cpu(lambda p=(iy, ix): insp.inspect(*p), 30.0,
                             lambda p=(iy, ix): insp.cached(*p) is not None, "first"))
    again = [gui_cpu(lambda p=p: insp.inspect(*p), key="again") for p in pixels]  # cached
    results._method.value = "manual"
    lo, hi = float(np.min(res.nll)), float(np.max(res.nll))
    ticks = [gui_cpu(lambda v=v: setattr(results._manual, "value", float(v)), 0.1,
                     key="tick") for v in np.linspace(lo, hi, 22)[1:-1]]

    def line(name, xs):
        xs = 1e3 * np.asarray(xs)
        return f"{name:44s} median {np.median(xs):7.1f} ms   max {xs.max():7.1f} ms  (n={xs.size})"

    print(line("old path's model call alone (no redraw)", old))
    print(line("first click on a pixel (model in a worker)", first))
    print(line("click on a pixel seen before (cache)", again))
    print(line("threshold slider tick (pixel shown)", ticks))
    for key, name in (("first", "first click"), ("again", "cached click"),
                      ("tick", "slider tick")):
        a = 1e3 * np.median(np.asarray(parts[key]), axis=0)
        print(f"  {name:13s} median split: handler {a[0]:6.1f} ms, matplotlib plots "
              f"{a[1]:6.1f} ms, their Qt paint {a[2]:6.1f} ms, napari canvas (OpenGL) "
              f"{a[3]:6.1f} ms, other events {a[4]:6.1f} ms")
    ours = 1e3 * np.median([p[0] + p[1] + p[2] for p in parts["again"]])
    print(f"  cached click, what eelsanom's code controls (handler + plots + their paint): "
          f"median {ours:.1f} ms")
    print(f"ratio model call / cached click: {np.median(old) / np.median(again):.2f}; "
          f"model call / slider tick: {np.median(old) / np.median(ticks):.2f}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
