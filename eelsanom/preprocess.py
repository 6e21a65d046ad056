"""Preprocessing shared by the detectors: variance stabilisation and scaling.

Counts are Poisson, so detectors with a Gaussian likelihood work on the
Anscombe transform ``a(x) = 2 sqrt(x + 3/8)``, whose noise has unit variance
whatever the count level. Data that are not raw counts (negative values after
dark subtraction, gain-scaled) are clipped at zero before the transform; the
``transform="none"`` option keeps them linear.

Gain-scaled data (what DigitalMicrograph and most acquisition software write:
``g`` data units per detected electron) break the Anscombe transform: at
``g << 1`` the values sit near the ``3/8`` offset, the transform is nearly
linear, the noise far below unit variance, and an intensity (thickness, beam
current) variation becomes a *curved* direction that a linear bulk model
cannot follow; at ``g >> 1`` the noise is far above it. ``gain`` divides the
data by ``g`` first, so the transform sees counts; :func:`estimate_gain`
measures ``g`` from the data's own channel-to-channel noise.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["TRANSFORMS", "forward_transform", "inverse_transform", "transform_sigma",
           "estimate_gain", "check_gain"]

#: median of a chi-square variable with one degree of freedom
_MEDIAN_CHI2_1 = 0.4549364231195724

TRANSFORMS = ("anscombe", "none")


def _check(name: str) -> None:
    if name not in TRANSFORMS:
        raise InputError(f"transform: expected one of {TRANSFORMS}, got {name!r}.")


def forward_transform(x: np.ndarray, name: str = "anscombe", gain: float = 1.0, *,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Apply the variance-stabilising transform (float32 out).

    Parameters
    ----------
    x : array_like of any shape, e.g. (ny, nx, n_energy)
        Data in counts (or in data units of ``gain`` counts each). With
        ``"anscombe"`` negative values are clipped at zero before the transform.
    name : {"anscombe", "none"}, default "anscombe"
        ``"anscombe"`` computes ``2 sqrt(max(x / gain, 0) + 3/8)`` (unit noise
        variance for Poisson counts); ``"none"`` returns the data unchanged (as
        float32; ``gain`` is not applied).
    gain : float, default 1.0
        Data units per count (see :func:`estimate_gain`), > 0.
    out : ndarray of float32, C-contiguous, same shape as ``x``, optional
        Where to write the result (``x`` itself is allowed); ``x`` of any strides is
        read once into it (no copy of its own).

    Returns
    -------
    ndarray of float32, same shape as ``x``
        Transformed values (Anscombe units, or counts for ``"none"``); ``out`` when given.

    Raises
    ------
    InputError
        When ``name`` is not one of :data:`TRANSFORMS`.
    """
    _check(name)
    if out is not None:
        if out.dtype != np.float32 or out.shape != np.shape(x) or not out.flags.c_contiguous:
            raise ValueError(f"forward_transform: out must be C-contiguous float32 of shape "
                             f"{np.shape(x)}, got {out.dtype} {out.shape}")
        if out is not x and not (isinstance(x, np.ndarray) and x.dtype == np.float32
                                 and x.flags.c_contiguous):
            np.copyto(out, x, casting="unsafe")  # one strided read, converted on the way
            x = out
    x = np.asarray(x, dtype=np.float32)
    if name == "none":
        if out is not None and out is not x:
            np.copyto(out, x)
            return out
        return x
    # in place in one new array (the same float32 operations as
    # ``2 sqrt(max(x, 0) + 3/8)``, without an array per step), by cache-sized runs of
    # values so that the five steps read memory once
    y = np.empty(x.shape, np.float32) if out is None else out
    src, dst = x.reshape(-1), y.reshape(-1)
    for i in range(0, src.size, _RUN):
        xs, ys = src[i:i + _RUN], dst[i:i + _RUN]
        if gain != 1.0:
            np.multiply(xs, np.float32(1.0 / gain), out=ys)
            np.maximum(ys, np.float32(0.0), out=ys)
        else:
            np.maximum(xs, np.float32(0.0), out=ys)
        ys += np.float32(0.375)
        np.sqrt(ys, out=ys)
        ys *= np.float32(2.0)
    return y


#: values :func:`forward_transform` works on at a time (fits a CPU cache)
_RUN = 1 << 16


