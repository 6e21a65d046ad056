"""Training of the 3D-CVAE: configuration, the spatial validation split, checkpoints
and the training loop (:func:`train_cvae`).

Everything here works on the *scaled, variance-stabilised* cube (see
:class:`~eelsanom.nn.scaler.Scaler`); the detector (:mod:`eelsanom.detectors.cvae3d`)
does the conversion from counts. Scoring a fitted network is :mod:`eelsanom.nn.infer`.

Progress
--------
:func:`train_cvae` reports each finished epoch as ``ProgressEvent("train", epoch,
epochs, loss=..., val_nll=...)`` and, within an epoch, each optimiser step and each
validation block as ``ProgressEvent("batch", k, n)`` counting within the current
epoch (``n`` = steps plus validation blocks; a validation block's event carries
``phase="validation"``). A consumer that shows epochs reads the ``"train"`` stage
only. Returning ``False`` from the callback at any event cancels within one batch;
the checkpoint then holds the state at the end of the last finished epoch, so a
resumed run repeats the interrupted epoch exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, InputError
from ..io._files import atomic_write
from ..progress import ProgressCallback, emit
from .device import channels_last
from .losses import gaussian_outputs, nested_pixel_loss, pixel_loss
from .model import CVAE3D
from .scaler import Scaler
from .stopping import _Held, _held_se, noise_floor_gap, paired_se, patience_steps

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_cvae", "noise_floor_gap", "paired_se", "validation_interval",
           "spatial_split", "save_checkpoint", "load_checkpoint", "fingerprint",
           "check_finite_loss"]


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
        Most epochs without improvement of the validation criterion before
        stopping early (the cap of the rule below).
    patience_steps : int
        Optimiser steps without improvement always allowed (the floor; 0: the
        automatic floor, the largest of two validation intervals, half an epoch
        and 6 steps).
        Beyond it the patience is ``patience_fraction`` of the steps up to the
        best check, so the steps run after the best checkpoint are at most about
        ``patience_fraction / (1 + patience_fraction)`` of the training once it
        learns for a while (1/3: 25 %); while the warm start is unbeaten the
        floor alone applies (see :func:`patience_steps`).
    patience_fraction : float
        See ``patience_steps``; 0: a fixed patience of ``patience`` epochs.
    floor_gap : float or None
        Skip training when the warm start's held-out NLL is within this many
        nats per channel of the noise floor (the NLL of a model whose residual
        is the noise itself, ``0.5 log(2 pi noise^2) + 1/2`` per channel at the
        scaler's noise level): nothing is left for training to learn, and every
        step would be thrown away (:func:`noise_floor_gap`). ``None``: always train.
    val_every : int or None
        Optimiser steps between validation checks (a check also ends every
        epoch); ``None``: as often as keeps validation at about a quarter of
        the steps' cost (:func:`validation_interval`), at most once a step.
    max_seconds : float or None
        Stop at the first validation check past this many seconds of training
        (``None``: no limit; the clock is read after every step, and a stop
        between checks runs one last check); the best check so far is kept.
    min_delta : float
        Smallest relative improvement (fraction of the best value) that counts.
    keep_within : float
        The weights kept are those of the last check of the plateau after the
        best (the lowest criterion): the checks that follow it, each no worse
        than it by more than this many standard errors of the held-out
        criterion (:func:`paired_se`: the standard error of the mean per-pixel
        difference between the two checks on the same held-out pixels, blocks
        as the independent units), up to the first check that is; the best's
        own when the first check after it is already outside. The held-out
        pixels cannot tell such a check from the best, so the steps that led to
        it are kept rather than thrown away; a run that wandered off and came
        back is not a plateau.
        0: the best check is kept (the rule before; a fixed patience uses it).
        The stop itself (the patience) is counted from the best check either way.
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
    patience_steps: int = 0
    patience_fraction: float = 1.0 / 3.0
    floor_gap: float | None = 0.05
    val_every: int | None = None
    max_seconds: float | None = None
    min_delta: float = 5e-5
    keep_within: float = 0.5
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


@dataclass
class _Data:
    """The training data on the device and the batch geometry of one run."""

    x_all: torch.Tensor  # (1, 1, E, h + 2 halo, w + 2 halo), channels_last_3d
    train_mask: torch.Tensor  # (h, w) bool
    val_mask: torch.Tensor | None  # (h, w) bool
    val_boxes: list[tuple[int, int, int, int]]
    mean_t: torch.Tensor  # (1, E, 1, 1)
    ty: np.ndarray  # training pixels' rows and columns
    tx: np.ndarray
    halo: int
    batch: int
    steps: int
    py: int
    px: int

    @property
    def n_train(self) -> int:
        return int(self.ty.size)

    @property
    def n_val_events(self) -> int:
        """Validation blocks per epoch (0 without a validation split)."""
        return 0 if self.val_mask is None else len(self.val_boxes)


def _geometry(cfg: TrainConfig, train_mask: np.ndarray, halo: int, device: torch.device
              ) -> tuple[int, int, int, int]:
    """``(batch, steps, py, px)``: crops per step, steps per epoch and the crop size."""
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
    return batch, steps, py, px


@dataclass
class _Run:
    """The state of one training run that a checkpoint saves and a resume restores."""

    model: CVAE3D
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    rng: np.random.Generator
    hist: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    fp: str
    checkpoint: str | os.PathLike | None
    #: the checkpoint state at the end of the last finished epoch (what a cancel saves)
    boundary: dict[str, Any] | None = field(default=None)
    #: the weights of the last check of the plateau after the best (None: the best's own)
    kept_state: dict[str, torch.Tensor] | None = field(default=None)
    #: the best check's held-out per-pixel values (what later checks are paired with)
    best_held: _Held | None = field(default=None)
    #: when ``hist["train_seconds"]`` was last brought up to date (None: the clock is stopped)
    clock: float | None = field(default=None)

    def tick(self) -> float:
        """Add the time since the last tick to ``hist["train_seconds"]``; return the total."""
        now = time.perf_counter()
        if self.clock is not None:
            self.hist["train_seconds"] = float(self.hist.get("train_seconds", 0.0)) + now - self.clock
        self.clock = now
        return float(self.hist.get("train_seconds", 0.0))

    def out_of_time(self, cfg: TrainConfig) -> bool:
        """Whether the training time has reached ``cfg.max_seconds``."""
        return cfg.max_seconds is not None and self.tick() >= cfg.max_seconds

    def snapshot(self, epoch: int, finished: bool) -> dict[str, Any] | None:
        """The checkpoint state now (copies; ``None`` when no checkpoint is kept)."""
        if self.checkpoint is None:
            return None
        return {"fingerprint": self.fp, "epoch": int(epoch), "finished": bool(finished),
                "model": _state_cpu(self.model),
                "optimizer": copy.deepcopy(self.opt.state_dict()),
                "scheduler": copy.deepcopy(self.sched.state_dict()),
                "best_state": self.best_state,
                "kept_state": self.kept_state,
                "best_held": None if self.best_held is None else {
                    k: torch.as_tensor(getattr(self.best_held, k))
                    for k in ("values", "counts", "keep")},
                "torch_rng": self.gen.get_state(),
                "numpy_rng": json.dumps(self.rng.bit_generator.state),
                "history": json.dumps(self.hist)}

    def mark_boundary(self, epoch: int) -> None:
        """Remember the state at the end of ``epoch`` (what a cancellation saves)."""
        self.boundary = self.snapshot(epoch, False)

    def save(self, state: dict[str, Any] | None) -> None:
        if self.checkpoint is not None and state is not None:
            save_checkpoint(self.checkpoint, state)

    def resume(self, cfg: TrainConfig, device: torch.device) -> tuple[int, bool]:
        """Load the checkpoint when it matches ``fp``: ``(start_epoch, finished)``."""
        if self.checkpoint is None or not Path(self.checkpoint).is_file():
            return 0, False
        ck = load_checkpoint(self.checkpoint)
        if ck is None or ck.get("fingerprint") != self.fp:
            if ck is not None:
                log.warning("checkpoint %s was written for other data or parameters; training "
                            "from scratch (it will be overwritten)", self.checkpoint)
            return 0, False
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.gen.set_state(ck["torch_rng"].to(self.gen.get_state().device)
                           if device.type == "cpu" else ck["torch_rng"])
        self.rng.bit_generator.state = json.loads(ck["numpy_rng"])
        self.best_state = ck["best_state"]
        self.kept_state = ck.get("kept_state")
        bh = ck.get("best_held")
        self.best_held = None if bh is None else _Held(
            *(bh[k].numpy() for k in ("values", "counts", "keep")))
        self.hist = json.loads(ck["history"])
        start, done = int(ck["epoch"]), bool(ck.get("finished", False))
        self.hist["resumed_from"] = start
        log.info("resuming training from checkpoint %s at epoch %d/%d%s", self.checkpoint,
                 start, cfg.epochs, " (already finished)" if done else "")
        return start, done


def _pixel_outputs(model: CVAE3D, x: torch.Tensor, data: _Data, scaler: Scaler,
                   cfg: TrainConfig, *, train: bool, generator: torch.Generator | None,
                   use_kl: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``(loss, elbo)`` of a batch: training (sampled, beta-NLL) or evaluation."""
    beta_nll = cfg.beta_nll if train else 0.0
    if cfg.prefixes:
        return nested_pixel_loss(model, x, data.mean_t, scaler, cfg.prefixes, sample=train,
                                 generator=generator, amp=cfg.amp, beta=cfg.beta,
                                 beta_nll=beta_nll)
    target, mean, sigma, mu, logvar = gaussian_outputs(
        model, x, data.mean_t, scaler, sample=train, generator=generator, amp=cfg.amp)
    return pixel_loss(target, mean, sigma, mu, logvar, cfg.beta, beta_nll, use_kl)


