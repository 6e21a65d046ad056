"""Probabilistic PCA detector: per-pixel PPCA negative log-likelihood.

The bulk spectra (Anscombe-transformed counts, so the noise is close to
isotropic with unit variance) are modelled by probabilistic PCA (Tipping &
Bishop, 1999)::

    x = W z + mu + eps,   z ~ N(0, I_q),   eps ~ N(0, sigma^2 I_D)
    =>  x ~ N(mu, C),     C = W W^T + sigma^2 I_D

fitted by maximum likelihood (closed form from the eigendecomposition of the
training covariance). A pixel's score is its NLL under that Gaussian; higher =
more anomalous.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np

from .. import cautions
from ..errors import InputError
from ..pooling import pooling_from
from ..preprocess import check_gain, forward_transform, inverse_transform, transform_sigma
from ..progress import ProgressCallback, emit
from ..spectrum import SpectrumImage
from . import _schemas
from ._gaussian import (
    BLOCK_VALUES,
    Gram,
    PooledGaussian,
    Sketch,
    Spectrum,
    _fix_signs,
    auto_cutoff,
    check_choice,
    check_common,
    check_int,
    gather_training,
    iter_row_blocks,
    numpy_gram,
    one_blas_thread,
    robust_rule,
    sample_pixels,
    tail_scale,
    top_eigh,
    training_gain,
    training_where,
    trim_outlyingness,
    trimmed_fit,
)
from ._ppca_rows import (
    SCALES,
    _project_rows,
    _resolve_device,
    _Tensors,
    pooled_ppca,
    scale_direction,
)
from .base import BaseDetector

log = logging.getLogger(__name__)

__all__ = ["PCADetector", "scale_direction"]

_LOG2PI = math.log(2.0 * math.pi)
SCORE_KINDS = ("nll", "reconstruction")


class PCADetector(PooledGaussian, BaseDetector):
    """Probabilistic-PCA anomaly detector (bulk-trained, per-pixel NLL; higher = more anomalous).

    The model and its fit
        PPCA (Tipping & Bishop) on the transformed training spectra ``x`` (length
        ``D``): ``x ~ N(mu, C)``, ``C = W W^T + sigma^2 I``. The maximum-likelihood
        fit is closed-form: with the training covariance's eigenpairs
        ``(lambda_i, u_i)`` (descending), ``sigma^2`` is the mean of the ``D - q``
        discarded eigenvalues and ``W = U_q (Lambda_q - sigma^2 I)^{1/2}``. The
        decomposition runs on the smaller side of the data: with fewer training
        pixels ``n`` than channels ``D``, the ``n x n`` pixel Gram matrix (cost
        ``O(n^2 D)``, no ``D x D`` matrix formed); otherwise the ``D x D``
        covariance (float64 BLAS on the CPU, torch float32 on a GPU), of which
        only the leading eigenvectors are computed (float64; on the GPU when the
        device has one). Both are exact (LAPACK). When both sides are large
        (at least ``randomized_min_side = 512`` pixels and channels) a
        randomized solver replaces them (:class:`~._gaussian.Sketch`: subspace
        iteration on the centred data, cost ``O(n D q)``; the held-out pixels
        that choose ``q`` are left out of its range, the final fit is refined
        on the kept pixels themselves); on a 192 x 192 x 1334 simulation it
        chooses the same ``q`` and scores with the same AP as the exact fit.

    Large images: a subsample
        At most ``max_fit_pixels = 4096`` training pixels (or twice the number of
        channels, if more) enter the fit (and the ``gain="auto"`` estimate):
        from a larger bulk (or image, without a mask)
        a random subsample is drawn, seeded by ``seed`` (same seed, same
        pixels, same model). The covariance of the channels and the noise
        variance are well estimated from a few thousand spectra; every pixel is
        still scored. The fitted ``n_bulk_`` (training pixels available),
        ``n_sampled_`` (pixels drawn), ``n_train_`` (kept after trimming),
        ``n_trimmed_`` and ``solver_`` ("exact" or "randomized") say what the fit
        used (saved with the model). On the 192 x 192 x 1334 bfo simulation
        (1 % anomalies, no mask) the subsample's AP is 0.699 against 0.708 with
        all 36864 pixels (a weak second component is no longer chosen), for a
        fit about 10x faster.

    Score
        ``score_kind="nll"``: the PPCA negative log-likelihood per pixel, in
        transformed units (no Jacobian back to counts)::

            NLL = 0.5 * [ (x-mu)^T C^-1 (x-mu) + log|C| + D log(2 pi) ]

        evaluated through the Woodbury identity in the eigenbasis,
        ``(x-mu)^T C^-1 (x-mu) = sum_i p_i^2 / lambda_i + ||r||^2 / sigma^2`` with
        ``p = U_q^T (x-mu)`` and the residual ``r = (x-mu) - U_q p``, and
        ``log|C| = sum_i log lambda_i + (D-q) log sigma^2``; no ``D x D`` matrix is
        formed or inverted when scoring, and pixels are streamed in blocks so
        memory stays bounded. ``score_kind="reconstruction"``: ``||r||^2``, the
        plain PCA reconstruction error. Either way ``maps["reconstruction_error"]``
        holds ``||r||^2`` (transformed units).

    Number of components
        ``n_components=None`` chooses ``q`` by **held-out PPCA log-likelihood**:
        the training pixels are split at random (``validation_fraction``, seeded by
        ``seed``), PPCA is fitted on the larger part for every
        ``q = 1 .. min(max_components, n_fit - 2, D - 1)`` (one eigendecomposition
        serves all ``q``) and the ``q`` with the highest mean log-likelihood of the
        held-out pixels wins; the final model is refitted on all training pixels.
        The choice and the held-out curve are in ``selection_``.

    Training without a mask (robust)
        ``train_mask=None`` trains on all pixels by trimmed likelihood (C-steps, as
        in MCD): fit on all pixels, rank them by outlyingness, refit on all but the
        most outlying (``robust_fraction``: by default every pixel beyond a cut
        chosen from the score's null distribution, so the trimmed fraction
        follows the data), and repeat until the kept set no longer
        changes, at most ``robust_iter`` times (``q`` is re-chosen at each refit,
        by the held-out log-likelihood trimmed by the same fraction). Outlyingness
        (:func:`~._gaussian.outlyingness`) is the largest robust z-score (median,
        MAD) over the principal coordinates and the residual norm: a rare anomaly
        class that captured a component of its own inflates that component's
        variance, which hides it from the plain NLL, but hardly its MAD. A pixel is
        also scored by its neighbourhood (:func:`~._gaussian.spatial_outlyingness`:
        the same z-scores averaged over a Gaussian of about a pixel, standardised
        again, the larger of the two counts, the cut set for twice the tests):
        the pixels of a particle covering 20 % of the image, each only 2-3 sigma
        out at a modest dose, are trimmed whole instead of a quarter of them
        staying in the fit (general suite, particles 20 % / 0.6 eV without a
        region: pooled PCA AP 0.60 before, 0.91 with it; 0.92 trained on the true
        normal pixels), while a smooth nuisance is not amplified. A pixel's
        outlyingness is the largest it had under any fit so far (otherwise the loop
        can cycle between a fit that contains an anomaly class, which singles it
        out, and a clean one, which does not), and the intermediate fits are those
        of the ``q``-selection split (one eigendecomposition each). Finally
        each ``lambda_i`` is replaced by a robust variance of the kept pixels'
        coordinates (90 %-quantile scale, clipped to ``[sigma^2, lambda_i]``), so
        that anomalies left in the kept set do not widen the model along their
        direction (so the robust model is PPCA-shaped but not exactly the PPCA
        maximum-likelihood fit). With a mask the masked pixels are used as given:
        no trimming, classical estimates.

    Per-pixel scale
        ``scale="free"`` (default): each pixel's overall intensity (beam current, to first
        order its thickness) is a free parameter of its own, fitted on the pixel
        and not scored: the model is ``x = mu + s t + W z + eps`` with ``t`` the
        direction along which scaling the counts moves the transformed spectrum
        (:func:`scale_direction`, at the training mean). Minimising the NLL over
        ``s`` is the same as removing the component of ``x - mu`` along ``t``
        (the training spectra are projected the same way before the fit, so the
        components are orthogonal to ``t``): the residual loses one dimension,
        ``sigma^2`` is the mean of ``D - q - 1`` eigenvalues. A shift, an
        L3/L2 change or a new edge is not a scale and is still scored; a
        change of intensity alone is not. ``scale="sum"`` (the classical
        reference): each pixel's counts are first scaled to the training
        pixels' median total over the window (unit-sum normalisation, as
        before a scikit-learn PCA), then the same model; the noise model then no
        longer holds exactly (a dim pixel's noise is amplified).
        ``scale="fixed"``: no per-pixel scale (intensity is a bulk direction
        like any other; the rule before the option). Measured on the quick
        suites (seed 0, bulk + context PCA pooled, AP fixed -> free): realistic
        thickness / 0.6 eV 0.641 -> 0.948, drift + thickness + gain / 0.6 eV
        0.337 -> 0.729, valence / 0.3 eV 0.133 -> 0.355, and on the anomaly-free
        drift + thickness + gain image 2.5 % -> 0.1 % of the pixels flagged;
        context PCA's false positives under a rough thickness or beam current
        (general suite) 6-12 % -> under 1 %. The price: a shift has a small
        component along the scale (it moves counts across the window's edge),
        which is no longer scored: paper suite 0.3 eV 0.679 -> 0.673 (seeds 1, 2:
        -0.015, -0.026), realistic drift / isolated pixels 0.320 -> 0.274,
        general suite rough thickness and interface line -0.01 to -0.03. The
        classical reference ``"sum"`` is worse than either nearly everywhere
        (realistic thickness / 0.6 eV pooled PCA 0.086 with 6.8 % flagged).

    Latent, reconstruction
        ``latent`` is the posterior mean ``E[z | x] = M^-1 W^T (x - mu)``,
        ``M = W^T W + sigma^2 I``, shape ``(ny, nx, q)``. The reconstruction is the
        posterior mean of the noise-free spectrum ``W E[z | x] + mu`` mapped back to
        counts (inverse Anscombe); sigma is the predictive standard deviation of a
        new observation of that pixel (noise plus posterior uncertainty of ``W z``),
        mapped to counts by the delta method.

    Parameters
    ----------
    n_components : int, optional
        Number of principal components ``q``; ``None`` chooses it (see above).
    score_kind : {"nll", "reconstruction"}
    max_components : int
        Largest ``q`` the automatic choice considers (default 20).
    energy_range : (float, float), optional
        Energy window in eV to model; ``None`` uses the whole axis.
    threshold : str or float
        Threshold spec (see :func:`eelsanom.scoring.parse_threshold`).
    transform : {"anscombe", "none"}
        Variance-stabilising transform of the counts before the model.
    robust_fraction : "auto" or float
        Pixels dropped at each trimmed refit when there is no mask. ``"auto"``
        (default): every pixel whose outlyingness exceeds the cut a clean pixel
        passes with 1 % chance (:func:`~._gaussian.auto_cutoff`), at least 5 % and
        at most 45 % of them, chosen again at each refit, so an anomaly class
        covering 10-20 % of the image is trimmed whole; a number: that fixed
        fraction (the rule before "auto", which left all but 5 % of a 15 %
        anomaly class in the fit: ROC-AUC 0.59-0.67 instead of 0.98).
    robust_iter : int
        Most trimmed refits (0: plain fit on all pixels); stops early once the kept
        pixels no longer change.
    validation_fraction : float
        Fraction of training pixels held out to choose ``q``.
    pooling : float
        Neighbourhood evidence pooling (:mod:`eelsanom.pooling`, the stage the
        3D-CVAE uses): the Gaussian sigma in pixels (0, the default, scores each
        pixel by its PPCA NLL). With pooling the score is the PPCA posterior's
        negative ELBO (reconstruction ``W <z>`` with noise ``sigma^2``, plus the
        code's KL; ``maps["ppca_nll"]`` keeps the plain NLL), the larger of the
        pixel's own and its neighbourhood statistic's.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    seed : int
        Seeds the validation split, the subsample of a large bulk and the
        randomized solver's start.
    scale : {"fixed", "free", "sum"}
        The pixel's intensity as a free per-pixel parameter (``"free"``), the
        counts normalised to a common total first (``"sum"``), or neither
        (``"fixed"``); see "Per-pixel scale".
    gain : "auto" or float
        Data units per detected electron; the data are divided by it before the
        Anscombe transform, so that the transform sees counts. ``"auto"``
        (default) estimates it on the training pixels
        (:func:`~eelsanom.preprocess.estimate_gain`, stored as ``gain_``); 1 for
        raw counts. Without it gain-scaled data (e.g. 0.003 units per electron)
        make an intensity field a curved direction the PPCA cannot follow: on an
        Fe L2,3 image with a beam-current field, 1.0 eV shifts, dose 150, ROC-AUC
        0.63 without, 0.92 with (the same as on the raw counts). Unused with
        ``transform="none"``.

    Examples
    --------
    >>> import numpy as np
    >>> from eelsanom.spectrum import Axis, SpectrumImage
    >>> rng = np.random.default_rng(0)
    >>> data = rng.poisson(50.0, size=(8, 8, 40)).astype("float32")
    >>> si = SpectrumImage(data, Axis(40, 0.3, 680.0, "eV"))
    >>> res = PCADetector(n_components=2, device="cpu").fit(si).score(si)
    >>> res.nll.shape, res.latent.shape
    ((8, 8), (8, 8, 2))
    """

    method = "pca"
    min_train_pixels = 3

    def __init__(self, *, n_components: int | None = None, score_kind: str = "nll",
                 max_components: int = 20, energy_range: tuple[float, float] | None = None,
                 threshold: Any = "robust", transform: str = "anscombe",
                 robust_fraction: float | str = "auto", robust_iter: int = 5,
                 validation_fraction: float = 0.2, pooling: float = 0.0, device: str = "auto",
                 seed: int = 0, gain: float | str = "auto", scale: str = "free") -> None:
        self.n_components = n_components
        self.score_kind = score_kind
        self.max_components = max_components
        self.energy_range = energy_range
        self.threshold = threshold
        self.transform = transform
        self.robust_fraction = robust_fraction
        self.robust_iter = robust_iter
        self.validation_fraction = validation_fraction
        self.pooling = pooling
        self.device = device
        self.seed = seed
        self.gain = gain
        self.scale = scale

    # ------------------------------------------------------------------ params
    def _validate_params(self) -> None:
        super()._validate_params()
        check_int("n_components", self.n_components, low=1, allow_none=True)
        check_int("max_components", self.max_components, low=1)
        check_choice("score_kind", self.score_kind, SCORE_KINDS)
        check_choice("scale", self.scale, SCALES)
        check_common(self)
        check_gain(self.gain)
        pool = pooling_from(self.pooling)
        if pool.enabled and self.score_kind != "nll":
            raise InputError("pooling: expected 0 with score_kind='reconstruction' (the pooling "
                             f"stage pools likelihoods), got pooling={self.pooling!r}. Use "
                             "score_kind='nll' or pooling=0.")
        vf = self.validation_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf <= 0.5:
            raise InputError(f"validation_fraction: expected a fraction in (0, 0.5], got {vf!r}.")
        if not isinstance(self.device, str):
            raise InputError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got "
                             f"{self.device!r}.")
        _resolve_device(self.device, strict=True)

    def _on_cpu(self) -> bool:
        """Whether this detector computes on the CPU (see :func:`~._gaussian.one_blas_thread`)."""
        return _resolve_device(self.device, strict=False).type == "cpu"

    def _torch_device(self, strict: bool):
        import torch

        dev = _resolve_device(self.device, strict=strict)
        return dev, (torch.float64 if dev.type == "cpu" else torch.float32)

    # ------------------------------------------------------------------ fitting
    @staticmethod
    def _torch_gram(dev: Any, dt: Any):
        """A :class:`~._gaussian.Gram` summation running on ``dev`` in ``dt``.

        On the CPU it is :func:`~._gaussian.numpy_gram` (float64; numpy's ``X^T X``
        is a BLAS ``syrk``, half the work of torch's general product).
        """
        import torch

        if dev.type == "cpu":
            return numpy_gram

        def gram(X: np.ndarray, rows: np.ndarray, m0: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
            d = X.shape[1]
            mu = torch.as_tensor(m0, device=dev, dtype=dt)
            G = torch.zeros((d, d), device=dev, dtype=dt)
            s = torch.zeros(d, device=dev, dtype=dt)
            step = max(1, BLOCK_VALUES // d)
            for i in range(0, len(rows), step):
                xc = torch.as_tensor(X[rows[i:i + step]], device=dev).to(dt) - mu
                G += xc.T @ xc
                s += xc.sum(0)
            return G.cpu().double().numpy(), s.cpu().double().numpy()

        return gram

    #: which side of the data the covariance is decomposed on (see ``_gaussian.Gram``);
    #: the benchmark's dense reference forces ``"channel"`` (and so the exact solver on
    #: every training pixel)
    _gram_side = "auto"
    #: most training pixels a fit reads: more are subsampled (seeded; see the class docstring)
    max_fit_pixels: ClassVar[int | None] = 4096
    #: the randomized solver when both the pixels and the channels number at least this
    randomized_min_side: ClassVar[int] = 512

    @staticmethod
    def _device_eigh(dev: Any):
        """``eigh(A, k)`` for the channel side: :func:`~._gaussian.top_eigh` on the CPU, a
        float64 ``torch.linalg.eigh`` on an accelerator (same result, signs fixed alike)."""
        if dev.type == "cpu":
            return top_eigh

        def eigh(A: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            import torch

            try:
                w, v = torch.linalg.eigh(torch.as_tensor(A, device=dev, dtype=torch.float64))
            except (RuntimeError, TypeError):  # no float64 eigh on this device (MPS)
                return top_eigh(A, k)
            k = int(min(k, A.shape[0]))
            w = w.flip(0)[:k].cpu().numpy()
            v = v.flip(1)[:, :k].cpu().numpy()
            return np.clip(w, 0.0, None), _fix_signs(np.ascontiguousarray(v))

        return eigh

    @staticmethod
    def _eig(gram: Gram | Sketch, keep: np.ndarray, k: int, final: bool = False) -> Spectrum:
        """Leading ``k`` eigenpairs of the covariance of ``gram.X[keep]`` (float64, CPU).

        On the smaller side of the data (:meth:`~._gaussian.Gram.eig`): the
        ``n x n`` pixel Gram matrix when there are fewer pixels than channels,
        else the ``D x D`` covariance, and only the top ``k`` eigenvectors. With
        a :class:`~._gaussian.Sketch` (both sides large) the randomized
        decomposition, refined on the rows themselves when ``final``.
        """
        if isinstance(gram, Sketch):
            return gram.eig(keep, k, refine=final)
        return gram.eig(keep, k)

    @property
    def _fixed_dims(self) -> int:
        """Dimensions of the transformed spectrum fitted per pixel (1 with ``scale="free"``)."""
        return 0 if getattr(self, "scale_direction_", None) is None else 1

    def _ppca_params(self, eig: Spectrum, q: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(components (D, q), eigenvalues (q,), sigma^2)`` of the ML PPCA with ``q`` components.

        ``sigma^2`` is the mean of the ``D - q`` discarded eigenvalues, from the
        trace: ``(tr S - sum_{i<q} lambda_i) / (D - q)`` (``D - q - 1`` with a free
        scale: the projected-out scale direction holds no noise).
        """
        d = eig.d - self._fixed_dims
        floor = 1e-10 * max(eig.total / d, 1e-30)
        s2 = max((eig.total - float(eig.evals[:q].sum())) / (d - q), floor)
        lam = np.maximum(eig.evals[:q], s2 * (1 + 1e-12))
        return eig.evecs[:, :q].copy(), lam, s2

    def _heldout_loglik(self, eig: Spectrum, X: np.ndarray, val_rows: np.ndarray, qmax: int,
                        dev: Any, dt: Any, trim: float = 0.0) -> np.ndarray:
        """Mean PPCA log-likelihood of ``X[val_rows]`` for ``q = 1 .. qmax``, shape (qmax,).

        ``trim > 0``: the mean over all but the ``trim`` fraction of least likely rows
        (for each ``q`` separately), so that a few anomalous rows cannot buy a
        component of their own.
        """
        import torch

        d = X.shape[1] - self._fixed_dims
        if dev.type == "cpu":
            z, sq = _project_rows(X[val_rows], eig.mean, eig.evecs[:, :qmax])
        else:
            V = torch.as_tensor(eig.evecs[:, :qmax], device=dev, dtype=dt)
            mu = torch.as_tensor(eig.mean, device=dev, dtype=dt)
            zs, sqs = [], []
            step = max(1, BLOCK_VALUES // d)
            for i in range(0, len(val_rows), step):
                xc = torch.as_tensor(X[val_rows[i:i + step]], device=dev).to(dt) - mu
                zs.append((xc @ V).cpu().double().numpy())
                sqs.append((xc * xc).sum(1).cpu().double().numpy())
            z, sq = np.concatenate(zs), np.concatenate(sqs)
        z2 = z ** 2
        cz = np.cumsum(z2, axis=1)
        ll = np.empty(qmax)
        for q in range(1, qmax + 1):
            _, lam, s2 = self._ppca_params(eig, q)
            maha = (z2[:, :q] / lam).sum(1) + np.maximum(sq - cz[:, q - 1], 0.0) / s2
            if trim > 0:
                maha = np.sort(maha)[:max(1, int(round((1.0 - trim) * maha.size)))]
            ll[q - 1] = -0.5 * float(np.mean(maha + np.log(lam).sum() + (d - q) * np.log(s2)
                                             + d * _LOG2PI))
        return ll

    def _fit_subset(self, gram: Gram, keep: np.ndarray, final: bool, rng: np.random.Generator,
                    dev: Any, dt: Any, trim: float = 0.0) -> dict[str, Any]:
        """PPCA on the rows ``keep`` of ``gram.X`` (see the class docstring for the choice of q).

        With ``final=False`` (an intermediate trimming step) the model fitted on the
        selection split is returned as is, saving one eigendecomposition.
        """
        X = gram.X
        d = X.shape[1]
        n = int(keep.sum())
        if self.n_components is None:
            hold = gram.holdout if isinstance(gram, Sketch) else None
            if hold is not None and np.sum(keep & hold) >= 2 and np.sum(keep & ~hold) >= 4:
                # the randomized range was found without the held-out rows
                val = np.flatnonzero(keep & hold)
                n_val = int(val.size)
                fit_rows = keep & ~hold
            else:
                kept = np.flatnonzero(keep)
                n_val = max(2, int(round(self.validation_fraction * n)))
                val = np.sort(rng.choice(kept, size=n_val, replace=False))
                fit_rows = keep.copy()
                fit_rows[val] = False
            qmax = max(1, min(int(self.max_components), n - n_val - 2, d - 1))
            eig_a = self._eig(gram, fit_rows, qmax)
            ll = self._heldout_loglik(eig_a, X, val, qmax, dev, dt, trim=trim)
            q = int(np.argmax(ll)) + 1
            log.debug("PPCA held-out log-likelihood per q: %s -> q=%d", np.round(ll, 3), q)
            selection = {"method": "heldout_loglik", "n_components": q,
                         "heldout_loglik": ll.tolist(), "n_validation": int(n_val)}
            if not final:
                return self._model(eig_a, q, selection)
        else:
            q = int(self.n_components)
            if q > min(n - 2, d - 1):
                raise InputError(
                    f"n_components={q} needs at least {q + 2} training pixels and {q + 1} energy "
                    f"channels; got {n} pixels and {d} channels. Use fewer components "
                    "(or n_components=None to choose), or a larger bulk region.")
            selection = {"method": "given", "n_components": q}
        return self._model(self._eig(gram, keep, q, final), q, selection)

    def _model(self, eig: Spectrum, q: int, selection: dict[str, Any]) -> dict[str, Any]:
        U, lam, s2 = self._ppca_params(eig, q)
        return {"mean": eig.mean, "components": U, "explained_variance": lam,
                "noise_variance": s2, "selection": selection}

    def _set_fitted(self, m: dict[str, Any]) -> None:
        self.mean_ = np.asarray(m["mean"], np.float64)
        self.components_ = np.asarray(m["components"], np.float64)
        self.explained_variance_ = np.asarray(m["explained_variance"], np.float64)
        self.noise_variance_ = float(m["noise_variance"])
        self.n_components_ = int(self.components_.shape[1])
        self._cache = None

    @one_blas_thread
    def _fit(self, si: SpectrumImage, mask: np.ndarray | None,
             progress: ProgressCallback | None) -> None:
        dev, dt = self._torch_device(strict=True)
        rng = np.random.default_rng(self.seed)
        ny, nx = si.nav_shape
        self.n_bulk_ = int(mask.sum()) if mask is not None else ny * nx
        exact = self._gram_side != "auto"  # a forced side: the exact reference
        cap = self.max_fit_pixels
        if cap is not None:  # never fewer pixels than twice the channels
            cap = max(int(cap), 2 * si.n_energy)
        pixels = None if exact else sample_pixels(si.nav_shape, mask, cap, rng)
        if pixels is None:
            self.gain_ = training_gain(si, mask, self.gain, self.transform)
        else:  # the gain from the drawn pixels too
            drawn = np.zeros(ny * nx, bool)
            drawn[pixels] = True
            self.gain_ = training_gain(si, drawn.reshape(ny, nx), self.gain, self.transform,
                                       max_values=1 << 20)
        X = self._gather(si, mask, pixels)
        if not exact and min(X.shape) >= self.randomized_min_side:
            rank = int(self.n_components or self.max_components)
            hold = None
            if self.n_components is None:  # a fixed validation set, outside the range
                hold = np.zeros(X.shape[0], bool)
                hold[rng.choice(X.shape[0], size=max(2, int(round(
                    self.validation_fraction * X.shape[0]))), replace=False)] = True
            gram = Sketch(X, rank, rng, holdout=hold)
        else:
            gram = Gram(X, self._torch_gram(dev, dt), side=self._gram_side,
                        eigh=self._device_eigh(dev))
        self.solver_ = "randomized" if isinstance(gram, Sketch) else "exact"

        fraction, adaptive = robust_rule(self.robust_fraction)
        trim = fraction if mask is None else 0.0

        # without a mask the rows' neighbourhoods are scored too (their own image positions)
        where = None
        if mask is None:
            where = training_where(self, pixels, (ny, nx))

        def cutoff(model: dict[str, Any]) -> float:  # the q principal coordinates + the residual
            return auto_cutoff((np.shape(model["components"])[1] + 1) * (1 if where is None
                                                                         else 2))

        def fit(keep: np.ndarray, final: bool) -> dict[str, Any]:
            return self._fit_subset(gram, keep, final, rng, dev, dt, trim=trim)

        def score(model: dict[str, Any]) -> np.ndarray:
            self._set_fitted(model)
            return self._trim_score(X, where)

        min_keep = max(self.min_train_pixels, (self.n_components or 1) + 2)
        model, keep = trimmed_fit(X.shape[0], fit, score, robust=mask is None,
                                  robust_fraction=fraction,
                                  cutoff=cutoff if adaptive else None,
                                  robust_iter=int(self.robust_iter), min_keep=min_keep,
                                  progress=progress)
        self._set_fitted(model)
        self.n_trimmed_ = int(keep.size - keep.sum())
        if self.n_trimmed_:
            self._robust_variances(X[keep])
        self.selection_ = model["selection"]
        self.n_train_ = int(keep.sum())
        self.n_sampled_ = int(X.shape[0])
        self.pool_excess_ = self._excess(X[keep])
        log.info("PPCA: q=%d (%s), sigma^2=%.4g, %d training pixels (%d trimmed; %d drawn of "
                 "%d, %s solver) on %s", self.n_components_, self.selection_["method"],
                 self.noise_variance_, self.n_train_, self.n_trimmed_, self.n_sampled_,
                 self.n_bulk_, self.solver_, dev)
        cautions.add(self, cautions.fit_cautions(self.method, self.n_train_, X.shape[1],
                                                 self.n_components_))

    def _gather(self, si: SpectrumImage, mask: np.ndarray | None,
                pixels: np.ndarray | None = None, fit: bool = True) -> np.ndarray:
        """Transformed training spectra (n, D) float32, as the model sees them.

        ``fit``: also set the per-pixel scale's fitted state (``scale_total_`` with
        ``scale="sum"``, ``scale_direction_`` with ``"free"``) from them; with
        ``"free"`` the rows then come back projected off the scale direction (else
        as read: :meth:`_project` takes the scale off).
        """
        if fit:
            self.scale_total_ = self.scale_direction_ = None
        if self.scale == "sum":
            raw = gather_training(si, mask, "none", 1.0, pixels=pixels)
            if fit:
                tot = raw.sum(axis=1, dtype=np.float64)
                self.scale_total_ = float(max(np.median(tot), 1e-12))
            X = self._transform(raw)
        else:
            X = gather_training(si, mask, self.transform, self.gain_, pixels=pixels)
        if fit and self.scale == "free":
            self.scale_direction_ = scale_direction(X.mean(axis=0, dtype=np.float64),
                                                    self.transform)
        if fit and self._fixed_dims:
            mu = X.mean(axis=0, dtype=np.float64)
            t = self.scale_direction_
            c = (X @ t.astype(np.float32)) - np.float32(mu @ t)
            for i in range(0, X.shape[0], 256):  # (X is this call's own array) the float64
                # product in cache-sized runs
                X[i:i + 256] -= np.outer(c[i:i + 256], t).astype(np.float32)
        return X

    def _transform(self, x_counts: np.ndarray) -> np.ndarray:
        """Counts (n, E) -> transformed rows: with ``scale="sum"`` each row is first scaled
        to the training pixels' median total (``scale_total_``)."""
        if self.scale == "sum" and getattr(self, "scale_total_", None) is not None:
            x = np.asarray(x_counts, np.float32)
            tot = x.sum(axis=1, dtype=np.float64, keepdims=True)
            x = x * (self.scale_total_ / np.maximum(tot, 1e-12 * self.scale_total_)
                     ).astype(np.float32)
            return forward_transform(x, self.transform, self.gain_)
        return forward_transform(x_counts, self.transform, self.gain_)

    # ------------------------------------------------------------------ scoring
    def _tensors(self) -> _Tensors:
        cache = getattr(self, "_cache", None)
        if cache is None:
            dev, dt = self._torch_device(strict=False)
            cache = self._cache = _Tensors(self, dev, dt)
        return cache

    def _terms(self, x: np.ndarray, t: _Tensors) -> tuple[Any, Any, Any, Any]:
        """``(xc, p, r, c)`` for transformed rows ``x`` (n, D): centred data, projections,
        residuals, and the scale coordinate ``c = t . (x - mu)`` (``scale="free"``; else
        None), ``xc`` and ``r`` then taken off the scale direction."""
        import torch

        xc = torch.as_tensor(x, device=t.dev).to(t.dt) - t.mu
        c = None
        if t.tdir is not None:
            c = xc @ t.tdir
            xc = xc - c[:, None] * t.tdir
        p = xc @ t.U
        r = xc - p @ t.U.T
        return xc, p, r, c

    def _project(self, X: np.ndarray, counts: bool = False, with_scale: bool = False
                 ) -> tuple[np.ndarray, ...]:
        """``(p (n, q), r2 (n,))`` of transformed rows ``X`` (n, D), float64 numpy.

        ``p = U^T (x - mu)``, ``r2 = ||x - mu||^2 - ||p||^2`` (``U`` orthonormal), less
        ``c^2`` with ``scale="free"`` (``c = t . (x - mu)`` the scale coordinate; ``U`` is
        orthogonal to ``t``). On the CPU in float64 by cache-sized chunks
        (:func:`_project_rows`); elsewhere by the device's :meth:`_terms`. ``counts``:
        ``X`` holds counts, transformed here. ``with_scale``: ``c`` (n,) is returned
        third (zeros without a free scale).
        """
        t = self._tensors()
        if counts and (t.dev.type != "cpu" or self.scale == "sum"):
            X, counts = self._transform(X), False
        n, d = X.shape
        q = self.components_.shape[1]
        if t.dev.type != "cpu":
            step = max(1, BLOCK_VALUES // d)
            ps, r2s, cs = [], [], []
            for i in range(0, n, step):
                _, p, r, c = self._terms(X[i:i + step], t)
                ps.append(p.cpu().double().numpy())
                r2s.append((r * r).sum(1).cpu().double().numpy())
                cs.append(np.zeros(p.shape[0]) if c is None else c.cpu().double().numpy())
            p = np.concatenate(ps) if ps else np.zeros((0, q))
            r2 = np.concatenate(r2s) if r2s else np.zeros(0)
            return (p, r2, np.concatenate(cs) if cs else np.zeros(0)) if with_scale else (p, r2)
        U = self.components_
        if self._fixed_dims:
            U = np.concatenate([U, self.scale_direction_[:, None]], axis=1)
        p, sq = _project_rows(X, self.mean_, U, self.transform if counts else None, self.gain_)
        c = np.zeros(n)
        if self._fixed_dims:
            p, c = p[:, :q], p[:, q]
        r2 = np.maximum(sq - np.einsum("ij,ij->i", p, p) - c * c, 0.0)
        return (p, r2, c) if with_scale else (p, r2)

    def _nll_from(self, p: Any, r: Any, t: _Tensors) -> tuple[Any, Any]:
        r2 = (r * r).sum(1)
        maha = (p * p / t.lam).sum(1) + r2 / t.s2
        return 0.5 * (maha + t.logdet + self.mean_.size * _LOG2PI), r2

    def _robust_variances(self, X: np.ndarray) -> None:
        """Replace each ``lambda_i`` by a robust variance of the kept pixels' coordinates.

        ``lambda_i <- clip(tail_scale(p_i)^2, sigma^2, lambda_i)``: anomalies left in
        the trimmed training set inflate the variance of the direction they lie
        along (often a real bulk direction too, e.g. energy jitter for a shift), so
        they would be explained away; the 90 %-quantile scale ignores them.
        """
        p = self._project(X)[0]
        s2 = self.noise_variance_ * (1 + 1e-12)
        lam = np.clip(tail_scale(p) ** 2, s2, self.explained_variance_)
        log.debug("robust PPCA variances: %s -> %s", self.explained_variance_, lam)
        self.explained_variance_ = lam
        self._cache = None

    def _trim_score(self, X: np.ndarray, where: tuple[np.ndarray, tuple[int, int]] | None = None
                    ) -> np.ndarray:
        """Outlyingness of transformed rows ``X`` (n, D) used to choose the pixels to trim.

        :func:`~._gaussian.outlyingness` of the principal coordinates (scale at
        least ``sigma``) and of the residual ``||r||^2``; with ``where`` (the rows'
        flat pixel indices and the image shape) the larger of that and the rows'
        neighbourhood outlyingness (:func:`~._gaussian.spatial_outlyingness`).
        """
        p, r2 = self._project(X)
        floor = math.sqrt(self.noise_variance_)
        return trim_outlyingness(p, r2, floor, where)

    @one_blas_thread
    def _score(self, si: SpectrumImage, progress: ProgressCallback | None
               ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        t = self._tensors()
        ny, nx = si.nav_shape
        q = self.n_components_
        nll = np.empty((ny, nx), np.float64)
        rerr = np.empty((ny, nx), np.float64)
        latent = np.empty((ny, nx, q), np.float32)
        cpu = t.dev.type == "cpu"
        lam = self.explained_variance_
        lscale = np.sqrt(np.maximum(lam - t.s2, 0.0)) / lam
        const = t.logdet + self.mean_.size * _LOG2PI
        for y0, y1, block in iter_row_blocks(si):
            if cpu:  # transformed and projected by cache-sized chunks (see _project)
                p, r2 = self._project(block.reshape(-1, block.shape[-1]), counts=True)
                nll[y0:y1] = (0.5 * ((p * p / lam).sum(1) + r2 / t.s2 + const)
                              ).reshape(y1 - y0, nx)
                rerr[y0:y1] = r2.reshape(y1 - y0, nx)
                latent[y0:y1] = (p * lscale).reshape(y1 - y0, nx, q)
            else:
                x = self._transform(block.reshape(-1, block.shape[-1]))
                _, p, r, _ = self._terms(x, t)
                b_nll, r2 = self._nll_from(p, r, t)
                nll[y0:y1] = b_nll.cpu().double().numpy().reshape(y1 - y0, nx)
                rerr[y0:y1] = r2.cpu().double().numpy().reshape(y1 - y0, nx)
                latent[y0:y1] = (p * t.latent_scale).cpu().float().numpy().reshape(y1 - y0,
                                                                                   nx, q)
            emit(progress, "score", y1, ny)
        score = nll if self.score_kind == "nll" else rerr.copy()
        maps = {"reconstruction_error": rerr}
        pool = pooling_from(self.pooling)
        if pool.enabled:
            pm = self._pooled(si, pool)
            maps.update(ppca_nll=nll, own_nll=pm["own"] + pm["penalty"],
                        neighbourhood_nll=pm["nb_nll"], scale=pm["scale"])
            score = pm["score"]
        return score, latent, maps

    # ------------------------------------------------------------------ pooled scoring
    def _pooled(self, si: SpectrumImage, pool: Any, **kw: Any) -> dict[str, np.ndarray]:
        """On the CPU by :func:`~._ppca_rows.pooled_ppca` (the Gaussian of :meth:`_gauss_rows`,
        each tile transformed and projected once, float32 deviations)."""
        if self._tensors().dev.type != "cpu":
            return super()._pooled(si, pool, **kw)
        return pooled_ppca(self, si, pool, **kw)

    def _gauss_rows(self, x_counts: np.ndarray) -> tuple[Any, Any, Any, Any]:
        """PPCA as a latent-variable model of counts ``x (n, E)``: ``(target, mean, sigma, KL)``.

        The posterior of the code is ``N(<z>, sigma^2 diag(1 / lambda))`` with
        ``<z> = (lambda - sigma^2)^{1/2} p / lambda``; the decoder's mean is
        ``mu + W <z>`` (the shrunk reconstruction) and its noise ``sigma^2`` per
        channel; the penalty is the posterior's KL from ``N(0, I)``. Transformed units.
        """
        import torch

        t = self._tensors()
        x = self._transform(x_counts)
        _, p, _, c = self._terms(x, t)
        target = torch.as_tensor(x, device=t.dev).to(t.dt)
        mean = (p * t.shrink) @ t.U.T + t.mu
        if c is not None:  # the pixel's own scale, fitted on it
            mean = mean + c[:, None] * t.tdir
        # one sigma for every pixel: a stride-0 view (the pooling stage pools 2-D variance maps)
        sigma = torch.full((1, 1), math.sqrt(t.s2), dtype=mean.dtype,
                           device=mean.device).expand_as(mean)
        z = p * t.latent_scale
        pv = t.s2 / t.lam
        kl = 0.5 * ((z * z).sum(1) + float((pv - torch.log(pv) - 1.0).sum()))
        return target, mean, sigma, kl

    def _excess(self, X: np.ndarray) -> tuple[float, float]:
        """Excess-NLL statistics of transformed training rows ``X`` (the pooling's spill guard)."""
        from ..pooling import excess_stats

        # x - mean_y = r + U (p (1 - shrink)), r orthogonal to U
        p, r2 = self._project(X)
        lam = self.explained_variance_
        s2 = float(self.noise_variance_)
        own_a = 0.5 * (r2 + ((p * (s2 / lam)) ** 2).sum(1)) / s2
        d = X.shape[1]
        return excess_stats(own_a, np.full(own_a.shape, 0.5 * d), d)

    def _pool_noise2(self) -> float:
        return float(self.noise_variance_)

    # ------------------------------------------------------------------ reconstruction
    def _sigma_y(self) -> np.ndarray:
        """Predictive std per channel in transformed units, shape (D,)."""
        lam, s2 = self.explained_variance_, self.noise_variance_
        post = (self.components_ ** 2) @ ((lam - s2) / lam)
        return np.sqrt(s2 * (1.0 + post))

    def _mean_y(self, p: Any, t: _Tensors, c: Any = None) -> np.ndarray:
        m = (p * t.shrink) @ t.U.T + t.mu
        if c is not None:
            m = m + c[:, None] * t.tdir
        return m.cpu().double().numpy()

    def _reconstruct(self, si: SpectrumImage) -> tuple[np.ndarray, np.ndarray]:
        t = self._tensors()
        ny, nx = si.nav_shape
        d = si.n_energy
        sig_y = self._sigma_y()
        mean = np.empty((ny, nx, d), np.float32)
        sigma = np.empty((ny, nx, d), np.float32)
        for y0, y1, block in iter_row_blocks(si):
            x = self._transform(block.reshape(-1, d))
            _, p, _, c = self._terms(x, t)
            my = self._mean_y(p, t, c)
            mean[y0:y1] = inverse_transform(my, self.transform, self.gain_).reshape(y1 - y0, nx, d)
            sigma[y0:y1] = transform_sigma(my, sig_y, self.transform,
                                           self.gain_).reshape(y1 - y0, nx, d)
        return mean, sigma

    def _pixel(self, si: SpectrumImage, iy: int, ix: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, sigma (counts) and per-channel score contributions of one pixel.

        ``channel_nll[k]`` (``score_kind="nll"``) is
        ``0.5 * [(x-mu)_k (C^-1 (x-mu))_k + log|C| / D + log(2 pi)]``: the exact split
        of the Mahalanobis term over channels (the constant terms spread evenly),
        so it sums to the pixel's NLL; single channels can be slightly negative
        where correlated channels compensate. With ``score_kind="reconstruction"``
        it is ``r_k^2`` (sums to the reconstruction error).
        """
        t = self._tensors()
        x = self._transform(np.asarray(si.data[iy, ix], np.float32)[None])
        xc, p, r, c = self._terms(x, t)
        my = self._mean_y(p, t, c)[0]
        mean = np.asarray(inverse_transform(my, self.transform, self.gain_), np.float64)
        sigma = np.asarray(transform_sigma(my, self._sigma_y(), self.transform, self.gain_),
                           np.float64)
        pool = pooling_from(self.pooling)
        if pool.enabled:
            pm = self._pooled(si, pool, region=(iy, iy + 1, ix, ix + 1), want_channels=(iy, ix))
            return mean, sigma, pm["channel_nll"]
        rr = r.cpu().double().numpy()[0]
        if self.score_kind == "reconstruction":
            return mean, sigma, rr ** 2
        cinv = ((p / t.lam) @ t.U.T).cpu().double().numpy()[0] + rr / t.s2
        d = self.mean_.size
        chan = 0.5 * (xc.cpu().double().numpy()[0] * cinv + t.logdet / d + _LOG2PI)
        return mean, sigma, chan

    # ------------------------------------------------------------------ persistence
    validate_model_file = _schemas.validator(_schemas.pca)  # the model-file schema

    def _get_state(self) -> dict[str, Any]:
        return {"n_components": self.n_components_, "noise_variance": self.noise_variance_,
                "selection": self.selection_, "n_train": self.n_train_,
                "n_trimmed": self.n_trimmed_, "gain": self.gain_,
                "n_bulk": self.n_bulk_, "n_sampled": self.n_sampled_, "solver": self.solver_,
                "pool_excess": self._excess_state(),
                **({} if self.scale_total_ is None else {"scale_total": self.scale_total_})}

    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"mean": self.mean_, "components": self.components_,
                  "explained_variance": self.explained_variance_}
        if self.scale_direction_ is not None:
            arrays["scale_direction"] = np.asarray(self.scale_direction_, np.float64)
        return arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._set_fitted({"mean": arrays["mean"], "components": arrays["components"],
                          "explained_variance": arrays["explained_variance"],
                          "noise_variance": state["noise_variance"]})
        self.selection_ = state.get("selection", {})
        self.n_train_ = int(state.get("n_train", 0))
        self.n_trimmed_ = int(state.get("n_trimmed", 0))
        # files from before the subsample: the fit used every training pixel, exactly
        self.n_sampled_ = int(state.get("n_sampled", self.n_train_ + self.n_trimmed_))
        self.n_bulk_ = int(state.get("n_bulk", self.n_sampled_))
        self.solver_ = str(state.get("solver", "exact"))
        self.gain_ = float(state.get("gain", 1.0))  # files from before the gain: counts
        self._load_excess(state, self.mean_.size)
        # files from before the per-pixel scale were fitted without one (their params lack
        # it, so the detector has the current default: set it to what the file holds)
        self.scale_total_ = (float(state["scale_total"]) if "scale_total" in state else None)
        self.scale_direction_ = (np.asarray(arrays["scale_direction"], np.float64)
                                 if "scale_direction" in arrays else None)
        if self.scale_direction_ is None and self.scale == "free":
            self.scale = "fixed"
        if self.scale_total_ is None and self.scale == "sum":
            self.scale = "fixed"
        self._cache = None
