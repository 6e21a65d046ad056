"""The 3D convolutional variational autoencoder detector (method key ``"cvae"``).

After Sultanov, Buban & Klie, "Robust Spectral Anomaly Detection in EELS
Spectral Images via Three Dimensional Convolutional Variational Autoencoders"
(arXiv 2412.16200), rebuilt small (~10^5 parameters instead of ~775 M), fully
convolutional in space and started from probabilistic PCA (see
:mod:`eelsanom.nn.model`).

The model
---------
Each pixel's spectrum is encoded into a small latent code ``z_p`` from the
pixel itself (a linear path) and its ``spatial_layers``-pixel neighbourhood
(3D convolutions over energy, y and x); a per-pixel decoder turns the code
into a Gaussian over every channel, a mean and a standard deviation.

What "NLL" means here
---------------------
Counts are Poisson; the model works on Anscombe-transformed counts
``a = 2 sqrt(x + 3/8)``, whose noise has a standard deviation of about 1 at any
count level, with a Gaussian likelihood. The predicted standard deviation is
floored at ``sigma_floor`` times the noise level measured on the training
spectra, so a free variance cannot collapse. All NLLs are in nats in those
transformed units, summed over channels (they differ from the NLL of the raw
counts by a Jacobian term that depends on the data only, not on the model).

The score
---------
``AnomalyResult.nll`` (**higher = more anomalous**) is the pixel's negative
ELBO ``NLL(a_p | z_p) + KL(q(z_p | x) || N(0, I))`` with ``z_p`` the posterior
mean (``scoring="elbo"``; ``"recon"`` leaves the KL out), through the shared
scoring stage :mod:`eelsanom.pooling`: with ``pooling = sigma > 0`` (default
0.8 px) the larger of the pixel's own term and its neighbourhood statistic's
(the same stage PCA and RX use with ``pooling``; ``pooling=0`` scores each
pixel alone). The KL term catches anomalies the decoder has learned to
reproduce, because their codes sit far in the prior's tail.

``result.maps``: ``"recon_nll"`` (the pixel's own NLL), ``"kl"``, ``"elbo"``
(their sum), ``"neighbourhood_nll"`` (the NLL part of the winning scale) and
``"scale"`` (which sigma won, 0 = the pixel itself).

The default automatic threshold is ``"robust"`` (median + 4 MAD-sigmas), as for
PCA and RX.

Training
--------
The network starts as probabilistic PCA of the training spectra (the axes
above the noise's Marchenko-Pastur edge; with no bulk mask the PCA is refitted
without the worst-explained pixels so anomalies get no axis of their own) and
then trains on random crops of the bulk region (the loss counts bulk pixels
only) or, with no bulk mask, on all pixels leaving out the worst
``robust_fraction`` (per batch in the first epoch, then beyond the previous
epoch's quantile). A spatially held-out ``val_fraction`` of the training pixels
(whole blocks) drives early stopping and the choice of the kept weights,
checked within epochs; the initialisation itself (step 0) is a candidate, so
training never returns a model worse on held-out bulk than the PPCA it started
from (beyond half a standard error of the held-out estimate, below), and
``history_`` records the held-out NLL of both (``init_val``, ``best_val``,
``init_won``). With ``patience="auto"`` training is not started when the PPCA
already explains the held-out bulk to the noise level (the usual case on a
linear bulk under counting noise), stops soon when it does not beat the PPCA,
and otherwise stops after a third of the steps to its best check; the weights
kept are those of the last check of the plateau after the best: the checks
right after it that are each no worse than it by more than half a standard
error of the held-out difference (the held-out pixels cannot tell them from
the best, so the steps to them are not thrown away; ``best_step`` is the check
kept, ``lowest_step`` the lowest); ``history_["after_best_fraction"]`` is the
share of the training time spent after the checkpoint kept. Adam with a one-cycle learning-rate schedule; seeded (CPU runs
are reproducible); resumable checkpoints.

Context mode
------------
``context="blind-spot"`` predicts each pixel from its neighbourhood with the
pixel itself masked (:class:`eelsanom.nn.model.CVAE3D` with
``context_radius``): per-pixel codes of the neighbours (the PPCA-initialised
encoder, no spatial layers), their median over a ``(2R + 1)^2`` ring with a
learned masked correction, the per-pixel decoder, and a sigma that adds the
spread of the neighbours' codes. The score is the pixel's NLL under that
prediction (no KL term: the pixel's own code is not used), through the same
pooling stage. A smooth nuisance that the neighbours share (energy drift,
thickness) is predicted; a local change they do not share is not. Training
fits the NLL of every bulk pixel predicted from its neighbourhood; the
untrained model (epoch 0) is the median-of-PPCA-codes predictor.

Latent training options
-----------------------
``nested_prefixes`` trains *Matryoshka* latents (Kusupati et al., "Matryoshka
representation learning", NeurIPS 2022): the reconstruction NLL is averaged
over the latent prefixes ``z[:m]`` (the decoder sees ``z`` with the dimensions
``>= m`` set to 0, the prior's mean), so the first ``m`` dimensions form a
working code for every listed ``m``. :meth:`CVAE3DDetector.prefix_scorer`
gives the anomaly map decoded from a prefix, for
:func:`eelsanom.latent.prefix_curve` (AUC / NLL vs prefix size). It works on a
model trained without nesting too (same truncation), where it shows how much
of the map the leading dimensions carry by accident.

``n_seeds`` trains a *seed ensemble* (Zhang and Bottou, ICML 2023): networks
with seeds ``seed, seed + 1, ...`` (initialisation, crops, validation split);
the score is the mean of the members' scores, ``result.latent`` their codes
side by side ``(ny, nx, n_seeds * latent_dim)``, and ``result.maps`` gains
``"seed_mean_nll"``, ``"seed_std_nll"`` and ``"seed_disagreement"`` (as in
:func:`eelsanom.latent.seed_ensemble`). :meth:`CVAE3DDetector.seed_results`
gives one result per member. Block-wise scoring (:meth:`score_block`, used by
:mod:`eelsanom.stream`) ranks the disagreement within each block, not the image.

How the detector compares with PCA, RX and the references on the paper and
realistic benchmarks: ``docs/benchmark.md`` and ``eelsanom bench``.

Why this module is long (about 900 lines): it is the detector's whole contract
for one model with three training modes (per pixel, blind-spot context,
nested latents) and seed ensembles, each with its validation, model-file state
and per-member results. The network, its losses, training and tiled inference
live in :mod:`eelsanom.nn` (``model``, ``losses``, ``scaler``, ``train``,
``infer``); what is left here is what a user's parameters mean.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..checks import check_choice, check_int, check_number, is_int
from ..device import resolve_device
from ..errors import InputError, NotFittedError
from ..pooling import Pooling, excess_stats, pooling_from
from ..preprocess import TRANSFORMS, forward_transform, inverse_transform, transform_sigma
from ..progress import ProgressCallback, ProgressEvent, emit
from ..result import AnomalyResult
from ..scoring import seed_maps
from ..spectrum import SpectrumImage
from . import _schemas
from ._cvae_init import PCA_EDGE, PrefixScorer, _inv_softplus, _pca, _pca_init  # noqa: F401
from .base import BaseDetector

log = logging.getLogger(__name__)

__all__ = ["CVAE3DDetector", "PrefixScorer"]

#: the most epochs without improvement ``patience="auto"`` waits
AUTO_PATIENCE = 8

_SCORES = ("elbo", "recon")
class CVAE3DDetector(BaseDetector):
    """3D convolutional VAE anomaly detector for EELS spectrum images.

    Parameters
    ----------
    energy_range : (float, float), optional
        Energy window (eV) to model; ``None`` keeps the whole axis.
    threshold : str or float
        Automatic threshold of the NLL map: ``"robust"`` (default, ``"robust:K"``),
        ``"gmm"``, ``"otsu"``, a contamination percentage, or ``"value:X"``.
    latent_dim : int
        Size of each pixel's latent code (small: a bulk manifold, not a copy).
    nested_prefixes : sequence of int or "all", optional
        Matryoshka training (see the module docstring): the prefix sizes ``m``
        (strictly increasing, in ``1..latent_dim``; ``latent_dim`` itself is
        always included) whose reconstruction NLLs are averaged in the loss;
        ``"all"`` = ``1..latent_dim``; ``None`` (default) trains the ordinary loss.
        Training costs one decoder pass per prefix.
    width : int
        Channels of the finest energy level (coarser levels use twice as many).
    spatial_layers : int
        ``3 x 3 x 3`` convolutions at coarse energy resolution; the network
        sees ``spatial_layers`` pixels of context on each side.
    pooling : float
        Neighbourhood evidence pooling (:mod:`eelsanom.pooling`): the Gaussian
        sigma (pixels) of the neighbourhood whose mean deviation is scored
        besides the pixel itself (the score is the larger of the two); 0 scores
        each pixel alone.
    patch_size : int
        Side of the square training crops (pixels).
    epochs : int
        Maximum number of epochs (an epoch visits each training pixel about once).
    batch_size : int, optional
        Crops per step; ``None`` picks ~768 pixels per step on the CPU, ~4096 on a GPU.
    lr : float
        Peak learning rate of the one-cycle schedule (Adam).
    beta : float
        Weight of the KL term in the training loss (1 = the ELBO).
    beta_nll : float
        Seitzer et al.'s beta-NLL exponent (0 = plain Gaussian NLL).
    sigma_floor : float
        Smallest predicted standard deviation, as a fraction of the noise level
        estimated from the data (about 1 in Anscombe units for Poisson counts).
    robust_fraction : float
        With no bulk mask: fraction of worst-explained pixels left out of the
        PCA start and of the training loss.
    val_fraction : float
        Fraction of training pixels held out (whole blocks) for early stopping.
    patience : int or "auto"
        Optimiser steps without a better validation NLL (by more than 0.005 %),
        counted in epochs, before training stops. ``"auto"``: validation checks
        within epochs (:func:`~eelsanom.nn.train.validation_interval`); training is
        skipped when the PPCA start is already within 0.05 nats per channel of the
        noise floor on held-out bulk (nothing left to learn); it stops after a short
        floor (half an epoch, at least 6 steps) while the start is unbeaten, and
        otherwise after a third of the steps up to the best check (at most 8
        epochs), so at most about a quarter of a long training is spent after its
        best check; the weights kept are those of the last check of the plateau
        after the best (the checks right after it each no worse than it by more
        than half a standard error of the held-out difference,
        ``TrainConfig.keep_within``). A number: that many epochs, never skipped,
        and the best check's weights kept.
    max_time : float or None
        Most seconds of training (split evenly between the ``n_seeds`` members);
        the best epoch within it is kept. ``None``: no limit.
    scoring : {"elbo", "recon"}
        Negative ELBO (NLL plus the latent code's KL term) or the NLL alone.
    transform : {"anscombe", "none"}
        Variance stabilisation of the counts (``"none"`` for data that are not counts).
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    amp : bool or "auto"
        bf16 autocast of the network on CUDA (``"auto"``: on CUDA only); the
        likelihoods are always computed in float32.
    tile_size : int, optional
        Side of the tiles scored at once; ``None`` fits the device's memory.
        Tiling never changes the scores (each tile gets its full context).
    seed : int
        Seeds initialisation, crops, sampling and the validation split.
    n_seeds : int
        Members of a seed ensemble (seeds ``seed, seed + 1, ...``), each trained
        in full (``n_seeds`` times the training and scoring time); the score is
        the members' mean. 1 (default) trains one network.
    checkpoint : str or path, optional
        Resumable training checkpoint: written every 5 epochs, when training is
        cancelled and at its end; ``fit`` resumes from it when it matches the
        data and parameters. Ensemble member ``i > 0`` uses ``<checkpoint>.member<i>``.
    context : {"pixel", "blind-spot"}
        ``None``/``"pixel"`` (default): each pixel is encoded and scored from its own
        spectrum (plus ``spatial_layers`` of context). ``"blind-spot"``: each pixel
        is predicted from its neighbourhood with the pixel itself masked (see the
        module docstring, "Context mode"); ``spatial_layers`` is then not used.
    context_radius : int
        Blind-spot mode: the neighbourhood is the ``(2 R + 1)^2`` square around the
        pixel, without it (default 4: 9 x 9).

    Examples
    --------
    >>> from eelsanom.simulate import simulate  # doctest: +SKIP
    >>> sim = simulate(shape=(32, 32), magnitude=2.4, seed=0)  # doctest: +SKIP
    >>> det = CVAE3DDetector(epochs=20).fit(sim.si, sim.bulk_mask)  # doctest: +SKIP
    >>> res = det.score(sim.si)  # res.nll: (32, 32), res.latent: (32, 32, 8)  # doctest: +SKIP

    Nested latents and a seed ensemble:

    >>> from eelsanom import latent  # doctest: +SKIP
    >>> det = CVAE3DDetector(nested_prefixes=(1, 2, 4, 8), n_seeds=3)  # doctest: +SKIP
    >>> det.fit(sim.si, sim.bulk_mask)  # doctest: +SKIP
    >>> curve = latent.prefix_curve(det.prefix_scorer(sim.si), truth=sim.truth)  # doctest: +SKIP
    >>> ens = latent.seed_ensemble(det.seed_results(sim.si))  # doctest: +SKIP
    """

    method: ClassVar[str] = "cvae"
    min_train_pixels: ClassVar[int] = 4
    network: ClassVar[bool] = True
    renamed_params: ClassVar[dict[str, str]] = {"neighbourhood": "pooling"}

    def __init__(self, *, energy_range: tuple[float, float] | None = None,
                 threshold: str | float = "robust", latent_dim: int = 8,
                 nested_prefixes: Sequence[int] | str | None = None, width: int = 16,
                 spatial_layers: int = 2, pooling: float = 0.8, patch_size: int = 16,
                 epochs: int = 40, batch_size: int | None = None, lr: float = 1e-3,
                 beta: float = 1.0, beta_nll: float = 0.0, sigma_floor: float = 0.8,
                 robust_fraction: float = 0.05, val_fraction: float = 0.12,
                 patience: int | str = "auto",
                 max_time: float | None = None, scoring: str = "elbo", transform: str = "anscombe", device: str = "auto",
                 amp: bool | str = "auto", tile_size: int | None = None, seed: int = 0,
                 n_seeds: int = 1, checkpoint: str | None = None,
                 context: str = "pixel", context_radius: int = 4) -> None:
        self.energy_range = energy_range
        self.threshold = threshold
        self.latent_dim = latent_dim
        self.nested_prefixes = nested_prefixes
        self.width = width
        self.spatial_layers = spatial_layers
        self.pooling = pooling
        self.patch_size = patch_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.beta_nll = beta_nll
        self.sigma_floor = sigma_floor
        self.robust_fraction = robust_fraction
        self.val_fraction = val_fraction
        self.patience = patience
        self.max_time = max_time
        self.scoring = scoring
        self.transform = transform
        self.device = device
        self.amp = amp
        self.tile_size = tile_size
        self.seed = seed
        self.n_seeds = n_seeds
        self.checkpoint = checkpoint
        self.context = context
        self.context_radius = context_radius

    # ------------------------------------------------------------------ params
    def _validate_params(self) -> None:
        super()._validate_params()
        ints = {"latent_dim": (1, 256), "width": (1, 256), "spatial_layers": (0, 16),
                "patch_size": (1, 4096), "epochs": (1, None), "seed": (0, None)}
        for name, (lo, hi) in ints.items():
            check_int(name, getattr(self, name), lo, hi)
        if not (isinstance(self.patience, str) and self.patience.lower() == "auto"):
            check_int("patience", self.patience, 1, None,
                      fix="patience is 'auto' (stop after a third of the steps up to the best "
                          "epoch, 2 to 8 epochs) or a number of epochs without improvement.")
        if self.max_time is not None:
            check_number("max_time", self.max_time, low=0.0, low_open=True)
        check_int("n_seeds", self.n_seeds, 1, 64,
                  fix="n_seeds is the number of members of the seed ensemble. Fix: n_seeds=1 "
                      "trains one network; 3-5 seeds give a mean map and a disagreement map.")
        self._prefixes()
        self._context_radius()
        for name in ("batch_size", "tile_size"):
            check_int(name, getattr(self, name), 1, allow_none=True)
        pooling_from(self.pooling)
        nums = {"lr": (0.0, 1.0, True),
                "beta": (0.0, None, False), "beta_nll": (0.0, 1.0, False),
                "sigma_floor": (0.0, 10.0, True), "robust_fraction": (0.0, 0.5, False),
                "val_fraction": (0.0, 0.5, False)}
        for name, (lo, hi, lo_open) in nums.items():
            check_number(name, getattr(self, name), lo, hi, low_open=lo_open)
        check_choice("scoring", self.scoring, _SCORES)
        check_choice("transform", self.transform, TRANSFORMS)
        if not (self.amp == "auto" or isinstance(self.amp, bool)):
            raise InputError(f"amp: expected True, False or 'auto', got {self.amp!r}.")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, bytes)) and \
                not hasattr(self.checkpoint, "__fspath__"):
            raise InputError(f"checkpoint: expected None or a file path, got {self.checkpoint!r}.")
        self._device()

    def _context_radius(self) -> int:
        """0 in per-pixel mode, else the validated ring radius of the blind-spot context mode."""
        if self.context is None or self.context == "pixel":
            return 0
        if self.context != "blind-spot":
            raise InputError(f"context: expected None (per-pixel mode), 'pixel' or 'blind-spot', "
                             f"found {self.context!r}. Fix: context='blind-spot' predicts each "
                             "pixel from its neighbourhood with the pixel itself masked.")
        check_int("context_radius", self.context_radius, 1, 16,
                  fix="It is the neighbourhood's reach in pixels on each side. Fix: "
                      "context_radius=4 uses a 9 x 9 neighbourhood.")
        if self.nested_prefixes is not None:
            raise InputError(f"nested_prefixes: expected None with context='blind-spot' (a "
                             f"context model is not trained with nested latents), found "
                             f"{self.nested_prefixes!r}. Fix: nested_prefixes=None.")
        return int(self.context_radius)

    def _prefixes(self) -> tuple[int, ...] | None:
        """The Matryoshka prefixes to train (validated), ending at ``latent_dim``; or ``None``."""
        v, d = self.nested_prefixes, int(self.latent_dim)
        if v is None:
            return None
        fix = (f"Fix: pass nested_prefixes=None (ordinary training), 'all' (1..{d}) or "
               f"increasing sizes such as {tuple(p for p in (1, 2, 4, 8, 16) if p < d) + (d,)}.")
        if isinstance(v, str):
            if v.strip().lower() == "all":
                return tuple(range(1, d + 1))
            raise InputError(f"nested_prefixes: expected None, 'all' or a sequence of integers, "
                             f"found the string {v!r}. {fix}")
        try:
            ps = list(v)
        except TypeError:
            raise InputError(f"nested_prefixes: expected None, 'all' or a sequence of integers, "
                             f"found {v!r}. {fix}") from None
        bad = [p for p in ps if not is_int(p, 1, d)]
        if not ps or bad:
            raise InputError(f"nested_prefixes: expected latent prefix sizes in 1..latent_dim "
                             f"= {d}, found {v!r}. {fix}")
        if any(b <= a for a, b in zip(ps, ps[1:])):
            raise InputError(f"nested_prefixes: expected strictly increasing sizes, found "
                             f"{v!r}. {fix}")
        return tuple(int(p) for p in ps) + (() if ps[-1] == d else (d,))

    def _device(self):
        return resolve_device(self.device)

    def _amp(self, device) -> bool:
        return device.type == "cuda" and (self.amp is True or self.amp == "auto")

    @property
    def n_parameters(self) -> int:
        """Trainable parameters of the fitted network (all members' of a seed ensemble).

        Unfitted, the count for a 1334-channel window (the ``bfo`` benchmark
        window; it depends on the number of channels only through the bottleneck).
        """
        from ..nn.model import CVAE3D, energy_levels_for

        if hasattr(self, "model_"):
            return int(sum(m.n_parameters for m, _ in self._members()))
        return int(CVAE3D(1334, self.latent_dim, self.width, energy_levels_for(1334),
                          self.spatial_layers).n_parameters)

    # ------------------------------------------------------------------ data
    @staticmethod
    def _reader(si: SpectrumImage):
        data = si.data

        def read(rows: slice, cols: slice) -> np.ndarray:
            return np.asarray(data[rows, cols])

        return read

    # ------------------------------------------------------------------ fit
    def _fit(self, si: SpectrumImage, mask: np.ndarray | None,
             progress: ProgressCallback | None) -> None:
        import torch

        from ..nn.device import torch_threads
        from ..nn.model import CVAE3D, energy_levels_for
        from ..nn.scaler import Scaler, to_input
        from ..nn.train import TrainConfig, fingerprint, spatial_split, train_cvae

        t_fit = time.perf_counter()
        device = self._device()
        ny, nx = si.nav_shape
        ne = si.n_energy
        robust = mask is None
        full = np.ones((ny, nx), bool) if robust else mask
        rows, cols = np.nonzero(full.any(axis=1))[0], np.nonzero(full.any(axis=0))[0]
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        region_mask = full[r0:r1, c0:c1]
        levels = energy_levels_for(ne)
        floor = float(self.sigma_floor)
        ctx = self._context_radius()
        arch = {"n_energy": ne, "latent_dim": int(self.latent_dim), "width": int(self.width),
                "levels": levels, "spatial_layers": 0 if ctx else int(self.spatial_layers),
                "hidden": 64, "raw_init": _inv_softplus(max(1.0 - floor, 0.05))}
        if ctx:  # blind-spot context mode: per-pixel codes, a ring of neighbours predicts
            arch["context_radius"] = ctx
        halo = ctx if ctx else int(self.spatial_layers)
        ry = np.clip(np.arange(r0 - halo, r1 + halo), 0, ny - 1)
        rx = np.clip(np.arange(c0 - halo, c1 + halo), 0, nx - 1)
        block = np.asarray(si.data[int(ry.min()):int(ry.max()) + 1,
                                   int(rx.min()):int(rx.max()) + 1], np.float32)
        a = forward_transform(block[ry - ry.min()][:, rx - rx.min()], self.transform)
        a_core = a[halo:halo + (r1 - r0), halo:halo + (c1 - c0)]
        scaler = Scaler.fit(a_core[region_mask], float(self.sigma_floor))
        self.scaler_ = scaler
        x_region = np.moveaxis(to_input(a, scaler), -1, 0)
        prefixes = self._prefixes()
        n_seeds = int(self.n_seeds)
        # the checkpoint fingerprint leaves out n_seeds (each member has its own) and, when
        # off, nested_prefixes: a default model matches the checkpoints of earlier versions
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("threshold", "device", "amp", "tile_size", "checkpoint", "scoring",
                               "pooling", "n_seeds")}
        if prefixes is None:
            params.pop("nested_prefixes", None)
        else:
            params["nested_prefixes"] = list(prefixes)
        if not ctx:  # per-pixel mode keeps the fingerprints of earlier versions
            params.pop("context", None)
            params.pop("context_radius", None)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        noise_var = (scaler.noise / scaler.scale) ** 2
        models: list[Any] = []
        excess: list[tuple[float, float]] = []
        hists: list[dict[str, Any]] = []
        seeds = [int(self.seed) + i for i in range(n_seeds)]
        auto_patience = isinstance(self.patience, str)  # validated: "auto"
        for i, seed in enumerate(seeds):
            train_m, val_m, boxes = spatial_split(region_mask, float(self.val_fraction), seed)
            cfg = TrainConfig(patch_size=int(self.patch_size), batch_size=self.batch_size,
                              epochs=int(self.epochs), lr=float(self.lr), beta=float(self.beta),
                              beta_nll=float(self.beta_nll),
                              robust_fraction=float(self.robust_fraction), robust=robust,
                              val_fraction=float(self.val_fraction),
                              patience=AUTO_PATIENCE if auto_patience else int(self.patience),
                              patience_fraction=1.0 / 3.0 if auto_patience else 0.0,
                              # a fixed patience asks for training: never skipped
                              floor_gap=TrainConfig.floor_gap if auto_patience else None,
                              # and keeps the lowest check
                              keep_within=TrainConfig.keep_within if auto_patience else 0.0,
                              max_seconds=(None if self.max_time is None
                                           else float(self.max_time) / len(seeds)),
                              seed=seed, amp=self._amp(device), prefixes=prefixes)
            fp = fingerprint("cvae3d-v1", {**params, "seed": seed}, arch, a_core, region_mask)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = CVAE3D(**arch)
            xt = x_region[:, halo:halo + (r1 - r0), halo:halo + (c1 - c0)][:, train_m].T
            comps, var, centre = _pca_init(xt, int(self.latent_dim), noise_var,
                                           float(self.robust_fraction) if robust else 0.0)
            model.init_from_pca(comps, var, noise_var, centre)
            log.info("3D-CVAE%s: initialised from %d principal component(s) above the noise "
                     "level", f" (seed {i + 1}/{n_seeds})" if n_seeds > 1 else "", len(var))
            ck = self.checkpoint
            if ck is not None and i > 0:
                ck = f"{ck!s}.member{i}"
            with torch_threads(device):
                hist = train_cvae(model, x_region, train_m, val_m, boxes, scaler, cfg,
                                  device=device, progress=self._member_progress(progress, i,
                                                                                n_seeds),
                                  checkpoint=ck, fp=fp)
            model.eval()
            # the bulk's own-NLL excess over its expectation (sets the spill cut of the scoring)
            out = self._run(si, region=(r0, r1, c0, c1), pooling=Pooling(sigma=0.0), model=model)
            models.append(model)
            excess.append(excess_stats(out["recon_nll"][region_mask],
                                       out["expected"][region_mask], ne))
            # this member's whole fit (the first member's includes the shared preparation) and
            # the share of it spent after the best checkpoint
            now = time.perf_counter()
            hist["fit_seconds"] = now - t_fit
            t_fit = now
            hist["after_best_fit_fraction"] = (
                (float(hist.get("train_seconds", 0.0)) - float(hist.get("best_seconds", 0.0)))
                / hist["fit_seconds"] if hist["fit_seconds"] > 0 else 0.0)
            hists.append(hist)
            log.info("3D-CVAE%s: %d parameters; held-out bulk NLL per pixel: initialisation "
                     "%.3f, best epoch %d of %d %.3f%s%s",
                     f" seed {seed}" if n_seeds > 1 else "", model.n_parameters,
                     hist.get("init_val", float("nan")), hist["best_epoch"],
                     hist["epochs_run"], hist["best_val"],
                     ", stopped early" if hist["stopped_early"] else "",
                     "; training did not improve on the PPCA initialisation, which is kept"
                     if hist.get("init_won") else "")
            if n_seeds > 1:
                emit(progress, "seeds", i + 1, n_seeds, seed=seed, best_val=hist["best_val"])
        self.models_ = models
        self.member_excess_stats_ = excess
        self.member_histories_ = hists
        self.member_seeds_ = seeds
        self.nested_prefixes_ = prefixes
        self.model_ = models[0]
        self.excess_stats_ = excess[0]
        self.history_ = hists[0]

    @staticmethod
    def _member_progress(progress: ProgressCallback | None, i: int, n: int
                         ) -> ProgressCallback | None:
        """Forward training events, tagged with ``member`` / ``members`` in an ensemble."""
        if progress is None or n == 1:
            return progress

        def cb(ev: ProgressEvent) -> Any:
            return progress(ProgressEvent(ev.stage, ev.step, ev.total,
                                          {**ev.metrics, "member": i + 1, "members": n},
                                          ev.message or f"seed {i + 1}/{n}"))

        return cb

    def _members(self) -> list[tuple[Any, tuple[float, float]]]:
        """``(network, excess_stats)`` of every ensemble member (one without an ensemble)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("this CVAE3DDetector has no network: fit or load it first.")
        models = getattr(self, "models_", None) or [self.model_]
        stats = getattr(self, "member_excess_stats_", None)
        if stats is None or len(stats) != len(models):
            stats = [getattr(self, "excess_stats_", None)] * len(models)
        return list(zip(models, stats))

    # ------------------------------------------------------------------ score
    def _run(self, si: SpectrumImage, progress: ProgressCallback | None = None,
             pooling: Pooling | None = None, *, model: Any = None,
             excess: tuple[float, float] | None = None, **kw: Any) -> dict[str, np.ndarray]:
        """Score with one network (default: the first member) through :func:`score_cube`."""
        import torch

        from ..nn.device import torch_threads
        from ..nn.infer import score_cube

        if model is None:
            if not hasattr(self, "model_"):
                raise NotFittedError("this CVAE3DDetector has no network: fit or load it first.")
            model = self.model_
            excess = getattr(self, "excess_stats_", None) if excess is None else excess
        if excess is None:  # a model saved before the statistics existed
            excess = (0.0, math.sqrt(0.5 * model.n_energy))
        device = self._device()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = model.to(device).to(memory_format=torch.channels_last_3d)
        ny, nx = si.nav_shape
        with torch_threads(device):
            return score_cube(model, self._reader(si), ny, nx, self.scaler_,
                              transform=self.transform,
                              pooling=self._pooling() if pooling is None else pooling,
                              with_kl=self.scoring == "elbo", device=device,
                              amp=self._amp(device), excess=excess,
                              tile=self.tile_size, progress=progress, **kw)

    def _run_members(self, si: SpectrumImage, progress: ProgressCallback | None = None,
                     **kw: Any) -> list[dict[str, np.ndarray]]:
        members = self._members()
        return [self._run(si, progress if len(members) == 1 else
                          self._member_progress(progress, i, len(members)),
                          model=m, excess=e, **kw)
                for i, (m, e) in enumerate(members)]

    def _pooling(self) -> Pooling:
        return pooling_from(self.pooling)

    @property
    def score_context(self) -> int:  # type: ignore[override]
        """Pixels on each side that a pixel's score depends on: the network's receptive
        field (``spatial_layers``, or ``context_radius`` in the blind-spot context
        mode) plus the pooling stage's radius; what :meth:`score_block` (streaming)
        reads around each block."""
        if hasattr(self, "model_"):
            return int(self.model_.halo) + self._pooling().radius()
        ctx = self._context_radius()
        return (ctx if ctx else int(self.spatial_layers)) + self._pooling().radius()

    def _score_region(self, si: SpectrumImage, region: tuple[int, int, int, int],
                      progress: ProgressCallback | None
                      ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """Score ``region`` only: :func:`~eelsanom.nn.infer.score_cube` reads each tile's
        ``score_context`` from ``si`` (lazily), so it equals that block of ``_score(si)``."""
        return self._score(si, progress, region=region)

    @staticmethod
    def _maps(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"recon_nll": out["recon_nll"], "kl": out["kl"],
                "elbo": out["recon_nll"] + out["kl"], "neighbourhood_nll": out["nb_nll"],
                "scale": out["scale"]}

    def _score(self, si: SpectrumImage, progress: ProgressCallback | None, **kw: Any
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:

        outs = self._run_members(si, progress, **kw)
        if len(outs) == 1:
            return outs[0]["score"], outs[0]["latent"], self._maps(outs[0])
        per = [self._maps(o) for o in outs]
        maps = {k: np.mean([p[k] for p in per], axis=0) for k in per[0]}
        ens = seed_maps([o["score"] for o in outs])
        self.score_notes_ = _seed_disagreement(self, [o["score"] for o in outs])
        maps.update(seed_mean_nll=ens["mean"], seed_std_nll=ens["std"],
                    seed_disagreement=ens["disagreement"])
        latent = np.concatenate([o["latent"] for o in outs], axis=-1)
        return ens["mean"], latent, maps

    def seed_results(self, si: Any, *, progress: ProgressCallback | None = None
                     ) -> list[AnomalyResult]:
        """One :class:`~eelsanom.result.AnomalyResult` per ensemble member.

        Each has the member's own NLL map, threshold (the detector's rule) and
        latent codes ``(ny, nx, latent_dim)``, ready for
        :func:`eelsanom.latent.seed_ensemble`; a single network gives a list of one.
        The results carry no detector (no per-member reconstructions);
        ``info["seed"]`` is the member's seed.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal or ndarray (ny, nx, n_energy)
            Data to score (counts), on the fitted energy axis or a wider one.
        progress : callable, optional
            Receives :class:`~eelsanom.progress.ProgressEvent`; return ``False`` to cancel.

        Returns
        -------
        list of AnomalyResult
            One per member, in seed order; ``nll`` of shape ``(ny, nx)``.

        Raises
        ------
        NotFittedError
            When the detector has not been fitted.
        EnergyAxisMismatch
            When ``si`` does not contain the fitted energy window on the same grid.
        InputError
            When ``si`` is not a valid spectrum image.
        Cancelled
            When ``progress`` returns ``False``.
        """
        siw = self.window(si)
        seeds = getattr(self, "member_seeds_", None) or [int(self.seed)]
        return [self._result(siw, o["score"], o["latent"], self._maps(o), attach=False,
                             info={"seed": int(seeds[i]) if i < len(seeds)
                                   else int(self.seed) + i, "member": i})
                for i, o in enumerate(self._run_members(siw, progress))]

    def prefix_scorer(self, si: Any, *, kind: str = "score") -> PrefixScorer:
        """A function ``m -> (ny, nx)`` map decoded from the first ``m`` latent dimensions.

        For :func:`eelsanom.latent.prefix_curve`::

            curve = latent.prefix_curve(det.prefix_scorer(si), truth=truth)

        The map for prefix ``m`` is computed exactly as the detector's score (or
        ``maps["recon_nll"]``), except that the decoder sees ``z`` with the
        dimensions ``>= m`` set to 0 (the prior's mean) and only the first ``m``
        dimensions' KL is counted; ``m = latent_dim`` gives the full score. For a
        model trained with ``nested_prefixes`` every trained prefix is a working
        code (Matryoshka); for an ordinary model this is plain truncation, which
        shows how much the leading dimensions carry without being trained to. A
        seed ensemble averages its members' maps.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal or ndarray (ny, nx, n_energy)
            Data to score (counts), on the fitted energy axis or a wider one.
        kind : {"score", "recon_nll"}
            The anomaly score, or the pixel's own reconstruction NLL (no KL, no
            neighbourhood).

        Returns
        -------
        PrefixScorer
            Callable ``m -> ndarray (ny, nx)``; ``.prefixes`` are the trained
            prefixes (nested) or ``1..latent_dim``.

        Raises
        ------
        InputError
            When ``kind`` is not one of the two or ``si`` is not a valid spectrum
            image; the scorer raises it for ``m`` outside ``1..latent_dim``.
        NotFittedError
            When the detector has not been fitted.
        EnergyAxisMismatch
            When ``si`` does not contain the fitted energy window on the same grid.
        """
        if kind not in ("score", "recon_nll"):
            raise InputError(f"kind: expected 'score' or 'recon_nll', found {kind!r}.")
        siw = self.window(si)
        d = int(self.model_.latent_dim)
        nested = getattr(self, "nested_prefixes_", None)

        def fn(m: int) -> np.ndarray:
            if not is_int(m, 1, d):
                raise InputError(f"prefix: expected an integer in 1..latent_dim = {d}, found "
                                 f"{m!r}.")
            outs = self._run_members(siw, prefix=int(m),
                                     pooling=Pooling(sigma=0.0) if kind == "recon_nll" else None)
            return np.mean([o[kind] for o in outs], axis=0).reshape(siw.nav_shape)

        return PrefixScorer(fn, tuple(nested) if nested else tuple(range(1, d + 1)),
                            bool(nested), kind)

    def _reconstruct(self, si: SpectrumImage) -> tuple[np.ndarray, np.ndarray]:
        outs = self._run_members(si, want_recon=True)
        mean_a, sig_a = self._mixture(outs)
        return (inverse_transform(mean_a, self.transform).astype(np.float32),
                transform_sigma(mean_a, sig_a, self.transform).astype(np.float32))

    @staticmethod
    def _mixture(outs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sigma (Anscombe units) of the members' equal-weight Gaussian mixture."""
        if len(outs) == 1:
            return outs[0]["mean"], outs[0]["sigma"]
        means = np.stack([o["mean"] for o in outs]).astype(np.float64)
        var = np.stack([o["sigma"] for o in outs]).astype(np.float64) ** 2
        mean = means.mean(axis=0)
        return mean, np.sqrt(var.mean(axis=0) + means.var(axis=0))

    def _pixel(self, si: SpectrumImage, iy: int, ix: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Model mean and sigma (counts) of pixel (iy, ix) and the per-channel NLL of its score.

        ``channel_nll`` are the per-channel terms of the neighbourhood NLL (their
        sum is the score without the KL term); only a ``(2 * halo + 1)^2`` block
        around the pixel is run through the network. A seed ensemble gives its
        members' mixture (mean, sigma) and their mean ``channel_nll``.
        """
        outs = self._run_members(si, want_recon=True, want_channels=(iy, ix),
                                 region=(iy, iy + 1, ix, ix + 1))
        mean_a, sig_a = self._mixture(outs)
        mean_a = np.asarray(mean_a[0, 0], np.float64)
        sig_a = np.asarray(sig_a[0, 0], np.float64)
        chan = np.mean([o["channel_nll"] for o in outs], axis=0)
        return (inverse_transform(mean_a, self.transform),
                transform_sigma(mean_a, sig_a, self.transform), chan)

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def _history_summary(h: dict[str, Any]) -> dict[str, Any]:
        summary = {k: h[k] for k in ("best_epoch", "best_val", "init_val", "init_won",
                                     "epochs_run", "stopped_early", "steps_per_epoch",
                                     "batch_size", "train_seconds", "best_seconds",
                                     "after_best_fraction", "stopped_by_time", "best_step",
                                     "steps_run", "val_every", "fit_seconds",
                                     "after_best_fit_fraction", "lowest_step",
                                     "kept_within") if k in h}
        summary["loss"] = [float(v) for v in h.get("loss", [])]
        summary["val_nll"] = [float(v) if np.isfinite(v) else None for v in h.get("val_nll", [])]
        for k in ("best_val", "init_val"):
            if k in summary and not math.isfinite(float(summary[k])):
                summary[k] = None
        if "init_won" in summary:
            summary["init_won"] = bool(summary["init_won"])
        return summary

    @staticmethod
    def _history_restore(summary: dict[str, Any]) -> dict[str, Any]:
        hist = dict(summary)
        hist["val_nll"] = [float("nan") if v is None else v for v in hist.get("val_nll", [])]
        for k in ("best_val", "init_val"):
            if k in hist and hist[k] is None:
                hist[k] = float("nan")
        return hist

    validate_model_file = _schemas.validator(_schemas.cvae)  # the model-file schema

    def _get_state(self) -> dict[str, Any]:
        state = {"arch": self.model_.arch(), "scaler": self.scaler_.to_dict(),
                 "excess_stats": [float(v) for v in self.excess_stats_],
                 "history": self._history_summary(getattr(self, "history_", {})),
                 "n_parameters": int(self.model_.n_parameters)}
        nested = getattr(self, "nested_prefixes_", None)
        if nested:
            state["nested_prefixes"] = [int(p) for p in nested]
        members = self._members()
        if len(members) > 1:  # members 1..n-1 (member 0 is the keys above)
            seeds = getattr(self, "member_seeds_", None) or [int(self.seed) + i
                                                              for i in range(len(members))]
            hists = getattr(self, "member_histories_", None) or [{}] * len(members)
            state["members"] = [{"seed": int(seeds[i]),
                                 "excess_stats": [float(v) for v in members[i][1]],
                                 "history": self._history_summary(hists[i])}
                                for i in range(1, len(members))]
            state["member_seeds"] = [int(s) for s in seeds]
        return state

    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"scaler_mean": np.asarray(self.scaler_.mean, np.float32)}
        for i, (model, _) in enumerate(self._members()):
            pre = "net." if i == 0 else f"member{i}.net."
            for k, v in model.state_dict().items():
                arrays[f"{pre}{k}"] = v.detach().float().cpu().numpy()
        return arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        import torch

        from ..nn.model import CVAE3D
        from ..nn.scaler import Scaler

        sc = state["scaler"]
        self.scaler_ = Scaler(mean=np.asarray(arrays["scaler_mean"], np.float32),
                              scale=float(sc["scale"]), noise=float(sc["noise"]),
                              floor=float(sc["floor"]))
        arch = {k: (float(v) if k == "raw_init" else int(v)) for k, v in state["arch"].items()}

        def net(pre: str) -> Any:
            model = CVAE3D(**arch)
            sd = {k[len(pre):]: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()
                  if k.startswith(pre)}
            model.load_state_dict(sd)
            return model.eval()

        self.model_ = net("net.")
        if "excess_stats" in state:
            self.excess_stats_ = tuple(float(v) for v in state["excess_stats"])
        self.history_ = self._history_restore(state.get("history", {}))
        nested = state.get("nested_prefixes")
        self.nested_prefixes_ = tuple(int(p) for p in nested) if nested else None
        members = state.get("members", [])
        self.models_ = [self.model_] + [net(f"member{i}.net.")
                                        for i in range(1, len(members) + 1)]
        base = getattr(self, "excess_stats_", None)
        self.member_excess_stats_ = [base] + [tuple(float(v) for v in m["excess_stats"])
                                              for m in members]
        self.member_histories_ = [self.history_] + [self._history_restore(m.get("history", {}))
                                                    for m in members]
        self.member_seeds_ = [int(s) for s in state.get(
            "member_seeds", [int(self.seed) + i for i in range(len(self.models_))])]


def _seed_disagreement(det: CVAE3DDetector, scores: list[np.ndarray]) -> list[str]:
    """A note when the seeds' own thresholded maps disagree on the anomalous pixels."""
    from .. import cautions
    from ..scoring import compute_threshold

    masks = {}
    for i, sc in enumerate(scores):
        try:
            t, _ = compute_threshold(sc, det.threshold,
                                     calibration=getattr(det, "calibration_", None))
        except InputError:  # a rule the members cannot apply alone (no calibration each)
            return []
        masks[f"seed {int(det.seed) + i}"] = np.asarray(sc) > t
    return cautions.disagreement_notes(masks)
