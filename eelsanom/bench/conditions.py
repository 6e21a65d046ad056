"""A benchmark condition (:class:`Condition`), the nuisances it names and the region it fits on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: realistic nuisances (physical units): energy drift field (eV), valence gradient (eV),
#: t/lambda range with plural scattering, detector gain (counts per electron), dark offset
#: and read noise (counts)
DRIFT = {"drift": 0.8}
VALENCE = {"valence_gradient": 1.0}
THICKNESS = {"thickness": (0.2, 1.0)}
DETECTOR = {"gain": 4.0, "dark_offset": 50.0, "read_noise": 3.0}


@dataclass
class Condition:
    """One simulated test case.

    Attributes
    ----------
    name : str
        Label used in tables and figure titles, e.g. ``"shift 0.9 eV"``.
    sim : dict
        Keyword arguments of :func:`eelsanom.simulate.simulate` (without ``seed``).
    supervised : bool, default True
        Fit the detectors on the simulated bulk mask; ``False`` fits on all
        pixels (robustly), as on real data without a known bulk region.
    oracle : str, optional
        Nuisance map (a key of ``Simulation.nuisance``) the manifold oracle
        searches over; ``None``: no manifold oracle in this condition.
    bulk : {"simulated", "spanning"}, default "simulated"
        The bulk region fitted on: the simulation's (the top rows), or
        ``"spanning"``, every other square of :data:`SPANNING_BLOCK` pixels (a
        checkerboard over the whole image, so the region spans every smooth
        nuisance field, as a user's region should; :func:`bulk_region`).
    """

    name: str
    sim: dict[str, Any]
    supervised: bool = True  # train on the bulk mask (else: all pixels, robustly)
    oracle: str | None = None
    bulk: str = "simulated"

    def label(self) -> str:
        """The condition's display label (its ``name``).

        Returns
        -------
        str
            ``self.name``.
        """
        return self.name


#: side in pixels of the squares of a ``bulk="spanning"`` condition's checkerboard region
SPANNING_BLOCK = 8


def bulk_region(cond: Condition, sim: Any) -> np.ndarray | None:
    """The region a condition's detectors are fitted on.

    Parameters
    ----------
    cond : Condition
    sim : Simulation
        The condition's simulated image.

    Returns
    -------
    ndarray of bool, shape (ny, nx), or None
        None (all pixels, robustly) when ``cond.supervised`` is False; the
        simulation's bulk mask for ``bulk="simulated"``; for ``"spanning"`` the
        squares of :data:`SPANNING_BLOCK` pixels with an even ``row + column``
        square index that hold no anomalous pixel.

    Raises
    ------
    InputError
        When ``cond.bulk`` is not one of the two.
    """
    if not cond.supervised:
        return None
    if cond.bulk == "simulated":
        return sim.bulk_mask
    if cond.bulk != "spanning":
        raise InputError(f"Condition {cond.name!r}: bulk expected 'simulated' or 'spanning', "
                         f"got {cond.bulk!r}.")
    ny, nx = sim.truth.shape
    b = SPANNING_BLOCK
    squares = ((np.arange(ny)[:, None] // b) + (np.arange(nx)[None] // b)) % 2 == 0
    return squares & ~np.asarray(sim.truth, bool)
