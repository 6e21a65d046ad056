"""PyTorch parts of the 3D-CVAE: the module (:mod:`.model`), its losses (:mod:`.losses`),
the training loop (:mod:`.train`) and the tiled inference (:mod:`.infer`), with the
scaling (:mod:`.scaler`) and device helpers (:mod:`.device`).

Importing this package imports torch; the rest of eelsanom imports it lazily.
"""

from __future__ import annotations

from .losses import gaussian_nll, kl_standard_normal, sigma_from_raw
from .model import CVAE3D, energy_levels_for

__all__ = ["CVAE3D", "energy_levels_for", "gaussian_nll", "kl_standard_normal",
           "sigma_from_raw"]
