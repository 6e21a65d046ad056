"""Neighbourhood evidence pooling: one scoring stage for every detector with a per-pixel Gaussian.

A detector that predicts, for every pixel ``p``, a Gaussian over its
(variance-stabilised) spectrum -- a mean ``m_p`` and a standard deviation
``s_p`` per channel -- plus optionally a per-pixel *code penalty* ``k_p`` (the
KL term of a latent-variable model) can be scored in two ways:

- **per pixel** (``pooling=0``): the pixel's own Gaussian NLL
  ``sum_e [0.5 ((a_pe - m_pe) / s_pe)^2 + log s_pe + 0.5 log 2 pi] (+ k_p)``;
- **pooled** (``pooling = sigma > 0``): the larger of that and the NLL of the
  pixel's *neighbourhood statistic*. Under the model the neighbours' spectra
  are independent Gaussians, so the weighted mean of their deviations
  ``d = sum_q w_pq (a_q - m_q)`` (``w`` a Gaussian of ``sigma`` pixels) is
  Gaussian with variance ``sum_q w_pq^2 v_q`` for the noise part of the
  predicted variance (up to the data's noise level ``noise2``) plus
  ``(sum_q w_pq t_q)^2`` for any excess ``t_q^2`` (model uncertainty, treated as
  coherent between neighbours). ``d``, rescaled to the pixel's own sigma, is
  scored with the same Gaussian NLL (plus the same-weighted mean penalty), so
  both terms share one null distribution. Noise averages out in the mean while
  a change shared by neighbouring pixels does not: a cluster of weak anomalies
  adds up its evidence. The maximum keeps isolated-pixel anomalies.

Two guards keep the pooled statistic honest:

- it is taken relative to a wide Gaussian neighbourhood (``background`` pixels
  sigma, same variance bookkeeping), so a smooth misfit of the model across the
  image (thickness or background beyond the training range) cancels instead of
  being amplified;
- every pixel gets an *outlier level* from its own excess NLL (own NLL minus
  its expectation under the model, relative to the training pixels' median, in
  steps of ``spill`` robust standard deviations: 0, 1, 2+) and pools only
  neighbours whose level is at most its own plus one, so a strong anomaly does
  not spill onto the normal pixels around it.

Replicate padding at the image border is exact (repeated pixels' weights are
added before squaring), and a pixel's score depends on :meth:`Pooling.radius`
pixels around it, so scoring tile by tile with that much context equals
scoring the whole image.

Who uses it: the 3D-CVAE (:func:`eelsanom.nn.infer.score_cube`, decoder mean
and sigma, KL penalty), PCA (:class:`eelsanom.detectors.pca.PCADetector`, the
PPCA posterior: reconstruction ``W <z>`` with noise ``sigma^2``, the posterior's
KL), RX (whitened deviations, unit variance) and the benchmark's perfect-bulk
and manifold-oracle references (the noise-free spectrum, Anscombe units).
Every one goes through :func:`pool_region`; :func:`pool_image` tiles an image
for the per-pixel detectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: importing the PCA / RX detectors
    import torch  # (which take pooling_from / excess_stats from here) must not import it

    GaussianFn = Callable[[slice, slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor | None]]

__all__ = ["Pooling", "pooling_from", "neighbourhood_kernel", "outlier_level", "expected_nll",
           "pool_region", "pool_image", "gaussian_block", "excess_stats", "tiles", "LOG_2PI"]

LOG_2PI = math.log(2.0 * math.pi)

#: sigma (pixels) of the wide neighbourhood the pooled statistic is taken relative to
BACKGROUND = 10.0
#: width, in robust standard deviations of the bulk's excess NLL, of one outlier level
SPILL = 3.0
#: the neighbourhood sigma (pixels) detectors use when pooling is switched on without a value
DEFAULT_SIGMA = 0.8


@dataclass(frozen=True)
class Pooling:
    """Settings of the pooling stage (the same for every detector).

    Attributes
    ----------
    sigma : float
        Gaussian sigma (pixels) of the neighbourhood whose weighted-mean
        deviation is scored besides the pixel itself; 0 scores each pixel alone.
    background : float
        Sigma (pixels) of the wide neighbourhood the statistic is taken relative
        to (0: none).
    spill : float
        Width of one outlier level, in robust standard deviations of the
        training pixels' excess NLL.
    """

    sigma: float = DEFAULT_SIGMA
    background: float = BACKGROUND
    spill: float = SPILL

    @property
    def enabled(self) -> bool:
        """Whether a neighbourhood statistic is computed (``sigma > 0``)."""
        return self.sigma > 0

    def scales(self) -> list[float]:
        """Sigmas scored: ``[0]`` (the pixel) and ``sigma`` when pooling is on.

        Returns
        -------
        list of float
        """
        return [0.0, float(self.sigma)] if self.enabled else [0.0]

    def radius(self) -> int:
        """Pixels on each side that a pixel's pooled score depends on (0 when off).

        Returns
        -------
        int
        """
        if not self.enabled:
            return 0
        wide = max(self.background, self.sigma) if self.background > 0 else self.sigma
        return (neighbourhood_kernel(wide).size - 1) // 2


def pooling_from(value: Any, *, what: str = "pooling") -> Pooling:
    """A :class:`Pooling` from a detector's ``pooling`` parameter (validated).

    Parameters
    ----------
    value : float, Pooling or None
        The neighbourhood sigma in pixels (0 or ``None``: per-pixel scores), or a
        :class:`Pooling`.
    what : str
        Name used in error messages.

    Returns
    -------
    Pooling

    Raises
    ------
    InputError
        When ``value`` is not a number in [0, 8] (or a Pooling).
    """
    if isinstance(value, Pooling):
        return value
    if value is None:
        return Pooling(sigma=0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 8.0:
        raise InputError(f"{what}: expected the neighbourhood sigma in pixels, a number in "
                         f"[0, 8] (0 scores each pixel alone; {DEFAULT_SIGMA} pools a 3 x 3-ish "
                         f"neighbourhood), got {value!r}.")
    return Pooling(sigma=float(value))


def neighbourhood_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian weights (sum 1) of half-width ``ceil(2 sigma)``; ``[1.]`` for sigma 0.

    Parameters
    ----------
    sigma : float
        Gaussian standard deviation, pixels (``<= 0``: the pixel alone).

    Returns
    -------
    ndarray of shape (2 ceil(2 sigma) + 1,)
        float64 weights, centred, summing to 1.
    """
    if sigma <= 0:
        return np.ones(1)
    r = int(math.ceil(2.0 * sigma))
    o = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (o / sigma) ** 2)
    return g / g.sum()


