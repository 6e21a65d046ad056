"""Scaling between Anscombe-transformed spectra and the 3D-CVAE's inputs and outputs.

:class:`Scaler` is fitted on the training spectra and saved with the model;
:func:`to_input` applies it in numpy, :func:`device_transform` applies the
variance-stabilising transform and the scaling where the data already are (the GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Scaler", "to_input", "device_transform"]


@dataclass
class Scaler:
    """Map Anscombe-transformed spectra ``a`` to network inputs and outputs back.

    ``input = (a - mean) / scale``; the network's mean output ``m`` is
    ``mean + scale * m`` in Anscombe units and its sigma is
    ``noise * (floor + softplus(raw))``.

    Attributes
    ----------
    mean : ndarray of shape (n_energy,)
        Per-channel mean of the training spectra (Anscombe units).
    scale : float
        Robust standard deviation of ``a - mean`` over the training voxels.
    noise : float
        Noise standard deviation of one channel (Anscombe units; ~1 for Poisson
        counts), estimated from second differences along energy.
    floor : float
        Smallest sigma, as a fraction of ``noise``.
    """

    mean: np.ndarray
    scale: float
    noise: float
    floor: float

    @classmethod
    def fit(cls, a: np.ndarray, floor: float) -> Scaler:
        """Estimate from training spectra ``a`` of shape (n_pixels, n_energy) (Anscombe units).

        ``scale`` is ``1.4826`` times the median absolute deviation of ``a - mean``
        (at least a tenth of its standard deviation and ``1e-6``); ``noise`` is the
        same robust estimate applied to second differences along energy divided
        by ``sqrt(6)`` (``max(0.1 scale, 1e-3)`` when that is not positive or
        there are fewer than 3 channels).

        Parameters
        ----------
        a : ndarray of shape (n_pixels, n_energy)
            Anscombe-transformed training spectra.
        floor : float
            Smallest sigma, as a fraction of the noise (stored unchanged).

        Returns
        -------
        Scaler
            With ``mean`` of shape ``(n_energy,)`` (float32).
        """
        a = np.asarray(a, np.float64)
        mean = a.mean(axis=0)
        dev = a - mean
        mad = np.median(np.abs(dev - np.median(dev)))
        scale = float(max(1.4826 * mad, dev.std() * 0.1, 1e-6))
        if a.shape[1] >= 3:
            d2 = (a[:, :-2] - 2.0 * a[:, 1:-1] + a[:, 2:]) / math.sqrt(6.0)
            noise = float(1.4826 * np.median(np.abs(d2 - np.median(d2))))
        else:
            noise = 0.0
        if not np.isfinite(noise) or noise <= 1e-6:
            noise = max(scale * 0.1, 1e-3)
        return cls(mean=mean.astype(np.float32), scale=scale, noise=noise, floor=float(floor))

    def to_dict(self) -> dict[str, float]:
        """The scalar fields as plain floats (JSON-serialisable).

        Returns
        -------
        dict of str to float
            ``scale``, ``noise`` and ``floor``; ``mean`` is not included (it is
            stored as an array).
        """
        return {"scale": float(self.scale), "noise": float(self.noise), "floor": float(self.floor)}

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, float, float]:
        """``(mean (1, E, 1, 1) float32, scale, noise)`` on ``device``.

        Parameters
        ----------
        device : torch.device
            Where the mean tensor goes.

        Returns
        -------
        mean : Tensor of shape (1, E, 1, 1)
            Per-channel mean, float32, on ``device``.
        scale, noise : float
            The scaler's ``scale`` and ``noise``.
        """
        m = torch.as_tensor(self.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        return m, float(self.scale), float(self.noise)


def to_input(a: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Anscombe spectra ``(..., E)`` -> scaled float32 network input ``(..., E)``.

    Parameters
    ----------
    a : ndarray of shape (..., E)
        Anscombe-transformed spectra.
    scaler : Scaler
        Supplies ``mean`` and ``scale``.

    Returns
    -------
    ndarray of shape (..., E)
        ``(a - scaler.mean) / scaler.scale``, float32.
    """
    return ((np.asarray(a, np.float32) - scaler.mean) / np.float32(scaler.scale)).astype(
        np.float32, copy=False)


def device_transform(x: torch.Tensor, transform: str, scaler: Scaler) -> torch.Tensor:
    """Counts ``(..., E)`` -> scaled network input on ``x``'s device (float32).

    The same arithmetic as :func:`eelsanom.preprocess.forward_transform` then
    :func:`to_input`, done where the data already are (the GPU) instead of in numpy.

    Parameters
    ----------
    x : Tensor of shape (..., E)
        Counts.
    transform : {"anscombe", "none"}
        Variance-stabilising transform (anything but ``"anscombe"`` applies none).
    scaler : Scaler
        Supplies ``mean`` and ``scale``.

    Returns
    -------
    Tensor of shape (..., E)
        Scaled network input, float32, on ``x``'s device.
    """
    x = x.float()
    if transform == "anscombe":
        x = 2.0 * torch.sqrt(torch.clamp(x, min=0.0) + 0.375)
    m = torch.as_tensor(scaler.mean, dtype=torch.float32, device=x.device)
    return (x - m) / float(scaler.scale)