def _validate(model: CVAE3D, data: _Data, scaler: Scaler, cfg: TrainConfig, *, use_kl: bool,
              progress: ProgressCallback | None, first: int = 0, total: int | None = None,
              held: list[_Held] | None = None) -> float:
    """Mean held-out negative ELBO per pixel (trimmed when robust); NaN without a split.

    Each validation block is a ``"batch"`` event numbered from ``first + 1`` of ``total``.
    ``held``, when given, receives the per-pixel values (and which of them the
    trimmed mean counts) as a :class:`_Held`, for :func:`paired_se`.
    """
    if data.val_mask is None:
        return float("nan")
    halo = data.halo
    total = total if total is not None else len(data.val_boxes)
    model.eval()
    vals = []
    try:
        with torch.no_grad():
            for i, (y0, y1, x0, x1) in enumerate(data.val_boxes):
                xv = data.x_all[:, :, :, y0:y1 + 2 * halo, x0:x1 + 2 * halo]
                _, elbo = _pixel_outputs(model, xv, data, scaler, cfg, train=False,
                                         generator=None, use_kl=use_kl)
                vals.append(elbo[0][data.val_mask[y0:y1, x0:x1]])
                emit(progress, "batch", first + i + 1, total, phase="validation")
    finally:
        model.train()
    v = torch.cat(vals)
    trim = cfg.robust_fraction if cfg.robust else 0.0
    if held is not None:
        vv = v.detach().double().cpu().numpy()
        keep = np.ones(vv.shape, bool)
        if trim > 0 and vv.size >= 10:  # the pixels _masked_mean keeps: the k lowest
            k = max(int(math.floor(vv.size * (1.0 - trim))), 1)
            keep = vv <= np.partition(vv, k - 1)[k - 1]
        held.append(_Held(vv, np.array([int(t.numel()) for t in vals], np.int64), keep))
    return float(_masked_mean(v, torch.ones_like(v, dtype=torch.bool), trim))


