"""The result every detector returns: :class:`AnomalyResult`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from . import scoring
from .spectrum import Axis, SpectrumImage

if TYPE_CHECKING:  # pragma: no cover
    from .detectors.base import BaseDetector

__all__ = ["AnomalyResult", "PixelSpectrum"]


@dataclass
class PixelSpectrum:
    """One pixel's spectrum against the detector's model of it (all arrays shape ``(n_energy,)``).

    ``mean`` and ``sigma`` are the model's prediction in the data's units (counts);
    ``residual`` is ``observed - mean``; ``channel_nll`` is each channel's contribution
    to the pixel's NLL (its sum is the pixel's score, up to the detector's
    constant terms), so its large values show *where in energy* the pixel departs
    from the bulk.

    Attributes
    ----------
    energy : ndarray of shape (n_energy,)
        Energy loss of each channel, in eV (the detector's energy window).
    observed : ndarray of shape (n_energy,)
        The pixel's spectrum, in counts.
    mean, sigma : ndarray of shape (n_energy,)
        The model's predicted mean and standard deviation, in counts.
    residual : ndarray of shape (n_energy,)
        ``observed - mean``, in counts.
    channel_nll : ndarray of shape (n_energy,)
        Per-channel contribution to the NLL (nats).
    nll : float
        The pixel's score (higher = more anomalous).
    """

    energy: np.ndarray
    observed: np.ndarray
    mean: np.ndarray
    sigma: np.ndarray
    residual: np.ndarray
    channel_nll: np.ndarray
    nll: float

    def top_window(self, width_ev: float = 5.0) -> tuple[float, float]:
        """Energy window of ``width_ev`` that contributes most to the NLL.

        Parameters
        ----------
        width_ev : float, default 5.0
            Window width in eV (rounded to a whole number of channels, at least 1).

        Returns
        -------
        start, stop : float
            Energies (eV) of the first and last channel of the window whose
            summed ``channel_nll`` (NaN counted as 0) is largest. Both equal the
            single channel's energy when the spectrum has one channel.
        """
        if self.energy.size < 2:
            return float(self.energy[0]), float(self.energy[0])
        de = float(self.energy[1] - self.energy[0])
        w = max(1, int(round(width_ev / de)))
        c = np.convolve(np.nan_to_num(self.channel_nll), np.ones(w), mode="valid")
        k = int(np.argmax(c))
        return float(self.energy[k]), float(self.energy[min(k + w - 1, self.energy.size - 1)])


@dataclass
class AnomalyResult:
    """Per-pixel anomaly scores of one spectrum image.

    Attributes
    ----------
    nll : ndarray of shape (ny, nx)
        Negative log-likelihood per pixel. **Higher = more anomalous.**
    threshold : float
        NLL value above which a pixel is flagged.
    threshold_method : str
        How ``threshold`` was chosen (``"robust"``, ``"otsu"``, ``"gmm"``, ``"2%"``, ``"value"``).
    mask : ndarray of bool, shape (ny, nx)
        ``nll > threshold``.
    method : str
        Detector key (``"cvae"``, ``"pca"``, ``"rx"``, ...).
    y, x : Axis
        Navigation calibration of the scored image.
    energy : Axis
        Energy axis the detector modelled (its window).
    latent : ndarray of shape (ny, nx, d), optional
        Per-pixel latent codes where the method has them.
    maps : dict of name -> ndarray (ny, nx)
        Extra per-pixel maps (e.g. reconstruction error).
    timings : dict
        Seconds spent (``"score"``, ...).
    info : dict
        Detector parameters and anything else worth saving.
    """

    nll: np.ndarray
    threshold: float
    threshold_method: str
    mask: np.ndarray
    method: str
    y: Axis
    x: Axis
    energy: Axis
    latent: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _detector: BaseDetector | None = field(default=None, repr=False)
    _si: SpectrumImage | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Navigation shape ``(ny, nx)`` of the NLL map."""
        return tuple(self.nll.shape)  # type: ignore[return-value]

    @property
    def n_flagged(self) -> int:
        """Number of pixels flagged by the threshold (``mask.sum()``)."""
        return int(self.mask.sum())

    def with_threshold(self, spec: Any) -> AnomalyResult:
        """A copy thresholded by ``spec`` (``"robust"``, ``"otsu"``, ``"gmm"``, percent, ``"value:X"``,
        ``"calibrated[:ALPHA]"``).

        Parameters
        ----------
        spec : str or float
            Threshold specification, see :func:`eelsanom.scoring.parse_threshold`;
            ``"calibrated"`` needs the result's detector to be calibrated.

        Returns
        -------
        AnomalyResult
            Same scores with new ``threshold``, ``threshold_method`` and ``mask``
            (``nll > threshold``, shape ``(ny, nx)``); ``self`` is unchanged.

        Raises
        ------
        InputError
            When ``spec`` is invalid, the NLL map has no finite value, or ``spec`` is
            calibrated and the detector is not.
        """
        t, label = scoring.compute_threshold(
            self.nll, spec, calibration=getattr(self._detector, "calibration_", None))
        return replace(self, threshold=t, threshold_method=label, mask=self.nll > t)

    def evaluate(self, truth: np.ndarray | None = None) -> dict[str, float]:
        """ROC-AUC, AP, precision/recall/F1 (own threshold) and best F1 against ``truth``.

        ``truth`` defaults to the scored image's ground truth (simulated data).

        Parameters
        ----------
        truth : ndarray of bool, shape (ny, nx), optional
            Ground-truth anomaly mask.

        Returns
        -------
        dict of str to float
            ``roc_auc``, ``average_precision``, ``best_f1``,
            ``best_f1_threshold``, ``precision``, ``recall``, ``f1`` (of
            ``mask``), plus ``ashman_d`` and ``upper_weight`` from
            :func:`eelsanom.scoring.bimodality`.

        Raises
        ------
        ValueError
            When no ``truth`` is given and the scored image has no ground truth.
        InputError
            When ``truth`` does not have the NLL map's size.
        """
        if truth is None:
            truth = None if self._si is None else self._si.ground_truth
        if truth is None:
            raise ValueError("no ground truth: pass truth=..., a boolean (ny, nx) map.")
        out = scoring.evaluate(self.nll, self.mask, truth)
        out.update(scoring.bimodality(self.nll))
        return out

    def _need_source(self) -> tuple[BaseDetector, SpectrumImage]:
        if self._detector is None or self._si is None:
            raise RuntimeError("this result has no detector/data attached (it was loaded from "
                               "disk); score the data again to get reconstructions.")
        return self._detector, self._si

    def reconstruct(self) -> tuple[np.ndarray, np.ndarray]:
        """Model mean and sigma for every pixel, each of shape (ny, nx, n_energy), in counts.

        ``n_energy`` is the number of channels of the detector's energy window.

        Returns
        -------
        mean, sigma : ndarray of shape (ny, nx, n_energy)
            Predicted mean and standard deviation, in counts.

        Raises
        ------
        RuntimeError
            When the result has no detector and data attached (loaded from disk).
        """
        det, si = self._need_source()
        return det.reconstruct(si)

    def pixel(self, iy: int, ix: int) -> PixelSpectrum:
        """Spectrum, reconstruction (mean, sigma), residual and per-channel NLL of pixel (iy, ix).

        Parameters
        ----------
        iy, ix : int
            Row and column of the pixel (0-based, no negative indices).

        Returns
        -------
        PixelSpectrum
            Arrays of shape ``(n_energy,)`` over the detector's energy window;
            its ``nll`` is this result's score of the pixel.

        Raises
        ------
        IndexError
            When the pixel is outside the ``(ny, nx)`` image.
        RuntimeError
            When the result has no detector and data attached (loaded from disk).
        """
        det, si = self._need_source()
        ny, nx = self.shape
        if not (0 <= iy < ny and 0 <= ix < nx):
            raise IndexError(f"pixel ({iy}, {ix}) is outside the {ny} x {nx} image.")
        return det.pixel_spectrum(si, iy, ix, nll=float(self.nll[iy, ix]))

    def residual(self) -> np.ndarray:
        """Observed minus reconstructed counts, shape (ny, nx, n_energy).

        Returns
        -------
        ndarray of float32, shape (ny, nx, n_energy)
            ``observed - mean`` in counts over the detector's energy window.

        Raises
        ------
        RuntimeError
            When the result has no detector and data attached (loaded from disk).
        """
        det, si = self._need_source()
        mean, _ = det.reconstruct(si)
        data = det.window(si).data
        return np.asarray(data, dtype=np.float32) - mean

    # ------------------------------------------------------------------ HyperSpy
    def to_signal(self, which: str = "nll") -> Any:
        """One map of the result as a HyperSpy signal with the input's axes and metadata.

        Round-trips through ``.hspy``: ``res.to_signal().save("nll.hspy")``, then
        ``hs.load("nll.hspy")``.

        Parameters
        ----------
        which : str, default "nll"
            ``"nll"``, ``"mask"``, ``"latent"`` (detectors with latent codes) or a key of
            ``maps``.

        Returns
        -------
        hyperspy signal
            ``Signal2D`` of shape (ny, nx) over the input's calibrated ``y`` and ``x``
            axes; a line scan's map is a ``Signal1D`` profile over its position axis;
            ``"latent"`` a ``Signal1D`` over the latent dimension. Title, original file
            name, ``Acquisition_instrument`` and ``metadata.eelsanom`` (method,
            threshold) are set (see :func:`eelsanom.io.signals.result_signal`).

        Raises
        ------
        InputError
            When ``which`` names no map of this result.
        ImportError
            When HyperSpy is not installed.
        """
        from .io.signals import result_signal

        return result_signal(self, which)

    def to_signals(self) -> dict[str, Any]:
        """Every map of the result as a HyperSpy signal: ``{"nll": ..., "mask": ..., ...}``.

        Returns
        -------
        dict of str to hyperspy signal
            Keys ``"nll"``, ``"mask"``, ``"latent"`` (where present) and those of
            ``maps``; see :meth:`to_signal`.
        """
        names = ["nll", "mask", *(["latent"] if self.latent is not None else []), *self.maps]
        return {k: self.to_signal(k) for k in names}

    def plot(self, *, residual: bool = False) -> dict[str, Any]:
        """Show the result with HyperSpy's plotting, as ``plot_decomposition_results()`` does.

        The NLL map is the navigator: moving its pointer (or clicking, with an
        interactive backend such as ``%matplotlib widget`` or ``qt``) shows that
        pixel's spectrum and the model's prediction of it (and, with ``residual``,
        the residual) in synchronised windows; the anomaly mask is shown beside it.
        A result loaded from disk (no data attached) shows the NLL and mask maps only.

        Parameters
        ----------
        residual : bool, default False
            Also plot ``observed - model``.

        Returns
        -------
        dict of str to hyperspy signal
            The signals plotted: ``"nll"``, ``"mask"`` and, with data attached,
            ``"data"`` and ``"model"`` (``EELSSpectrum`` over the detector's energy
            window), plus ``"residual"``.

        Raises
        ------
        ImportError
            When HyperSpy (or exSpy) is not installed.
        """
        import hyperspy.api as hs

        from .io.signals import to_signal as si_to_signal

        nll, mask = self.to_signal("nll"), self.to_signal("mask")
        out: dict[str, Any] = {"nll": nll, "mask": mask}
        if self._detector is None or self._si is None:
            nll.plot()
            mask.plot()
            return out
        det, si = self._need_source()
        siw = det.window(si)
        mean, _ = det.reconstruct(si)
        data = si_to_signal(siw)
        data.metadata.General.title = f"{si.title or 'data'}: observed"
        model = si_to_signal(replace(siw, data=np.asarray(mean, np.float32), ground_truth=None))
        model.metadata.General.title = f"{si.title or 'data'}: model ({self.method})"
        out.update(data=data, model=model)
        sigs = [data, model]
        if residual:
            res = data - model
            res.metadata.General.title = f"{si.title or 'data'}: residual"
            out["residual"] = res
            sigs.append(res)
        hs.plot.plot_signals(sigs, navigator=nll)
        mask.plot()
        return out
