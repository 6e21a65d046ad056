"""Helpers shared by the Gaussian baseline detectors (:mod:`.pca`, :mod:`.rx`).

- streaming a spectrum image (numpy or dask) in blocks of rows, so scoring keeps
  memory bounded whatever the image size;
- gathering the (transformed) training pixels;
- the trimmed ("robust") refit loop used when no bulk mask is given;
- parameter checks shared by both detectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import TRANSFORMS, forward_transform
from ..progress import ProgressCallback, emit
from ..spectrum import SpectrumImage

log = logging.getLogger(__name__)

#: target number of values (pixels x channels) per block when streaming an image
BLOCK_VALUES = 1 << 22


def rows_per_block(si: SpectrumImage, block_values: int = BLOCK_VALUES) -> int:
    """How many image rows make one block of about ``block_values`` values."""
    ny, nx = si.nav_shape
    return int(max(1, min(ny, block_values // max(1, nx * si.n_energy))))


def iter_row_blocks(si: SpectrumImage, block_values: int = BLOCK_VALUES
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(y0, y1, block)`` with ``block`` a float32 array of shape (y1-y0, nx, n_energy).

    Lazy (dask) data is computed block by block, and each lazy block is checked
    for NaN/inf (eager data were checked on conversion).
    """
    ny = si.nav_shape[0]
    step = rows_per_block(si, block_values)
    for y0 in range(0, ny, step):
        y1 = min(ny, y0 + step)
        block = si.data[y0:y1]
        if si.is_lazy:
            block = np.asarray(block.compute() if hasattr(block, "compute") else block,
                               dtype=np.float32)
            if not np.isfinite(block).all():
                bad = np.argwhere(~np.isfinite(block))[0]
                raise InputError(
                    f"expected finite values, found NaN/inf in the lazy data (first at pixel "
                    f"y={y0 + bad[0]}, x={bad[1]}, channel {bad[2]}). Replace them first, e.g. "
                    "s.data = np.nan_to_num(s.data).")
        yield y0, y1, np.asarray(block, dtype=np.float32)


def gather_training(si: SpectrumImage, mask: np.ndarray | None, transform: str) -> np.ndarray:
    """Transformed training spectra, shape (n_pixels, n_energy), float32 (row-major pixel order)."""
    parts = []
    for y0, y1, block in iter_row_blocks(si):
        b = block.reshape(-1, block.shape[-1])
        if mask is not None:
            b = b[mask[y0:y1].ravel()]
        if b.shape[0]:
            parts.append(forward_transform(b, transform))
    return np.concatenate(parts, axis=0)


def trimmed_fit(X: np.ndarray, fit: Callable[[np.ndarray], Any],
                score: Callable[[Any, np.ndarray], np.ndarray], *, robust: bool,
                robust_fraction: float, robust_iter: int, min_keep: int,
                progress: ProgressCallback | None, stage: str = "fit") -> tuple[Any, np.ndarray]:
    """Fit on ``X``; when ``robust``, drop the worst-scored fraction of ``X`` and refit.

    A C-step / trimmed-likelihood loop (as in MCD and least trimmed squares):
    fit on all rows, score every row under that fit (``score(model, X)``), refit on all rows but the
    ``robust_fraction`` with the highest NLL, and repeat ``robust_iter`` times.
    Each refit chooses its kept rows from *all* rows (nothing is dropped for good).

    Returns
    -------
    model : whatever ``fit`` returns (the last fit)
    keep : ndarray of bool, shape (n_rows,)
        Rows used by the last fit.
    """
    n = X.shape[0]
    keep = np.ones(n, dtype=bool)
    n_drop = int(round(robust_fraction * n)) if robust else 0
    n_drop = min(n_drop, max(0, n - min_keep))
    n_fits = 1 + (robust_iter if n_drop > 0 else 0)
    model = None
    for it in range(n_fits):
        model = fit(X[keep])
        emit(progress, stage, it + 1, n_fits, n_pixels=int(keep.sum()))
        if it + 1 < n_fits:
            s = np.asarray(score(model, X), dtype=np.float64)
            order = np.argsort(s, kind="stable")
            new_keep = np.zeros(n, dtype=bool)
            new_keep[order[:n - n_drop]] = True
            changed = int(np.sum(new_keep != keep))
            keep = new_keep
            log.debug("trimmed refit %d: dropped %d of %d pixels (%d changed)", it + 1, n_drop,
                      n, changed)
            if changed == 0:  # converged: the next fit would repeat this one
                break
    return model, keep


def robust_z2(z: np.ndarray, floor: float | np.ndarray) -> np.ndarray:
    """Squared robust z-scores summed over columns: ``sum_j ((z_j - med_j) / s_j)^2``.

    ``s_j`` is 1.4826 x the median absolute deviation of column ``j`` (the standard
    deviation for Gaussian data), at least ``sqrt(floor)``. Used to rank pixels for
    trimming: a rare anomaly class that pulled a principal direction towards
    itself inflates that direction's variance but hardly its MAD, so it still
    stands out (the idea of ROBPCA's outlyingness).

    Parameters
    ----------
    z : ndarray of shape (n, k)
    floor : float or ndarray of shape (k,)
        Smallest variance allowed per column.
    """
    z = np.asarray(z, np.float64)
    med = np.median(z, axis=0)
    d = z - med
    s2 = np.maximum((1.4826 * np.median(np.abs(d), axis=0)) ** 2, floor)
    return np.sum(d * d / s2, axis=1)


# ----------------------------------------------------------------------------- parameter checks
def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name}: expected one of {list(allowed)}, got {value!r}.")


def check_int(name: str, value: Any, *, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        none = "None or " if allow_none else ""
        raise InputError(f"{name}: expected {none}an integer >= {low}, got {value!r}.")


def check_common(det: Any) -> None:
    """Checks of ``transform``, ``robust_fraction``, ``robust_iter`` and ``seed``."""
    check_choice("transform", det.transform, TRANSFORMS)
    rf = det.robust_fraction
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not 0 <= rf < 0.5:
        raise InputError(f"robust_fraction: expected a fraction of pixels to drop in [0, 0.5) "
                         f"(0 disables trimming), got {rf!r}.")
    check_int("robust_iter", det.robust_iter, low=0)
    check_int("seed", det.seed, low=0)