def validation_interval(cfg: TrainConfig, data: _Data) -> int:
    """Optimiser steps between validation checks (``cfg.val_every``, or chosen from the geometry).

    A validation check runs the network forward over the held-out blocks (with
    their halo); a step runs it forward and backward (about three forward
    passes) over ``batch`` crops. The automatic interval keeps the checks at
    about a quarter of the steps' cost: ``ceil(4/3 * val_px / step_px)`` steps,
    at least 1 and at most an epoch. Pixel counts, not timings, so it is the
    same on every run.

    Parameters
    ----------
    cfg : TrainConfig
    data : _Data

    Returns
    -------
    int
        Steps (``data.steps`` when there is no validation split: the training
        loss of each epoch is then the criterion).
    """
    if data.val_mask is None:
        return data.steps
    if cfg.val_every:
        return int(max(1, cfg.val_every))
    h = data.halo
    val_px = sum((y1 - y0 + 2 * h) * (x1 - x0 + 2 * h) for y0, y1, x0, x1 in data.val_boxes)
    step_px = data.batch * (data.py + 2 * h) * (data.px + 2 * h)
    return int(min(data.steps, max(1, math.ceil(4.0 * val_px / (3.0 * step_px)))))


def _check_steps(epoch: int, steps: int, every: int) -> list[int]:
    """The steps (1-based, within epoch ``epoch`` counted from 0) after which a check runs.

    Every ``every``-th step of the whole run, and the epoch's last step.
    """
    first = epoch * steps
    out = [k for k in range(1, steps + 1) if (first + k) % every == 0]
    if not out or out[-1] != steps:
        out.append(steps)
    return out