def _pool_matrix(out0: int, out1: int, src0: int, src1: int, n: int,
                 g: np.ndarray) -> np.ndarray:
    """Weights ``A[p, s]`` of source index ``s`` (clipped to the image) in output ``p``."""
    r = (g.size - 1) // 2
    a = np.zeros((out1 - out0, src1 - src0))
    for i, p in enumerate(range(out0, out1)):
        for k, o in enumerate(range(-r, r + 1)):
            a[i, min(max(p + o, 0), n - 1) - src0] += g[k]
    return a


def expected_nll(sigma: torch.Tensor) -> torch.Tensor:
    """Expected Gaussian NLL summed over channels, ``sum_e (0.5 + log sigma_e + 0.5 log 2 pi)``.

    What a pixel scores on average when its data follow the model.

    Parameters
    ----------
    sigma : Tensor of shape (E, h, w)
        Predicted standard deviations.

    Returns
    -------
    Tensor of shape (h, w)
        Expected NLL per pixel, nats.
    """
    import torch

    return (0.5 + torch.log(sigma) + 0.5 * LOG_2PI).sum(0)


def outlier_level(excess: torch.Tensor, median: float, step: float) -> torch.Tensor:
    """How much of an outlier each pixel is by itself: level 0, 1 or 2.

    From ``u = (excess - median) / step``: 0 for ``u <= 1``, 1 for ``u`` in (1, 2],
    2 above (so pooling needs at most three passes: level-2 pixels pool every
    neighbour).

    Parameters
    ----------
    excess : Tensor of shape (h, w)
        Each pixel's own NLL minus its expectation under the model (nats).
    median : float
        Median excess of the training pixels.
    step : float
        Width of one level (``inf``: every pixel is at level 0).

    Returns
    -------
    Tensor of shape (h, w)
        The levels 0., 1. or 2., same dtype as ``excess``.
    """
    u = (excess - median) / step
    return (u > 1.0).to(u.dtype) + (u > 2.0).to(u.dtype)


def excess_stats(own: np.ndarray, expected: np.ndarray, n_energy: int) -> tuple[float, float]:
    """``(median, robust sd)`` of the training pixels' excess NLL (own minus expected).

    The robust sd is ``1.4826 MAD``, at least ``0.25 sqrt(n_energy / 2)`` (a
    quarter of the chi-square spread of a well-specified model), so a model that
    fits its training pixels too well cannot make the outlier levels too narrow.

    Parameters
    ----------
    own, expected : ndarray of shape (n,)
        Own NLL and its expectation of the training pixels.
    n_energy : int
        Channels per spectrum.

    Returns
    -------
    (float, float)
    """
    exc = np.asarray(own, np.float64) - np.asarray(expected, np.float64)
    exc = exc[np.isfinite(exc)]
    if exc.size == 0:
        return 0.0, math.sqrt(0.5 * n_energy)
    med = float(np.median(exc))
    sd = float(1.4826 * np.median(np.abs(exc - med)))
    return med, max(sd, 0.25 * math.sqrt(0.5 * n_energy))


