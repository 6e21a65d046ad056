"""Tiled inference of the 3D-CVAE: every pixel's score, tile by tile, seam-free.

Everything here works on counts read block by block (:func:`score_cube`'s ``read``);
the variance-stabilising transform and the scaling (:mod:`.scaler`) run on the device.

Spatial context
---------------
The network is valid (unpadded) in space and needs ``model.halo`` pixels of
context on each side. Context beyond the image border is the border pixel
repeated (index clipping, i.e. replicate padding), always applied to the whole
image, so any tiling gives the same numbers as scoring the whole image at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .. import pooling as pooling_stage
from ..pooling import Pooling, tiles  # tiles: also this module's (the tiling it uses)
from ..progress import ProgressCallback, emit
from .device import channels_last
from .losses import gaussian_outputs, kl_standard_normal
from .model import CVAE3D
from .scaler import Scaler, device_transform

__all__ = ["score_cube", "auto_tile", "tiles"]

#: maps of shape (h, w) every scoring returns (float64)
_MAPS = ("score", "nb_nll", "scale", "recon_nll", "expected", "kl")


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


def _tile_input(read: Callable[[slice, slice], np.ndarray], out_box: tuple[int, int, int, int],
                ny: int, nx: int, radius: int, halo: int, transform: str, scaler: Scaler,
                device: torch.device) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The network input of one output tile: its pooling sources plus the network halo.

    Returns ``(x, src_box)``: ``x`` of shape ``(1, 1, E, hs + 2 halo, ws + 2 halo)``
    (scaled, on ``device``; beyond the image border the border pixel is repeated)
    and ``src_box``, the distinct source pixels ``(sy0, sy1, sx0, sx1)`` (the tile
    widened by the pooling ``radius``, clipped to the image).
    """
    ay0, ay1, ax0, ax1 = out_box
    sy0, sy1 = max(0, ay0 - radius), min(ny, ay1 + radius)
    sx0, sx1 = max(0, ax0 - radius), min(nx, ax1 + radius)
    iy0, iy1 = max(0, sy0 - halo), min(ny, sy1 + halo)
    ix0, ix1 = max(0, sx0 - halo), min(nx, sx1 + halo)
    pads = (ix0 - (sx0 - halo), (sx1 + halo) - ix1, iy0 - (sy0 - halo), (sy1 + halo) - iy1)
    raw = torch.as_tensor(np.asarray(read(slice(iy0, iy1), slice(ix0, ix1))))
    x = device_transform(raw.to(device), transform, scaler).permute(2, 0, 1)[None, None]
    if any(pads):
        x = torch.nn.functional.pad(x, (*pads, 0, 0), mode="replicate")
    return x, (sy0, sy1, sx0, sx1)


def _score_tile(model: CVAE3D, x: torch.Tensor, mean_t: torch.Tensor, scaler: Scaler, *,
                out_box: tuple[int, int, int, int], src_box: tuple[int, int, int, int],
                image_shape: tuple[int, int], pooling: Pooling, with_kl: bool, amp: bool,
                excess: tuple[float, float] | None, want_channels: tuple[int, int] | None,
                prefix: int | None) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                             torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the network on one tile's input and pool: ``(res, kl, mu, mean, sigma)``.

    ``res`` is :func:`eelsanom.pooling.pool_region`'s output over ``out_box``;
    ``kl`` ``(hs, ws)``, ``mu`` ``(d, hs, ws)``, ``mean`` and ``sigma`` ``(E, hs, ws)``
    cover the source pixels.
    """
    with torch.no_grad():
        target, mean, sigma, mu, logvar = gaussian_outputs(
            model, channels_last(x), mean_t, scaler, sample=False, generator=None, amp=amp,
            prefix=prefix)
        target, mean, sigma = target[0], mean[0], sigma[0]  # (E, hs, ws)
        kl = kl_standard_normal(mu[0], logvar[0])[:prefix].sum(0)  # (hs, ws)
        # a context model's score is the centre's NLL under its neighbourhood's
        # prediction: its own code's KL is reported, not added
        use_kl = with_kl and not getattr(model, "context_radius", 0)
        res = pooling_stage.pool_region(target, mean, sigma, kl if use_kl else None,
                                        out_box=out_box, src_box=src_box,
                                        image_shape=image_shape, pooling=pooling,
                                        noise2=float(scaler.noise) ** 2, excess=excess,
                                        want_channels=want_channels)
    return res, kl, mu[0], mean, sigma


def _store_tile(out: dict[str, np.ndarray], dst: tuple[slice, slice], sl: tuple[slice, slice],
                res: dict[str, torch.Tensor], kl: torch.Tensor, mu: torch.Tensor,
                mean: torch.Tensor, sigma: torch.Tensor) -> None:
    """Copy one tile's results into the output maps (``sl``: the tile within its sources)."""
    for key, name in (("score", "score"), ("nb_nll", "nb_nll"), ("scale", "scale"),
                      ("recon_nll", "own"), ("expected", "expected")):
        out[key][dst] = res[name].double().cpu().numpy()
    out["kl"][dst] = kl[sl].double().cpu().numpy()
    out["latent"][dst] = mu[:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy()
    if "mean" in out:
        out["mean"][dst] = mean[:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy()
        out["sigma"][dst] = sigma[:, sl[0], sl[1]].permute(1, 2, 0).cpu().numpy()
    if "channel_nll" in res:
        out["channel_nll"] = res["channel_nll"].double().cpu().numpy()


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
    out = {k: np.zeros((hh, ww), np.float64) for k in _MAPS}
    out["latent"] = np.zeros((hh, ww, model.latent_dim), np.float32)
    if want_recon:
        out["mean"] = np.zeros((hh, ww, model.n_energy), np.float32)
        out["sigma"] = np.zeros((hh, ww, model.n_energy), np.float32)
    mean_t, _, _ = scaler.tensors(device)
    boxes = tiles(hh, ww, tile)
    model.eval()
    for it, (ty0, ty1, tx0, tx1) in enumerate(boxes):
        out_box = (ty0 + y0r, ty1 + y0r, tx0 + x0r, tx1 + x0r)  # absolute output
        x, src_box = _tile_input(read, out_box, ny, nx, rn, hal, transform, scaler, device)
        res, kl, mu, mean, sigma = _score_tile(
            model, x, mean_t, scaler, out_box=out_box, src_box=src_box, image_shape=(ny, nx),
            pooling=pooling, with_kl=with_kl, amp=amp, excess=excess,
            want_channels=want_channels, prefix=prefix)
        oy0, ox0 = out_box[0] - src_box[0], out_box[2] - src_box[2]
        sl = (slice(oy0, oy0 + ty1 - ty0), slice(ox0, ox0 + tx1 - tx0))
        _store_tile(out, (slice(ty0, ty1), slice(tx0, tx1)), sl, res, kl, mu, mean, sigma)
        emit(progress, "score", it + 1, len(boxes))
    return out
