"""The npe2 sample: the bundled simulated Fe L2,3 spectrum image with its ground truth.

The file ``sample_data/sample_fe-l_shift1.5.hspy`` sits at the repository root;
an installed wheel does not carry it, so when it is not found the same data is
regenerated in memory with :func:`eelsanom.simulate.simulate` and the parameters
of ``sample_data/PROVENANCE.md`` (about 0.2 s; the arrays are identical).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ._layers import spectrum_image_layers

log = logging.getLogger(__name__)

__all__ = ["SAMPLE_NAME", "SAMPLE_PARAMS", "sample_path", "sample_spectrum_image",
           "make_sample_data"]

SAMPLE_NAME = "sample_fe-l_shift1.5"
#: ``simulate`` arguments that produced the sample file (sample_data/PROVENANCE.md).
SAMPLE_PARAMS: dict[str, Any] = dict(shape=(64, 64), window="fe-l", anomaly="shift",
                                     magnitude=1.5, anomaly_shape="clusters",
                                     concentration=0.02, dose=200, seed=0)


def sample_path() -> Path | None:
    """The bundled sample file when this is a source checkout, else None."""
    p = Path(__file__).resolve().parents[2] / "sample_data" / f"{SAMPLE_NAME}.hspy"
    return p if p.is_file() else None


def sample_spectrum_image(*, prefer_file: bool = True) -> Any:
    """The sample as a :class:`~eelsanom.spectrum.SpectrumImage` (ground truth and bulk mask).

    Parameters
    ----------
    prefer_file : bool
        Read the bundled file when it exists (default); otherwise, or with False,
        regenerate it with :func:`eelsanom.simulate.simulate`.
    """
    path = sample_path() if prefer_file else None
    if path is not None:
        from eelsanom.io import load_spectrum_image

        return load_spectrum_image(path)
    from eelsanom.simulate import simulate

    log.info("sample file not found: regenerating it with eelsanom.simulate")
    return simulate(**SAMPLE_PARAMS).si


def make_sample_data() -> list[tuple]:
    """npe2 sample-data command: the cube, its summed intensity, ground truth and bulk region."""
    return spectrum_image_layers(sample_spectrum_image(), name=SAMPLE_NAME)
