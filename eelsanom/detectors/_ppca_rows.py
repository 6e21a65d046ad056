"""Helpers of the PPCA detectors (:mod:`.pca`): projections of spectra on the model, the
per-pixel scale direction, the fitted parameters as tensors, the compute device."""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import forward_transform

log = logging.getLogger(__name__)

#: values per chunk of the CPU float64 projections (a few MB: stays in the cache)
_CHUNK_VALUES = 1 << 18
#: rows from which the CPU projections are split between two threads
_PARALLEL_ROWS = 2048
#: how a pixel's overall intensity (beam current, thickness to first order) enters the model
#: (see :class:`~.pca.PCADetector`, "Per-pixel scale")
SCALES = ("fixed", "free", "sum")


def scale_direction(mean: np.ndarray, transform: str) -> np.ndarray:
    """Unit direction (D,) along which scaling a pixel's counts moves its transformed spectrum.

    With the Anscombe transform ``y = 2 sqrt(c + 3/8)`` a factor ``a`` on the counts
    moves ``y`` by ``dy/da = y / 2 - 3 / (4 y)`` at ``a = 1`` (about ``y / 2``: a
    scale, less at the lowest counts); without a transform, along the spectrum itself.
    Taken at the training mean ``mean``.

    Parameters
    ----------
    mean : ndarray of shape (D,)
        Mean transformed training spectrum.
    transform : {"anscombe", "none"}

    Returns
    -------
    ndarray of shape (D,)
        Unit norm (a zero mean gives the first channel's unit vector).
    """
    m = np.asarray(mean, np.float64)
    t = 0.5 * m - 0.75 / np.maximum(m, 1e-12) if transform == "anscombe" else m.copy()
    if transform == "anscombe":
        t = np.maximum(t, 0.0)
    n = float(np.linalg.norm(t))
    if not np.isfinite(n) or n <= 0:
        t = np.zeros_like(m)
        t[0] = 1.0
        return t
    return t / n


def _resolve_device(device: str, *, strict: bool):
    """Torch device for ``device`` (:func:`eelsanom.device.resolve_device`).

    With ``strict=False`` an unavailable device falls back to the CPU with a
    warning (a model saved on a GPU machine still loads and scores on a laptop).
    """
    from ..device import resolve_device

    try:
        return resolve_device(device)
    except InputError:
        if strict:
            raise
        import torch

        log.warning("device %r is not available; using the CPU", device)
        return torch.device("cpu")


