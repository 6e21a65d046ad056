"""User-facing messages: napari notifications (and the log), in one place.

Everything the plugin tells the user goes through these helpers, so a refused
file or a failed training run always ends in a napari notification that says
why, never in a traceback dialog.
"""

from __future__ import annotations

import logging

log = logging.getLogger("eelsanom_napari")

__all__ = ["error", "warning", "info"]


def error(message: str) -> None:
    """Show an error notification (and log it)."""
    from napari.utils.notifications import show_error  # noqa: PLC0415

    log.warning("%s", message)
    show_error(message)


def warning(message: str) -> None:
    """Show a warning notification (and log it)."""
    from napari.utils.notifications import show_warning  # noqa: PLC0415

    log.warning("%s", message)
    show_warning(message)


def info(message: str) -> None:
    """Show an information notification (and log it)."""
    from napari.utils.notifications import show_info  # noqa: PLC0415

    log.info("%s", message)
    show_info(message)
