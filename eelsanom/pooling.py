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

from ._pool_sums import (  # noqa: F401 (tests reach the internals through this module)
    _CHUNK,
    _PANEL,
    _apply,
    _Axis,
    _groups,
    _last,
    _mid,
    _neighbourhood_z2,
    _Stat,
    _sub,
)
from .errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: importing the PCA / RX detectors
    import torch  # (which take pooling_from / excess_stats from here) must not import it

    GaussianFn = Callable[[slice, slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor | None]]

__all__ = ["Pooling", "Variant", "pooling_from", "neighbourhood_kernel", "outlier_level", "expected_nll",
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
    """Weights ``A[p, s]`` of source index ``s`` (clipped to the image) in output ``p``.

    A replicated border pixel's weights are added up (in the kernel's order), so
    squaring ``A`` gives the exact variance weights.
    """
    r = (g.size - 1) // 2
    idx = np.clip(np.arange(out0, out1)[:, None] + np.arange(-r, r + 1)[None, :], 0, n - 1) - src0
    a = np.zeros((out1 - out0, src1 - src0))
    rows = np.broadcast_to(np.arange(out1 - out0)[:, None], idx.shape)
    np.add.at(a, (rows, idx), np.broadcast_to(g, idx.shape))
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


@dataclass
class Variant:
    """A second Gaussian pooled in the same pass as :func:`pool_region`'s own.

    Its deviations are the first model's plus a low-rank term, ``d' = d + B delta``
    (``B`` (E, q) a basis of channel directions, ``delta`` (q, hs, ws) per-pixel
    coefficients), and every pixel shares its standard deviations ``sigma`` (E,).
    The neighbourhood sums are linear, so the pooled ``d'`` is the pooled ``d``
    plus ``B`` times the pooled ``delta``: the channel-by-channel products, the
    pooling's main cost, are done once for both models. Bulk + context PCA pools
    its global (the PPCA decoder's mean) and local (the neighbourhood's
    prediction) evidence so: the two means differ only in the subspace's codes.

    Attributes
    ----------
    basis : Tensor of shape (E, q)
    delta : Tensor of shape (q, hs, ws)
    sigma : Tensor of shape (E,)
    penalty : Tensor of shape (hs, ws) or None
    excess : (float, float) or None
    own : Tensor of shape (hs, ws) or None
        As :func:`pool_region`'s, for this model.
    """

    basis: Any
    delta: Any
    sigma: Any
    penalty: Any = None
    excess: tuple[float, float] | None = None
    own: Any = None


class _Model:
    """One Gaussian's per-pixel terms in :func:`pool_region` (uniform or per-pixel sigma)."""

    def __init__(self, s_e: Any, pen: Any, excess: Any, low: tuple[Any, Any] | None) -> None:
        self.s_e = s_e          # (E,) float64 when every pixel shares it, else None
        self.pen = pen          # (hs, ws) float64
        self.excess = excess
        self.low = low          # (basis (E, q), delta channel-last (hs, ws, q)) or None
        self.own = self.exp = self.inv2v = None
        self.given = False      # own NLL handed over by the caller


def pool_region(target: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor,
                penalty: torch.Tensor | None, *, out_box: tuple[int, int, int, int],
                src_box: tuple[int, int, int, int], image_shape: tuple[int, int],
                pooling: Pooling, noise2: float, excess: tuple[float, float] | None,
                want_channels: tuple[int, int] | None = None,
                variant: Variant | None = None, own: torch.Tensor | None = None
                ) -> dict[str, Any]:
    """Scores of the output block ``out_box`` from per-pixel Gaussians over ``src_box``.

    The one implementation of the pooling stage (see the module docstring). The
    neighbourhood sums are separable: one banded matrix product per image axis,
    over chunks of channels, in the inputs' precision (float32 inputs: relative
    differences of a few 1e-6 from a float64 evaluation); the per-pixel maps are
    accumulated in float64. When every pixel shares its channels' sigma (PCA,
    RX, references) the variance of the statistic is a 2-D map, so only the
    deviations are pooled channel by channel.

    Parameters
    ----------
    target, mean, sigma : Tensor of shape (E, hs, ws)
        Observed (transformed) spectra, predicted means and standard deviations of
        the distinct image pixels ``src_box`` (float32 or float64). ``target`` may
        instead be the deviations built chunk of channels by chunk
        (:class:`eelsanom.detectors._ppca_rows.ChunkDeviations`: ``shape``, ``dtype``,
        ``device``, ``chunk(c0, c1)`` (hs, C, ws), ``column(iy, ix)`` (E,)); ``mean`` is then
        ignored and ``own`` is required.
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
    variant : Variant, optional
        A second Gaussian (deviations that differ by a low-rank term, one sigma for
        every pixel; the first's sigma must then be shared too) scored in the same
        pass; its results are returned under ``"variant"``.
    own : Tensor of shape (hs, ws), optional
        The pixels' own NLL when the caller has it already (one sigma shared by every
        pixel): the pass over the channels that computes it is skipped (the variant's
        likewise when it brings its ``own``).

    Returns
    -------
    dict of str -> Tensor
        float64, over the output block ``(th, tw)``: ``score`` (the larger of the scales'
        NLL + penalty), ``nb_nll`` (NLL part at the winning scale), ``scale``
        (winning sigma, 0 = the pixel), ``own`` (the pixel's own NLL),
        ``expected`` (its expectation), ``penalty``; and ``channel_nll`` (E,)
        when asked and the pixel is in the block; ``variant``: the same dict for
        the variant.
    """
    import torch

    ny, nx = image_shape
    ay0, ay1, ax0, ax1 = out_box
    sy0, sy1, sx0, sx1 = src_box
    oy0, ox0 = ay0 - sy0, ax0 - sx0
    th, tw = ay1 - ay0, ax1 - ax0
    sl = (slice(oy0, oy0 + th), slice(ox0, ox0 + tw))
    # deviations built chunk of channels by chunk (``ChunkDeviations``): no tile-sized array
    chunked = getattr(target, "chunked_deviations", False) is True
    n_e, hs, ws = target.shape
    dt, device = target.dtype, target.device
    f64 = torch.float64
    sig0 = sigma[:, :1, :1]
    uniform = (sigma.stride(1) == 0 and sigma.stride(2) == 0) or bool((sigma == sig0).all())
    chunk = max(1, _CHUNK // max(1, hs * ws))
    half_log = 0.5 * LOG_2PI

    def zeros() -> torch.Tensor:
        return torch.zeros((hs, ws), dtype=f64, device=device)

    models = [_Model(sig0[:, 0, 0].to(f64) if uniform else None,
                     zeros() if penalty is None else penalty.to(f64), excess, None)]
    if variant is not None:
        if not uniform or want_channels is not None:
            raise ValueError("pool_region: a variant needs a sigma shared by every pixel "
                             "and no want_channels")
        basis = torch.as_tensor(variant.basis, device=device).to(dt)
        delta = _last(torch.as_tensor(variant.delta, device=device).to(dt))  # (hs, ws, q)
        models.append(_Model(torch.as_tensor(variant.sigma, device=device).to(f64),
                             zeros() if variant.penalty is None
                             else torch.as_tensor(variant.penalty, device=device).to(f64),
                             variant.excess, (basis, delta)))
    given = [own, None if variant is None else variant.own]
    # each model's own NLL (unless given) and its expectation
    for m, o in zip(models, given):
        m.given = o is not None and m.s_e is not None
        m.own = torch.as_tensor(o, device=device).to(f64) if m.given else zeros()
        if m.s_e is not None:
            m.inv2v = (0.5 / m.s_e ** 2).to(dt)
    todo = [m for m in models if not m.given]
    if chunked and todo:
        raise ValueError("pool_region: deviations given by chunks need the pixels' own NLLs "
                         "(own=, one sigma shared by every pixel)")
    # deviations handed over as the target with a zero mean (a stride-0 view) are not copied
    zero_mean = chunked or (all(st == 0 for st in mean.stride())
                            and float(mean.reshape(-1)[0]) == 0.0)
    for c0 in (range(0, n_e, chunk) if todo else ()):
        c1 = min(n_e, c0 + chunk)
        d = target[c0:c1] if zero_mean else target[c0:c1] - mean[c0:c1]
        for m in todo:
            if m.low is not None:
                dv = d + (m.low[0][c0:c1] @ m.low[1].reshape(-1, m.low[0].shape[1]).T
                          ).view(c1 - c0, hs, ws)
                m.own += (dv * dv * m.inv2v[c0:c1, None, None]).sum(0, dtype=f64)
            elif m.s_e is not None:
                m.own += (d * d * m.inv2v[c0:c1, None, None]).sum(0, dtype=f64)
            else:
                s = sigma[c0:c1]
                dd = d / s
                ls = torch.log(s)
                m.own += (0.5 * dd * dd + ls).sum(0, dtype=f64)
                m.exp = ls.sum(0, dtype=f64) if m.exp is None else m.exp + ls.sum(0, dtype=f64)
    for m in models:
        if m.s_e is not None:
            logsum = float(torch.log(m.s_e).sum())
            if not m.given:
                m.own += logsum + n_e * half_log
            m.exp = torch.full((hs, ws), logsum + n_e * (0.5 + half_log), dtype=f64,
                               device=device)
        else:
            m.own += n_e * half_log
            m.exp = m.exp + n_e * (0.5 + half_log)
    want = None
    if want_channels is not None and ay0 <= want_channels[0] < ay1 \
            and ax0 <= want_channels[1] < ax1:
        want = (want_channels[0] - ay0, want_channels[1] - ax0)
    best: list[Any] = [None] * len(models)
    best_nll: list[Any] = [None] * len(models)
    best_scale: list[Any] = [None] * len(models)
    chan: torch.Tensor | None = None
    for scale in pooling.scales():
        if scale <= 0:  # the pixel itself
            nbs = [(m.own[sl], m.pen[sl]) for m in models]
            if want is not None:
                py, px = want[0] + oy0, want[1] + ox0
                s_w = sigma[:, py, px].to(f64)
                d_w = (target.column(py, px) if chunked
                       else target[:, py, px] - mean[:, py, px])
                nb_w = 0.5 * (d_w.to(f64) / s_w) ** 2 + torch.log(s_w) + half_log
        else:
            g = neighbourhood_kernel(scale)
            gb = (neighbourhood_kernel(max(pooling.background, scale))
                  if pooling.background > 0 else None)
            stat = _Stat(_pool_matrix(ay0, ay1, sy0, sy1, ny, g),
                         _pool_matrix(ax0, ax1, sx0, sx1, nx, g),
                         None if gb is None else _pool_matrix(ay0, ay1, sy0, sy1, ny, gb),
                         None if gb is None else _pool_matrix(ax0, ax1, sx0, sx1, nx, gb),
                         device, dt)
            specs, plans, needs = [], [], []
            for m in models:
                if m.excess is None:
                    level = np.zeros((hs, ws))
                else:
                    level = outlier_level(m.own - m.exp, float(m.excess[0]),
                                          float(pooling.spill * m.excess[1])).cpu().numpy()
                lev_c = level[sl]
                top = float(level.max())
                thr_of = {lv: (None if lv + 1.0 >= top else lv + 1.0) for lv in np.unique(lev_c)}
                thrs = list(dict.fromkeys(thr_of.values()))
                keeps = [None if t is None else level <= t for t in thrs]
                uni = None
                if m.s_e is not None:
                    vv = m.s_e ** 2
                    uni = (torch.clamp(vv, max=noise2),
                           torch.sqrt(torch.clamp(vv - noise2, min=0.0)))
                specs.append((keeps, uni, m.low))
                plans.append((lev_c, thr_of, thrs, keeps))
                # a mask that few output pixels use (the spill guard's higher levels) is
                # scored at those pixels only
                need = []
                for t in thrs:
                    use = np.isin(lev_c, [lv for lv, tt in thr_of.items() if tt == t])
                    need.append(None if want is not None or use.sum() * 2 > use.size
                                else torch.as_tensor(np.flatnonzero(use.ravel()),
                                                     device=device))
                needs.append(need)
            def deviations(c0: int, c1: int) -> Any:
                if chunked:
                    return target.chunk(c0, c1)
                return _mid(target[c0:c1] if zero_mean else target[c0:c1] - mean[c0:c1])

            if uniform:
                def dev(c0: int, c1: int) -> tuple[Any, Any, Any]:
                    return deviations(c0, c1), None, None
            else:
                def dev(c0: int, c1: int) -> tuple[Any, Any, Any]:
                    v = _mid(sigma[c0:c1] ** 2)
                    return (deviations(c0, c1), torch.clamp(v, max=noise2),
                            torch.sqrt(torch.clamp(v - noise2, min=0.0)))

            results = _neighbourhood_z2(dev, n_e, (hs, ws), stat, specs, want, needs)
            nbs = []
            for mi, (m, (lev_c, thr_of, thrs, keeps), (z2s, chans)) in enumerate(
                    zip(models, plans, results)):
                z2 = torch.zeros((th, tw), dtype=f64, device=device)
                pen_nb = torch.zeros((th, tw), dtype=f64, device=device)
                lev_t = torch.as_tensor(lev_c, device=device)
                for lv, thr in thr_of.items():
                    i = thrs.index(thr)
                    msk = lev_t == lv
                    w = (torch.ones((hs, ws, 1), dtype=f64, device=device) if keeps[i] is None
                         else torch.as_tensor(keeps[i][..., None], device=device).to(f64))
                    kk = (_apply(m.pen[..., None] * w, stat.a64) / _apply(w, stat.a64))[..., 0]
                    z2 = torch.where(msk, z2s[i], z2)
                    pen_nb = torch.where(msk, kk, pen_nb)
                    if mi == 0 and want is not None and lev_c[want] == lv:
                        z_w = chans[i]
                nbs.append((0.5 * z2 + m.exp[sl] - 0.5 * n_e, pen_nb))
            if want is not None:
                py, px = want[0] + oy0, want[1] + ox0
                nb_w = 0.5 * z_w.to(f64) + torch.log(sigma[:, py, px].to(f64)) + half_log
        for mi, (nb, pen_nb) in enumerate(nbs):
            tot = nb + pen_nb
            if best[mi] is None:
                best[mi], best_nll[mi] = tot, nb
                best_scale[mi] = torch.full_like(tot, scale)
                if mi == 0:
                    chan = nb_w if want is not None else None
            else:
                up = tot > best[mi]
                best[mi] = torch.where(up, tot, best[mi])
                best_nll[mi] = torch.where(up, nb, best_nll[mi])
                best_scale[mi] = torch.where(up, torch.full_like(tot, scale), best_scale[mi])
                if mi == 0 and want is not None and bool(up[want]):
                    chan = nb_w
    outs = [{"score": best[mi], "nb_nll": best_nll[mi], "scale": best_scale[mi],
             "own": m.own[sl], "expected": m.exp[sl], "penalty": m.pen[sl]}
            for mi, m in enumerate(models)]
    out: dict[str, Any] = outs[0]
    if chan is not None:
        out["channel_nll"] = chan
    if variant is not None:
        out["variant"] = outs[1]
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


#: source values (channels x pixels) :func:`pool_image` reads per tile by default
TILE_VALUES = 1 << 25


#: source pixels per tile of a ``gauss`` that builds its deviations chunk by chunk (no
#: tile-sized array: the pooling's per-pixel maps, a few hundred bytes a pixel, remain): at
#: most a sixteenth of a chunk (:data:`~eelsanom._pool_sums._CHUNK` values), so that each
#: chunk reads at least 16 channels (a 64-byte cache line) of every pixel: a 512 x 512 x 2048
#: cube in one tile read 4 channels a chunk and spent 5 of its 20 s of fit gathering them
CHUNKED_TILE_PIXELS = _CHUNK // 16


def _auto_tile(hh: int, ww: int, nx: int, rn: int, n_energy: int,
               pixels: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the output tiles that read the least context per output pixel.

    Each tile reads at most about :data:`TILE_VALUES` values (``pixels`` source pixels
    when given): either bands of whole rows of the region (when the image is narrow
    enough) or squares.
    """
    budget = max(1, TILE_VALUES // n_energy) if pixels is None else max(1, pixels)
    if (hh + 2 * rn) * min(nx, ww + 2 * rn) <= budget:
        return hh, ww
    cands = []
    src_w = min(nx, ww + 2 * rn)
    rows = budget // src_w - 2 * rn
    if rows >= 8:
        cands.append((src_w * (rows + 2 * rn) / (ww * rows), (min(rows, hh), ww)))
    side = max(8, int(math.sqrt(budget)) - 2 * rn)
    cands.append((((side + 2 * rn) / side) ** 2, (min(side, hh), min(side, ww))))
    return min(cands)[1]


def pool_image(gauss: GaussianFn, ny: int, nx: int, *, pooling: Pooling, noise2: float,
               excess: tuple[float, float] | None, region: tuple[int, int, int, int] | None = None,
               tile: int | None = None, n_energy: int | None = None,
               want_channels: tuple[int, int] | None = None,
               tile_pixels: int | None = None) -> dict[str, np.ndarray]:
    """Score a whole image (or ``region`` of it) tile by tile through :func:`pool_region`.

    For detectors whose per-pixel Gaussian needs no spatial context of its own
    (PCA, RX, references): ``gauss(rows, cols)`` returns ``(target, mean, sigma,
    penalty)`` of the distinct image pixels ``[rows, cols]``, each ``(E, h, w)``
    (penalty ``(h, w)`` or ``None``). Each output tile reads
    ``pooling.radius()`` pixels of context, so the scores equal a whole-image pass.

    Parameters
    ----------
    gauss : callable
        ``gauss(rows: slice, cols: slice) -> (target, mean, sigma, penalty)``, or with a
        fifth element, a dict with the tile's ``"own"`` NLL and ``"variant"``
        (:func:`pool_region`'s arguments; either may be None).
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
        Output tile side; default: about :data:`TILE_VALUES` source values per tile, whole
        rows of the region where that reads less context than squares.
    n_energy : int, optional
        Channels (for the default tile size).
    want_channels : (iy, ix), optional
        Also return that pixel's per-channel NLL as ``channel_nll``.
    tile_pixels : int, optional
        Source pixels per tile for the default tile size, instead of
        :data:`TILE_VALUES` values (a ``gauss`` whose target builds its deviations chunk
        by chunk holds no tile-sized array: :data:`CHUNKED_TILE_PIXELS`).

    Returns
    -------
    dict of str -> ndarray
        ``score``, ``nb_nll``, ``scale``, ``own``, ``expected``, ``penalty``
        (each (h, w) float64 over the region), and ``channel_nll`` (E,) when asked;
        ``variant``: the same maps of the variant, when ``gauss`` gives one.
    """
    y0r, y1r, x0r, x1r = region if region is not None else (0, ny, 0, nx)
    hh, ww = y1r - y0r, x1r - x0r
    rn = pooling.radius()
    from .device import cpu_threads, intra_op_threads

    workers = cpu_threads()
    if tile is None:
        tile_h, tile_w = _auto_tile(hh, ww, nx, rn, max(1, int(n_energy or 256)), tile_pixels)
        k = -(-hh // tile_h)
        if workers > 1 and tile_w == ww and (k > 1 or hh >= 4 * rn * workers):
            # bands, as many as a multiple of the workers (one band split only where the
            # context each band reads adds at most about half)
            k = -(-k // workers) * workers
            tile_h = max(1, -(-hh // k))
    else:
        tile_h = tile_w = int(tile)
    # every core (one left to a GUI) on its own tiles, each tile's products on one thread:
    # threads that meet at every small product stall whenever the host is busy
    with intra_op_threads(1):
        return _pool_tiles(gauss, ny, nx, pooling=pooling, noise2=noise2, excess=excess,
                           y0r=y0r, x0r=x0r, hh=hh, ww=ww, rn=rn, tile_h=tile_h, tile_w=tile_w,
                           want_channels=want_channels, workers=workers)


def _pool_tiles(gauss: GaussianFn, ny: int, nx: int, *, pooling: Pooling, noise2: float,
                excess: tuple[float, float] | None, y0r: int, x0r: int, hh: int, ww: int,
                rn: int, tile_h: int, tile_w: int,
                want_channels: tuple[int, int] | None, workers: int = 1
                ) -> dict[str, np.ndarray]:
    """:func:`pool_image`'s loop over its output tiles (``workers`` threads, each a tile)."""
    import torch

    keys = ("score", "nb_nll", "scale", "own", "expected", "penalty")
    out: dict[str, Any] = {k: np.zeros((hh, ww), np.float64) for k in keys}
    var_out: dict[str, Any] = {}
    boxes = [(y, min(y + tile_h, hh), x, min(x + tile_w, ww))
             for y in range(0, hh, tile_h) for x in range(0, ww, tile_w)]

    def one(box: tuple[int, int, int, int]) -> None:
        ty0, ty1, tx0, tx1 = box
        ay0, ay1, ax0, ax1 = ty0 + y0r, ty1 + y0r, tx0 + x0r, tx1 + x0r
        sy0, sy1 = max(0, ay0 - rn), min(ny, ay1 + rn)
        sx0, sx1 = max(0, ax0 - rn), min(nx, ax1 + rn)
        target, mean, sigma, penalty, *rest = gauss(slice(sy0, sy1), slice(sx0, sx1))
        extra = rest[0] if rest else {}
        with torch.no_grad():
            res = pool_region(target, mean, sigma, penalty, out_box=(ay0, ay1, ax0, ax1),
                              src_box=(sy0, sy1, sx0, sx1), image_shape=(ny, nx),
                              pooling=pooling, noise2=noise2, excess=excess,
                              want_channels=want_channels, variant=extra.get("variant"),
                              own=extra.get("own"))
        dst = (slice(ty0, ty1), slice(tx0, tx1))
        for k in keys:
            out[k][dst] = res[k].double().cpu().numpy()
        if "variant" in res:
            for k in keys:
                var_out.setdefault(k, np.zeros((hh, ww), np.float64))[dst] = \
                    res["variant"][k].double().cpu().numpy()
        if "channel_nll" in res:
            out["channel_nll"] = res["channel_nll"].double().cpu().numpy()

    if workers > 1 and len(boxes) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(boxes))) as ex:
            list(ex.map(one, boxes))  # torch and numpy release the GIL in their kernels
    else:
        for box in boxes:
            one(box)
    if var_out:
        out["variant"] = var_out
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