def _project_rows(X: np.ndarray, mean: np.ndarray, U: np.ndarray, transform: str | None = None,
                  gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(p (n, k), sq (n,))``: ``p = (x - mean) U`` and ``sq = ||x - mean||^2`` of rows ``X``.

    Float64 on the CPU by cache-sized chunks (one read of ``X``, no ``(n, D)``
    float64 copy). With ``transform`` the rows are counts, transformed chunk by
    chunk (:func:`~eelsanom.preprocess.forward_transform`). Many rows are split
    between two threads (numpy releases the GIL; each row's result is the same).
    """
    n = X.shape[0]
    from ..device import cpu_threads

    workers = min(2, cpu_threads())  # the cores this process may use (OMP_NUM_THREADS)
    if workers > 1 and n >= _PARALLEL_ROWS:
        from concurrent.futures import ThreadPoolExecutor

        cut = n // 2
        with ThreadPoolExecutor(workers) as ex:
            parts = list(ex.map(lambda sl: _project_chunks(X[sl], mean, U, transform, gain),
                                (slice(0, cut), slice(cut, n))))
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    return _project_chunks(X, mean, U, transform, gain)


def _project_chunks(X: np.ndarray, mean: np.ndarray, U: np.ndarray, transform: str | None,
                    gain: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_project_rows` in one thread."""
    n, d = X.shape
    p = np.empty((n, U.shape[1]))
    sq = np.empty(n)
    step = max(1, _CHUNK_VALUES // max(d, 1))
    anscombe = transform == "anscombe"
    half_mean = 0.5 * np.asarray(mean, np.float64)
    for i in range(0, n, step):
        x = X[i:i + step]
        if anscombe:
            # forward_transform's 2 sqrt(max(x / gain, 0) + 3/8) on one buffer: the factor 2
            # is applied after the subtraction (exact: a power of two)
            y = np.maximum(x, 0.0, dtype=np.float32)
            if gain != 1.0:
                y *= np.float32(1.0 / gain)
            y += np.float32(0.375)
            np.sqrt(y, out=y)
            xc = np.subtract(y, half_mean, dtype=np.float64)
            xc *= 2.0
        else:
            if transform is not None:
                x = forward_transform(x, transform, gain)
            xc = np.subtract(x, mean, dtype=np.float64)
        p[i:i + step] = xc @ U
        sq[i:i + step] = np.einsum("ij,ij->i", xc, xc)
    return p, sq


class _Tensors:
    """Fitted PPCA parameters as torch tensors on one device."""

    def __init__(self, det: Any, dev: Any, dt: Any) -> None:
        import torch

        self.dev, self.dt = dev, dt
        self.mu = torch.as_tensor(det.mean_, device=dev, dtype=dt)
        self.U = torch.as_tensor(det.components_, device=dev, dtype=dt)
        self.lam = torch.as_tensor(det.explained_variance_, device=dev, dtype=dt)
        self.s2 = float(det.noise_variance_)
        lam = det.explained_variance_
        self.logdet = float(np.sum(np.log(lam)) + (det.mean_.size - lam.size) * math.log(self.s2))
        self.shrink = torch.as_tensor((lam - self.s2) / lam, device=dev, dtype=dt)
        self.latent_scale = torch.as_tensor(np.sqrt(np.maximum(lam - self.s2, 0.0)) / lam,
                                            device=dev, dtype=dt)
        sd = getattr(det, "scale_direction_", None)
        self.tdir = None if sd is None else torch.as_tensor(sd, device=dev, dtype=dt)


class DeviationRuns:
    """Deviations from a PPCA-subspace prediction, and the pixels' own Gaussian NLL, by runs.

    The pooled detectors (PCA's decoder, context PCA's neighbourhood prediction, both at
    once in bulk + context PCA) hand the pooling stage ``d = x - mu - [a, c] [U, t]^T``
    (``a`` the codes of the prediction, ``c`` the pixel's scale along the scale direction
    ``t``): one float32 product per cache-sized run of pixels, taken off ``x - mu``
    (float32: the deviations are of the noise's size, the rounding of values of the data's
    size a few 1e-6 of it). Where every pixel shares its channels' sigmas, each pixel's own
    NLL is summed on the run while it is in the cache, ``sum_e w_e d_e^2`` (``w = 1 /
    sigma^2``), and, for a second model whose deviations are ``d + U delta``
    (:class:`eelsanom.pooling.Variant`), ``sum_e w'_e d_e^2 + 2 delta . (w' d) U +
    delta^T (U^T W' U) delta``.

    Parameters
    ----------
    mean, components : ndarray
        ``mu`` (D,) and ``U`` (D, q).
    direction : ndarray of shape (D,) or None
        The scale direction ``t`` (when the pixel's scale is fitted).
    sigma : ndarray of shape (D,) or None
        The sigmas every pixel shares (None: own NLLs are not computed).
    variant_sigma : ndarray of shape (D,) or None
        The second model's (with ``sigma``).
    run_values : int
        Values (pixels x channels) per run.
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray, direction: np.ndarray | None,
                 sigma: np.ndarray | None, variant_sigma: np.ndarray | None = None, *,
                 run_values: int = _CHUNK_VALUES) -> None:
        d, q = components.shape
        self.d, self.q = d, q
        rows = np.asarray(components.T, np.float32)
        if direction is not None:
            rows = np.vstack([rows, np.asarray(direction, np.float32)[None]])
        self.rows32 = rows
        self.mu32 = np.asarray(mean, np.float32)
        self.step = max(1, run_values // max(1, d))
        self._local = threading.local()
        half_log = 0.5 * math.log(2.0 * math.pi)
        self.consts: list[float] = []
        self.w = self.w_one = self.w_var = self.gram = self.u32 = None
        if sigma is not None:
            s64 = np.asarray(sigma, np.float64)
            self.w = (1.0 / s64 ** 2).astype(np.float32)
            self.w_one = float(self.w[0]) if bool(np.all(self.w == self.w[0])) else None
            self.consts.append(float(np.log(s64).sum()) + d * half_log)
            if variant_sigma is not None:
                v64 = np.asarray(variant_sigma, np.float64)
                self.w_var = (1.0 / v64 ** 2).astype(np.float32)
                U = np.asarray(components, np.float64)
                self.gram = U.T @ (U * self.w_var.astype(np.float64)[:, None])
                self.u32 = np.asarray(components, np.float32)
                self.consts.append(float(np.log(v64).sum()) + d * half_log)

    def __call__(self, x: np.ndarray, codes: np.ndarray, scale: np.ndarray | None = None,
                 delta: np.ndarray | None = None,
                 transform: Callable[..., np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(dev (n, D) float32, own (k, n) float64 or None)`` of transformed rows ``x``
        (n, D), or a tile (h, w, D) of any strides, predicted from ``codes`` (n, q) (and
        ``scale`` (n,) when there is a scale direction); ``own[0]`` the pixels' own NLL,
        ``own[1]`` the variant's (``delta`` (n, q): its codes' difference). ``transform``:
        ``x`` holds counts, transformed run by run. ``dev`` is this thread's buffer, valid
        until its next call (the pooling consumes a tile before the thread reads the next)."""
        dev, own, _ = self._runs(x, codes, scale, delta, None, transform)
        return dev, own

    def chunked(self, x: np.ndarray, codes: np.ndarray, scale: np.ndarray | None = None,
                delta: np.ndarray | None = None,
                transform: Callable[..., np.ndarray] | None = None
                ) -> tuple[ChunkDeviations, np.ndarray | None]:
        """As :meth:`__call__` for a tile ``x`` (h, w, D) (any strides; ``codes`` (h * w, q),
        ``scale``, ``delta`` by rows of the tile), without keeping the tile's deviations:
        the own NLLs are summed run by run on a run-sized buffer, and the deviations are
        returned as :class:`ChunkDeviations`, built again chunk of channels by chunk as
        the pooling reads them (no tile-sized array: its pages are not faulted in, and a
        tile may be as large as the image). ``transform(x, out=None)``: ``x`` holds counts,
        transformed value by value where they are read."""
        _, own, _ = self._runs(x, codes, scale, delta, None, transform, store=False)
        k = self.rows32.shape[0]
        coef = np.empty((codes.shape[0], k), np.float32)
        coef[:, :self.q] = codes
        if k > self.q:
            coef[:, self.q] = scale
        return ChunkDeviations(x, self.mu32, self.rows32, coef, transform), own

    def projected_chunked(self, x: np.ndarray, shrink: np.ndarray,
                          transform: Callable[[np.ndarray], np.ndarray] | None = None
                          ) -> tuple[ChunkDeviations, np.ndarray | None, np.ndarray]:
        """:meth:`projected` for a tile ``x`` (h, w, D) without keeping its deviations (as
        :meth:`chunked`). ``transform(x, out=None)`` must act value by value (each chunk of
        channels is transformed again as it is read, into the chunk: ``out``)."""
        _, own, proj = self._runs(x, None, None, None, shrink, transform, store=False)
        assert proj is not None
        coef = proj.astype(np.float32)  # the run's float32 projections, exactly
        coef[:, :self.q] *= np.asarray(shrink, np.float32)
        return ChunkDeviations(x, self.mu32, self.rows32, coef, transform), own, proj

    def projected(self, x: np.ndarray, shrink: np.ndarray,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """As :meth:`__call__` with the rows' own projections ``U^T (x - mu)`` (and scale
        coordinates) times ``shrink`` (q,) as the codes, projected on each run in float32;
        also returns those projections (n, q [+ 1]) float64. ``transform``: ``x`` holds
        counts, transformed run by run by it (no tile-sized transformed copy)."""
        return self._runs(x, None, None, None, shrink, transform)

    def _runs(self, x: np.ndarray, codes: np.ndarray | None, scale: np.ndarray | None,
              delta: np.ndarray | None, shrink: np.ndarray | None,
              transform: Callable[[np.ndarray], np.ndarray] | None = None, store: bool = True
              ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The runs over the rows of ``x`` ((n, D), or a tile (h, w, D) of any strides, read
        row of pixels by row unless contiguous); ``store=False``: the deviations on one
        run-sized buffer only (returned as None)."""
        d, q = self.d, self.q
        if x.ndim == 3:
            if x.flags.c_contiguous:
                segs = [(0, x.reshape(-1, d))]
            else:
                segs = [(r * x.shape[1], x[r]) for r in range(x.shape[0])]
            n = x.shape[0] * x.shape[1]
        else:
            segs, n = [(0, x)], x.shape[0]
        own_codes = codes is None
        proj = None
        if own_codes:
            proj = np.empty((n, self.rows32.shape[0]))
            mult = np.ones(self.rows32.shape[0], np.float32)
            mult[:q] = shrink
        k = self.rows32.shape[0]
        run = min(self.step, max(s.shape[0] for _, s in segs))
        dev = None
        if store:
            # one deviations buffer per thread, reused tile after tile: a fresh tile-sized
            # array is mapped and faulted in page by page on every call
            buf_all = getattr(self._local, "dev", None)
            if buf_all is None or buf_all.size < n * d:
                buf_all = self._local.dev = np.empty(n * d, np.float32)
            dev = buf_all[:n * d].reshape(n, d)
        else:
            scratch = np.empty((run, d), np.float32)
        coef = np.empty((run, k), np.float32)
        buf = np.empty((run, d), np.float32)
        own = None
        if self.w is not None:
            own = np.empty((2 if delta is not None else 1, n))
        for i, j, xs in ((o + a, o + min(s.shape[0], a + self.step),
                          s[a:a + self.step]) for o, s in segs
                         for a in range(0, s.shape[0], self.step)):
            m = j - i
            dv = dev[i:j] if dev is not None else scratch[:m]
            np.subtract(xs if transform is None else transform(xs), self.mu32, out=dv)
            if own_codes:
                np.matmul(dv, self.rows32.T, out=coef[:m])
                proj[i:j] = coef[:m]
                coef[:m] *= mult
            else:
                coef[:m, :q] = codes[i:j]
                if k > q:
                    coef[:m, q] = scale[i:j]
            np.matmul(coef[:m], self.rows32, out=buf[:m])
            dv -= buf[:m]
            if own is None:
                continue
            if self.w_one is not None:  # one weight for every channel
                own[0, i:j] = np.einsum("ij,ij->i", dv, dv) * self.w_one
            else:
                np.multiply(dv, self.w, out=buf[:m])
                own[0, i:j] = np.einsum("ij,ij->i", buf[:m], dv)
            if delta is not None:
                np.multiply(dv, self.w_var, out=buf[:m])
                dl = delta[i:j]
                own[1, i:j] = (np.einsum("ij,ij->i", buf[:m], dv)
                               + 2.0 * np.einsum("ij,ij->i", buf[:m] @ self.u32, dl)
                               + np.einsum("ij,jk,ik->i", dl, self.gram, dl))
        if own is not None:
            for r, cst in enumerate(self.consts[:own.shape[0]]):
                own[r] = 0.5 * own[r] + cst
        return dev, own, proj


#: bytes of each pixel's spectrum :meth:`ChunkDeviations.chunk` reads at a time
BLOCK_BYTES = 256
#: values of the band buffer in which :class:`ChunkDeviations` turns a block channel-middle
BAND_VALUES = 1 << 16


class ChunkDeviations:
    """A tile's deviations ``d = x - mu - coef rows`` (float32), built chunk of channels by
    chunk when the pooling reads them (:func:`eelsanom.pooling.pool_region`'s ``target``
    without a tile-sized array: :meth:`DeviationRuns.chunked`).

    The values are those :class:`DeviationRuns` builds by runs (the same float32
    operations: ``x - mu``, less the product of the codes and the rows).

    Attributes
    ----------
    shape : (D, h, w)
    dtype, device
        ``torch.float32`` on the CPU.
    chunked_deviations : True
        What :func:`~eelsanom.pooling.pool_region` recognises it by.
    """

    chunked_deviations = True

    def __init__(self, x: np.ndarray, mu32: np.ndarray, rows32: np.ndarray, coef: np.ndarray,
                 transform: Callable[..., np.ndarray] | None = None) -> None:
        import torch

        self.x, self.mu32, self.rows32, self.coef = x, mu32, rows32, coef
        self.rows_t = np.ascontiguousarray(rows32.T)  # (D, k)
        self._coef_mid: np.ndarray | None = None
        self._block: tuple[int, int, np.ndarray] | None = None
        self.transform = transform
        h, w, d = x.shape
        self.shape = (d, h, w)
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def chunk(self, c0: int, c1: int) -> Any:
        """Channels ``c0:c1`` of the deviations in the pooling's channel-middle layout,
        ``(h, c1 - c0, w)`` contiguous tensor.

        The tile's pixels are read a block of whole chunks at a time, at least
        :data:`BLOCK_BYTES` of each pixel's spectrum (a few cache lines: a run of one line
        per pixel, thousands of bytes apart, waits on memory line by line), and the later
        chunks of a block are copied from it."""
        import torch

        n_c = c1 - c0
        blk = self._block
        if blk is None or not (blk[0] <= c0 and c1 <= blk[1]):
            per = max(1, -(-BLOCK_BYTES // (4 * n_c)))  # chunks per block
            blk = self._block = (c0, min(self.shape[0], c0 + per * n_c),
                                 self._build(c0, min(self.shape[0], c0 + per * n_c)))
        b0, b1, arr = blk
        if (b0, b1) == (c0, c1):
            self._block = None  # handed over whole: not kept
            return torch.from_numpy(arr)
        return torch.from_numpy(np.ascontiguousarray(arr[:, c0 - b0:c1 - b0]))

    def _build(self, c0: int, c1: int) -> np.ndarray:
        """Channels ``c0:c1`` of the deviations, ``(h, c1 - c0, w)`` float32."""
        d, h, w = self.shape
        n_c = c1 - c0
        out = np.empty((h, n_c, w), np.float32)
        # a band of rows at a time: read pixel-major into a cache-sized buffer (runs of the
        # pixels' spectra), transformed there, then turned channel-middle (in the cache); a
        # direct strided copy into the channel-middle layout took twice as long
        rows = max(1, BAND_VALUES // max(1, w * n_c))
        buf = np.empty((min(rows, h), w, n_c), np.float32)
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            band = buf[:y1 - y0]
            np.copyto(band, self.x[y0:y1, :, c0:c1], casting="unsafe")
            if self.transform is not None:
                self.transform(band, out=band)
            np.copyto(out[y0:y1], band.transpose(0, 2, 1))
        out -= self.mu32[c0:c1, None]
        if self._coef_mid is None:  # (h, k, w)
            self._coef_mid = np.ascontiguousarray(
                self.coef.reshape(h, w, -1).transpose(0, 2, 1))
        out -= np.matmul(self.rows_t[c0:c1], self._coef_mid)
        return out

    def column(self, iy: int, ix: int) -> Any:
        """Every channel of pixel ``(iy, ix)`` (tile coordinates): ``(D,)`` tensor."""
        import torch

        xs = self.x[iy, ix][None]
        if self.transform is not None:
            xs = self.transform(xs)
        dv = np.subtract(xs, self.mu32, dtype=np.float32)
        dv -= self.coef[iy * self.shape[2] + ix][None] @ self.rows32
        return torch.from_numpy(dv[0])


def value_transform(det: Any) -> Callable[..., np.ndarray] | None:
    """A PPCA detector's transform value by value, ``f(counts, out=None)`` of any shape (a
    block of counts may then be transformed where it is read, any part of it at a time);
    None with ``scale="sum"``, whose rows are first scaled by their totals
    (:meth:`~.pca.PCADetector._transform`)."""
    if det.scale == "sum":
        return None
    return functools.partial(forward_transform, name=det.transform, gain=det.gain_)


def posterior_kl(p: np.ndarray, lam: np.ndarray, s2: float) -> np.ndarray:
    """PPCA's per-pixel posterior KL from ``N(0, I)`` of projections ``p`` (..., q): the code
    ``z = p sqrt(lambda - sigma^2) / lambda`` with variances ``sigma^2 / lambda`` (the penalty
    of :meth:`~.pca.PCADetector._gauss_rows`)."""
    lam = np.asarray(lam, np.float64)
    z = p * (np.sqrt(np.maximum(lam - s2, 0.0)) / lam)
    pv = s2 / lam
    return 0.5 * ((z * z).sum(-1) + float((pv - np.log(pv) - 1.0).sum()))


def pooled_ppca(det: Any, si: Any, pool: Any, **kw: Any) -> dict[str, np.ndarray]:
    """PCA's pooled scores on the CPU (:meth:`~.pca.PCADetector._pooled`): each tile read
    once, transformed and projected on :class:`DeviationRuns`' runs (float32), its deviations from the decoder's mean ``mu + U (shrink
    p)`` (plus the pixel's scale) and its own NLLs by :class:`DeviationRuns`, the posterior's
    KL as penalty; the same Gaussian as :meth:`~.pca.PCADetector._gauss_rows`.
    ``kw``: passed to :func:`eelsanom.pooling.pool_image`."""
    import torch

    from ..pooling import CHUNKED_TILE_PIXELS, pool_image
    from ._gaussian import read_block

    ny, nx = si.nav_shape
    d = si.n_energy
    lam = np.asarray(det.explained_variance_, np.float64)
    s2 = float(det.noise_variance_)
    shrink = (lam - s2) / lam
    sig = torch.full((d,), math.sqrt(s2), dtype=torch.float32)
    runs = DeviationRuns(det.mean_, det.components_,
                         det.scale_direction_ if det._fixed_dims else None,
                         sig.double().numpy())

    # a transform value by value: each chunk of channels is transformed again as the
    # pooling reads it, and no tile-sized array is kept
    tf = value_transform(det)
    by_chunks = tf is not None

    def gauss(rows: slice, cols: slice):
        block = read_block(si, rows, cols)
        h, w = block.shape[:2]
        # transformed and projected run by run, in float32
        if by_chunks:
            target, own, proj = runs.projected_chunked(block, shrink, tf)
        else:
            dev, own, proj = runs.projected(block.reshape(h * w, d), shrink, det._transform)
            target = torch.from_numpy(dev).T.reshape(d, h, w)
        kl = posterior_kl(proj[:, :lam.size], lam, s2)
        return (target, torch.zeros((1, 1, 1), dtype=torch.float32).expand(d, h, w),
                sig[:, None, None].expand(d, h, w), torch.from_numpy(kl.reshape(h, w)),
                {"own": torch.from_numpy(own[0].reshape(h, w))})

    return pool_image(gauss, ny, nx, pooling=pool, noise2=s2,
                      excess=getattr(det, "pool_excess_", None), n_energy=d,
                      tile_pixels=CHUNKED_TILE_PIXELS if by_chunks else None, **kw)
