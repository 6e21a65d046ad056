"""Training loop, tiled inference and device helpers of the 3D-CVAE.

Everything here works on the *scaled, variance-stabilised* cube (see
:class:`Scaler`); the detector (:mod:`eelsanom.detectors.cvae3d`) does the
conversion from counts. Tensors use the ``Conv3d`` layout ``(batch, 1, energy,
y, x)`` in ``channels_last_3d`` memory format (about 3x faster on the CPU and
what cuDNN prefers).

Spatial context
---------------
The network is valid (unpadded) in space and needs ``model.halo`` pixels of
context on each side. Context beyond the image border is the border pixel
repeated (index clipping, i.e. replicate padding), always applied to the whole
image, so any tiling gives the same numbers as scoring the whole image at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import pooling as pooling_stage
from ..errors import Cancelled, InputError
from ..io._files import atomic_write
from ..pooling import Pooling
from ..progress import ProgressCallback, emit
from .losses import beta_nll_weight, gaussian_nll, kl_standard_normal, sigma_from_raw
from .model import CVAE3D

log = logging.getLogger(__name__)

__all__ = ["Scaler", "TrainConfig", "resolve_device", "torch_threads", "autocast",
           "train_cvae", "nested_pixel_loss", "score_cube", "spatial_split",
           "save_checkpoint", "load_checkpoint", "fingerprint"]


# ----------------------------------------------------------------------------- device
def resolve_device(device: str | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA, then MPS, then CPU; else the named device (InputError if absent).

    Thin wrapper of :func:`eelsanom.device.resolve_device`.

    Parameters
    ----------
    device : str or None, default "auto"
        ``"auto"`` (or ``None``), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    torch.device
        The device to run on.

    Raises
    ------
    InputError
        When ``device`` is not a valid device name or names one this machine lacks.
    """
    from ..device import resolve_device as _resolve

    return _resolve(device)


@contextlib.contextmanager
def torch_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, use one torch thread per core for the duration (restored afterwards).

    The cores counted are those this process may run on (its CPU affinity); on
    other devices the thread count is left alone.

    Parameters
    ----------
    device : torch.device
        Device the work inside the ``with`` block runs on.

    Yields
    ------
    None
        Control returns to the ``with`` block; the previous thread count is
        restored on exit, also after an exception.
    """
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(n or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere.

    Parameters
    ----------
    device : torch.device
        Device the network runs on.
    enabled : bool
        Whether mixed precision is wanted (ignored unless ``device`` is CUDA).

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast("cuda", dtype=torch.bfloat16)`` or a
        ``contextlib.nullcontext()``.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d)


# ----------------------------------------------------------------------------- scaling
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


def gaussian_outputs(model: CVAE3D, x: torch.Tensor, mean_t: torch.Tensor, scaler: Scaler, *,
                     sample: bool, generator: torch.Generator | None, amp: bool,
                     prefix: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor]:
    """Run the model on scaled input ``x`` ``(B, 1, E, h + 2H, w + 2H)``.

    Returns ``(target, mean, sigma, mu, logvar)`` in float32, the first three
    of shape ``(B, E, h, w)`` in Anscombe units (``target`` is the central
    region of ``x`` mapped back), ``mu, logvar`` of shape ``(B, d, h, w)``.
    ``prefix = m`` decodes only the first ``m`` latent dimensions. A context
    model (``model.context_radius > 0``) predicts each central pixel from its
    neighbours (:meth:`CVAE3D.context_forward`; ``sample`` and ``prefix`` are
    ignored) and its sigma includes the neighbours' code spread.

    Parameters
    ----------
    model : CVAE3D
    x : Tensor of shape (B, 1, E, h + 2H, w + 2H)
        Scaled input (``H = model.halo``).
    mean_t : Tensor of shape (1, E, 1, 1)
        The scaler's per-channel mean on the device.
    scaler : Scaler
    sample : bool
        Decode a reparameterised sample instead of the posterior mean.
    generator : torch.Generator, optional
    amp : bool
        bf16 autocast of the network on CUDA.
    prefix : int, optional
        Decode only the first ``prefix`` latent dimensions.

    Returns
    -------
    target, mean, sigma : Tensor of shape (B, E, h, w)
    mu, logvar : Tensor of shape (B, d, h, w)
    """
    if getattr(model, "context_radius", 0):
        # blind-spot context mode: the centre is predicted from its neighbours' codes; the
        # prediction's variance adds the spread of those codes (deterministic, no sampling)
        with autocast(x.device, amp):
            out_mean, raw, extra, mu, logvar = model.context_forward(x)
        target, mean, sigma = _to_gaussian(model, x, out_mean, raw, mean_t, scaler)
        s = float(scaler.scale)
        sigma = torch.sqrt(sigma * sigma + (s * s) * extra.float())
        return target, mean, sigma, mu.float(), logvar.float()
    with autocast(x.device, amp):
        out_mean, raw, mu, logvar = model(x, sample=sample, generator=generator, prefix=prefix)
    target, mean, sigma = _to_gaussian(model, x, out_mean, raw, mean_t, scaler)
    return target, mean, sigma, mu.float(), logvar.float()


def _to_gaussian(model: CVAE3D, x: torch.Tensor, out_mean: torch.Tensor, raw: torch.Tensor,
                 mean_t: torch.Tensor, scaler: Scaler
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network outputs -> ``(target, mean, sigma)`` ``(B, E, h, w)``, Anscombe units, float32."""
    hal = model.halo
    core = x[:, 0, :, hal:x.shape[3] - hal, hal:x.shape[4] - hal].float()
    s = float(scaler.scale)
    target = mean_t + s * core
    mean = mean_t + s * out_mean.float()
    sigma = sigma_from_raw(raw.float(), scaler.floor, float(scaler.noise))
    return target, mean, sigma


