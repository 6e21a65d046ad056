"""Preprocessing shared by the detectors: variance stabilisation and scaling.

Counts are Poisson, so detectors with a Gaussian likelihood work on the
Anscombe transform ``a(x) = 2 sqrt(x + 3/8)``, whose noise has unit variance
whatever the count level. Data that are not raw counts (negative values after
dark subtraction, gain-scaled) are clipped at zero before the transform; the
``transform="none"`` option keeps them linear.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["TRANSFORMS", "forward_transform", "inverse_transform", "transform_sigma"]

TRANSFORMS = ("anscombe", "none")


def _check(name: str) -> None:
    if name not in TRANSFORMS:
        raise InputError(f"transform: expected one of {TRANSFORMS}, got {name!r}.")


def forward_transform(x: np.ndarray, name: str = "anscombe") -> np.ndarray:
    """Apply the variance-stabilising transform (float32 out).

    Parameters
    ----------
    x : array_like of any shape, e.g. (ny, nx, n_energy)
        Data in counts. With ``"anscombe"`` negative values are clipped at zero
        before the transform.
    name : {"anscombe", "none"}, default "anscombe"
        ``"anscombe"`` computes ``2 sqrt(max(x, 0) + 3/8)`` (unit noise variance
        for Poisson counts); ``"none"`` returns the data unchanged (as float32).

    Returns
    -------
    ndarray of float32, same shape as ``x``
        Transformed values (Anscombe units, or counts for ``"none"``).

    Raises
    ------
    InputError
        When ``name`` is not one of :data:`TRANSFORMS`.
    """
    _check(name)
    x = np.asarray(x, dtype=np.float32)
    if name == "none":
        return x
    return 2.0 * np.sqrt(np.maximum(x, 0.0) + 0.375, dtype=np.float32)


def inverse_transform(y: np.ndarray, name: str = "anscombe") -> np.ndarray:
    """Map transformed values back to counts (algebraic inverse).

    Parameters
    ----------
    y : array_like of any shape, e.g. (ny, nx, n_energy)
        Values in transformed units (output of :func:`forward_transform`).
    name : {"anscombe", "none"}, default "anscombe"
        The transform that produced ``y``. ``"anscombe"`` returns
        ``max(y / 2, 0)**2 - 3/8``; ``"none"`` returns ``y`` unchanged.

    Returns
    -------
    ndarray, same shape as ``y``
        Values in counts. The algebraic inverse is not bias-corrected, so
        clipped inputs map back to ``-3/8`` at most, not to zero.

    Raises
    ------
    InputError
        When ``name`` is not one of :data:`TRANSFORMS`.
    """
    _check(name)
    y = np.asarray(y)
    if name == "none":
        return y
    return np.maximum(y / 2.0, 0.0) ** 2 - 0.375


def transform_sigma(y: np.ndarray, sigma_y: np.ndarray, name: str = "anscombe") -> np.ndarray:
    """Sigma in counts from sigma in transformed units (delta method: dx/dy = y/2).

    Parameters
    ----------
    y : array_like of any shape, e.g. (ny, nx, n_energy)
        Mean values in transformed units.
    sigma_y : array_like, broadcastable with ``y``
        Standard deviations in transformed units.
    name : {"anscombe", "none"}, default "anscombe"
        The transform in use. With ``"none"`` ``sigma_y`` is returned unchanged.

    Returns
    -------
    ndarray, broadcast shape of ``y`` and ``sigma_y``
        Standard deviation in counts, ``|y / 2| * sigma_y`` for ``"anscombe"``.

    Raises
    ------
    InputError
        When ``name`` is not one of :data:`TRANSFORMS`.
    """
    _check(name)
    if name == "none":
        return np.asarray(sigma_y)
    return np.abs(np.asarray(y) / 2.0) * np.asarray(sigma_y)