def _neighbourhood_nll(dev: torch.Tensor, v: torch.Tensor, kl: torch.Tensor, level: torch.Tensor,
                       noise2: float, mats: tuple[torch.Tensor | None, ...],
                       origin: tuple[int, int], sig_c: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel NLL ``(E, th, tw)`` of each output pixel's neighbourhood statistic, and its penalty.

    ``dev = data - mean`` and ``v = sigma^2`` ``(E, hs, ws)``, ``kl`` and ``level``
    (:func:`outlier_level`) ``(hs, ws)`` over the source region; ``mats = (ay, ax,
    by, bx)`` the (border-aggregated) weights ``(th, hs)`` / ``(tw, ws)`` of the
    neighbourhood and of its background (``by, bx`` may be ``None``); ``origin``
    the output block's offset in the source region; ``sig_c`` the output
    pixels' own sigma. The statistic is ``sum_q (a_pq - b_pq) dev_q`` with its
    exact variance under the model. A pixel pools the sources whose level is at
    most its own plus one.
    """
    import torch

    ay, ax, by, bx = mats
    th, tw = ay.shape[0], ax.shape[0]
    oy0, ox0 = origin

    def pool(t: torch.Tensor, a_y: torch.Tensor, a_x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ps,...sr,qr->...pq", a_y, t, a_x)

    def stats(keep: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        d_, vi_, sc_, k_ = (dev, v_inc, s_coh, kl) if keep is None else (
            dev * keep, v_inc * keep, s_coh * keep, kl * keep)
        w_ = torch.ones_like(kl) if keep is None else keep
        d = pool(d_, ay, ax)
        var = pool(vi_, ay ** 2, ax ** 2)
        coh = pool(sc_, ay, ax)
        if by is not None:
            d = d - pool(d_, by, bx)
            var = var - 2.0 * pool(vi_, ay * by, ax * bx) + pool(vi_, by ** 2, bx ** 2)
            coh = coh - pool(sc_, by, bx)
        var = torch.clamp(var, min=1e-12) + coh ** 2
        return d / torch.sqrt(var), pool(k_, ay, ax) / pool(w_, ay, ax)

    v_inc = torch.clamp(v, max=noise2)
    s_coh = torch.sqrt(torch.clamp(v - noise2, min=0.0))
    lev_c = level[oy0:oy0 + th, ox0:ox0 + tw]
    z = torch.zeros_like(sig_c)
    k_out = torch.zeros_like(lev_c)
    top = float(level.max())
    for lv in torch.unique(lev_c).tolist():
        zz, kk = stats(None if lv + 1.0 >= top else (level <= lv + 1.0).to(dev.dtype))
        m = lev_c == lv
        z = torch.where(m, zz, z)
        k_out = torch.where(m, kk, k_out)
    nb_e = 0.5 * z ** 2 + torch.log(sig_c) + 0.5 * LOG_2PI
    return nb_e, k_out


def pool_region(target: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor,
                penalty: torch.Tensor | None, *, out_box: tuple[int, int, int, int],
                src_box: tuple[int, int, int, int], image_shape: tuple[int, int],
                pooling: Pooling, noise2: float, excess: tuple[float, float] | None,
                want_channels: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Scores of the output block ``out_box`` from per-pixel Gaussians over ``src_box``.

    The one implementation of the pooling stage (see the module docstring).

    Parameters
    ----------
    target, mean, sigma : Tensor of shape (E, hs, ws)
        Observed (transformed) spectra, predicted means and standard deviations of
        the distinct image pixels ``src_box`` (float32 or float64).
    penalty : Tensor of shape (hs, ws), optional
        Per-pixel code penalty (e.g. the KL term) added to each scale's NLL (its
        neighbourhood-weighted mean for the pooled scale); ``None``: none.
    out_box : (ay0, ay1, ax0, ax1)
        Output pixels, absolute image indices, inside ``src_box``.
    src_box : (sy0, sy1, sx0, sx1)
        Source pixels, absolute image indices; must hold ``pooling.radius()``
        pixels around ``out_box`` wherever the image has them.
    image_shape : (ny, nx)
        The whole image's size (border handling).
    pooling : Pooling
    noise2 : float
        The data's noise variance per channel, in the same units.
    excess : (float, float) or None
        ``(median, robust sd)`` of the training pixels' excess NLL
        (:func:`excess_stats`); ``None`` pools every neighbour (no spill guard).
    want_channels : (iy, ix), optional
        Absolute pixel whose per-channel NLL (at its winning scale) is returned.

    Returns
    -------
    dict of str -> Tensor
        Over the output block ``(th, tw)``: ``score`` (the larger of the scales'
        NLL + penalty), ``nb_nll`` (NLL part at the winning scale), ``scale``
        (winning sigma, 0 = the pixel), ``own`` (the pixel's own NLL),
        ``expected`` (its expectation), ``penalty``; and ``channel_nll`` (E,)
        when asked and the pixel is in the block.
    """
    import torch

    ny, nx = image_shape
    ay0, ay1, ax0, ax1 = out_box
    sy0, sy1, sx0, sx1 = src_box
    oy0, ox0 = ay0 - sy0, ax0 - sx0
    sl = (slice(oy0, oy0 + ay1 - ay0), slice(ox0, ox0 + ax1 - ax0))
    dev = target - mean
    v = sigma ** 2
    own_s = (0.5 * dev ** 2 / v + torch.log(sigma) + 0.5 * LOG_2PI).sum(0)
    exp_s = expected_nll(sigma)
    pen = torch.zeros_like(own_s) if penalty is None else penalty
    sig_c = sigma[:, sl[0], sl[1]]
    scales = pooling.scales()
    device = target.device
    best = best_nll = best_scale = best_e = None
    for scale in scales:
        if scale <= 0:  # the pixel itself
            nb_e = 0.5 * ((target[:, sl[0], sl[1]] - mean[:, sl[0], sl[1]]) / sig_c) ** 2 \
                + torch.log(sig_c) + 0.5 * LOG_2PI
            pen_nb = pen[sl]
        else:
            g = neighbourhood_kernel(scale)
            gb = (neighbourhood_kernel(max(pooling.background, scale))
                  if pooling.background > 0 else None)

            def mat(kern: np.ndarray | None, o0: int, o1: int, s0: int, s1: int,
                    n: int) -> torch.Tensor | None:
                if kern is None:
                    return None
                return torch.as_tensor(_pool_matrix(o0, o1, s0, s1, n, kern), device=device,
                                       dtype=dev.dtype)

            mats = (mat(g, ay0, ay1, sy0, sy1, ny), mat(g, ax0, ax1, sx0, sx1, nx),
                    mat(gb, ay0, ay1, sy0, sy1, ny), mat(gb, ax0, ax1, sx0, sx1, nx))
            if excess is None:
                level = torch.zeros_like(own_s)
            else:
                level = outlier_level(own_s - exp_s, float(excess[0]),
                                      float(pooling.spill * excess[1]))
            nb_e, pen_nb = _neighbourhood_nll(dev, v, pen, level, float(noise2), mats,
                                              (oy0, ox0), sig_c)
        nb = nb_e.sum(0)
        tot = nb + pen_nb
        if best is None:
            best, best_nll, best_e = tot, nb, nb_e
            best_scale = torch.full_like(tot, scale)
        else:
            up = tot > best
            best = torch.where(up, tot, best)
            best_nll = torch.where(up, nb, best_nll)
            best_scale = torch.where(up, torch.full_like(tot, scale), best_scale)
            if want_channels is not None:
                best_e = torch.where(up[None], nb_e, best_e)
    out = {"score": best, "nb_nll": best_nll, "scale": best_scale, "own": own_s[sl],
           "expected": exp_s[sl], "penalty": pen[sl]}
    if want_channels is not None:
        cy, cx = want_channels
        if ay0 <= cy < ay1 and ax0 <= cx < ax1:
            out["channel_nll"] = best_e[:, cy - ay0, cx - ax0]
    return out


def tiles(ny: int, nx: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Output tiles ``(y0, y1, x0, x1)`` (end-exclusive) covering an ``(ny, nx)`` block.

    Parameters
    ----------
    ny, nx : int
        Size of the block to cover, in pixels.
    tile : int
        Tile side in pixels (the last row and column of tiles may be smaller).

    Returns
    -------
    list of (int, int, int, int)
        Row-major tiles.
    """
    return [(y, min(y + tile, ny), x, min(x + tile, nx))
            for y in range(0, ny, tile) for x in range(0, nx, tile)]


def pool_image(gauss: GaussianFn, ny: int, nx: int, *, pooling: Pooling, noise2: float,
               excess: tuple[float, float] | None, region: tuple[int, int, int, int] | None = None,
               tile: int | None = None, n_energy: int | None = None,
               want_channels: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Score a whole image (or ``region`` of it) tile by tile through :func:`pool_region`.

    For detectors whose per-pixel Gaussian needs no spatial context of its own
    (PCA, RX, references): ``gauss(rows, cols)`` returns ``(target, mean, sigma,
    penalty)`` of the distinct image pixels ``[rows, cols]``, each ``(E, h, w)``
    (penalty ``(h, w)`` or ``None``). Each output tile reads
    ``pooling.radius()`` pixels of context, so the scores equal a whole-image pass.

    Parameters
    ----------
    gauss : callable
        ``gauss(rows: slice, cols: slice) -> (target, mean, sigma, penalty)``.
    ny, nx : int
        Image size.
    pooling : Pooling
    noise2 : float
        Noise variance per channel.
    excess : (float, float) or None
        Training pixels' excess-NLL statistics (:func:`excess_stats`).
    region : (y0, y1, x0, x1), optional
        Score only this block (context still comes from the image).
    tile : int, optional
        Output tile side; default: about 2**22 source values per tile.
    n_energy : int, optional
        Channels (for the default tile size).
    want_channels : (iy, ix), optional
        Also return that pixel's per-channel NLL as ``channel_nll``.

    Returns
    -------
    dict of str -> ndarray
        ``score``, ``nb_nll``, ``scale``, ``own``, ``expected``, ``penalty``
        (each (h, w) float64 over the region), and ``channel_nll`` (E,) when asked.
    """
    import torch

    y0r, y1r, x0r, x1r = region if region is not None else (0, ny, 0, nx)
    hh, ww = y1r - y0r, x1r - x0r
    rn = pooling.radius()
    if tile is None:
        per = max(1, int(n_energy or 256))
        tile = int(max(8, math.sqrt((1 << 22) / per) - 2 * rn))
    keys = ("score", "nb_nll", "scale", "own", "expected", "penalty")
    out: dict[str, Any] = {k: np.zeros((hh, ww), np.float64) for k in keys}
    for ty0, ty1, tx0, tx1 in tiles(hh, ww, tile):
        ay0, ay1, ax0, ax1 = ty0 + y0r, ty1 + y0r, tx0 + x0r, tx1 + x0r
        sy0, sy1 = max(0, ay0 - rn), min(ny, ay1 + rn)
        sx0, sx1 = max(0, ax0 - rn), min(nx, ax1 + rn)
        target, mean, sigma, penalty = gauss(slice(sy0, sy1), slice(sx0, sx1))
        with torch.no_grad():
            res = pool_region(target, mean, sigma, penalty, out_box=(ay0, ay1, ax0, ax1),
                              src_box=(sy0, sy1, sx0, sx1), image_shape=(ny, nx),
                              pooling=pooling, noise2=noise2, excess=excess,
                              want_channels=want_channels)
        dst = (slice(ty0, ty1), slice(tx0, tx1))
        for k in keys:
            out[k][dst] = res[k].double().cpu().numpy()
        if "channel_nll" in res:
            out["channel_nll"] = res["channel_nll"].double().cpu().numpy()
    return out


def gaussian_block(target: np.ndarray, mean: np.ndarray, sigma: np.ndarray | float,
                   penalty: np.ndarray | None = None, *, device: Any = "cpu",
                   dtype: Any = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(h, w, E)`` numpy arrays -> the ``(E, h, w)`` tensors :func:`pool_region` takes.

    Parameters
    ----------
    target, mean : ndarray of shape (h, w, E)
    sigma : ndarray of shape (h, w, E) or (E,), or float
    penalty : ndarray of shape (h, w), optional
    device, dtype
        Where and in what precision the tensors are made (``dtype`` None: ``torch.float64``).

    Returns
    -------
    (target, mean, sigma, penalty) as tensors, the first three of shape (E, h, w).
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    t = torch.as_tensor(np.asarray(target), device=device).to(dtype).permute(2, 0, 1)
    m = torch.as_tensor(np.asarray(mean), device=device).to(dtype).permute(2, 0, 1)
    s = np.asarray(sigma, np.float64)
    if s.ndim <= 1:
        s = np.broadcast_to(s, np.asarray(target).shape)
    st = torch.as_tensor(np.ascontiguousarray(s), device=device).to(dtype).permute(2, 0, 1)
    p = None if penalty is None else torch.as_tensor(np.asarray(penalty), device=device).to(dtype)
    return t, m, st, p