def nested_pixel_loss(model: CVAE3D, x: torch.Tensor, mean_t: torch.Tensor, scaler: Scaler,
                      prefixes: Sequence[int], *, sample: bool,
                      generator: torch.Generator | None, amp: bool, beta: float,
                      beta_nll: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Matryoshka loss (Kusupati et al., NeurIPS 2022) per pixel, ``(loss, elbo)`` ``(B, h, w)``.

    The input is encoded once (one sample ``z`` when ``sample``); the decoder is
    run on every prefix ``z[:m]`` (dimensions ``>= m`` set to 0, the prior's mean)
    and the reconstruction NLLs are *averaged* over the prefixes, so the loss
    keeps the scale of the ordinary one (same learning rate, same ``beta``). The
    KL term is that of the whole code, counted once: the dropped dimensions'
    share of it does not depend on ``m``. ``elbo`` is the prefix-averaged
    negative ELBO (the validation criterion of nested training).

    Parameters
    ----------
    model : CVAE3D
    x : Tensor of shape (B, 1, E, h + 2H, w + 2H)
        Scaled input (``H = model.halo``).
    mean_t : Tensor of shape (1, E, 1, 1)
        The scaler's per-channel mean on the device.
    scaler : Scaler
    prefixes : sequence of int
        Increasing prefix sizes (the last is normally ``latent_dim``).
    sample : bool
        Decode one reparameterised sample (training) or the posterior mean.
    generator : torch.Generator, optional
    amp : bool
        bf16 autocast of the network on CUDA.
    beta : float
        Weight of the KL term in ``loss``.
    beta_nll : float
        Seitzer et al.'s beta-NLL exponent for ``loss`` (0 = plain NLL).

    Returns
    -------
    loss, elbo : Tensor of shape (B, h, w)
    """
    with autocast(x.device, amp):
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, generator) if sample else mu
        outs = [model.decode(z, m) for m in prefixes]
    mu, logvar = mu.float(), logvar.float()
    # each prefix's (loss, elbo) carries the same KL once, so their mean counts it once
    per = [_pixel_loss(*_to_gaussian(model, x, out_mean, raw, mean_t, scaler), mu, logvar,
                       beta, beta_nll) for out_mean, raw in outs]
    k = float(len(per))
    return sum(p[0] for p in per) / k, sum(p[1] for p in per) / k


# ----------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Training hyperparameters (see :class:`~eelsanom.detectors.cvae3d.CVAE3DDetector`).

    Attributes
    ----------
    patch_size : int
        Side (pixels) of the random training crops (clipped to the training region).
    batch_size : int or None
        Crops per step; ``None`` picks about 4096 (CUDA) or 768 (CPU) output
        pixels per batch, at most 64 crops.
    epochs : int
        Maximum number of epochs.
    steps_per_epoch : int or None
        Optimiser steps per epoch; ``None``: enough crops to cover the training
        pixels about once (at least 2).
    lr : float
        Peak learning rate of Adam's one-cycle schedule.
    beta : float
        Weight of the KL term in the loss.
    beta_nll : float
        Seitzer et al.'s beta-NLL exponent (0 = plain Gaussian NLL).
    robust_fraction : float
        With ``robust``, the fraction of the worst training pixels left out of
        the loss (per batch in the first epoch, then beyond the previous epoch's
        quantile) and trimmed from the validation mean.
    robust : bool
        Train robustly (for training pixels that may contain anomalies).
    val_fraction : float
        Fraction of the training pixels held out for validation (the caller
        makes the split, see :func:`spatial_split`).
    patience : int
        Epochs without improvement of the validation criterion before stopping early.
    min_delta : float
        Smallest relative improvement (fraction of the best value) that counts.
    seed : int
        Seed of the crops and the reparameterisation noise.
    amp : bool
        bf16 autocast of the network on CUDA.
    checkpoint_every : int
        Epochs between checkpoint writes (0: only on cancellation and at the end).
    weight_decay : float
        Adam's weight decay.
    prefixes : tuple of int or None
        Matryoshka prefixes (increasing, the last = ``latent_dim``); ``None``
        trains the usual loss (see :func:`nested_pixel_loss`).
    """

    patch_size: int = 16
    batch_size: int | None = None
    epochs: int = 40
    steps_per_epoch: int | None = None
    lr: float = 3e-3
    beta: float = 1.0
    beta_nll: float = 0.0
    robust_fraction: float = 0.05
    robust: bool = False
    val_fraction: float = 0.12
    patience: int = 8
    min_delta: float = 5e-5
    seed: int = 0
    amp: bool = False
    checkpoint_every: int = 5
    weight_decay: float = 0.0
    #: Matryoshka prefixes (increasing, the last = latent_dim); ``None`` trains the usual loss
    prefixes: tuple[int, ...] | None = None


# ----------------------------------------------------------------------------- data split
def spatial_split(mask: np.ndarray, fraction: float, seed: int, *, block: int | None = None,
                  min_pixels: int = 64
                  ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, int, int, int]]]:
    """Split training pixels into train / validation by whole square blocks (spatially held out).

    Returns ``(train_mask, val_mask, val_boxes)``: ``val_boxes`` are the held-out
    blocks ``(y0, y1, x0, x1)``; ``val_mask`` is ``None`` (and no boxes) when there
    are fewer than ``min_pixels`` pixels or ``fraction == 0``.

    Parameters
    ----------
    mask : ndarray of bool, shape (ny, nx)
        The training pixels.
    fraction : float
        Wanted fraction of them in the validation set; blocks containing
        training pixels are added in random order until it is reached.
    seed : int
        Seed of the block order.
    block : int, optional
        Side of the square blocks (pixels); default
        ``round(sqrt(n_pixels * fraction / 3))`` clipped to ``[2, 8]``.
    min_pixels : int
        No split below this many training pixels.

    Returns
    -------
    train_mask : ndarray of bool, shape (ny, nx)
        The training pixels outside the held-out blocks (``mask`` itself when
        there is no split).
    val_mask : ndarray of bool, shape (ny, nx), or None
        The held-out training pixels; ``None`` when there is no split (also
        when fewer than half the pixels would remain for training).
    val_boxes : list of (y0, y1, x0, x1)
        The held-out blocks (end-exclusive, clipped to the image).
    """
    n = int(mask.sum())
    if fraction <= 0 or n < min_pixels:
        return mask, None, []
    ny, nx = mask.shape
    if block is None:
        block = int(max(2, min(8, round(math.sqrt(n * fraction / 3.0)))))
    nbx = (nx + block - 1) // block
    ids = (np.arange(ny) // block)[:, None] * nbx + (np.arange(nx) // block)[None, :]
    cand = np.unique(ids[mask])
    rng = np.random.default_rng(seed + 7919)
    rng.shuffle(cand)
    val = np.zeros_like(mask)
    boxes = []
    target = fraction * n
    for c in cand:
        if val.sum() >= target:
            break
        val |= (ids == c) & mask
        by, bx = divmod(int(c), nbx)
        boxes.append((by * block, min((by + 1) * block, ny), bx * block,
                      min((bx + 1) * block, nx)))
    train = mask & ~val
    if train.sum() < max(1, n // 2) or val.sum() == 0:
        return mask, None, []
    return train, val, boxes


def fingerprint(*parts: Any) -> str:
    """SHA-1 of arrays / JSON-serialisable values (used to match checkpoints to their data).

    Parameters
    ----------
    *parts
        ndarrays (hashed by shape, dtype and bytes) or values hashed as their
        JSON text (keys sorted; ``str`` of anything JSON cannot encode).

    Returns
    -------
    str
        40 hexadecimal digits.
    """
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.shape, str(p.dtype))).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` of tensors and plain types, written atomically.

    The state goes to a temporary file beside ``path`` that then replaces it, so
    a reader never sees a half-written checkpoint; missing parent folders are made.

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint file.
    state : dict
        Tensors and plain Python values (readable with ``weights_only=True``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a checkpoint (``weights_only=True``: no code runs); ``None`` when unreadable.

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint file written by :func:`save_checkpoint`.

    Returns
    -------
    dict or None
        The saved state, tensors on the CPU; ``None`` (with a logged warning)
        when the file cannot be read.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means "start fresh"
        log.warning("checkpoint %s could not be read (%s); training from scratch", path, exc)
        return None


def _state_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- training
def _pixel_loss(target: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor,
                logvar: torch.Tensor, beta: float, beta_nll: float, with_kl: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``(loss, elbo)`` ``(B, h, w)``: loss may carry the beta-NLL weighting.

    ``with_kl=False`` (a context model, whose prediction does not use the
    pixel's own code): both are the NLL alone.
    """
    nll_e = gaussian_nll(target, mean, sigma)
    kl = kl_standard_normal(mu, logvar).sum(1) if with_kl else torch.zeros_like(nll_e[:, 0])
    elbo = nll_e.sum(1) + kl
    if beta_nll:
        rec = (nll_e * beta_nll_weight(sigma, beta_nll)).sum(1)
    else:
        rec = nll_e.sum(1)
    return rec + beta * kl, elbo


def _masked_mean(v: torch.Tensor, m: torch.Tensor, trim: float,
                 cutoff: float | None = None) -> torch.Tensor:
    """Mean of ``v[m]``, leaving out values above ``cutoff`` or else the top ``trim`` fraction."""
    vals = v[m]
    if vals.numel() == 0:
        return v.sum() * 0.0
    if cutoff is not None:
        kept = vals[vals <= cutoff]
        if kept.numel() >= max(1, vals.numel() // 2):
            return kept.mean()
    if trim > 0 and vals.numel() >= 10:
        k = int(math.floor(vals.numel() * (1.0 - trim)))
        vals = torch.topk(vals, max(k, 1), largest=False).values
    return vals.mean()


def train_cvae(model: CVAE3D, x_region: np.ndarray, train_mask: np.ndarray,
               val_mask: np.ndarray | None, val_boxes: list[tuple[int, int, int, int]],
               scaler: Scaler, cfg: TrainConfig, *,
               device: torch.device, progress: ProgressCallback | None = None,
               checkpoint: str | os.PathLike | None = None, fp: str = "") -> dict[str, Any]:
    """Train ``model`` on the pixels of ``train_mask``; early-stop on ``val_mask``.

    Parameters
    ----------
    model : CVAE3D
        Freshly initialised (or to be overwritten by the checkpoint).
    x_region : ndarray of shape (E, h + 2 * halo, w + 2 * halo)
        Scaled input of the training region, already padded by ``model.halo``
        (replicate padding at the image border).
    train_mask, val_mask : ndarray of bool, shape (h, w)
        Pixels whose loss is trained on / validated on (disjoint).
    val_boxes : list of (y0, y1, x0, x1)
        Blocks holding the validation pixels (each is run through the model).
    scaler : Scaler
    cfg : TrainConfig
    device : torch.device
    progress : callable, optional
        Receives ``ProgressEvent("train", epoch, epochs, loss=..., val_nll=...)``;
        returning ``False`` cancels (the checkpoint is written first).
    checkpoint : path, optional
        Resumable checkpoint, written every ``cfg.checkpoint_every`` epochs, on
        cancellation and at the end; read at the start when its fingerprint
        equals ``fp``.
    fp : str
        Fingerprint of the data and parameters the checkpoint must match.

    Returns
    -------
    dict
        History: ``loss`` and ``val_nll`` per epoch (mean per-pixel negative
        ELBO, nats; averaged over the prefixes with ``cfg.prefixes``; the NLL of
        each pixel under its neighbourhood's prediction for a context model),
        ``init_val`` (the initialisation's held-out value, NaN without a
        validation split), ``best_epoch`` (0 = the initialisation), ``best_val``,
        ``init_won``, ``epochs_run``, ``stopped_early``, ``resumed_from``. The
        model holds the best weights on return.

    Raises
    ------
    InputError
        When the training loss becomes non-finite (:func:`check_finite_loss`).
    Cancelled
        When ``progress`` returns ``False`` (after the checkpoint is written).
    """
    halo = model.halo
    # a context model's prediction of a pixel does not use the pixel's own code: NLL only
    use_kl = not getattr(model, "context_radius", 0)
    if cfg.prefixes and not use_kl:
        raise InputError("nested (Matryoshka) training is not available for a context model; "
                         "pass nested_prefixes=None.")
    h, w = train_mask.shape
    py, px = min(cfg.patch_size, h), min(cfg.patch_size, w)
    n_train = int(train_mask.sum())
    if cfg.batch_size is None:
        target_px = 4096 if device.type == "cuda" else 768
        area = py * px
        if area < cfg.patch_size ** 2:
            # an image smaller than a crop (line scans, a few pixels): count the halo the
            # network reads around each crop, and never take more crops than training pixels
            # (a 2 x 2 image would otherwise run 64 padded copies of itself per step)
            area = (py + 2 * halo) * (px + 2 * halo)
        batch = int(max(1, min(64, round(target_px / area))))
        if area != py * px:
            batch = min(batch, max(1, n_train))
    else:
        batch = int(cfg.batch_size)
    steps = cfg.steps_per_epoch or int(max(2, math.ceil(n_train / (batch * py * px))))
    total_steps = max(1, cfg.epochs * steps)

    x_all = torch.as_tensor(np.ascontiguousarray(x_region), dtype=torch.float32)
    x_all = _cl(x_all[None, None].to(device))
    tm = torch.as_tensor(train_mask, device=device)
    vm = None if val_mask is None else torch.as_tensor(val_mask, device=device)
    mean_t, _, _ = scaler.tensors(device)

    # crops are centred near training pixels (any crop containing one is equally likely)
    ty, tx = np.nonzero(train_mask)

    model.to(device).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                pct_start=0.15, div_factor=10.0,
                                                final_div_factor=100.0)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    hist: dict[str, Any] = {"loss": [], "val_nll": [], "best_epoch": 0,
                            "best_val": float("inf"), "epochs_run": 0, "stopped_early": False,
                            "resumed_from": 0, "steps_per_epoch": steps, "batch_size": batch,
                            "patch": [py, px]}
    best_state = _state_cpu(model)
    start_epoch = 0
    done = False
    # the checkpoint must match the data, the parameters and the batch geometry
    fp = f"{fp}|{steps}x{batch}x{py}x{px}"

    if checkpoint is not None and Path(checkpoint).is_file():
        ck = load_checkpoint(checkpoint)
        if ck is not None and ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["torch_rng"].to(gen.get_state().device)
                          if device.type == "cpu" else ck["torch_rng"])
            rng.bit_generator.state = json.loads(ck["numpy_rng"])
            best_state = ck["best_state"]
            hist = json.loads(ck["history"])
            start_epoch = int(ck["epoch"])
            done = bool(ck.get("finished", False))
            hist["resumed_from"] = start_epoch
            log.info("resuming training from checkpoint %s at epoch %d/%d%s", checkpoint,
                     start_epoch, cfg.epochs, " (already finished)" if done else "")
        elif ck is not None:
            log.warning("checkpoint %s was written for other data or parameters; training from "
                        "scratch (it will be overwritten)", checkpoint)

    def write_ck(epoch: int, finished: bool) -> None:
        if checkpoint is None:
            return
        save_checkpoint(checkpoint, {
            "fingerprint": fp, "epoch": int(epoch), "finished": bool(finished),
            "model": _state_cpu(model), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "best_state": best_state,
            "torch_rng": gen.get_state(), "numpy_rng": json.dumps(rng.bit_generator.state),
            "history": json.dumps(hist)})

    def evaluate() -> float:
        if vm is None:
            return float("nan")
        model.eval()
        vals = []
        with torch.no_grad():
            for y0, y1, x0, x1 in val_boxes:
                xv = x_all[:, :, :, y0:y1 + 2 * halo, x0:x1 + 2 * halo]
                if cfg.prefixes:
                    _, elbo = nested_pixel_loss(model, xv, mean_t, scaler, cfg.prefixes,
                                                sample=False, generator=None, amp=cfg.amp,
                                                beta=cfg.beta, beta_nll=0.0)
                else:
                    target, mean, sigma, mu, logvar = gaussian_outputs(
                        model, xv, mean_t, scaler, sample=False, generator=None, amp=cfg.amp)
                    _, elbo = _pixel_loss(target, mean, sigma, mu, logvar, cfg.beta, 0.0,
                                          use_kl)
                vals.append(elbo[0][vm[y0:y1, x0:x1]])
        model.train()
        v = torch.cat(vals)
        return float(_masked_mean(v, torch.ones_like(v, dtype=torch.bool),
                                  cfg.robust_fraction if cfg.robust else 0.0))

    if start_epoch == 0 and not done:
        # the initialisation (PPCA) is epoch 0: a candidate like any epoch, so training
        # never keeps weights that do worse on held-out bulk than where it started
        init_val = evaluate()
        hist["init_val"] = init_val
        if np.isfinite(init_val):
            hist["best_val"] = init_val
            hist["best_epoch"] = 0
    bad_epochs = int(hist.get("bad_epochs", 0))
    epoch = start_epoch
    cutoff: float | None = hist.get("robust_cutoff")
    try:
        model.train()
        while not done and epoch < cfg.epochs:
            t0 = time.perf_counter()
            losses: list[float] = []
            seen: list[torch.Tensor] = []
            for _ in range(steps):
                k = rng.integers(0, n_train, size=batch)
                oy = np.clip(ty[k] - rng.integers(0, py, size=batch), 0, h - py)
                ox = np.clip(tx[k] - rng.integers(0, px, size=batch), 0, w - px)
                xb = torch.cat([x_all[:, :, :, y:y + py + 2 * halo, x:x + px + 2 * halo]
                                for y, x in zip(oy, ox)])
                mb = torch.stack([tm[y:y + py, x:x + px] for y, x in zip(oy, ox)])
                if cfg.prefixes:
                    loss_px, _ = nested_pixel_loss(model, _cl(xb), mean_t, scaler, cfg.prefixes,
                                                   sample=True, generator=gen, amp=cfg.amp,
                                                   beta=cfg.beta, beta_nll=cfg.beta_nll)
                else:
                    target, mean, sigma, mu, logvar = gaussian_outputs(
                        model, _cl(xb), mean_t, scaler, sample=True, generator=gen, amp=cfg.amp)
                    loss_px, _ = _pixel_loss(target, mean, sigma, mu, logvar, cfg.beta,
                                             cfg.beta_nll, use_kl)
                loss = _masked_mean(loss_px, mb, cfg.robust_fraction if cfg.robust else 0.0,
                                    cutoff)
                if cfg.robust:
                    seen.append(loss_px.detach()[mb])
                opt.zero_grad(set_to_none=True)
                (loss / model.n_energy).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            epoch += 1
            if cfg.robust and seen:
                # robust training: from now on leave out pixels worse than the worst
                # robust_fraction of the last epoch's (a global cut, so that a batch full of
                # one anomalous cluster cannot slip past a per-batch trim)
                cutoff = float(torch.quantile(torch.cat(seen).float().cpu()[:1_000_000],
                                              1.0 - cfg.robust_fraction))
            val = evaluate()
            tr = float(np.mean(losses))
            check_finite_loss(tr)
            hist["loss"].append(tr)
            hist["val_nll"].append(val)
            hist["epochs_run"] = epoch
            hist["robust_cutoff"] = cutoff
            crit = val if np.isfinite(val) else tr
            first = epoch == 1 and not np.isfinite(hist.get("init_val", float("nan")))
            if crit < hist["best_val"] - cfg.min_delta * abs(hist["best_val"]) or first:
                hist["best_val"] = crit
                hist["best_epoch"] = epoch
                best_state = _state_cpu(model)
                bad_epochs = 0
            else:
                bad_epochs += 1
            hist["bad_epochs"] = bad_epochs
            log.debug("epoch %d/%d loss %.3f val %.3f (%.2f s)", epoch, cfg.epochs, tr, val,
                      time.perf_counter() - t0)
            if bad_epochs >= cfg.patience:
                hist["stopped_early"] = True
                done = True
            elif cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                write_ck(epoch, False)
            if vm is None:  # say why there is no validation NLL rather than show nan
                emit(progress, "train", epoch, cfg.epochs, loss=tr,
                     val=f"no validation split ({n_train} training pixels)")
            else:
                emit(progress, "train", epoch, cfg.epochs, loss=tr, val_nll=val)
        done = True
    except Cancelled:
        write_ck(epoch, False)
        raise
    model.load_state_dict(best_state)
    hist["init_won"] = hist["best_epoch"] == 0
    write_ck(epoch, True)
    return hist


# ----------------------------------------------------------------------------- inference
def _tiles(ny: int, nx: int, tile: int) -> list[tuple[int, int, int, int]]:
    return [(y, min(y + tile, ny), x, min(x + tile, nx))
            for y in range(0, ny, tile) for x in range(0, nx, tile)]


def auto_tile(n_energy: int, width: int, device: torch.device, halo: int) -> int:
    """Output tile side (pixels) whose working memory, halo included, fits the device.

    Budget: a quarter of the free GPU memory, or 2 GB on the CPU; about
    ``4 (width + 24)`` bytes per voxel (network activations and the
    neighbourhood statistics).

    Parameters
    ----------
    n_energy : int
        Energy channels of the model.
    width : int
        The model's ``width`` (channels of its first energy level).
    device : torch.device
        Where the scoring runs (CUDA: its free memory is queried).
    halo : int
        Pixels of context needed on each side of a tile (network halo plus
        neighbourhood radius).

    Returns
    -------
    int
        Tile side in pixels, between 16 and 4096.
    """
    per_px = 4.0 * max(n_energy, 1) * (width + 24)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.25 * free
    else:
        budget = 2e9
    side = int(math.sqrt(budget / per_px)) - 2 * halo
    return int(max(16, min(side, 4096)))


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


def score_cube(model: CVAE3D, read: Callable[[slice, slice], np.ndarray], ny: int, nx: int,
               scaler: Scaler, *, transform: str, pooling: Pooling, with_kl: bool,
               device: torch.device, amp: bool,
               excess: tuple[float, float] | None = None,
               tile: int | None = None, want_recon: bool = False,
               want_channels: tuple[int, int] | None = None,
               region: tuple[int, int, int, int] | None = None,
               progress: ProgressCallback | None = None,
               prefix: int | None = None) -> dict[str, np.ndarray]:
    """Score every pixel of a ``(ny, nx, E)`` cube, tile by tile, seam-free.

    The network gives every pixel a Gaussian (decoder mean and sigma, Anscombe
    units) and a KL term; the shared scoring stage
    (:func:`eelsanom.pooling.pool_region`) turns them into the pixel's score:
    its own negative ELBO, or with pooling the larger of that and its
    neighbourhood statistic's (see :mod:`eelsanom.pooling`).

    Parameters
    ----------
    model : CVAE3D
    read : callable
        ``read(rows, cols)`` returns the *counts* of that block of the image,
        ``ndarray (len(rows), len(cols), E)`` (it may read lazily); the transform
        and scaling run on ``device``.
    ny, nx : int
        Image size.
    scaler : Scaler
    transform : {"anscombe", "none"}
    pooling : Pooling
        The pooling stage's settings (``Pooling(sigma=0)``: each pixel alone).
    with_kl : bool
        Add the (neighbourhood-weighted) KL term to each scale's NLL (never for a
        context model, whose score is the centre's NLL under its neighbourhood's
        prediction; ``kl`` is still reported).
    device, amp
        Where and how to run (``amp``: bf16 autocast of the network on CUDA).
    excess : (float, float), optional
        ``(median, robust sd)`` of the training pixels' excess NLL (the spill
        guard of the pooling); ``None`` pools every neighbour.
    tile : int, optional
        Output tile side; ``None`` picks one that fits the device's memory.
    want_recon : bool
        Also return per-pixel ``mean`` and ``sigma`` (h, w, E), Anscombe units.
    want_channels : (iy, ix), optional
        Also return ``channel_nll`` (E,): that pixel's per-channel NLL at its winning scale.
    region : (y0, y1, x0, x1), optional
        Score only this block of the image (context still comes from the image).
    progress : callable, optional
    prefix : int, optional
        Decode only the first ``prefix`` latent dimensions (the others set to 0,
        the prior's mean; a Matryoshka prefix) and count only their KL.

    Returns
    -------
    dict
        Maps of shape (h, w) over the region: ``score`` (the pixel's score),
        ``nb_nll`` (its NLL part at the winning scale), ``scale`` (that sigma),
        ``recon_nll`` (the pixel's own NLL), ``expected`` (its expectation under
        the model), ``kl``; ``latent`` (h, w, d); plus ``mean``, ``sigma``,
        ``channel_nll`` when asked.
    """
    y0r, y1r, x0r, x1r = region if region is not None else (0, ny, 0, nx)
    hh, ww = y1r - y0r, x1r - x0r
    rn = pooling.radius()
    hal = model.halo
    if tile is None:
        tile = auto_tile(model.n_energy, model.width, device, hal + rn)
    d = model.latent_dim
    out = {k: np.zeros((hh, ww), np.float64)
           for k in ("score", "nb_nll", "scale", "recon_nll", "expected", "kl")}
    out["latent"] = np.zeros((hh, ww, d), np.float32)
    if want_recon:
        out["mean"] = np.zeros((hh, ww, model.n_energy), np.float32)
        out["sigma"] = np.zeros((hh, ww, model.n_energy), np.float32)
    mean_t, _, _ = scaler.tensors(device)
    noise2 = float(scaler.noise) ** 2
    tiles = _tiles(hh, ww, tile)
    model.eval()
    for it, (ty0, ty1, tx0, tx1) in enumerate(tiles):
        ay0, ay1, ax0, ax1 = ty0 + y0r, ty1 + y0r, tx0 + x0r, tx1 + x0r  # absolute output
        sy0, sy1 = max(0, ay0 - rn), min(ny, ay1 + rn)  # distinct source pixels
        sx0, sx1 = max(0, ax0 - rn), min(nx, ax1 + rn)
        # network input: source region + halo; beyond the image border the border pixel is
        # repeated (replicate padding, applied on the device)
        iy0, iy1 = max(0, sy0 - hal), min(ny, sy1 + hal)
        ix0, ix1 = max(0, sx0 - hal), min(nx, sx1 + hal)
        pads = (ix0 - (sx0 - hal), (sx1 + hal) - ix1, iy0 - (sy0 - hal), (sy1 + hal) - iy1)
        raw = torch.as_tensor(np.asarray(read(slice(iy0, iy1), slice(ix0, ix1))))
        x = device_transform(raw.to(device), transform, scaler).permute(2, 0, 1)[None, None]
        if any(pads):
            x = torch.nn.functional.pad(x, (*pads, 0, 0), mode="replicate")
        oy0, ox0 = ay0 - sy0, ax0 - sx0
        sl = (slice(oy0, oy0 + ty1 - ty0), slice(ox0, ox0 + tx1 - tx0))
        with torch.no_grad():
            target, mean, sigma, mu, logvar = gaussian_outputs(
                model, _cl(x), mean_t, scaler, sample=False, generator=None, amp=amp,
                prefix=prefix)
            target, mean, sigma = target[0], mean[0], sigma[0]  # (E, hs, ws)
            kl = kl_standard_normal(mu[0], logvar[0])[:prefix].sum(0)  # (hs, ws)
            # a context model's score is the centre's NLL under its neighbourhood's
            # prediction: its own code's KL is reported, not added
            use_kl = with_kl and not getattr(model, "context_radius", 0)
            res = pooling_stage.pool_region(target, mean, sigma, kl if use_kl else None,
                                            out_box=(ay0, ay1, ax0, ax1),
                                            src_box=(sy0, sy1, sx0, sx1), image_shape=(ny, nx),
                                            pooling=pooling, noise2=noise2, excess=excess,
                                            want_channels=want_channels)
        dst = (slice(ty0, ty1), slice(tx0, tx1))
        out["score"][dst] = res["score"].double().cpu().numpy()
        out["nb_nll"][dst] = res["nb_nll"].double().cpu().numpy()
        out["scale"][dst] = res["scale"].double().cpu().numpy()
        out["recon_nll"][dst] = res["own"].double().cpu().numpy()
        out["expected"][dst] = res["expected"].double().cpu().numpy()
        out["kl"][dst] = kl[sl].double().cpu().numpy()
        out["latent"][dst] = mu[0][:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy()
        if want_recon:
            out["mean"][dst] = mean[:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy()
            out["sigma"][dst] = sigma[:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy()
        if "channel_nll" in res:
            out["channel_nll"] = res["channel_nll"].double().cpu().numpy()
        emit(progress, "score", it + 1, len(tiles))
    return out


def check_finite_loss(value: float) -> None:
    """Refuse a non-finite training loss with a message that says what to try.

    Parameters
    ----------
    value : float
        An epoch's mean training loss.

    Raises
    ------
    InputError
        When ``value`` is NaN or infinite (training diverged).
    """
    if not np.isfinite(value):
        raise InputError("3D-CVAE training diverged (non-finite loss); lower lr or check the data "
                         "for extreme values.")
