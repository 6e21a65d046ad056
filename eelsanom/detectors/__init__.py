"""Anomaly detectors sharing one contract (see :class:`~eelsanom.detectors.base.BaseDetector`).

``get_detector(name, **params)`` builds one by key; ``load_detector(path)`` reads
any saved model file.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .. import _registry
from .base import BaseDetector, load_detector

#: The detector a user gets without choosing one (CLI ``--method``, the napari panel): the one
#: that is never badly wrong on the paper, realistic and general suites (issue 22, README "How
#: good is it"). Pooled context PCA won the realistic suite but flooded images of another
#: spectral model (7 % flagged for 1.5 % true); bulk-context stays within 0.05 AP of pooled PCA
#: there and keeps context PCA's lead under drift.
DEFAULT_METHOD = "bulk-context"

_REGISTRY = {
    "pca": ("eelsanom.detectors.pca", "PCADetector"),
    "rx": ("eelsanom.detectors.rx", "RXDetector"),
    "cvae": ("eelsanom.detectors.cvae3d", "CVAE3DDetector"),
    "contextpca": ("eelsanom.detectors.context_pca", "ContextPCADetector"),
    "bulkcontext": ("eelsanom.detectors.bulk_context", "BulkContextDetector"),
}


def _loader(module: str, name: str) -> Any:
    return lambda: getattr(import_module(module), name)


for _key, (_mod, _cls) in _REGISTRY.items():  # imported when first asked for (torch: cvae)
    _registry.register(_key, _loader(_mod, _cls))


def detector_class(name: str) -> type[BaseDetector]:
    """The detector class registered under ``name`` (``"pca"``, ``"context-pca"``, ``"rx"``, ``"cvae"``).

    Parameters
    ----------
    name : str
        Method key, case-insensitive; ``-`` and ``3d`` are ignored, so
        ``"CVAE-3D"`` and ``"cvae3d"`` both mean ``"cvae"``.

    Returns
    -------
    type of BaseDetector
        The detector class (its module is imported on demand).

    Raises
    ------
    InputError
        When ``name`` is not a registered method.
    """
    from ..errors import InputError

    try:
        return _registry.detector_class(name)
    except _registry.UnknownDetector as exc:
        raise InputError(str(exc)) from None


def get_detector(name: str, **params: Any) -> BaseDetector:
    """Instantiate the detector registered under ``name`` with ``params``.

    Parameters
    ----------
    name : str
        Method key, as for :func:`detector_class`.
    **params
        Keyword hyperparameters of that detector's ``__init__`` (stored, not
        validated, until ``fit``).

    Returns
    -------
    BaseDetector
        An unfitted detector.

    Raises
    ------
    InputError
        When ``name`` is not a registered method.
    """
    return detector_class(name)(**params)


__all__ = ["BaseDetector", "DEFAULT_METHOD", "detector_class", "get_detector", "load_detector"]
