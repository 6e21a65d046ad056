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


#: channel x source-pixel values one chunk of the pooled statistic holds (fits a CPU cache)
_CHUNK = 1 << 20
#: output rows (columns) per panel of a banded weight matrix: a panel reads only its band
_PANEL = 32


class _Axis:
    """One axis' weights ``m (out, src)`` as a tensor, split into panels that skip the zeros."""

    def __init__(self, m: np.ndarray, device: Any, dtype: Any) -> None:
        import torch

        self.m = m
        self.t = torch.as_tensor(m, device=device, dtype=dtype)
        nz = m != 0
        self.bands: list[tuple[int, int, int, int]] = []
        for o0 in range(0, m.shape[0], _PANEL):
            o1 = min(m.shape[0], o0 + _PANEL)
            cols = np.flatnonzero(nz[o0:o1].any(0))
            if cols.size:
                self.bands.append((o0, o1, int(cols[0]), int(cols[-1]) + 1))
        #: every output row is written by a panel (no zero fill needed)
        self.covers = sum(o1 - o0 for o0, o1, _, _ in self.bands) == m.shape[0]

    def sub(self, s0: int, s1: int) -> _Axis:
        """The weights of sources ``s0:s1`` only."""
        return _Axis(self.m[:, s0:s1], self.t.device, self.t.dtype)

    def full(self) -> bool:
        return len(self.bands) == 1 and self.bands[0] == (0, self.m.shape[0], 0, self.m.shape[1])

    def along_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``m`` over the first axis: ``(src, w, C) -> (out, w, C)``, one product per panel."""
        import torch

        flat = x.reshape(x.shape[0], -1)
        if self.full():
            return torch.matmul(self.t, flat).view((self.m.shape[0],) + x.shape[1:])
        shape = (self.m.shape[0], flat.shape[1])
        out = x.new_empty(shape) if self.covers else x.new_zeros(shape)
        for o0, o1, s0, s1 in self.bands:
            torch.matmul(self.t[o0:o1, s0:s1], flat[s0:s1], out=out[o0:o1])
        return out.view((self.m.shape[0],) + x.shape[1:])

    def along_cols(self, x: torch.Tensor) -> torch.Tensor:
        """``m`` over the second axis: ``(h, src, C) -> (h, out, C)``."""
        import torch

        if self.full():
            return torch.matmul(self.t, x)
        shape = (x.shape[0], self.m.shape[0], x.shape[2])
        out = x.new_empty(shape) if self.covers else x.new_zeros(shape)
        for o0, o1, s0, s1 in self.bands:
            out[:, o0:o1] = torch.matmul(self.t[o0:o1, s0:s1], x[:, s0:s1])
        return out


#: a linear pooling: terms ``(coefficient, rows axis, columns axis)``
_Lin = list[tuple[float, _Axis, _Axis]]


def _apply(x: torch.Tensor, lin: _Lin) -> torch.Tensor:
    """``sum_k c_k Y_k x X_k^T`` over the image axes of ``x (hs, ws, C) -> (th, tw, C)``."""
    out = None
    for c, ay, ax in lin:
        r = ax.along_cols(ay.along_rows(x))
        out = r.mul_(c) if out is None else out.add_(r, alpha=c)
    assert out is not None
    return out


def _span(ms: list[np.ndarray]) -> tuple[int, int]:
    """Outputs ``[o0, o1)`` any of the weight matrices ``ms`` (sources already cut) reach."""
    rows = np.flatnonzero(np.any([m != 0 for m in ms], axis=(0, 2)))
    return (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)


def _sub(lin: _Lin, box: tuple[int, int, int, int]
         ) -> tuple[_Lin, tuple[int, int, int, int]]:
    """``lin`` reading only the sources ``box = (r0, r1, c0, c1)`` and writing only the
    outputs they reach; returns it and that output box ``(o_r0, o_r1, o_c0, o_c1)``."""
    r0, r1, c0, c1 = box
    oy = _span([ay.m[:, r0:r1] for _, ay, _ in lin])
    ox = _span([ax.m[:, c0:c1] for _, _, ax in lin])
    sub = [(c, _Axis(ay.m[oy[0]:oy[1], r0:r1], ay.t.device, ay.t.dtype),
            _Axis(ax.m[ox[0]:ox[1], c0:c1], ax.t.device, ax.t.dtype)) for c, ay, ax in lin]
    return sub, (oy[0], oy[1], ox[0], ox[1])


def _groups(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """The groups of ``mask``'s pixels (pixels within 4 of each other share one): each
    group's bounding box and its pixels within it. The spill correction works group by
    group, not on one box around all (every pixel is in exactly one group)."""
    from scipy import ndimage

    if not mask.any():
        return []
    labels, _ = ndimage.label(ndimage.binary_dilation(mask, iterations=2))
    labels = np.where(mask, labels, 0)
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == lab
        rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
        box = (sl[0].start + int(rows[0]), sl[0].start + int(rows[-1]) + 1,
               sl[1].start + int(cols[0]), sl[1].start + int(cols[-1]) + 1)
        out.append((box, labels[box[0]:box[1], box[2]:box[3]] == lab))
    return out


def _last(x: torch.Tensor) -> torch.Tensor:
    """``(C, h, w) -> (h, w, C)``, contiguous (the pooling's working layout)."""
    return x.permute(1, 2, 0).contiguous()


class _Stat:
    """The pooled statistic's linear maps over one block (see :func:`_neighbourhood_z2`)."""

    def __init__(self, ay: np.ndarray, ax: np.ndarray, by: np.ndarray | None,
                 bx: np.ndarray | None, device: Any, dtype: Any) -> None:
        import torch

        def lin(pairs: list[tuple[float, np.ndarray, np.ndarray]], dt: Any) -> _Lin:
            return [(c, _Axis(my, device, dt), _Axis(mx, device, dt)) for c, my, mx in pairs]

        d = [(1.0, ay, ax)] + ([(-1.0, by, bx)] if by is not None else [])
        v = [(1.0, ay ** 2, ax ** 2)]
        if by is not None:
            v += [(-2.0, ay * by, ax * bx), (1.0, by ** 2, bx ** 2)]
        self.d, self.v = lin(d, dtype), lin(v, dtype)
        self.d64, self.v64 = lin(d, torch.float64), lin(v, torch.float64)
        self.a64 = lin([(1.0, ay, ax)], torch.float64)


def _neighbourhood_z2(dev: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None,
                                                      torch.Tensor | None]],
                      n_ch: int, shape: tuple[int, int], stat: _Stat, keeps: list[np.ndarray | None],
                      uniform: tuple[torch.Tensor, torch.Tensor] | None,
                      want: tuple[int, int] | None) -> tuple[list[torch.Tensor],
                                                             list[torch.Tensor | None]]:
    """Sum over channels of the squared neighbourhood statistic ``z`` for each keep mask.

    ``dev(c0, c1)`` gives channels ``c0:c1`` of the deviations ``(hs, ws, C)`` and
    (unless ``uniform``) their incoherent variance ``min(v, noise2)`` and coherent
    sd ``sqrt(max(v - noise2, 0))``; ``uniform = (v_inc, s_coh)`` ``(E,)`` when
    every pixel shares them. ``keeps``: source masks (``None``: every pixel).
    The statistic of a mask is that of every pixel minus that of the dropped
    pixels (linear in the sources), the latter group by group of dropped pixels,
    each over the outputs it reaches only.
    Returns per mask the ``(th, tw)`` map (float64) and, for the pixel ``want``
    (output coordinates), its per-channel ``z^2``.
    """
    import torch

    hs, ws = shape
    # per mask: the dropped pixels' groups, each with the maps restricted to it
    drops = []
    th, tw = stat.d[0][1].m.shape[0], stat.d[0][2].m.shape[0]
    for k in keeps:
        parts = [] if k is None else _groups(~k)
        if parts:
            subs = [_sub(stat.d, box) for box, _ in parts]
            area = sum((o[1] - o[0]) * (o[3] - o[2]) for _, o in subs)
            if area > th * tw // 2:  # many scattered groups: one box around them all is cheaper
                ys, xs = np.nonzero(~k)
                box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
                parts = [(box, ~k[box[0]:box[1], box[2]:box[3]])]
                subs = [_sub(stat.d, box)]
        groups = []
        for (box, own), (sub_d, out_box) in zip(parts, subs if parts else []):
            groups.append((box, out_box, sub_d, _sub(stat.v, box)[0], own))
        drops.append(groups)
    var2d: list[tuple[torch.Tensor, torch.Tensor]] = []
    if uniform is not None:  # the variance maps are 2-D: pooled keep masks times v_inc, s_coh
        dev0 = uniform[0]
        for k in keeps:
            w = (torch.ones((hs, ws, 1), dtype=torch.float64, device=dev0.device) if k is None
                 else torch.as_tensor(k[..., None], device=dev0.device).to(torch.float64))
            var2d.append((_apply(w, stat.v64), _apply(w, stat.d64)))
    z2 = [None] * len(keeps)
    z2w: list[Any] = [[] for _ in keeps]
    chunk = max(1, _CHUNK // max(1, hs * ws))
    for c0 in range(0, n_ch, chunk):
        c1 = min(n_ch, c0 + chunk)
        d_c, vi_c, sc_c = dev(c0, c1)
        d_all = _apply(d_c, stat.d)
        if uniform is None:
            v_all, s_all = _apply(vi_c, stat.v), _apply(sc_c, stat.d)
        for i in range(len(keeps)):
            d_k = d_all
            if uniform is None:
                v_k, s_k = v_all, s_all
            if drops[i]:
                d_k = d_all.clone()
                if uniform is None:
                    v_k, s_k = v_all.clone(), s_all.clone()
            for (r0, r1, q0, q1), (o0, o1, p0, p1), sub_d, sub_v, own in drops[i]:
                if o1 <= o0 or p1 <= p0:
                    continue
                dropm = torch.as_tensor(own[..., None], device=d_c.device, dtype=d_c.dtype)
                d_k[o0:o1, p0:p1] -= _apply(d_c[r0:r1, q0:q1] * dropm, sub_d)
                if uniform is None:
                    v_k[o0:o1, p0:p1] -= _apply(vi_c[r0:r1, q0:q1] * dropm, sub_v)
                    s_k[o0:o1, p0:p1] -= _apply(sc_c[r0:r1, q0:q1] * dropm, sub_d)
            if uniform is None:
                var = torch.clamp(v_k, min=1e-12) + s_k ** 2
            else:
                vi = uniform[0][c0:c1].to(d_c.dtype)
                sc = uniform[1][c0:c1].to(d_c.dtype)
                q, cm = (m.to(d_c.dtype) for m in var2d[i])
                var = torch.clamp(vi * q, min=1e-12)
                if bool((sc != 0).any()):
                    var = var + (sc * cm) ** 2
            zz = d_k * d_k / var
            s = zz.sum(-1, dtype=torch.float64)
            z2[i] = s if z2[i] is None else z2[i] + s
            if want is not None:
                z2w[i].append(zz[want[0], want[1]])
    chans = [torch.cat(w) if w else None for w in z2w]
    return z2, chans


def pool_region(target: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor,
                penalty: torch.Tensor | None, *, out_box: tuple[int, int, int, int],
                src_box: tuple[int, int, int, int], image_shape: tuple[int, int],
                pooling: Pooling, noise2: float, excess: tuple[float, float] | None,
                want_channels: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
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
        float64, over the output block ``(th, tw)``: ``score`` (the larger of the scales'
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
    th, tw = ay1 - ay0, ax1 - ax0
    sl = (slice(oy0, oy0 + th), slice(ox0, ox0 + tw))
    n_e, hs, ws = target.shape
    dt, device = target.dtype, target.device
    f64 = torch.float64
    sig0 = sigma[:, :1, :1]
    uniform = (sigma.stride(1) == 0 and sigma.stride(2) == 0) or bool((sigma == sig0).all())
    chunk = max(1, _CHUNK // max(1, hs * ws))
    half_log = 0.5 * LOG_2PI
    if uniform:
        s_e = sig0[:, 0, 0].to(f64)
        logsum = float(torch.log(s_e).sum())
        inv2v = (0.5 / s_e ** 2).to(dt)[:, None, None]
        own_s = torch.zeros((hs, ws), dtype=f64, device=device)
        for c0 in range(0, n_e, chunk):
            c1 = min(n_e, c0 + chunk)
            d = target[c0:c1] - mean[c0:c1]
            own_s += (d * d * inv2v[c0:c1]).sum(0, dtype=f64)
        own_s += logsum + n_e * half_log
        exp_s = torch.full((hs, ws), logsum + n_e * (0.5 + half_log), dtype=f64, device=device)
    else:
        own_s = torch.zeros((hs, ws), dtype=f64, device=device)
        exp_s = torch.zeros((hs, ws), dtype=f64, device=device)
        for c0 in range(0, n_e, chunk):
            c1 = min(n_e, c0 + chunk)
            s = sigma[c0:c1]
            d = (target[c0:c1] - mean[c0:c1]) / s
            ls = torch.log(s)
            own_s += (0.5 * d * d + ls).sum(0, dtype=f64)
            exp_s += ls.sum(0, dtype=f64)
        own_s += n_e * half_log
        exp_s += n_e * (0.5 + half_log)
    pen = (torch.zeros((hs, ws), dtype=f64, device=device) if penalty is None
           else penalty.to(f64))
    best = best_nll = best_scale = None
    chan: torch.Tensor | None = None
    want = None
    if want_channels is not None and ay0 <= want_channels[0] < ay1 \
            and ax0 <= want_channels[1] < ax1:
        want = (want_channels[0] - ay0, want_channels[1] - ax0)
    for scale in pooling.scales():
        if scale <= 0:  # the pixel itself
            nb, pen_nb = own_s[sl], pen[sl]
            if want is not None:
                py, px = want[0] + oy0, want[1] + ox0
                s_w = sigma[:, py, px].to(f64)
                nb_w = (0.5 * ((target[:, py, px] - mean[:, py, px]).to(f64) / s_w) ** 2
                        + torch.log(s_w) + half_log)
        else:
            g = neighbourhood_kernel(scale)
            gb = (neighbourhood_kernel(max(pooling.background, scale))
                  if pooling.background > 0 else None)
            stat = _Stat(_pool_matrix(ay0, ay1, sy0, sy1, ny, g),
                         _pool_matrix(ax0, ax1, sx0, sx1, nx, g),
                         None if gb is None else _pool_matrix(ay0, ay1, sy0, sy1, ny, gb),
                         None if gb is None else _pool_matrix(ax0, ax1, sx0, sx1, nx, gb),
                         device, dt)
            if excess is None:
                level = np.zeros((hs, ws))
            else:
                level = outlier_level(own_s - exp_s, float(excess[0]),
                                      float(pooling.spill * excess[1])).cpu().numpy()
            lev_c = level[sl]
            top = float(level.max())
            thr_of = {lv: (None if lv + 1.0 >= top else lv + 1.0) for lv in np.unique(lev_c)}
            thrs = list(dict.fromkeys(thr_of.values()))
            keeps = [None if t is None else level <= t for t in thrs]
            if uniform:
                vv = (s_e ** 2).to(f64)
                uni = (torch.clamp(vv, max=noise2), torch.sqrt(torch.clamp(vv - noise2, min=0.0)))

                def dev(c0: int, c1: int) -> tuple[Any, Any, Any]:
                    return _last(target[c0:c1] - mean[c0:c1]), None, None
            else:
                uni = None

                def dev(c0: int, c1: int) -> tuple[Any, Any, Any]:
                    v = _last(sigma[c0:c1] ** 2)
                    return (_last(target[c0:c1] - mean[c0:c1]), torch.clamp(v, max=noise2),
                            torch.sqrt(torch.clamp(v - noise2, min=0.0)))

            z2s, chans = _neighbourhood_z2(dev, n_e, (hs, ws), stat, keeps, uni, want)
            z2 = torch.zeros((th, tw), dtype=f64, device=device)
            pen_nb = torch.zeros((th, tw), dtype=f64, device=device)
            lev_t = torch.as_tensor(lev_c, device=device)
            for lv, thr in thr_of.items():
                i = thrs.index(thr)
                m = lev_t == lv
                w = (torch.ones((hs, ws, 1), dtype=f64, device=device) if keeps[i] is None
                     else torch.as_tensor(keeps[i][..., None], device=device).to(f64))
                kk = (_apply(pen[..., None] * w, stat.a64) / _apply(w, stat.a64))[..., 0]
                z2 = torch.where(m, z2s[i], z2)
                pen_nb = torch.where(m, kk, pen_nb)
                if want is not None and lev_c[want] == lv:
                    z_w = chans[i]
            nb = 0.5 * z2 + exp_s[sl] - 0.5 * n_e
            if want is not None:
                py, px = want[0] + oy0, want[1] + ox0
                nb_w = 0.5 * z_w.to(f64) + torch.log(sigma[:, py, px].to(f64)) + half_log
        tot = nb + pen_nb
        if best is None:
            best, best_nll = tot, nb
            best_scale = torch.full_like(tot, scale)
            chan = nb_w if want is not None else None
        else:
            up = tot > best
            best = torch.where(up, tot, best)
            best_nll = torch.where(up, nb, best_nll)
            best_scale = torch.where(up, torch.full_like(tot, scale), best_scale)
            if want is not None and bool(up[want]):
                chan = nb_w
    out = {"score": best, "nb_nll": best_nll, "scale": best_scale, "own": own_s[sl],
           "expected": exp_s[sl], "penalty": pen[sl]}
    if chan is not None:
        out["channel_nll"] = chan
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


def _auto_tile(hh: int, ww: int, nx: int, rn: int, n_energy: int) -> tuple[int, int]:
    """``(rows, cols)`` of the output tiles that read the least context per output pixel.

    Each tile reads at most about :data:`TILE_VALUES` values: either bands of
    whole rows of the region (when the image is narrow enough) or squares.
    """
    budget = max(1, TILE_VALUES // n_energy)  # source pixels per tile
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
        Output tile side; default: about :data:`TILE_VALUES` source values per tile, whole
        rows of the region where that reads less context than squares.
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
    y0r, y1r, x0r, x1r = region if region is not None else (0, ny, 0, nx)
    hh, ww = y1r - y0r, x1r - x0r
    rn = pooling.radius()
    from .device import cpu_threads, intra_op_threads

    workers = cpu_threads()
    if tile is None:
        tile_h, tile_w = _auto_tile(hh, ww, nx, rn, max(1, int(n_energy or 256)))
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
    boxes = [(y, min(y + tile_h, hh), x, min(x + tile_w, ww))
             for y in range(0, hh, tile_h) for x in range(0, ww, tile_w)]

    def one(box: tuple[int, int, int, int]) -> None:
        ty0, ty1, tx0, tx1 = box
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

    if workers > 1 and len(boxes) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(boxes))) as ex:
            list(ex.map(one, boxes))  # torch and numpy release the GIL in their kernels
    else:
        for box in boxes:
            one(box)
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