def inverse_transform(y: np.ndarray, name: str = "anscombe", gain: float = 1.0) -> np.ndarray:
    """Map transformed values back to counts (algebraic inverse).

    Parameters
    ----------
    y : array_like of any shape, e.g. (ny, nx, n_energy)
        Values in transformed units (output of :func:`forward_transform`).
    name : {"anscombe", "none"}, default "anscombe"
        The transform that produced ``y``. ``"anscombe"`` returns
        ``gain * (max(y / 2, 0)**2 - 3/8)``; ``"none"`` returns ``y`` unchanged.
    gain : float, default 1.0
        The gain given to :func:`forward_transform` (data units per count).

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
    return gain * (np.maximum(y / 2.0, 0.0) ** 2 - 0.375)


def transform_sigma(y: np.ndarray, sigma_y: np.ndarray, name: str = "anscombe",
                    gain: float = 1.0) -> np.ndarray:
    """Sigma in counts from sigma in transformed units (delta method: dx/dy = gain * y/2).

    Parameters
    ----------
    y : array_like of any shape, e.g. (ny, nx, n_energy)
        Mean values in transformed units.
    sigma_y : array_like, broadcastable with ``y``
        Standard deviations in transformed units.
    name : {"anscombe", "none"}, default "anscombe"
        The transform in use. With ``"none"`` ``sigma_y`` is returned unchanged.
    gain : float, default 1.0
        The gain given to :func:`forward_transform` (data units per count).

    Returns
    -------
    ndarray, broadcast shape of ``y`` and ``sigma_y``
        Standard deviation in data units, ``gain * |y / 2| * sigma_y`` for ``"anscombe"``.

    Raises
    ------
    InputError
        When ``name`` is not one of :data:`TRANSFORMS`.
    """
    _check(name)
    if name == "none":
        return np.asarray(sigma_y)
    return gain * np.abs(np.asarray(y) / 2.0) * np.asarray(sigma_y)


def estimate_gain(x: np.ndarray, *, max_values: int = 1 << 21) -> float:
    """Data units per detected electron, from the channel-to-channel noise of the spectra.

    For Poisson counts scaled by ``g`` the difference of two neighbouring
    channels, ``x_k - x_(k+1)``, has variance ``g (x_k + x_(k+1))`` (the signal
    changes little over one channel), so ``(x_k - x_(k+1))^2 / (x_k + x_(k+1))``
    is ``g`` times a chi-square of one degree of freedom; its median over all
    pixels and channel pairs, divided by that chi-square's median (0.455),
    estimates ``g`` robustly (edges and white lines, where the signal does change,
    are a minority the median ignores). Raw counts give about 1 (slightly more
    with read noise); a dark offset in the data biases it low.

    Parameters
    ----------
    x : array_like of shape (..., n_energy)
        Spectra (any leading shape); at most ``max_values`` values are used (an
        evenly spaced subset of the spectra).
    max_values : int
        Cap on the values read.

    Returns
    -------
    float
        The gain ``g`` > 0 (data units per count); 1.0 when the data hold no
        positive neighbouring pairs.

    Raises
    ------
    InputError
        When ``x`` has fewer than 2 channels.
    """
    a = np.asarray(x)
    if a.ndim < 1 or a.shape[-1] < 2:
        raise InputError(f"estimate_gain: expected spectra with at least 2 channels, got shape "
                         f"{a.shape}.")
    a = a.reshape(-1, a.shape[-1])
    step = max(1, int(np.ceil(a.shape[0] * a.shape[1] / max_values)))
    a = np.asarray(a[::step], np.float64)
    d2 = np.diff(a, axis=1) ** 2
    s = a[:, 1:] + a[:, :-1]
    ok = s > 0
    if not ok.any():
        return 1.0
    g = float(np.median(d2[ok] / s[ok]) / _MEDIAN_CHI2_1)
    return g if np.isfinite(g) and g > 0 else 1.0


def check_gain(gain: object) -> None:
    """Validate a detector's ``gain`` parameter: ``"auto"`` or a number > 0.

    Parameters
    ----------
    gain : object
        The value to check.

    Raises
    ------
    InputError
        When ``gain`` is neither ``"auto"`` nor a finite number > 0.
    """
    if isinstance(gain, str) and gain.lower() == "auto":
        return
    if isinstance(gain, bool) or not isinstance(gain, (int, float, np.integer, np.floating)) \
            or not np.isfinite(gain) or gain <= 0:
        raise InputError(f"gain: expected 'auto' (estimate it from the data) or the data units "
                         f"per detected electron, a number > 0 (1 for raw counts), got {gain!r}.")
