"""The pooling stage's neighbourhood sums (:mod:`eelsanom.pooling`): banded separable
weights applied by matrix products over chunks of channels, and the squared pooled
statistic of every keep mask (:func:`_neighbourhood_z2`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

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
        self._tT: Any = None  # the weights transposed, contiguous (:meth:`right`)

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

    def right(self, flat: torch.Tensor) -> torch.Tensor:
        """``flat m^T``: ``(n, src) -> (n, out)``, one product per panel (written in place on
        the CPU, copied in elsewhere)."""
        import torch

        if self._tT is None:
            self._tT = self.t.T.contiguous()
        tT = self._tT
        if self.full():
            return torch.matmul(flat, tT)
        shape = (flat.shape[0], self.m.shape[0])
        out = flat.new_empty(shape) if self.covers else flat.new_zeros(shape)
        in_place = flat.device.type in _OUT_VIEW_DEVICES
        for o0, o1, s0, s1 in self.bands:
            if in_place:
                torch.matmul(flat[:, s0:s1], tT[s0:s1, o0:o1], out=out[:, o0:o1])
            else:
                out[:, o0:o1] = torch.matmul(flat[:, s0:s1], tT[s0:s1, o0:o1])
        return out

    def rows_add(self, flat: torch.Tensor, out: torch.Tensor | None, alpha: float
                 ) -> torch.Tensor:
        """``out + alpha m flat`` (``flat`` (src, K) -> (out, K)); ``out`` None: a new array."""

        if out is None:
            out = self.along_rows(flat)
            return out if alpha == 1.0 else out.mul_(alpha)
        if self.full():
            return out.addmm_(self.t, flat, alpha=alpha)
        for o0, o1, s0, s1 in self.bands:
            out[o0:o1].addmm_(self.t[o0:o1, s0:s1], flat[s0:s1], alpha=alpha)
        return out

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


#: devices whose products :meth:`_Axis.right` writes into a view of columns (elsewhere the
#: panel is computed, then copied in)
_OUT_VIEW_DEVICES = ("cpu",)

#: a linear pooling: terms ``(coefficient, rows axis, columns axis)``
_Lin = list[tuple[float, _Axis, _Axis]]


def _apply(x: torch.Tensor, lin: _Lin) -> torch.Tensor:
    """``sum_k c_k Y_k x X_k^T`` over the image axes of ``x (hs, ws, C) -> (th, tw, C)``.

    On a large block the columns' weights are applied as the rows' are, to the block
    transposed (one product per panel over every row and channel instead of one small
    product per row: about a tenth faster), the transposition undone as the terms add up.
    """
    import torch

    if x.shape[0] * x.shape[1] < _TRANSPOSED_PIXELS:
        out = None
        for c, ay, ax in lin:
            r = ax.along_cols(ay.along_rows(x))
            out = r.mul_(c) if out is None else out.add_(r, alpha=c)
        assert out is not None
        return out
    out = None
    for c, ay, ax in lin:
        rt = ay.along_rows(x).transpose(0, 1).contiguous()  # (ws, th, C)
        r = ax.along_rows(rt).transpose(0, 1)  # (th, tw, C), a view
        if out is None:
            out = torch.empty(r.shape, dtype=r.dtype, device=r.device)
            torch.mul(r, c, out=out)
        else:
            out.add_(r, alpha=c)
    assert out is not None
    return out


def _apply_mid(x: torch.Tensor, lin: _Lin) -> torch.Tensor:
    """:func:`_apply` on the channel-middle layout: ``x (hs, C, ws) -> (th, C, tw)``.

    The columns' weights multiply every (row, channel) line of the block from the right,
    one product per panel over all of them, and the rows' weights the result from the
    left, each further term added by the product itself: no transposition, and both
    products are long (about half the time of :func:`_apply` on a large block)."""
    hs, n_c, ws = x.shape
    flat = x.reshape(hs * n_c, ws)
    out = None
    th = tw = 0
    for c, ay, ax in lin:
        th, tw = ay.m.shape[0], ax.m.shape[0]
        y = ax.right(flat).view(hs, n_c * tw)
        out = ay.rows_add(y, out, c)
    assert out is not None
    return out.view(th, n_c, tw)


def _mid(x: torch.Tensor) -> torch.Tensor:
    """``(C, h, w) -> (h, C, w)``, contiguous (the chunks' working layout)."""
    return x.permute(1, 0, 2).contiguous()


#: source pixels from which :func:`_apply` works on the transposed block
_TRANSPOSED_PIXELS = 4096


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


#: the coherent part of a pixel's variance is left out where it is below this fraction of the
#: incoherent part in every channel (it cannot change a float32 variance there)
_COHERENT_NEGLIGIBLE = 1e-9


def _coherent_pixels(q: torch.Tensor, cm2: torch.Tensor | None,
                     uniform: tuple[torch.Tensor, torch.Tensor]) -> Any:
    """Where a keep mask's pooled variance ``v_inc q + s_coh^2 cm^2`` needs its coherent part.

    ``cm2`` vanishes (up to rounding) wherever every neighbour is kept: the statistic's
    weights sum to zero. Returns None (``cm2`` None, or needed at more than half the
    pixels: the rank-two variance everywhere), else ``(rows, cols, pair)`` of the pixels
    that need it, ``pair`` (n, 2) their ``(q, cm2)``."""
    import torch

    if cm2 is None:
        return None
    v_inc, s_coh = uniform
    lo = float(v_inc.min())
    need = (cm2[..., 0] * float((s_coh ** 2).max())
            > _COHERENT_NEGLIGIBLE * q[..., 0] * lo)
    if int(need.sum()) * 2 > need.numel():
        return None
    cy, cx = torch.nonzero(need, as_tuple=True)
    return cy, cx, torch.cat([q[cy, cx], cm2[cy, cx]], -1)


def _neighbourhood_z2(dev: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None,
                                                      torch.Tensor | None]],
                      n_ch: int, shape: tuple[int, int], stat: _Stat,
                      models: list[tuple[list[np.ndarray | None],
                                         tuple[torch.Tensor, torch.Tensor] | None,
                                         tuple[torch.Tensor, torch.Tensor] | None]],
                      want: tuple[int, int] | None,
                      needs: list[list[Any]] | None = None
                      ) -> list[tuple[list[torch.Tensor], list[torch.Tensor | None]]]:
    """Sum over channels of the squared neighbourhood statistic ``z`` for each keep mask.

    ``dev(c0, c1)`` gives channels ``c0:c1`` of the deviations ``(hs, ws, C)`` and
    (unless the model is ``uniform``) their incoherent variance ``min(v, noise2)``
    and coherent sd ``sqrt(max(v - noise2, 0))``. ``models``: per model ``(keeps,
    uniform, low)``: ``keeps`` source masks (``None``: every pixel); ``uniform =
    (v_inc, s_coh)`` ``(E,)`` when every pixel shares them; ``low = (basis (E, q),
    delta (hs, ws, q))`` when the model's deviations are ``dev + delta basis^T``
    (:class:`Variant`; uniform only), pooled as the pooled ``dev`` plus the pooled
    ``delta`` times the basis, so each chunk's neighbourhood sums are done once.
    The statistic of a mask is that of every pixel minus that of the dropped
    pixels (linear in the sources), the latter group by group of dropped pixels,
    each over the outputs it reaches only.
    ``needs``: per model, per mask, the flat indices of the output pixels that use it
    (``None``: all); the map is computed there only (0 elsewhere).
    Returns per model, per mask, the ``(th, tw)`` map (float64) and, for the pixel
    ``want`` (output coordinates), its per-channel ``z^2``.
    """
    import torch

    if needs is None:
        needs = [[None] * len(m[0]) for m in models]

    hs, ws = shape
    th, tw = stat.d[0][1].m.shape[0], stat.d[0][2].m.shape[0]
    work = []
    for keeps, uniform, low in models:
        # per mask: the dropped pixels' groups, each with the maps restricted to it
        drops = []
        for k in keeps:
            parts = [] if k is None else _groups(~k)
            if parts:
                subs = [_sub(stat.d, box) for box, _ in parts]
                area = sum((o[1] - o[0]) * (o[3] - o[2]) for _, o in subs)
                if area > th * tw // 2:  # many scattered groups: one box around them all
                    ys, xs = np.nonzero(~k)
                    box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
                    parts = [(box, ~k[box[0]:box[1], box[2]:box[3]])]
                    subs = [_sub(stat.d, box)]
            groups = []
            for (box, own), (sub_d, out_box) in zip(parts, subs if parts else []):
                groups.append((box, out_box, sub_d, _sub(stat.v, box)[0], own))
            drops.append(groups)
        # the variance maps are 2-D when uniform: pooled keep masks (times v_inc, s_coh)
        var2d = []
        if uniform is not None:
            coherent = bool((uniform[1] != 0).any())
            for k in keeps:
                w = (torch.ones((hs, ws, 1), dtype=torch.float64, device=uniform[0].device)
                     if k is None
                     else torch.as_tensor(k[..., None], device=uniform[0].device)
                     .to(torch.float64))
                q = _apply(w, stat.v64)
                cm2 = _apply(w, stat.d64) ** 2 if coherent else None
                var2d.append((q, cm2, _coherent_pixels(q, cm2, uniform)))
        pooled_low = low_mid = None
        if low is not None:
            # the pooled coefficients (q, th tw) (one product with the basis per chunk) and
            # the sources' (hs, q, ws), in the chunks' channel-middle layout
            q_low = low[1].shape[-1]
            pooled_low = _apply(low[1], stat.d).permute(2, 0, 1).reshape(q_low, th * tw)
            pooled_low = pooled_low.contiguous()
            low_mid = low[1].permute(0, 2, 1).contiguous()
        # a mask few output pixels use: those pixels' (row, column) in the block
        picks = [None if sel is None else (sel // tw, sel % tw) for sel in needs[len(work)]]
        work.append((keeps, uniform, low, drops, var2d, pooled_low, low_mid, picks))
    z2 = [[None] * len(m[0]) for m in models]
    z2w: list[list[Any]] = [[[] for _ in m[0]] for m in models]
    chunk = max(1, _CHUNK // max(1, hs * ws))
    for c0 in range(0, n_ch, chunk):
        c1 = min(n_ch, c0 + chunk)
        n_c = c1 - c0
        # (hs, C, ws): each chunk in the channel-middle layout (:func:`_apply_mid`)
        d_base, vi_c, sc_c = dev(c0, c1)
        d_pool = _apply_mid(d_base, stat.d)
        v_all = s_all = None
        # each model's pooled deviations, before any is changed in place below
        d_alls, bts = [], []
        for _, _, low, _, _, pooled_low, _, _ in work:
            bt = None if low is None else low[0][c0:c1].to(d_base.dtype)  # (C, q)
            bts.append(bt)
            # + basis times the pooled coefficients: one product (C, th tw), added row of
            # pixels by row (runs of tw values)
            d_alls.append(d_pool if bt is None else
                          d_pool + torch.mm(bt, pooled_low).view(n_c, th, tw).transpose(0, 1))
        for mi, (keeps, uniform, _, drops, var2d, _, low_mid, picks) in \
                enumerate(work):
            d_all, bt = d_alls[mi], bts[mi]
            d_c = d_base if bt is None else None  # the variant's: only where pixels drop
            if uniform is None and v_all is None:
                v_all, s_all = _apply_mid(vi_c, stat.v), _apply_mid(sc_c, stat.d)
            # masks without dropped pixels first; the last with some changes the model's
            # pooled deviations in place when no later model reads them (no copy)
            order = sorted(range(len(keeps)), key=lambda j: bool(drops[j]))
            shared = any(d_alls[mj] is d_all for mj in range(mi + 1, len(work)))
            for i in order:
                d_k = d_all
                if uniform is None:
                    v_k, s_k = v_all, s_all
                if drops[i]:
                    in_place = uniform is not None and i == order[-1] and not shared
                    d_k = d_all if in_place else d_all.clone()
                    if uniform is None:
                        v_k, s_k = v_all.clone(), s_all.clone()
                for (r0, r1, q0, q1), (o0, o1, p0, p1), sub_d, sub_v, own in drops[i]:
                    if o1 <= o0 or p1 <= p0:
                        continue
                    dropm = torch.as_tensor(own[:, None, :], device=d_base.device,
                                            dtype=d_base.dtype)
                    if d_c is None:
                        src = d_base[r0:r1, :, q0:q1] + torch.matmul(
                            bt, low_mid[r0:r1, :, q0:q1])
                    else:
                        src = d_c[r0:r1, :, q0:q1]
                    d_k[o0:o1, :, p0:p1] -= _apply_mid(src * dropm, sub_d)
                    if uniform is None:
                        v_k[o0:o1, :, p0:p1] -= _apply_mid(vi_c[r0:r1, :, q0:q1] * dropm, sub_v)
                        s_k[o0:o1, :, p0:p1] -= _apply_mid(sc_c[r0:r1, :, q0:q1] * dropm, sub_d)
                sel = needs[mi][i]
                if uniform is not None:
                    q, cm2, coh = var2d[i]
                if sel is not None:  # a mask only a few output pixels use: those alone
                    py, px = picks[i]
                    d_k = d_k[py, :, px]  # (n, C)
                    if uniform is None:
                        v_k, s_k = v_k[py, :, px], s_k[py, :, px]
                    else:
                        q = q.reshape(-1, 1)[sel]
                        cm2 = None if cm2 is None else cm2.reshape(-1, 1)[sel]
                # the channel axis: the last of a pixel selection, else the middle
                ax = -1 if sel is not None else 1
                if uniform is None:
                    zz = d_k * d_k / (torch.clamp(v_k, min=1e-12) + s_k ** 2)
                    s = zz.sum(ax, dtype=torch.float64)
                    if want is not None:
                        zw = zz[want[0], :, want[1]]
                else:
                    vi = uniform[0][c0:c1]
                    floor = 1e-12 / float(vi.min())  # a pooled weight sum at least this
                    ch = torch.stack([vi, uniform[1][c0:c1] ** 2]).to(d_k.dtype)  # (2, C)
                    if cm2 is None or (sel is None and coh is not None):
                        # one variance per channel, times a 2-D map (where the coherent
                        # part is too small to change a float32 variance: everywhere, or
                        # but at the pixels ``coh``, done below with their rank-two one)
                        qc = torch.clamp(q[..., 0], min=floor)
                        sq = d_k * d_k
                        inv = (1.0 / vi).to(d_k.dtype)
                        s = (torch.matmul(sq, inv) if sel is not None
                             else torch.matmul(inv, sq)).to(torch.float64) / qc
                        if want is not None:
                            zw = sq[want[0], :, want[1]] * inv / qc[want].to(d_k.dtype)
                        if cm2 is not None and coh[0].numel():
                            cy, cx, pair = coh
                            dc = d_k[cy, :, cx]  # (n, C)
                            pc = torch.cat([torch.clamp(pair[:, :1], min=floor), pair[:, 1:]],
                                           -1).to(d_k.dtype)
                            zc = dc * dc
                            zc /= torch.mm(pc, ch)
                            s[cy, cx] = zc.sum(-1).to(torch.float64)
                            if want is not None:
                                pw = torch.cat([torch.clamp(q[want], min=floor),
                                                cm2[want]]).to(d_k.dtype)
                                zw = sq[want[0], :, want[1]] / (pw @ ch)
                    else:  # v_inc q + s_coh^2 cm^2: the variance of rank two
                        pair = torch.cat([torch.clamp(q, min=floor), cm2], -1).to(d_k.dtype)
                        if sel is not None:
                            var = torch.mm(pair.reshape(-1, 2), ch)  # (n, C)
                        else:  # (th, C, tw)
                            var = torch.matmul(ch.T, pair.permute(0, 2, 1))
                        zz = d_k * d_k
                        zz /= var
                        s = zz.sum(ax).to(torch.float64)
                        if want is not None:
                            zw = zz[want[0], :, want[1]]
                z2[mi][i] = s if z2[mi][i] is None else z2[mi][i] + s
                if want is not None:
                    z2w[mi][i].append(zw)
    for mi in range(len(models)):
        for i, sel in enumerate(needs[mi]):
            if sel is not None and z2[mi][i] is not None:
                full = torch.zeros(th * tw, dtype=torch.float64, device=z2[mi][i].device)
                full[sel] = z2[mi][i]
                z2[mi][i] = full.view(th, tw)
    return [(z2[mi], [torch.cat(w) if w else None for w in z2w[mi]])
            for mi in range(len(models))]
