"""``eelsanom gui [FILE]``: napari with every eelsanom panel docked and the data loaded.

Everything here that needs Qt or napari is imported inside :func:`launch`, after
checking that a display exists: on a headless machine Qt would otherwise abort
the whole process ("could not connect to display") instead of saying why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import weakref
from pathlib import Path
from typing import Any

from eelsanom.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["display_problem", "qt_platform_problem", "launch"]

_NO_DISPLAY_FIX = ("Run it on a machine with a screen, over `ssh -X`, or under a virtual X server "
                   "(`xvfb-run -a eelsanom gui`); for headless work use `eelsanom detect`.")


def _x_server_reachable(display: str) -> bool:
    """Cheap probe of an X11 ``DISPLAY`` (``:N``, ``host:N``, ``unix:N``): socket or TCP port."""
    try:
        host, _, rest = display.rpartition(":")
        num = int(rest.split(".")[0])
    except ValueError:
        return True  # unusual syntax: let Qt decide
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{num}"
        return Path(path).exists() or _unix_open("\0" + path)
    if host.startswith("/"):  # launchd-style path (macOS XQuartz)
        return Path(f"{host}:{rest}").exists() or Path(host).exists()
    return _tcp_open(host, 6000 + num)


def _unix_open(address: str) -> bool:
    if not hasattr(socket, "AF_UNIX"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(address)
            return True
    except OSError:
        return False


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def display_problem(env: dict[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why napari cannot open a window here, or None when a display looks usable.

    On Linux (and other X11 systems) a window needs ``DISPLAY`` (reachable) or
    ``WAYLAND_DISPLAY``; ``QT_QPA_PLATFORM=offscreen`` cannot show napari either.
    """
    env = dict(os.environ if env is None else env)
    platform = sys.platform if platform is None else platform
    qpa = env.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if qpa in ("offscreen", "minimal"):
        return (f"eelsanom gui: QT_QPA_PLATFORM={qpa} has no screen to show napari on; unset it "
                f"(or use QT_QPA_PLATFORM=xcb with an X server). {_NO_DISPLAY_FIX}")
    if platform.startswith(("win", "darwin")):
        return None
    if env.get("WAYLAND_DISPLAY"):
        return None
    disp = env.get("DISPLAY", "").strip()
    if not disp:
        return f"eelsanom gui: no display (DISPLAY is not set), napari needs one. {_NO_DISPLAY_FIX}"
    if not _x_server_reachable(disp):
        return (f"eelsanom gui: no X server answers on DISPLAY={disp}, napari needs one. "
                f"{_NO_DISPLAY_FIX}")
    return None


#: Qt bindings napari may use, in its order of preference
_QT_BINDINGS = ("PyQt5", "PyQt6", "PySide2", "PySide6")


def _xcb_plugin() -> Path | None:
    """The installed Qt binding's X11 platform plugin (``libqxcb.so``), found without
    importing Qt."""
    import importlib.util

    for name in _QT_BINDINGS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for found in Path(root).glob("**/platforms/libqxcb.so"):
                return found
    return None


def _missing_libs(plugin: Path) -> list[str]:
    """The shared libraries ``plugin`` needs that the system lacks (``ldd``: "not found")."""
    import shutil
    import subprocess

    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split("=>")[0].strip() for line in out.splitlines()
                   if "not found" in line})


def package_of(soname: str) -> str:
    """The Debian/Ubuntu package of a shared library: ``libxcb-icccm.so.4`` ->
    ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` -> ``libxkbcommon-x11-0``."""
    base, _, version = soname.partition(".so")
    version = version.lstrip(".").split(".")[0]
    if not version:
        return base
    return f"{base}-{version}" if base[-1:].isdigit() else f"{base}{version}"


