"""Bulk + context PCA: the larger of two calibrated pieces of evidence.

A pixel is anomalous when its spectrum is unlike the bulk's (the per-pixel PPCA
evidence, pooled: what a region larger than any neighbourhood, a particle or a
grain, still shows), or when it is unlike its neighbourhood by more than the
bulk's own neighbourhoods vary (the context evidence: what a shift smaller than
a smooth drift shows). Each score is put on the scale of the bulk's own scores
(how far above the training pixels' median, in units of their spread), so
neither floods the map where the other is quiet, and the score is the larger.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from ..pooling import DEFAULT_SIGMA, pooling_from
from ..progress import ProgressCallback
from ..spectrum import SpectrumImage
from . import _schemas
from ._gaussian import one_blas_thread
from ._ppca_rows import posterior_kl
from .context_pca import SPILL_PIXELS, ContextPCADetector

__all__ = ["BulkContextDetector"]

_LOG2PI = math.log(2.0 * math.pi)
#: upper quantile of the training pixels' scores that sets each evidence's scale (with a
#: bulk region); without one, the MAD (the training pixels hold the anomalies too)
CAL_QUANTILE = 0.99
#: side (pixels) of the square whose median, where positive, is taken off the local evidence:
#: its smooth part (a residual off the bulk subspace that grows across the scan where the
#: region does not span a drift) is no evidence that a pixel differs from its surroundings
BACKGROUND_WINDOW = 31


def _scale_stats(s: np.ndarray, tail: bool) -> tuple[float, float]:
    """``(location, scale)`` of scores ``s``: the median and a Gaussian-equivalent spread.

    ``tail``: the spread from the upper quantile (``CAL_QUANTILE``, lowered to leave
    at least 10 pixels above it), so the two evidences' bulk tails, where false
    positives come from, line up; else ``1.4826 MAD`` (robust to anomalies among the
    pixels).
    """
    from scipy.stats import norm

    s = np.asarray(s, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return 0.0, 1.0
    med = float(np.median(s))
    mad = 1.4826 * float(np.median(np.abs(s - med)))
    if tail and s.size >= 20:
        q = min(CAL_QUANTILE, 1.0 - 10.0 / s.size)
        sc = (float(np.quantile(s, q)) - med) / float(norm.ppf(q))
        sc = max(sc, mad)
    else:
        sc = mad
    return med, max(sc, 1e-9)


def _high_pass(z: np.ndarray) -> np.ndarray:
    """``z`` less its smooth part where positive: the median over :data:`BACKGROUND_WINDOW`
    pixels along x, then along y (a separable median: robust like the square's, at
    ``2 w`` instead of ``w^2`` comparisons per pixel)."""
    from scipy.ndimage import median_filter

    w = BACKGROUND_WINDOW
    bg = median_filter(median_filter(z, size=(1, w), mode="reflect"), size=(w, 1), mode="reflect")
    return z - np.maximum(bg, 0.0)


class BulkContextDetector(ContextPCADetector):
    """Larger of the bulk (per-pixel PPCA) and the context evidence, each calibrated on the bulk.

    The model
        The bulk PPCA is fitted exactly as by :class:`~.pca.PCADetector` (bulk
        mask, or robust training without one). The context model is
        :class:`~.context_pca.ContextPCADetector` with ``code_variance="bulk"``:
        each code ``p_i`` is predicted by its neighbourhood's median ``m_i`` with a
        variance ``v_i`` **learnt on the training pixels** (how well neighbourhoods
        predict that code there), and a code no better predicted by its
        neighbourhood than by the bulk's spread (``v_i >= lambda_i``: per-pixel
        scale, a thickness rougher than the window, which the pixel's own
        spectrum determines) is scored against the bulk instead.

    Score
        Two maps: ``global`` the PPCA score (pooled as by PCA when ``pooling >
        0``: the larger of the pixel's own and its neighbourhood statistic's
        negative ELBO) and ``local`` the context Gaussian NLL (pooled the same
        way). At fit each is calibrated on the training pixels: ``z = (s -
        median) / spread`` (the spread from their 99 % quantile with a bulk
        region, so the tails agree; from the MAD without one), stored per
        pooling setting (the fitted one and unpooled). Where the fitted
        image's own scores (median, MAD over all its pixels) lie higher or
        spread wider than the bulk's, those are used, so an evidence that is
        high all over the image weighs less. The score is ``max(z_global,
        z_local)``: in units of the bulk's spread, 0 for a typical bulk pixel.
        The local evidence is first taken relative to its own smooth part (less
        its separable median over :data:`BACKGROUND_WINDOW` pixels where that is
        positive):
        a smooth rise of the context NLL across the scan (a residual off the bulk
        subspace where the region does not span a drift) is not local evidence.
        The global evidence is not: a region unlike the bulk is flagged
        whatever its size, so where the bulk region does not span a nuisance the
        pixels beyond it are flagged (as by pooled PCA): draw the bulk region
        across the scan.
        The fit computes both maps of the image it is fitted on (for these
        statistics) and keeps those of the fitted pooling: scoring that same
        image again (the same data, by a hash, and the same parameters) takes
        them (and the context's codes) instead of pooling again.
        ``maps``: ``global_z``, ``local_z``, ``pca_score``, ``context_score``,
        ``reconstruction_error``, ``code_deviation``.

    Parameters
    ----------
    neighbourhood : int
        Odd side of the neighbourhood square (default 9).
    pooling : float
        Evidence pooling sigma in pixels (default 0.8; 0: each pixel alone).
    n_components, max_components, energy_range, threshold, transform,
    robust_fraction, robust_iter, validation_fraction, device, seed, gain, scale
        As :class:`~.pca.PCADetector`.

    extend_bulk : {"smooth", "off"}
        With a bulk region, ``"smooth"`` (default) first fits on it, then refits on
        the region plus the large parts of the image that the bulk model does not
        explain but that join the region without crossing an edge
        (:func:`~._bulk_growth.grow_bulk`): a drift, thickness or valence gradient
        that grows beyond the values inside the drawn region is learnt as bulk
        instead of flagged at the far end of the scan, while a particle, a cluster
        or a line (bounded by an edge) is not. ``extended_pixels_`` says how many
        pixels were added. ``"off"``: the region as drawn.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsanom.spectrum import Axis, SpectrumImage
    >>> rng = np.random.default_rng(0)
    >>> data = rng.poisson(50.0, size=(12, 12, 40)).astype("float32")
    >>> si = SpectrumImage(data, Axis(40, 0.3, 680.0, "eV"))
    >>> det = BulkContextDetector(n_components=2, neighbourhood=5, device="cpu").fit(si)
    >>> res = det.score(si)
    >>> res.nll.shape, "global_z" in res.maps
    ((12, 12), True)
    """

    method = "bulk-context"

    def __init__(self, *, neighbourhood: int = 9, n_components: int | None = None,
                 max_components: int = 20, energy_range: tuple[float, float] | None = None,
                 threshold: Any = "robust", transform: str = "anscombe",
                 robust_fraction: float | str = "auto", robust_iter: int = 5,
                 validation_fraction: float = 0.2, pooling: float = 0.8, device: str = "auto",
                 seed: int = 0, gain: float | str = "auto", scale: str = "free",
                 extend_bulk: str = "smooth") -> None:
        super().__init__(neighbourhood=neighbourhood, n_components=n_components,
                         score_kind="nll", max_components=max_components,
                         energy_range=energy_range, threshold=threshold, transform=transform,
                         robust_fraction=robust_fraction, robust_iter=robust_iter,
                         validation_fraction=validation_fraction, pooling=pooling,
                         device=device, seed=seed, gain=gain, code_variance="bulk",
                         scale=scale)
        self.extend_bulk = extend_bulk

    validate_model_file = _schemas.validator(_schemas.bulk_context)  # the model-file schema

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.code_variance != "bulk" or self.score_kind != "nll":
            raise InputError("bulk-context: the code variance is learnt on the bulk and the "
                             "score is an NLL; use method 'context-pca' for other settings.")
        if self.extend_bulk not in ("smooth", "off"):
            raise InputError(f"bulk-context: extend_bulk expected 'smooth' (extend the bulk "
                             f"region along smooth paths) or 'off', got {self.extend_bulk!r}.")

    @property
    def score_context(self) -> int:  # type: ignore[override]
        """Pixels on each side a pixel's score depends on: the context model's (neighbourhood
        and pooling) plus half the local evidence's background window."""
        return super().score_context + BACKGROUND_WINDOW // 2

    # ------------------------------------------------------------------ fit
    @one_blas_thread
    def _fit(self, si: SpectrumImage, mask: np.ndarray | None,
             progress: ProgressCallback | None) -> None:
        self.extended_pixels_ = 0
        super()._fit(si, mask, progress)
        if mask is not None and self.extend_bulk == "smooth":
            grown = self._grown_region(mask)
            if grown is not None:  # refit on the region and the parts smoothly joined to it
                self.extended_pixels_ = int(grown.sum() - np.asarray(mask, bool).sum())
                super()._fit(si, grown, progress)

    def _grown_region(self, mask: np.ndarray) -> np.ndarray | None:
        """``extend_bulk="smooth"``: the bulk region plus the parts of the image the fitted
        model does not explain but that join it smoothly (:func:`._bulk_growth.grow_bulk`),
        from the fit's own maps of the fitted pooling; None when no part qualifies."""
        from ._bulk_growth import grow_bulk

        g, loc = self._fitted_maps[1]  # the fit always keeps its fitted pooling's maps
        zg, zl = self._z(g, loc, pooling_from(self.pooling))
        grown, info = grow_bulk(zg, zl, np.asarray(mask, bool))
        return grown if info["added"] > 0 else None

    def _fit_context(self, si: SpectrumImage, mask: np.ndarray | None) -> dict[str, np.ndarray]:
        c = super()._fit_context(si, mask)
        sel = (np.asarray(mask, bool) if mask is not None
               else np.ones(si.nav_shape, bool))
        self.global_excess_ = self._excess_global(c, sel)
        tail = mask is not None
        sigmas = {0.0}
        fitted = pooling_from(self.pooling)
        sigmas.add(float(fitted.sigma) if fitted.enabled else DEFAULT_SIGMA)
        self.calibration_stats_ = {}
        self._fitted_maps = None
        for sigma in sorted(sigmas):
            pool = pooling_from(sigma)
            maps = self._evidence(si, c, pool)
            stats: list[float] = []
            for a in maps:
                bm, bs = _scale_stats(a[sel], tail)
                im, isc = _scale_stats(a, False)
                stats += [max(bm, im), max(bs, isc)]
            self.calibration_stats_[f"{sigma:g}"] = tuple(stats)
            if pool == fitted or (not pool.enabled and not fitted.enabled):
                # what a score of this same image computes again (exactly): the maps and
                # the context's small arrays
                self._fitted_maps = (self._maps_key(si, pool), maps,
                                     {k: c[k] for k in ("p", "m", "v", "r2")})
        return c

    def _maps_key(self, si: SpectrumImage, pool: Any) -> tuple[str, str]:
        """What the maps of an image depend on beyond the fitted model: its data (a hash of
        the counts on the model's window), the parameters and the pooling."""
        import zlib

        from ._gaussian import read_block

        # a CRC-32 of the counts (a changed value changes it but for a 2^-32 chance; four
        # times faster than a cryptographic hash, which guards against no adversary here)
        x = np.ascontiguousarray(read_block(si, slice(None), slice(None)))
        crc = zlib.crc32(memoryview(x).cast("B"))
        return f"{crc:08x} {x.shape}", repr((sorted(self.get_params().items()), pool))

    def _excess_global(self, c: dict[str, np.ndarray], sel: np.ndarray) -> tuple[float, float]:
        """PCA's spill-guard statistics (the context model's are ``pool_excess_``), on at most
        :data:`~.context_pca.SPILL_PIXELS` seeded training pixels ``sel``, from the context's
        transformed data ``c["x"]``."""
        idx = np.flatnonzero(sel.ravel())
        if idx.size > SPILL_PIXELS:
            idx = idx[np.random.default_rng(self.seed).choice(idx.size, SPILL_PIXELS,
                                                              replace=False)]
        return self._excess(self._x(c, idx))

    # ------------------------------------------------------------------ scoring
    def _evidence(self, si: SpectrumImage, c: dict[str, np.ndarray], pool: Any
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(global, local)`` score maps (ny, nx) under pooling ``pool``."""
        d = self.mean_.size
        q = self.n_components_
        s2 = float(self.noise_variance_)
        if not pool.enabled:
            lam = self.explained_variance_
            logdet = float(np.sum(np.log(lam)) + (d - q) * math.log(s2))
            g = 0.5 * ((c["p"] ** 2 / lam).sum(-1) + c["r2"] / s2 + logdet + d * _LOG2PI)
            loc = 0.5 * (((c["p"] - c["m"]) ** 2 / c["v"]).sum(-1) + c["r2"] / s2
                         + np.log(c["v"]).sum(-1) + (d - q) * math.log(s2) + d * _LOG2PI)
            return g, loc
        shared = self._shared_variance(c["v"])
        if shared is None:  # code variances that differ between pixels: one pass each
            return (self._pooled_global(c, pool)["score"],
                    self._pooled_context(c, pool)["score"])
        res = self._pooled_global(c, pool, with_local=True)
        return res["score"], res["variant"]["score"]

    def _pooled_global(self, c: dict[str, np.ndarray], pool: Any, with_local: bool = False
                       ) -> dict[str, np.ndarray]:
        """PCA's pooled score (:meth:`~.pca.PCADetector._gauss_rows`: the decoder's mean
        ``mu + U (shrink p)`` (plus the pixel's scale), noise ``sigma^2`` in every channel,
        the posterior's KL as penalty) from the context's codes and transformed data, so
        the cube is read and transformed once for both evidences. ``with_local``: the
        context Gaussian (:meth:`_pooled_context`; its variance shared by every pixel)
        pooled in the same pass, under ``"variant"``: the two means differ only in the
        codes, so the channel-by-channel neighbourhood sums are done once."""
        lam = np.asarray(self.explained_variance_, np.float64)
        s2 = float(self.noise_variance_)
        p = c["p"]
        kl = posterior_kl(p, lam, s2)
        variant = None
        if with_local:
            variant = (c["m"], self._shared_variance(c["v"]),
                       getattr(self, "pool_excess_", None))
        return self._pool_codes(c, p * ((lam - s2) / lam), pool, penalty=kl,
                                excess=self.global_excess_, variant=variant)

    def _stats(self, pool: Any) -> tuple[float, float, float, float]:
        key = f"{float(pool.sigma) if pool.enabled else 0.0:g}"
        stats = self.calibration_stats_
        if key not in stats:  # a pooling set after the fit: the nearest calibrated one
            key = min(stats, key=lambda k: abs(float(k) - float(pool.sigma)))
        return tuple(stats[key])  # type: ignore[return-value]

    def _z(self, g: np.ndarray, loc: np.ndarray, pool: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(global_z, local_z)``: the raw maps under ``pool`` in units of the bulk's spread,
        the local one less its smooth part."""
        gm, gs, lm, ls = self._stats(pool)
        return (g - gm) / gs, _high_pass((loc - lm) / ls)

    @one_blas_thread
    def _score(self, si: SpectrumImage, progress: ProgressCallback | None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        pool = pooling_from(self.pooling)
        fitted = getattr(self, "_fitted_maps", None)
        if fitted is not None and fitted[0] == self._maps_key(si, pool):
            # the image the model was fitted on: the fit computed these already
            g, loc = (a.copy() for a in fitted[1])
            c = {k: a.copy() for k, a in fitted[2].items()}
        else:
            c = self._context(si, progress)
            g, loc = self._evidence(si, c, pool)
        zg, zl = self._z(g, loc, pool)
        score = np.maximum(zg, zl)
        s2 = float(self.noise_variance_)
        lam = self.explained_variance_
        latent = (c["p"] * (np.sqrt(np.maximum(lam - s2, 0.0)) / lam)).astype(np.float32)
        maps = {"global_z": zg, "local_z": zl, "pca_score": g, "context_score": loc,
                "reconstruction_error": c["r2"],
                "code_deviation": ((c["p"] - c["m"]) ** 2 / c["v"]).sum(-1)}
        return score, latent, maps

    def _pixel(self, si: SpectrumImage, iy: int, ix: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The context model's prediction and per-channel NLL (the local evidence)."""
        return super()._pixel(si, iy, ix)

    # ------------------------------------------------------------------ persistence
    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state.update(global_excess=[float(v) for v in self.global_excess_],
                     extended_pixels=int(getattr(self, "extended_pixels_", 0)),
                     calibration_stats={k: [float(x) for x in v]
                                        for k, v in self.calibration_stats_.items()})
        return state

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(state, arrays)
        self.global_excess_ = tuple(float(v) for v in state["global_excess"])
        self.extended_pixels_ = int(state.get("extended_pixels", 0))
        self.calibration_stats_ = {k: tuple(float(x) for x in v)
                                   for k, v in state["calibration_stats"].items()}
