"""napari plugin for eelsanom: read EELS spectrum images, train a detector on a bulk region,
threshold the NLL map live, inspect pixel spectra against the model, export.

The npe2 manifest is ``napari.yaml`` beside this file. Installed with ``pip install
eelsanom[napari]``; ``eelsanom gui [FILE]`` opens napari with every panel docked.
The core library (:mod:`eelsanom`) never imports Qt; Qt lives in the panel modules
(``bulk_region``, ``detector``, ``results``, ``inspector``, ``export``, their base ``_panel``,
``_latent_panel``), the dock ``layout`` and ``_plot`` only.
"""

from __future__ import annotations

from ._reader import napari_get_reader, read_eels
from ._sample_data import make_sample_data

__all__ = ["napari_get_reader", "read_eels", "make_sample_data"]