def qt_platform_problem(env: dict[str, str] | None = None, platform: str | None = None,
                        missing: list[str] | None = None) -> str | None:
    """Why Qt's X11 platform plugin cannot load here (the system libraries it needs are
    missing), or None. Without them Qt aborts the whole process (exit 134) when napari
    opens; this names what to install instead.

    Parameters
    ----------
    env, platform
        As :func:`display_problem` (default: this process's).
    missing : list of str, optional
        The missing libraries (default: ``ldd`` of the installed Qt's ``libqxcb.so``).
    """
    env = dict(os.environ if env is None else env)
    platform = sys.platform if platform is None else platform
    qpa = env.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if not platform.startswith("linux") or qpa not in ("", "xcb"):
        return None
    if qpa == "" and env.get("WAYLAND_DISPLAY"):
        return None
    if missing is None:
        plugin = _xcb_plugin()
        missing = _missing_libs(plugin) if plugin is not None else []
    if not missing:
        return None
    pkgs = " ".join(sorted({package_of(m) for m in missing}))
    return (f"eelsanom gui: Qt's X11 platform plugin cannot load, the system lacks "
            f"{', '.join(missing)}; expected Qt's xcb libraries. Install them (Debian/Ubuntu: "
            f"sudo apt-get install {pkgs}), then run `eelsanom gui` again.")


def launch(path: str | os.PathLike | None = None, *, block: bool = True,
           show: bool = True) -> Any:
    """Open napari with the eelsanom panels docked and ``path`` (or the sample) loaded.

    Parameters
    ----------
    path : str or Path, optional
        An EELS spectrum image (.dm3/.dm4/.hspy/.zspy/.emd/...). Default: the bundled
        simulated sample with its ground truth and bulk region.
    block : bool
        Run the Qt event loop until the window is closed (the command line); False returns
        at once (tests, notebooks).
    show : bool
        Show the window.

    Returns
    -------
    napari.Viewer

    Raises
    ------
    InputError
        No display, napari/Qt not installed, or a file eelsanom cannot use (the message says
        why); raised before any window opens.
    """
    problem = display_problem() or qt_platform_problem()
    if problem:
        raise InputError(problem)
    try:
        import napari
        from napari.layers import Layer
        from napari.qt import get_qapp  # noqa: F401 - fails without a Qt binding
    except ImportError as exc:
        raise InputError(f"eelsanom gui needs napari and a Qt binding: pip install "
                         f"'eelsanom[napari]' (import failed: {exc}).") from exc
    from ._layers import spectrum_image_layers
    from ._sample_data import SAMPLE_NAME, sample_spectrum_image
    from .layout import dock_all, size_docks

    if path is not None:
        from eelsanom.io import load_spectrum_image

        si = load_spectrum_image(path)
        name = Path(path).stem
    else:
        si = sample_spectrum_image()
        name = SAMPLE_NAME
    viewer = napari.Viewer(title=f"eelsanom: {name}", show=show)
    panels = dock_all(viewer)
    for data, meta, kind in spectrum_image_layers(si, name=name):
        viewer.add_layer(Layer.create(data, meta, kind))
    _show_strongest_channel(viewer, si)
    _fit_window(panels["Detector"].native.window())
    from qtpy.QtCore import QTimer

    def settle() -> None:  # once the window is laid out: panels sized, image fitted
        with contextlib.suppress(RuntimeError, AttributeError):
            size_docks(panels)
            panels["Bulk region"]._dock.raise_()
            viewer.reset_view()

    QTimer.singleShot(0, settle)
    # weakly: the docks keep the panels alive, and a strong reference here would keep a
    # closed viewer alive through them
    _PANELS[id(viewer)] = {k: weakref.ref(p) for k, p in panels.items()}
    if block:
        napari.run()
    return viewer


#: The panels docked by :func:`launch`, by ``id(viewer)`` (tests reach them here).
_PANELS: dict[int, dict[str, Any]] = {}


def panels_of(viewer: Any) -> dict[str, Any]:
    """The panels :func:`launch` docked in ``viewer``."""
    refs = _PANELS.get(id(viewer), {})
    return {k: p for k, r in refs.items() if (p := r()) is not None}


def _show_strongest_channel(viewer: Any, si: Any) -> None:
    """Put the energy slider on the strongest edge (see :func:`._session.show_edge`)."""
    from ._layers import role_of
    from ._session import show_edge

    cube = next((ly for ly in viewer.layers if role_of(ly) == "cube"), None)
    if cube is not None:
        show_edge(viewer, cube, si)


def _fit_window(window: Any, width: int = 1800, height: int = 1050) -> None:
    """Give the docked panels room: up to ``width`` x ``height``, within the screen (the
    panels scroll, so the window never needs more than the screen)."""
    try:
        geo = window.screen().availableGeometry()
        window.resize(min(width, geo.width()), min(height, geo.height()))
    except Exception as exc:  # noqa: BLE001 - cosmetic only
        log.debug("could not resize the window: %s", exc)