def _train_epoch(run: _Run, data: _Data, scaler: Scaler, cfg: TrainConfig, *, use_kl: bool,
                 cutoff: float | None, progress: ProgressCallback | None, epoch: int,
                 every: int, check: Any) -> tuple[list[float], list[torch.Tensor], bool]:
    """One epoch of optimiser steps: ``(losses per step, the robust run's pixel losses, stop)``.

    After each step of :func:`_check_steps` (and after any step once the time
    limit is past) ``check(step, total, first, losses)`` validates and returns
    ``True`` to stop; the epoch then ends there. Each step is a ``"batch"``
    event (``loss`` = that step's loss), each validation block one more.
    """
    model, rng, halo = run.model, run.rng, data.halo
    h, w = data.train_mask.shape
    py, px, batch = data.py, data.px, data.batch
    checks = set(_check_steps(epoch, data.steps, every))
    total = data.steps + len(checks) * data.n_val_events
    done_events = 0
    losses: list[float] = []
    seen: list[torch.Tensor] = []
    for step in range(data.steps):
        # crops are centred near training pixels (any crop containing one is equally likely)
        k = rng.integers(0, data.n_train, size=batch)
        oy = np.clip(data.ty[k] - rng.integers(0, py, size=batch), 0, h - py)
        ox = np.clip(data.tx[k] - rng.integers(0, px, size=batch), 0, w - px)
        xb = torch.cat([data.x_all[:, :, :, y:y + py + 2 * halo, x:x + px + 2 * halo]
                        for y, x in zip(oy, ox)])
        mb = torch.stack([data.train_mask[y:y + py, x:x + px] for y, x in zip(oy, ox)])
        loss_px, _ = _pixel_outputs(model, channels_last(xb), data, scaler, cfg, train=True,
                                    generator=run.gen, use_kl=use_kl)
        loss = _masked_mean(loss_px, mb, cfg.robust_fraction if cfg.robust else 0.0, cutoff)
        if cfg.robust:
            seen.append(loss_px.detach()[mb])
        run.opt.zero_grad(set_to_none=True)
        (loss / model.n_energy).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        run.opt.step()
        run.sched.step()
        losses.append(float(loss.detach()))
        done_events += 1
        emit(progress, "batch", done_events, total, loss=losses[-1])
        if step + 1 in checks or run.out_of_time(cfg):
            if check(step + 1, total, done_events, losses):
                return losses, seen, True
            done_events += data.n_val_events
    return losses, seen, False


