"""Progress reporting and cancellation for long work.

Long-running library calls (``fit``, ``score``, the benchmark) take an optional
``progress`` callable. It receives a :class:`ProgressEvent` at each step; if it
returns ``False`` the work stops and raises :class:`~eelsanom.errors.Cancelled`
(training keeps its last checkpoint). The CLI turns events into a tqdm bar,
the napari plugin into its progress widget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled

__all__ = ["ProgressEvent", "ProgressCallback", "emit"]


@dataclass
class ProgressEvent:
    """One step of long work.

    Attributes
    ----------
    stage : str
        What is running, e.g. ``"fit"``, ``"train"``, ``"score"``.
    step, total : int
        Steps done so far and the expected total (``total`` may be 0 when unknown).
    metrics : dict
        Numbers worth showing, e.g. ``{"loss": 1.2, "val_nll": 1.3}``.
    message : str
        Optional text.
    """

    stage: str
    step: int
    total: int
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], Any]


def emit(progress: ProgressCallback | None, stage: str, step: int, total: int,
         message: str = "", **metrics: Any) -> None:
    """Send an event to ``progress`` (if any); raise Cancelled when it returns ``False``.

    Parameters
    ----------
    progress : callable or None
        Callback receiving a :class:`ProgressEvent`; ``None`` makes this a no-op.
    stage : str
        What is running, e.g. ``"fit"``, ``"train"``, ``"score"``.
    step, total : int
        Steps done so far and the expected total (0 when unknown).
    message : str, default ""
        Optional text for the event.
    **metrics
        Numbers worth showing (e.g. ``loss=1.2``); stored in ``ProgressEvent.metrics``.

    Raises
    ------
    Cancelled
        When ``progress`` returns exactly ``False`` (other return values, ``None``
        included, let the work continue).
    """
    if progress is None:
        return
    if progress(ProgressEvent(stage, step, total, dict(metrics), message)) is False:
        raise Cancelled(f"{stage} cancelled at step {step}/{total}")
