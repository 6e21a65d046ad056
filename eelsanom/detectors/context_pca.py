"""Context PCA: each pixel predicted by its neighbourhood's PPCA codes.

A per-pixel model cannot tell a local chemical shift from a smooth energy drift
larger than it: pixel by pixel the shifted spectrum lies on the bulk manifold.
The neighbourhood can: a drift is smooth, so the pixel's neighbours say where
on the manifold the pixel should be, and a shift that its neighbours do not
share stands out. This detector is the linear baseline of that idea (the
"context PCA" of issue 12), fitted exactly like :class:`~.pca.PCADetector`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputError
from ..pooling import excess_stats, pooling_from
from ..preprocess import inverse_transform, transform_sigma
from ..progress import ProgressCallback, emit
from ..spectrum import SpectrumImage
from . import _schemas
from ._gaussian import POOL_ROW_VALUES, check_int, one_blas_thread, read_block
from ._ppca_rows import DeviationRuns, value_transform
from .base import BaseDetector
from .pca import PCADetector

__all__ = ["ContextPCADetector", "context_footprint"]

_LOG2PI = math.log(2.0 * math.pi)
#: how the variance of the neighbourhood's code prediction is set (see the class docstring)
CODE_VARIANCES = ("spread", "noise", "bulk")
#: quantile of the bulk's absolute code residuals that sets the learnt code variance
#: (``code_variance="bulk"``): ignores up to a quarter of outlying residuals (anomalies in
#: a region trained without a mask), yet follows a heavy-tailed nuisance better than the MAD
BULK_QUANTILE = 0.75
#: ``code_variance="bulk"``: a code is predicted by its neighbourhood only where the bulk's
#: neighbourhoods predict it to within this many times the noise variance; a code they
#: predict less well (a nuisance rougher than the window) is fitted on the pixel itself,
#: because the pooling stage takes the excess over the noise as coherent between
#: neighbours and cancelled by its wide background, which a rough nuisance is not
LOCAL_RATIO = 2.0
#: training pixels (at most; seeded) whose excess NLL sets the pooling's spill guard
SPILL_PIXELS = 4096


def _window_ranks(a: np.ndarray, fp: np.ndarray, ks: tuple[int, ...],
                  block_values: int = 1 << 22) -> list[np.ndarray]:
    """Order statistics ``ks`` of ``a`` over the footprint ``fp`` around each pixel.

    Equal to ``scipy.ndimage.rank_filter(a, k, footprint=fp, mode="reflect")`` for
    each ``k`` (the same half-sample reflection at the border), from one
    ``np.partition`` of the windows for all ``ks`` instead of one filter pass per
    rank, row block by row block (at most about ``block_values`` values at once).
    """
    from numpy.lib.stride_tricks import sliding_window_view

    hy, hx = fp.shape[0] // 2, fp.shape[1] // 2
    pad = np.pad(np.asarray(a, np.float64), ((hy, hy), (hx, hx)), mode="symmetric")
    win = sliding_window_view(pad, fp.shape)  # (ny, nx, wy, wx), a view
    sel = fp.ravel()
    n = int(sel.sum())
    ny, nx = a.shape
    out = [np.empty((ny, nx)) for _ in ks]
    step = max(1, block_values // max(1, nx * n))
    for y0 in range(0, ny, step):
        w = win[y0:y0 + step].reshape(-1, nx, sel.size)[..., sel]
        part = np.partition(w, list(ks), axis=-1)
        for o, k in zip(out, ks):
            o[y0:y0 + step] = part[..., k]
    return out


def context_footprint(window: int) -> np.ndarray:
    """Square ``window x window`` neighbourhood without its centre pixel.

    Parameters
    ----------
    window : int
        Odd side length in pixels, >= 3.

    Returns
    -------
    ndarray of bool, shape (window, window)
        ``True`` everywhere but the centre.

    Raises
    ------
    InputError
        When ``window`` is not an odd integer >= 3.
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 3 \
            or window % 2 == 0:
        raise InputError(f"neighbourhood: expected an odd integer >= 3 (pixels), got {window!r}.")
    fp = np.ones((window, window), bool)
    fp[window // 2, window // 2] = False
    return fp


class ContextPCADetector(PCADetector):
    """PPCA whose codes are predicted from the pixel's neighbourhood (higher NLL = more anomalous).

    The model
        The bulk PPCA (``mu``, components ``U`` (D, q), eigenvalues, noise
        ``sigma^2``) is fitted exactly as by :class:`~.pca.PCADetector` (same
        parameters: bulk mask or robust training, automatic ``q``). Scoring
        differs: a pixel's code ``p = U^T (x - mu)`` is not compared with the
        bulk's spread of codes (which a drift or thickness field widens until a
        chemical shift hides in it) but with its **neighbourhood**: each code
        map is robustly smoothed over a ``neighbourhood x neighbourhood`` square *without the
        centre pixel* (median ``m``; spread ``s`` from the interquartile range,
        floored at the noise; both from order statistics paired symmetrically, so
        the sign of a component does not matter), so the neighbourhood predicts the pixel's
        spectrum ``mu + U m``. Transformed units throughout (Anscombe by default).

    Score
        The Gaussian NLL of the pixel under that prediction::

            NLL = 0.5 * [ sum_i (p_i - m_i)^2 / v_i + ||r||^2 / sigma^2
                          + sum_i log v_i + (D - q) log sigma^2 + D log(2 pi) ]

        with ``v_i = max(s_i^2, sigma^2) * (1 + pi / (2 n))`` (the code's spread in
        the window plus the sampling variance of a median of ``n`` neighbours;
        the spread already holds the noise along ``u_i``) and ``r`` the pixel's
        residual off the PPCA subspace (as in PCA: the neighbourhood does not
        predict it). A cluster smaller than half the window does not move the
        median of its members' neighbourhoods, so it is scored against the bulk
        around it. ``maps``: ``reconstruction_error`` (``||r||^2``),
        ``code_deviation`` (the first sum), ``pca_nll`` (the plain per-pixel PPCA
        NLL); ``latent`` is the pixel's own posterior code, as in PCA.

    Streaming and calibration
        The score of a pixel depends on the pixels up to ``neighbourhood // 2`` away
        (:attr:`score_context`), so streaming and the calibrated threshold
        (held-out bulk blocks scored with their neighbours) read that much context.

    Pooling
        ``pooling = sigma > 0`` scores the context Gaussian (the neighbourhood's
        prediction ``mu + U m`` and the diagonal of its predictive covariance)
        through the shared evidence-pooling stage (:mod:`eelsanom.pooling`, the
        one PCA, RX and the 3D-CVAE use): the larger of the pixel's own Gaussian
        NLL and its neighbourhood statistic's, so a cluster adds up its members'
        evidence; ``maps["context_nll"]`` keeps the unpooled score.
        :meth:`gaussian_terms` returns the same deviation and variance.

    Parameters
    ----------
    neighbourhood : int
        Odd side of the neighbourhood square in pixels (default 9).
    code_variance : {"noise", "spread"}
        ``"noise"`` (default): ``v_i = sigma^2 (1 + pi / (2 n))``, the neighbourhood
        trusted to predict the code up to the noise and the median's sampling
        error; ``"spread"``: ``v_i`` as above, from the codes' spread in the
        window. On the realistic benchmark images (64 x 64, 0.6 eV shifts, seed
        0, pooled) ``"noise"`` gave AP 0.988 / 0.963 / 0.719 under drift /
        valence gradient / thickness where ``"spread"`` gave 0.600 / 0.768 / 0.136
        (and 11 % false positives under thickness): the spread of a smooth
        nuisance inflates the variance until the shift hides in it again.
    pooling : float
        Default 0.8: the context Gaussian scored through the shared pooling
        stage (0 scores each pixel alone).
    n_components, score_kind, max_components, energy_range, threshold, transform,
    robust_fraction, robust_iter, validation_fraction, pooling, device, seed, gain, scale
        As :class:`~.pca.PCADetector` (``score_kind="reconstruction"`` scores the
        pixel by ``||x - mu - U m||^2``, the squared distance from the
        neighbourhood's prediction).

    Examples
    --------
    >>> import numpy as np
    >>> from eelsanom.spectrum import Axis, SpectrumImage
    >>> rng = np.random.default_rng(0)
    >>> data = rng.poisson(50.0, size=(12, 12, 40)).astype("float32")
    >>> si = SpectrumImage(data, Axis(40, 0.3, 680.0, "eV"))
    >>> res = ContextPCADetector(n_components=2, neighbourhood=5, device="cpu").fit(si).score(si)
    >>> res.nll.shape, sorted(res.maps)
    ((12, 12), ['code_deviation', 'pca_nll', 'reconstruction_error'])
    """

    method = "context-pca"

    def __init__(self, *, neighbourhood: int = 9, n_components: int | None = None,
                 score_kind: str = "nll", max_components: int = 20,
                 energy_range: tuple[float, float] | None = None, threshold: Any = "robust",
                 transform: str = "anscombe", robust_fraction: float | str = "auto",
                 robust_iter: int = 5, validation_fraction: float = 0.2, pooling: float = 0.8,
                 device: str = "auto", seed: int = 0, gain: float | str = "auto",
                 code_variance: str = "noise", scale: str = "free") -> None:
        super().__init__(n_components=n_components, score_kind=score_kind,
                         max_components=max_components, energy_range=energy_range,
                         threshold=threshold, transform=transform,
                         robust_fraction=robust_fraction, robust_iter=robust_iter,
                         validation_fraction=validation_fraction, pooling=pooling,
                         device=device, seed=seed, gain=gain, scale=scale)
        self.neighbourhood = neighbourhood
        self.code_variance = code_variance

    validate_model_file = _schemas.validator(_schemas.context_pca)  # the model-file schema

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int("neighbourhood", self.neighbourhood, low=3)
        context_footprint(self.neighbourhood)
        if self.code_variance not in CODE_VARIANCES:
            raise InputError(f"code_variance: expected one of {list(CODE_VARIANCES)}, got "
                             f"{self.code_variance!r}.")

    @property
    def score_context(self) -> int:  # type: ignore[override]
        """Pixels on each side a pixel's score depends on: ``neighbourhood // 2`` plus the
        pooling radius."""
        return int(self.neighbourhood) // 2 + pooling_from(self.pooling).radius()

    @one_blas_thread
    def _fit(self, si: SpectrumImage, mask: np.ndarray | None,
             progress: ProgressCallback | None) -> None:
        super()._fit(si, mask, progress)
        self._fit_context(si, mask)

    def _fit_context(self, si: SpectrumImage, mask: np.ndarray | None) -> dict[str, np.ndarray]:
        """The context model's fitted parts (learnt code variances, the pooling's spill
        guard) on the bulk PPCA just fitted; returns the fitted context of ``si``
        (:meth:`_context`), which subclasses calibrate on."""
        self.code_var_ = self.code_local_ = None
        raw = None
        if self.code_variance == "bulk":
            raw = self._context(si, raw=True)
            self._learn_code_variance(si, mask, raw)
        c = self._context(si, reuse=raw)
        # the pooling's spill guard: excess NLL of the bulk under the context Gaussian
        # (always, so that pooling can be switched on after the fit)
        # (on at most SPILL_PIXELS seeded training pixels, as PCA's: a median and a MAD)
        sel = np.ones(si.nav_shape, bool) if mask is None else np.asarray(mask, bool)
        idx = np.flatnonzero(sel.ravel())
        if idx.size > SPILL_PIXELS:
            idx = idx[np.random.default_rng(self.seed).choice(idx.size, SPILL_PIXELS,
                                                              replace=False)]
            sel = np.zeros(sel.size, bool)
            sel[idx] = True
            sel = sel.reshape(si.nav_shape)
        exc = self._context_excess(c, sel)
        self.pool_excess_ = excess_stats(exc, np.zeros_like(exc), si.n_energy)
        return c

    def _context_excess(self, c: dict[str, np.ndarray], sel: np.ndarray | None) -> np.ndarray:
        """``0.5 sum_e (dev^2 / var - 1)`` of the pixels ``sel`` (all: ``None``) under the
        context Gaussian (:meth:`_gaussian`), computed on those pixels only, by cache-sized
        runs (one variance for all when the code variances are the same everywhere)."""
        x = c["x"].reshape(-1, c["x"].shape[-1])
        m = c["m"].reshape(-1, c["m"].shape[-1])
        v = c["v"].reshape(-1, c["v"].shape[-1])
        idx = np.arange(x.shape[0]) if sel is None else np.flatnonzero(sel.ravel())
        shared = self._shared_variance(v)
        inv = None if shared is None else 1.0 / shared
        cc = c["c"].reshape(-1) if "c" in c else None
        out = np.empty(idx.size)
        step = max(1, POOL_ROW_VALUES // max(1, x.shape[1]))
        for i in range(0, idx.size, step):
            j = idx[i:i + step]
            dev = self._x(c, j) - self._prediction(m[j], None if cc is None else cc[j])
            dev *= dev
            if inv is not None:
                dev *= inv
            else:
                dev /= self._pred_variance(v[j])
            out[i:i + step] = 0.5 * (dev.sum(-1) - dev.shape[1])
        return out

    def _prediction(self, m: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        """The neighbourhood's prediction ``mu + U m`` (..., D) from codes ``m`` (..., q),
        plus the pixel's own fitted scale ``c`` (...) along the scale direction
        (``scale="free"``; ``c`` None otherwise)."""
        pred = self.mean_ + m @ self.components_.T
        if self._fixed_dims and c is not None:  # the pixel's own scale, fitted on it
            pred = pred + np.asarray(c, np.float64)[..., None] * self.scale_direction_
        return pred

    def _pred_variance(self, v: np.ndarray) -> np.ndarray:
        """Diagonal predictive variance (..., D) of code variances ``v`` (..., q)."""
        s2 = float(self.noise_variance_)
        return s2 + (v - s2) @ (self.components_ ** 2).T

    def _shared_variance(self, v: np.ndarray) -> np.ndarray | None:
        """The predictive variance (D,) when every pixel's code variances ``v`` (..., q) are the
        same (learnt or noise-level), else None."""
        flat = v.reshape(-1, v.shape[-1])
        if flat.shape[0] and bool(np.all(flat == flat[:1])):
            return self._pred_variance(flat[:1])[0]
        return None

    def _learn_code_variance(self, si: SpectrumImage, mask: np.ndarray | None,
                             raw: dict[str, np.ndarray] | None = None) -> None:
        """``code_variance="bulk"``: how well the neighbourhood predicts each code on the bulk.

        On the training pixels (all pixels without a mask), the residual of each code
        from its neighbourhood median ``p_i - m_i`` has a robust variance ``v_i`` (from
        the :data:`BULK_QUANTILE` quantile of its absolute deviation); a code the
        neighbourhood predicts no better than the bulk's own spread (``v_i >=
        lambda_i``: a per-pixel nuisance such as beam current or a thickness rougher
        than the window, which only the pixel's own spectrum determines) is fitted
        on the pixel instead (:meth:`_context`). Sets ``code_var_`` (q,) and
        ``code_local_`` (q,) bool. ``raw``: ``_context(si, raw=True)`` when already computed.
        """
        from scipy.stats import norm

        self.code_var_ = self.code_local_ = None
        c = raw if raw is not None else self._context(si, raw=True)
        res = (c["p"] - c["m"]).reshape(-1, c["p"].shape[-1])
        if mask is not None:
            res = res[np.asarray(mask, bool).ravel()]
        dev = np.abs(res - np.median(res, axis=0))
        qz = float(norm.ppf(0.5 + 0.5 * BULK_QUANTILE))
        v_loc = (np.quantile(dev, BULK_QUANTILE, axis=0) / qz) ** 2
        lam = np.asarray(self.explained_variance_, np.float64)
        n = int(context_footprint(int(self.neighbourhood)).sum())
        floor = float(self.noise_variance_) * (1.0 + math.pi / (2.0 * n))
        self.code_local_ = v_loc < np.minimum(lam, LOCAL_RATIO * floor)
        self.code_var_ = np.maximum(np.where(self.code_local_, v_loc, lam), floor)

    # ------------------------------------------------------------------ the context model
    def _context(self, si: SpectrumImage, progress: ProgressCallback | None = None,
                 raw: bool = False, reuse: dict[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
        """Codes, their neighbourhood median and variance, residuals, for the whole of ``si``.

        Returns a dict of ``p`` (ny, nx, q) the pixels' codes ``U^T (x - mu)``,
        ``m`` (ny, nx, q) the neighbourhood medians, ``v`` (ny, nx, q) the
        predictive variances, ``r2`` (ny, nx) the squared residual off the
        subspace, ``x`` (ny, nx, D) the transformed data. With ``code_variance="bulk"``
        the learnt ``code_var_`` sets ``v``, and the codes the neighbourhood does not
        predict (``~code_local_``) are the pixel's own (``m = p``, ``v`` the noise's:
        fitted per pixel, not predicted); ``raw``: the plain medians (to learn them).
        ``reuse``: a ``raw=True`` context of the same ``si`` whose codes, residuals, data
        and medians are taken instead of computed again (the same values).
        """
        from scipy.ndimage import rank_filter
        from scipy.stats import norm

        ny, nx = si.nav_shape
        d = si.n_energy
        q = self.n_components_
        counts = False
        if reuse is not None:
            x, p, r2 = reuse["x"].reshape(-1, d), reuse["p"], reuse["r2"]
            sc, counts = reuse["c"], bool(reuse.get("counts", False))
        else:
            data = read_block(si, slice(None), slice(None))
            if self._counts_context():
                # the counts themselves: transformed where they are read (projection, own
                # NLLs, pooled chunks), no transformed copy of the cube
                x, counts = data.reshape(-1, d), True
                p, r2, sc = self._project(x, counts=True, with_scale=True)
            else:
                x = self._transform(data.reshape(-1, d))
                p, r2, sc = self._project(x, with_scale=True)
            p = p.reshape(ny, nx, q)
            r2 = r2.reshape(ny, nx)
        fp = context_footprint(int(self.neighbourhood))
        n = int(fp.sum())
        # order statistics in sign-symmetric pairs (rank k and n-1-k), so that the
        # prediction does not depend on the arbitrary sign of a principal direction
        lo, hi = int(round(0.25 * (n - 1))), n - 1 - int(round(0.25 * (n - 1)))
        iqr_sigma = 2.0 * float(norm.ppf((hi + 0.5) / n))

        def rank(a: np.ndarray, k: int) -> np.ndarray:
            return rank_filter(a, k, footprint=fp, mode="reflect")

        s2 = float(self.noise_variance_)
        m = np.empty_like(p)
        v = np.empty_like(p)
        learnt = self.code_variance == "bulk" and not raw \
            and getattr(self, "code_var_", None) is not None
        for i in range(q):
            a = p[..., i]
            if learnt and not self.code_local_[i]:
                # a per-pixel nuisance: fitted on the pixel itself, not predicted (whether
                # its value is usual is the bulk model's question)
                m[..., i] = a
                v[..., i] = s2 * (1.0 + math.pi / (2.0 * n))
                continue
            m[..., i] = (reuse["m"][..., i] if reuse is not None
                         else 0.5 * sum(_window_ranks(a, fp, ((n - 1) // 2, n // 2))))
            if learnt:
                v[..., i] = self.code_var_[i]
            elif self.code_variance == "spread":
                spread2 = ((rank(a, hi) - rank(a, lo)) / iqr_sigma) ** 2
                v[..., i] = np.maximum(spread2, s2) * (1.0 + math.pi / (2.0 * n))
            else:  # "noise": the neighbourhood predicts the code up to the noise
                v[..., i] = s2 * (1.0 + math.pi / (2.0 * n))
            emit(progress, "score", i + 1, q)
        return {"p": p, "m": m, "v": v, "r2": r2, "x": x.reshape(ny, nx, d),
                "c": sc.reshape(ny, nx), "counts": counts}

    def _counts_context(self) -> bool:
        """Whether :meth:`_context` keeps the counts (``c["x"]``, ``c["counts"]`` True) rather
        than the transformed cube: on the CPU, with a transform that acts value by value
        (not ``scale="sum"``)."""
        return self._tensors().dev.type == "cpu" and value_transform(self) is not None

    def _x(self, c: dict[str, Any], rows: Any = None) -> np.ndarray:
        """The context's transformed data (n, D), all pixels or the flat indices ``rows``."""
        x = c["x"].reshape(-1, c["x"].shape[-1])
        if rows is not None:
            x = x[rows]
        return value_transform(self)(x) if c.get("counts") else x

    @one_blas_thread
    def _score(self, si: SpectrumImage, progress: ProgressCallback | None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        c = self._context(si, progress)
        t = self._tensors()
        d = self.mean_.size
        q = self.n_components_
        s2 = float(self.noise_variance_)
        dev2 = (c["p"] - c["m"]) ** 2
        code = (dev2 / c["v"]).sum(-1)
        nll = 0.5 * (code + c["r2"] / s2 + np.log(c["v"]).sum(-1) + (d - q) * math.log(s2)
                     + d * _LOG2PI)
        pca_nll = 0.5 * ((c["p"] ** 2 / self.explained_variance_).sum(-1) + c["r2"] / s2
                         + t.logdet + d * _LOG2PI)
        lam = self.explained_variance_
        latent = (c["p"] * (np.sqrt(np.maximum(lam - s2, 0.0)) / lam)).astype(np.float32)
        score = nll if self.score_kind == "nll" else dev2.sum(-1) + c["r2"]
        maps = {"reconstruction_error": c["r2"], "code_deviation": code, "pca_nll": pca_nll}
        pool = pooling_from(self.pooling)
        if pool.enabled:
            pm = self._pooled_context(c, pool)
            maps.update(context_nll=nll, neighbourhood_nll=pm["nb_nll"], scale=pm["scale"])
            score = pm["score"]
        return score, latent, maps

    def _gaussian(self, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``dev`` and diagonal ``var`` (ny, nx, D) of the neighbourhood's prediction."""
        pred = self._prediction(c["m"], c.get("c"))
        x = self._x(c).reshape(c["x"].shape)
        return {"dev": x - pred, "var": self._pred_variance(c["v"]), "pred": pred}

    def _pooled_context(self, c: dict[str, np.ndarray], pool: Any, **kw: Any
                        ) -> dict[str, np.ndarray]:
        """The shared pooling stage (:func:`eelsanom.pooling.pool_image`) on the context Gaussian.

        Each tile's deviations ``x - (mu + U m)`` are computed when the tile is read
        (float64, handed to the pooling in float32 as PCA's are), and a predictive
        variance shared by every pixel (learnt or noise-level code variances) is handed
        over once, so the pooling pools 2-D variance maps (:func:`~.pooling.pool_region`).
        ``kw``: passed to :func:`~.pooling.pool_image` (``region``, ``want_channels``).
        """
        return self._pool_codes(c, c["m"], pool, v=c["v"],
                                excess=getattr(self, "pool_excess_", None), **kw)

    def _pool_codes(self, c: dict[str, np.ndarray], codes: np.ndarray, pool: Any, *,
                    v: np.ndarray | None = None, penalty: np.ndarray | None = None,
                    excess: tuple[float, float] | None,
                    variant: tuple[np.ndarray, np.ndarray, tuple[float, float] | None]
                    | None = None, **kw: Any) -> dict[str, np.ndarray]:
        """Pool the Gaussian whose mean is :meth:`_prediction` of ``codes`` (ny, nx, q) (and
        the pixel's fitted scale ``c["c"]``), on the context's transformed data ``c["x"]``.

        ``v`` (ny, nx, q): code variances, the diagonal predictive variance
        :meth:`_pred_variance` (one shared by every pixel is handed over once); ``None``:
        the noise variance in every channel (PPCA's decoder). ``penalty`` (ny, nx): a
        per-pixel code penalty (PPCA's posterior KL). The data are read from ``c`` (not
        read and transformed again). ``variant = (codes2, v2, excess2)``: a second
        Gaussian, the prediction of ``codes2`` with the code variances ``v2`` (one
        predictive variance shared by every pixel), scored in the same pass
        (:class:`~eelsanom.pooling.Variant`: the two deviations differ by ``U (codes -
        codes2)``); its maps are returned under ``"variant"``.
        """
        import torch

        from ..pooling import CHUNKED_TILE_PIXELS, Variant, pool_image

        x = c["x"]  # counts when c["counts"]: transformed as read
        tf = value_transform(self) if c.get("counts") else None
        ny, nx, d = x.shape
        q = codes.shape[-1]
        s2 = float(self.noise_variance_)
        shared = (np.full(d, s2) if v is None else self._shared_variance(v))
        sig_all = (None if shared is None
                   else torch.as_tensor(np.sqrt(shared), dtype=torch.float32))
        step = max(1, POOL_ROW_VALUES // max(1, d))
        cc = c.get("c")
        var_sig = basis = None
        if variant is not None:
            if sig_all is None or variant[1] is None:
                raise ValueError("_pool_codes: a variant needs variances shared by every pixel")
            var_sig = torch.as_tensor(np.sqrt(variant[1]), dtype=torch.float32)
            basis = torch.as_tensor(self.components_, dtype=torch.float32)
        scaled = bool(self._fixed_dims) and cc is not None
        runs = DeviationRuns(self.mean_, self.components_,
                             self.scale_direction_ if scaled else None,
                             None if sig_all is None else sig_all.double().numpy(),
                             None if var_sig is None else var_sig.double().numpy(),
                             run_values=POOL_ROW_VALUES)

        def gauss(rows: slice, cols: slice):
            xt, mt = x[rows, cols], codes[rows, cols]
            h, w = xt.shape[:2]
            delta = None
            if variant is not None:
                delta = (mt - variant[0][rows, cols]).reshape(h * w, q)
            sc = None if cc is None else cc[rows, cols].reshape(h * w)
            if sig_all is not None:
                # own NLLs by runs; the float32 deviations built again chunk of channels by
                # chunk as the pooling reads them (no tile-sized array)
                target, own = runs.chunked(xt, mt.reshape(h * w, q), sc, delta, transform=tf)
            else:  # channel-last float32 deviations (as the pooling works), by runs
                dev, own = runs(xt, mt.reshape(h * w, q), sc, delta, transform=tf)
                target = torch.from_numpy(dev).T.reshape(d, h, w)
            mean = torch.zeros((1, 1, 1), dtype=torch.float32).expand(d, h, w)
            if sig_all is not None:
                sig = sig_all[:, None, None].expand(d, h, w)
            else:
                vt = v[rows, cols].reshape(h * w, q)
                sg = np.empty((h * w, d), np.float32)
                for i in range(0, h * w, step):
                    sg[i:i + step] = np.sqrt(self._pred_variance(vt[i:i + step]))
                sig = torch.from_numpy(sg).T.reshape(d, h, w)
            pen = (None if penalty is None
                   else torch.from_numpy(np.ascontiguousarray(penalty[rows, cols],
                                                              dtype=np.float64)))
            own_t = None if own is None else [torch.from_numpy(o.reshape(h, w)) for o in own]
            var = None
            if variant is not None:
                var = Variant(basis=basis, sigma=var_sig, excess=variant[2], own=own_t[1],
                              delta=torch.from_numpy(delta.astype(np.float32).reshape(h, w, q)
                                                     ).permute(2, 0, 1))
            return target, mean, sig, pen, {"own": None if own_t is None else own_t[0],
                                            "variant": var}

        return pool_image(gauss, ny, nx, pooling=pool, noise2=s2, excess=excess,
                          n_energy=d, tile_pixels=None if sig_all is None
                          else CHUNKED_TILE_PIXELS, **kw)

    def gaussian_terms(self, si: Any) -> dict[str, np.ndarray]:
        """Deviation from the neighbourhood's prediction and its variance, per channel.

        The per-pixel Gaussian that a neighbourhood evidence-pooling stage takes:
        ``dev = x - (mu + U m)`` and the diagonal of the predictive covariance
        ``var = sigma^2 + sum_i U_ki^2 (v_i - sigma^2)``, both in transformed units.

        Parameters
        ----------
        si : SpectrumImage, HyperSpy EELS signal, or ndarray of shape (ny, nx, n_energy)
            Data containing the model's energy window.

        Returns
        -------
        dict
            ``dev`` and ``var`` (ny, nx, D) float64, and ``penalty`` (ny, nx), the
            code term (zero: the neighbourhood's code is not penalised).

        Raises
        ------
        NotFittedError, InputError, EnergyAxisMismatch
            As :meth:`window`.
        """
        siw = self.window(si)
        g = self._gaussian(self._context(siw))
        return {"dev": g["dev"], "var": g["var"], "penalty": np.zeros(siw.nav_shape)}

    # ------------------------------------------------------------------ persistence
    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = super()._get_arrays()
        if getattr(self, "code_var_", None) is not None:
            arrays.update(code_var=np.asarray(self.code_var_, np.float64),
                          code_local=np.asarray(self.code_local_, np.uint8))
        return arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(state, arrays)
        self.code_var_ = self.code_local_ = None
        if "code_var" in arrays:
            self.code_var_ = np.asarray(arrays["code_var"], np.float64)
            self.code_local_ = np.asarray(arrays["code_local"], bool)

    # ------------------------------------------------------------------ reconstruction
    def _reconstruct(self, si: SpectrumImage) -> tuple[np.ndarray, np.ndarray]:
        """The neighbourhood's prediction, mean and sigma in counts, (ny, nx, D)."""
        g = self._gaussian(self._context(si))
        my, sig_y = g["pred"], np.sqrt(g["var"])
        return (np.asarray(inverse_transform(my, self.transform, self.gain_), np.float32),
                np.asarray(transform_sigma(my, sig_y, self.transform, self.gain_), np.float32))

    def _pixel(self, si: SpectrumImage, iy: int, ix: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, sigma (counts) of the neighbourhood's prediction and per-channel NLL.

        Computed on the ``neighbourhood``-sized context around the pixel. ``channel_nll``
        uses the diagonal of the predictive covariance (it sums to about, not
        exactly, the pixel's score).
        """
        ny, nx = si.nav_shape
        h = self.score_context
        if h <= iy < ny - h and h <= ix < nx - h:  # the whole context inside the image
            sub = replace(si, data=np.asarray(si.data[iy - h:iy + h + 1, ix - h:ix + h + 1],
                                              np.float32), ground_truth=None, y=None, x=None)
            return BaseDetector._pixel(self, sub, h, h)
        # near the border: reflect as the whole-image filters do by scoring the whole image
        return BaseDetector._pixel(self, si, iy, ix)
