"""eelsanom: where in an EELS spectrum image is something different?

Detectors (3D-CVAE, PCA, RX) learn the bulk spectra of a spectrum image and
score every pixel by its negative log-likelihood (higher = more anomalous).
HyperSpy is needed only to read and write files (:mod:`eelsanom.io`); the
simulator, detectors and benchmark run on plain numpy/torch arrays.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import Cancelled, EnergyAxisMismatch, InputError, NotFittedError
from .spectrum import Axis, SpectrumImage, as_spectrum_image

__all__ = [
    "__version__", "Axis", "SpectrumImage", "as_spectrum_image", "InputError",
    "EnergyAxisMismatch", "NotFittedError", "Cancelled",
]
