"""The 3D-CVAE's stop rule, its statistics (:mod:`eelsanom.nn.train` applies them).

How long training waits after its best check (:func:`patience_steps`), how far a
warm start is from the noise floor (:func:`noise_floor_gap`: nothing left to
learn), and how much of a difference between two checks the held-out pixels can
tell from noise (:func:`paired_se`, on each check's per-pixel values,
:class:`_Held`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["paired_se", "noise_floor_gap", "patience_steps"]


@dataclass
class _Held:
    """One check's held-out per-pixel values (block after block), what :func:`paired_se` pairs."""

    values: np.ndarray  # float64, every validation pixel, block after block
    counts: np.ndarray  # int64, pixels per block
    keep: np.ndarray  # bool, the pixels the criterion counts (all but the trimmed ones)


def paired_se(new: np.ndarray, ref: np.ndarray, counts: Any,
              keep: np.ndarray | None = None) -> float:
    """Standard error of the mean per-pixel difference between two validation checks.

    Both checks ran over the same held-out pixels, block after block; the
    blocks, not the pixels, are the independent units (neighbouring pixels
    share their neighbourhood, their crops and their errors), so this is the
    cluster (ratio-estimator) standard error of the mean of ``new - ref`` over
    the kept pixels, from the blocks' totals. It measures how much of a
    difference between the two checks the held-out pixels can tell from noise.

    Parameters
    ----------
    new, ref : ndarray of shape (n,)
        Per-pixel held-out values of the two checks, in the same pixel order.
    counts : sequence of int
        Pixels per block (consecutive runs of ``new``; they sum to ``n``).
    keep : ndarray of bool, shape (n,), optional
        The pixels to compare (a trimmed criterion's: those neither check
        trimmed); default all.

    Returns
    -------
    float
        The standard error (nats per pixel); 0 when the shapes disagree or
        fewer than two blocks hold kept pixels.
    """
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    counts = np.asarray(counts, np.int64)
    if new.shape != ref.shape or new.ndim != 1 or counts.sum() != new.size or counts.size < 2:
        return 0.0
    kept = np.ones(new.shape, bool) if keep is None else np.asarray(keep, bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[counts > 0]
    diff = np.add.reduceat(np.where(kept, new - ref, 0.0), starts)
    n = np.add.reduceat(kept.astype(np.float64), starts)
    diff, n = diff[n > 0], n[n > 0]
    k, total = n.size, float(n.sum())
    if k < 2:
        return 0.0
    resid = diff - n * (diff.sum() / total)  # each block's total difference less its share
    return float(math.sqrt(float(np.sum(resid ** 2)) * k / (k - 1)) / total)


def _held_se(new: _Held | None, ref: _Held | None) -> float:
    """:func:`paired_se` of two checks over the pixels neither trimmed (0 when either is missing)."""
    if new is None or ref is None or new.values.shape != ref.values.shape:
        return 0.0
    return paired_se(new.values, ref.values, new.counts, new.keep & ref.keep)


def noise_floor_gap(val: float, n_energy: int, noise: float) -> float:
    """Nats per channel between a held-out NLL per pixel and the noise floor.

    The floor is the expected Gaussian NLL of a residual that is the noise
    itself, ``n_energy * (0.5 * log(2 pi noise^2) + 0.5)``: no model of the
    signal does better on held-out pixels on average (its KL term, when
    counted, only adds). A warm start within a few hundredths of a nat per
    channel of it leaves training nothing to learn.

    Parameters
    ----------
    val : float
        Mean held-out negative ELBO (or NLL) per pixel, nats.
    n_energy : int
        Channels.
    noise : float
        The noise standard deviation in the likelihood's units (the scaler's
        ``noise``: about 1 in Anscombe units for Poisson counts).

    Returns
    -------
    float
        ``(val - floor) / n_energy``; NaN when ``val`` or ``noise`` is not finite and positive.
    """
    if not (np.isfinite(val) and np.isfinite(noise) and noise > 0 and n_energy > 0):
        return float("nan")
    floor = n_energy * (0.5 * math.log(2.0 * math.pi * noise * noise) + 0.5)
    return float((val - floor) / n_energy)


def patience_steps(cfg: TrainConfig, hist: dict[str, Any]) -> int:
    """Optimiser steps without improvement allowed after the best check of ``hist``.

    The floor is ``cfg.patience_steps`` or, when 0, the largest of two
    validation intervals, half an epoch and 6 steps: the held-out curve of the
    first steps is noisy (the learning rate warms up to its peak; a blind-spot
    network measured on the general suite improved 30 nats by step 4, lost it
    at step 5 and was 45 nats better by step 9), so a shorter wait stops
    training that is learning. While the warm start (step 0) is still the best,
    the floor alone: training that has not beaten the PPCA after that many
    steps is given up (it was thrown away whenever it went on). After a
    better check, ``max(floor, cfg.patience_fraction * steps up to the best
    check)``: a model that learned for long gets a proportionate wait, so at
    most about ``f / (1 + f)`` of its steps come after its best. Never more
    than ``cfg.patience`` epochs. ``cfg.patience_fraction == 0``: a fixed
    ``cfg.patience`` epochs. The best check here is the lowest criterion (the
    weights finally kept may be a later check's, ``cfg.keep_within``).

    Parameters
    ----------
    cfg : TrainConfig
    hist : dict
        The training history (``steps_per_epoch``, ``best_step`` or
        ``best_epoch``, ``val_every``).

    Returns
    -------
    int
        Optimiser steps.
    """
    steps = max(1, int(hist.get("steps_per_epoch", 1)))
    if cfg.patience_fraction <= 0:  # a fixed patience
        return int(cfg.patience) * steps
    best = int(hist.get("best_step", int(hist.get("best_epoch", 0)) * steps))
    floor = (int(cfg.patience_steps) if cfg.patience_steps > 0
             else max(2 * int(hist.get("val_every", 1)), int(math.ceil(steps / 2)), 6))
    allowed = floor if best == 0 else max(floor, int(math.ceil(cfg.patience_fraction * best)))
    return min(allowed, int(cfg.patience) * steps)
