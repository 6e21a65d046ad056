"""The pooling stage as it was before it was vectorised (issue 24): the slow reference.

A verbatim copy of ``eelsanom.pooling``'s dense per-tile implementation (``_pool_matrix``,
``_neighbourhood_nll``, ``pool_region``) at commit 089caba, kept so that tests can check the fast
implementation against it (``tests/test_pooling_speed.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from eelsanom.pooling import LOG_2PI, Pooling, expected_nll, neighbourhood_kernel, outlier_level


def _pool_matrix(out0: int, out1: int, src0: int, src1: int, n: int,
                 g: np.ndarray) -> np.ndarray:
    """Weights ``A[p, s]`` of source index ``s`` (clipped to the image) in output ``p``."""
    r = (g.size - 1) // 2
    a = np.zeros((out1 - out0, src1 - src0))
    for i, p in enumerate(range(out0, out1)):
        for k, o in enumerate(range(-r, r + 1)):
            a[i, min(max(p + o, 0), n - 1) - src0] += g[k]
    return a


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
