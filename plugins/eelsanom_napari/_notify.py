"""User-facing messages: napari notifications (and the log), in one place.

Everything the plugin tells the user goes through these helpers, so a refused
file or a failed training run always ends in a napari notification that says
why, never in a traceback dialog.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("eelsanom_napari")

__all__ = ["error", "warning", "info", "short"]


_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/](?:[^\s\\/:'\"]+[\\/])+([^\s\\/:'\"]+)")


def short(message: str) -> str:
    """``message`` with absolute file paths cut to their file names: a collapsed napari
    notification shows one line, which a long path would fill before the reason."""
    return _PATH.sub(lambda m: m.group(1), str(message))


def error(message: str) -> None:
    """Show an error notification (file paths shortened; the log keeps them whole)."""
    from napari.utils.notifications import show_error

    log.warning("%s", message)
    show_error(short(message))


def warning(message: str) -> None:
    """Show a warning notification (and log it)."""
    from napari.utils.notifications import show_warning

    log.warning("%s", message)
    show_warning(message)


def info(message: str) -> None:
    """Show an information notification (and log it)."""
    from napari.utils.notifications import show_info

    log.info("%s", message)
    show_info(message)
