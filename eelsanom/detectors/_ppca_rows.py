"""Helpers of the PPCA detectors (:mod:`.pca`): projections of spectra on the model, the
per-pixel scale direction, the fitted parameters as tensors, the compute device."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import forward_transform

log = logging.getLogger(__name__)

#: values per chunk of the CPU float64 projections (a few MB: stays in the cache)
_CHUNK_VALUES = 1 << 18
#: rows from which the CPU projections are split between two threads
_PARALLEL_ROWS = 2048
#: how a pixel's overall intensity (beam current, thickness to first order) enters the model
#: (see :class:`~.pca.PCADetector`, "Per-pixel scale")
SCALES = ("fixed", "free", "sum")


def scale_direction(mean: np.ndarray, transform: str) -> np.ndarray:
    """Unit direction (D,) along which scaling a pixel's counts moves its transformed spectrum.

    With the Anscombe transform ``y = 2 sqrt(c + 3/8)`` a factor ``a`` on the counts
    moves ``y`` by ``dy/da = y / 2 - 3 / (4 y)`` at ``a = 1`` (about ``y / 2``: a
    scale, less at the lowest counts); without a transform, along the spectrum itself.
    Taken at the training mean ``mean``.

    Parameters
    ----------
    mean : ndarray of shape (D,)
        Mean transformed training spectrum.
    transform : {"anscombe", "none"}

    Returns
    -------
    ndarray of shape (D,)
        Unit norm (a zero mean gives the first channel's unit vector).
    """
    m = np.asarray(mean, np.float64)
    t = 0.5 * m - 0.75 / np.maximum(m, 1e-12) if transform == "anscombe" else m.copy()
    if transform == "anscombe":
        t = np.maximum(t, 0.0)
    n = float(np.linalg.norm(t))
    if not np.isfinite(n) or n <= 0:
        t = np.zeros_like(m)
        t[0] = 1.0
        return t
    return t / n


def _resolve_device(device: str, *, strict: bool):
    """Torch device for ``device`` (:func:`eelsanom.device.resolve_device`).

    With ``strict=False`` an unavailable device falls back to the CPU with a
    warning (a model saved on a GPU machine still loads and scores on a laptop).
    """
    from ..device import resolve_device

    try:
        return resolve_device(device)
    except InputError:
        if strict:
            raise
        import torch

        log.warning("device %r is not available; using the CPU", device)
        return torch.device("cpu")


def _project_rows(X: np.ndarray, mean: np.ndarray, U: np.ndarray, transform: str | None = None,
                  gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(p (n, k), sq (n,))``: ``p = (x - mean) U`` and ``sq = ||x - mean||^2`` of rows ``X``.

    Float64 on the CPU by cache-sized chunks (one read of ``X``, no ``(n, D)``
    float64 copy). With ``transform`` the rows are counts, transformed chunk by
    chunk (:func:`~eelsanom.preprocess.forward_transform`). Many rows are split
    between two threads (numpy releases the GIL; each row's result is the same).
    """
    n = X.shape[0]
    from ..device import cpu_threads

    workers = min(2, cpu_threads())  # the cores this process may use (OMP_NUM_THREADS)
    if workers > 1 and n >= _PARALLEL_ROWS:
        from concurrent.futures import ThreadPoolExecutor

        cut = n // 2
        with ThreadPoolExecutor(workers) as ex:
            parts = list(ex.map(lambda sl: _project_chunks(X[sl], mean, U, transform, gain),
                                (slice(0, cut), slice(cut, n))))
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    return _project_chunks(X, mean, U, transform, gain)


def _project_chunks(X: np.ndarray, mean: np.ndarray, U: np.ndarray, transform: str | None,
                    gain: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_project_rows` in one thread."""
    n, d = X.shape
    p = np.empty((n, U.shape[1]))
    sq = np.empty(n)
    step = max(1, _CHUNK_VALUES // max(d, 1))
    anscombe = transform == "anscombe"
    half_mean = 0.5 * np.asarray(mean, np.float64)
    for i in range(0, n, step):
        x = X[i:i + step]
        if anscombe:
            # forward_transform's 2 sqrt(max(x / gain, 0) + 3/8) on one buffer: the factor 2
            # is applied after the subtraction (exact: a power of two)
            y = np.maximum(x, 0.0, dtype=np.float32)
            if gain != 1.0:
                y *= np.float32(1.0 / gain)
            y += np.float32(0.375)
            np.sqrt(y, out=y)
            xc = np.subtract(y, half_mean, dtype=np.float64)
            xc *= 2.0
        else:
            if transform is not None:
                x = forward_transform(x, transform, gain)
            xc = np.subtract(x, mean, dtype=np.float64)
        p[i:i + step] = xc @ U
        sq[i:i + step] = np.einsum("ij,ij->i", xc, xc)
    return p, sq


class _Tensors:
    """Fitted PPCA parameters as torch tensors on one device."""

    def __init__(self, det: Any, dev: Any, dt: Any) -> None:
        import torch

        self.dev, self.dt = dev, dt
        self.mu = torch.as_tensor(det.mean_, device=dev, dtype=dt)
        self.U = torch.as_tensor(det.components_, device=dev, dtype=dt)
        self.lam = torch.as_tensor(det.explained_variance_, device=dev, dtype=dt)
        self.s2 = float(det.noise_variance_)
        lam = det.explained_variance_
        self.logdet = float(np.sum(np.log(lam)) + (det.mean_.size - lam.size) * math.log(self.s2))
        self.shrink = torch.as_tensor((lam - self.s2) / lam, device=dev, dtype=dt)
        self.latent_scale = torch.as_tensor(np.sqrt(np.maximum(lam - self.s2, 0.0)) / lam,
                                            device=dev, dtype=dt)
        sd = getattr(det, "scale_direction_", None)
        self.tdir = None if sd is None else torch.as_tensor(sd, device=dev, dtype=dt)
