"""The bulk region extended along smooth paths: a nuisance the drawn region does not span.

A user draws the bulk region in one part of the scan. Where a smooth nuisance
(an energy drift that ramps along the slow-scan axis, a thickness or valence
gradient) reaches values beyond those inside the region, every pixel past them
is unlike the bulk, and a per-pixel detector flags the far end of the scan
(issue 22: 1.7-2.5 % of an anomaly-free image). What tells that nuisance from an
anomaly is its shape in the image: it grows *smoothly* away from the region,
while a particle, a cluster or a line is bounded by an edge (its neighbours do
not predict it).

:func:`grow_bulk` adds to the region the pixels that the bulk model does not
explain (global evidence above :data:`LEVEL`) and that are reached from the
region without crossing an edge: through pixels where the smoothed global
evidence rises by at most :data:`SLOPE` per pixel and the local evidence is
below :data:`LOCAL`, along paths wider than ``2 ERODE + 1`` pixels (a gap in a
faint boundary does not let a particle in). Of those, a connected part is added
only when it is large (at least :data:`MIN_PIXELS` pixels and
:data:`MIN_FRACTION` of the image) and not enclosed by edges (at most
:data:`EDGE_FRACTION` of its rim is edge): a weak particle reached through a
soft part of its boundary is still mostly rimmed by edge. One anomalous pixel
in the training set teaches the model its direction, so every rule errs on
the side of adding nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["grow_bulk", "SLOPE", "LOCAL", "LEVEL", "ERODE", "EDGE_FRACTION", "MIN_PIXELS",
           "MIN_FRACTION"]

#: largest rise per pixel of the (Gaussian sigma 1 px) smoothed global evidence, in units of
#: the bulk's spread, that a smooth path may take (a particle's boundary rises by 2-3 per pixel,
#: a drift ramp beyond the region by 0.1-0.5)
SLOPE = 0.7
#: local evidence (units of the bulk's spread) above which a pixel is an edge: its
#: neighbourhood does not predict it
LOCAL = 3.0
#: global evidence (units of the bulk's spread) above which a reached pixel is added: below
#: it, the bulk model already explains the pixel
LEVEL = 2.0
#: erosion (pixels) of the passable set before the paths are traced: a path must be at least
#: ``2 ERODE + 1`` pixels wide
ERODE = 2
#: the largest fraction of an added part's rim (2 pixels wide) that may be edge
EDGE_FRACTION = 0.3
#: the smallest added part, in pixels and as a fraction of the image
MIN_PIXELS = 32
MIN_FRACTION = 0.01


def grow_bulk(global_z: np.ndarray, local_z: np.ndarray, mask: np.ndarray
              ) -> tuple[np.ndarray, dict[str, float]]:
    """The bulk region ``mask`` extended by the parts of the image smoothly connected to it.

    Parameters
    ----------
    global_z, local_z : ndarray, shape (ny, nx)
        The detector's two evidence maps, each in units of the bulk's spread (the
        local one less its smooth part), under the fitted model.
    mask : ndarray of bool, shape (ny, nx)
        The bulk region the model was fitted on.

    Returns
    -------
    grown : ndarray of bool, shape (ny, nx)
        ``mask`` plus the added parts (``mask`` itself, a copy, when none qualifies).
    info : dict
        ``added`` (pixels added), ``parts`` (parts added), ``rejected`` (parts reached but
        refused: too small or rimmed by edges).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    zg = np.where(np.isfinite(global_z), global_z, np.inf)
    zl = np.where(np.isfinite(local_z), local_z, np.inf)
    zs = ndi.gaussian_filter(np.where(np.isfinite(zg), zg, 0.0), 1.0, mode="nearest")
    slope = np.hypot(ndi.sobel(zs, 0, mode="nearest"), ndi.sobel(zs, 1, mode="nearest")) / 8.0
    passable = (slope < SLOPE) & (zl < LOCAL) & np.isfinite(zg)
    core = ndi.binary_erosion(passable, iterations=ERODE) if ERODE > 0 else passable
    lab, _ = ndi.label(core | mask)
    seeds = np.unique(lab[mask & (lab > 0)])
    reached = np.isin(lab, seeds) & (lab > 0)
    reached = ndi.binary_propagation(reached, mask=passable | mask)
    add = reached & (zg > LEVEL) & ~mask
    parts, n = ndi.label(add, structure=np.ones((3, 3), bool))
    grown = mask.copy()
    info = {"added": 0, "parts": 0, "rejected": 0}
    smallest = max(MIN_PIXELS, MIN_FRACTION * mask.size)
    for i in range(1, n + 1):
        part = parts == i
        size = int(part.sum())
        if size < smallest:
            continue
        rim = ndi.binary_dilation(part, iterations=2) & ~part & ~add
        edge = float((~passable[rim]).mean()) if rim.any() else 0.0
        if edge > EDGE_FRACTION:
            info["rejected"] += 1
            continue
        grown |= part
        info["added"] += size
        info["parts"] += 1
    return grown, info