def _record_check(run: _Run, cfg: TrainConfig, step: int, crit: float,
                  held: _Held | None = None) -> bool:
    """Record a validation check at global ``step``, keep the best weights; ``True`` to stop.

    A check is the new best when it improves on the best by more than
    ``cfg.min_delta`` (relative); otherwise, when it and every check since the
    best are no worse than the best by more than ``cfg.keep_within`` standard
    errors (:func:`paired_se` of its ``held`` values against the best's), its
    weights are to be kept in place of the best's (see :func:`train_cvae`); a
    check outside that tolerance ends the plateau. Stops when the steps since
    the best check reach :func:`patience_steps`, or when the time limit is
    past.
    """
    hist = run.hist
    hist.setdefault("checks", []).append([int(step), float(crit)])
    first = len(hist["checks"]) == 1 and not np.isfinite(hist.get("init_val", float("nan")))
    best = float(hist["best_val"])
    epoch = int(math.ceil(step / max(1, int(hist.get("steps_per_epoch", 1)))))
    # how far above the best a check may be and still be kept (0: only the best is)
    tol = cfg.keep_within * _held_se(held, run.best_held) if cfg.keep_within > 0 else 0.0
    if crit < best - cfg.min_delta * abs(best) or first:
        hist["best_val"] = crit
        hist["best_step"] = int(step)
        hist["best_epoch"] = epoch
        hist["best_seconds"] = float(hist.get("train_seconds", 0.0))
        run.best_held = held
        run.best_state = _state_cpu(run.model)
        run.kept_state = None
        hist.pop("kept", None)
        hist["plateau"] = True
    elif hist.get("plateau") and tol > 0 and crit <= best + tol:
        # every check since the best as good as it within the held-out noise (a plateau, not
        # a run that wandered off and came back): the steps up to here are not wasted
        run.kept_state = _state_cpu(run.model)
        hist["kept"] = {"step": int(step), "epoch": epoch, "val": float(crit),
                        "seconds": float(hist.get("train_seconds", 0.0)), "within": float(tol)}
    else:
        hist["plateau"] = False  # a check clearly worse than the best ends the plateau
    if run.out_of_time(cfg):
        log.info("training stopped at its time limit (%.0f s) after step %d",
                 cfg.max_seconds, step)
        hist["stopped_by_time"] = True
        return True
    return step - int(hist.get("best_step", 0)) >= patience_steps(cfg, hist)


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
        Receives ``ProgressEvent("train", epoch, epochs, loss=..., val_nll=...)`` after
        each epoch and ``ProgressEvent("batch", k, n)`` after each step and each
        validation block within an epoch (see the module docstring); returning
        ``False`` at any event cancels (the checkpoint of the last finished epoch is
        written first).
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
        validation split), ``checks`` (``[step, criterion]`` of every validation
        check, :func:`validation_interval` = ``val_every`` steps apart),
        ``best_step`` (0 = the initialisation), ``best_epoch`` (the epoch holding
        it), ``best_val``, ``init_won`` (these of the check whose weights are
        kept: the last of the plateau within ``cfg.keep_within`` standard
        errors of the lowest), ``lowest_step`` and ``lowest_val`` (the lowest check, from
        which the patience counts), ``kept_within`` (the tolerance, nats per
        pixel, when a later check than the lowest was kept), ``epochs_run``
        (epochs started: training may stop at a check within one),
        ``steps_run``, ``stopped_early``, ``resumed_from``, ``train_seconds``
        (initial validation, steps and checks), ``best_seconds`` (when the
        kept check ended), ``after_best_fraction`` (the share of the training
        after it) and ``stopped_by_time`` when
        ``cfg.max_seconds`` ended it, ``init_floor_gap`` (:func:`noise_floor_gap`
        of the initialisation) and ``at_noise_floor`` when training was skipped
        for it. The model holds the kept weights on return.

    Raises
    ------
    InputError
        When the training loss becomes non-finite (:func:`check_finite_loss`).
    Cancelled
        When ``progress`` returns ``False`` (after the checkpoint is written).
    """
    # a context model's prediction of a pixel does not use the pixel's own code: NLL only
    use_kl = not getattr(model, "context_radius", 0)
    if cfg.prefixes and not use_kl:
        raise InputError("nested (Matryoshka) training is not available for a context model; "
                         "pass nested_prefixes=None.")
    batch, steps, py, px = _geometry(cfg, train_mask, model.halo, device)
    ty, tx = np.nonzero(train_mask)
    x_all = torch.as_tensor(np.ascontiguousarray(x_region), dtype=torch.float32)
    data = _Data(x_all=channels_last(x_all[None, None].to(device)),
                 train_mask=torch.as_tensor(train_mask, device=device),
                 val_mask=None if val_mask is None else torch.as_tensor(val_mask, device=device),
                 val_boxes=list(val_boxes), mean_t=scaler.tensors(device)[0], ty=ty, tx=tx,
                 halo=model.halo, batch=batch, steps=steps, py=py, px=px)

    model.to(device).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr,
                                                total_steps=max(1, cfg.epochs * steps),
                                                pct_start=0.15, div_factor=10.0,
                                                final_div_factor=100.0)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    hist: dict[str, Any] = {"loss": [], "val_nll": [], "best_epoch": 0,
                            "best_val": float("inf"), "epochs_run": 0, "stopped_early": False,
                            "resumed_from": 0, "steps_per_epoch": steps, "batch_size": batch,
                            "patch": [py, px]}
    # the checkpoint must match the data, the parameters and the batch geometry
    run = _Run(model=model, opt=opt, sched=sched, gen=gen, rng=np.random.default_rng(cfg.seed),
               hist=hist, best_state=_state_cpu(model), fp=f"{fp}|{steps}x{batch}x{py}x{px}",
               checkpoint=checkpoint)
    epoch, done = run.resume(cfg, device)

    run.hist["val_every"] = every = validation_interval(cfg, data)
    if epoch == 0 and not done:
        # the initialisation (PPCA) is step 0: a candidate like any check, so training
        # never keeps weights that do worse on held-out bulk than where it started
        run.clock = time.perf_counter()
        init_held: list[_Held] = []
        init_val = _validate(model, data, scaler, cfg, use_kl=use_kl, progress=progress,
                             held=init_held)
        run.hist["train_seconds"] = 0.0
        run.hist["best_seconds"] = run.tick()
        run.hist["init_val"] = init_val
        if np.isfinite(init_val):
            run.hist["best_val"] = init_val
            run.hist["best_epoch"] = run.hist["best_step"] = 0
            run.best_held = init_held[0] if init_held else None
            run.hist["plateau"] = True
        gap = noise_floor_gap(init_val, model.n_energy, scaler.noise)
        run.hist["init_floor_gap"] = gap
        if cfg.floor_gap is not None and np.isfinite(gap) and gap <= cfg.floor_gap:
            log.info("3D-CVAE: the PPCA start is %.3f nats per channel above the noise floor "
                     "on held-out bulk (<= %.3f): nothing left to learn, training skipped",
                     gap, cfg.floor_gap)
            run.hist["at_noise_floor"] = done = True
    run.mark_boundary(epoch)
    cutoff: float | None = run.hist.get("robust_cutoff")
    try:
        model.train()
        run.clock = time.perf_counter()
        while not done and epoch < cfg.epochs:
            t0 = time.perf_counter()
            last_val = [float("nan")]

            def check(k: int, total: int, first: int, losses: list[float],
                      _e: int = epoch, _v: list[float] = last_val) -> bool:
                check_finite_loss(float(np.mean(losses)))
                held: list[_Held] = []
                if data.val_mask is None:  # no split: the epoch's training loss is the criterion
                    crit = float(np.mean(losses))
                else:
                    crit = _v[0] = _validate(model, data, scaler, cfg, use_kl=use_kl,
                                             progress=progress, first=first, total=total,
                                             held=held)
                run.tick()
                return _record_check(run, cfg, _e * steps + k, crit,
                                     held[0] if held else None)

            losses, seen, stop = _train_epoch(run, data, scaler, cfg, use_kl=use_kl,
                                              cutoff=cutoff, progress=progress, epoch=epoch,
                                              every=every, check=check)
            if cfg.robust and seen and not stop:
                # robust training: from now on leave out pixels worse than the worst
                # robust_fraction of the last epoch's (a global cut, so that a batch full of
                # one anomalous cluster cannot slip past a per-batch trim)
                cutoff = float(torch.quantile(torch.cat(seen).float().cpu()[:1_000_000],
                                              1.0 - cfg.robust_fraction))
            tr = float(np.mean(losses))
            val = last_val[0]
            run.hist["steps_run"] = epoch * steps + len(losses)
            epoch += 1  # epochs started (the last one may have stopped at a check within it)
            run.hist["loss"].append(tr)
            run.hist["val_nll"].append(val)
            run.hist["epochs_run"] = epoch
            run.hist["robust_cutoff"] = cutoff
            run.tick()
            log.debug("epoch %d/%d loss %.3f val %.3f (%.2f s)", epoch, cfg.epochs, tr, val,
                      time.perf_counter() - t0)
            if stop:
                run.hist["stopped_early"] = True
                done = True
            else:
                run.mark_boundary(epoch)
                if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                    run.save(run.boundary)
            epoch_s = time.perf_counter() - t0  # this epoch's time (a bar's rate sums them)
            if data.val_mask is None:  # say why there is no validation NLL rather than show nan
                emit(progress, "train", epoch, cfg.epochs, loss=tr,
                     val=f"no validation split ({data.n_train} training pixels)",
                     s_per_epoch=epoch_s)
            else:
                emit(progress, "train", epoch, cfg.epochs, loss=tr, val_nll=val,
                     s_per_epoch=epoch_s)
        done = True
    except Cancelled:
        run.save(run.boundary)
        raise
    run.clock = None
    hist = run.hist
    hist.setdefault("lowest_step", int(hist.get("best_step", hist["best_epoch"])))
    hist.setdefault("lowest_val", float(hist["best_val"]))
    kept = hist.pop("kept", None)
    hist.pop("plateau", None)
    if run.kept_state is not None and kept is not None:
        # a later check as good as the best within the held-out noise: its weights are kept,
        # and the "best" fields (and the time after the best) are those of the weights kept
        run.best_state, run.kept_state = run.kept_state, None
        hist["best_step"], hist["best_epoch"] = kept["step"], kept["epoch"]
        hist["best_val"], hist["best_seconds"] = kept["val"], kept["seconds"]
        hist["kept_within"] = kept["within"]
    model.load_state_dict(run.best_state)
    run.hist["init_won"] = int(run.hist.get("best_step", run.hist["best_epoch"])) == 0
    total = float(run.hist.get("train_seconds", 0.0))
    # the share of the training time spent after the best checkpoint (thrown away)
    run.hist["after_best_fraction"] = (
        (total - float(run.hist.get("best_seconds", 0.0))) / total if total > 0 else 0.0)
    run.save(run.snapshot(epoch, True))
    return run.hist
