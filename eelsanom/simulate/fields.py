"""The image side of the simulators: smooth nuisance fields and anomaly geometries.

Nothing here knows a spectrum. :func:`smooth_field` and its relatives make the
per-pixel maps (intensity, drift, valence, thickness) a spectrum model is
evaluated with; :func:`place` draws the boolean ground truth (isolated pixels,
small clusters, curved lines) outside the bulk rows. Every function takes its
own :class:`numpy.random.Generator`, so the callers keep one random stream per
field and the results stay reproducible.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["SHAPES", "DRIFT_PATTERNS", "smooth_field", "place", "trace_curve", "row_chunks"]

SHAPES = ("clusters", "pixels", "line")
DRIFT_PATTERNS = ("field", "ramp")
#: correlation length of the smooth fields, as a fraction of max(ny, nx) (the
#: Fe L model's ``background.field_correlation``)
FIELD_CORRELATION = 0.2


# --------------------------------------------------------------------------- spatial fields


def smooth_field(rng: np.random.Generator, ny: int, nx: int, amplitude: float,
                 correlation: float = FIELD_CORRELATION) -> np.ndarray:
    """Low-frequency random field with zero mean and max |value| == amplitude, shape (ny, nx).

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the white noise that is smoothed.
    ny, nx : int
        Shape.
    amplitude : float
        The largest absolute value of the result.
    correlation : float
        The Gaussian smoothing's sigma as a fraction of ``max(ny, nx)``.

    Returns
    -------
    ndarray of float64, shape (ny, nx)
    """
    sigma = correlation * max(ny, nx)
    f = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma, mode="reflect")
    f = f - f.mean()
    m = float(np.abs(f).max())
    return f * (amplitude / m) if m > 0 else np.zeros((ny, nx))


def _drift_map(rng: np.random.Generator, ny: int, nx: int, drift: float,
               pattern: str, correlation: float = FIELD_CORRELATION) -> np.ndarray:
    """Energy drift (eV), shape (ny, nx): smooth field (max |d| = drift) or a ramp along y."""
    if drift == 0.0:
        return np.zeros((ny, nx))
    if pattern == "ramp":
        return np.repeat(np.linspace(-drift, drift, ny)[:, None], nx, axis=1)
    return _smooth_field(rng, ny, nx, drift, correlation)


def _valence_map(ny: int, nx: int, gradient: float, width_fraction: float = 0.25) -> np.ndarray:
    """Fe L2,3 onset shift (eV), shape (ny, nx): tanh along x, exactly -v/2 .. +v/2 at the edges."""
    if gradient == 0.0:
        return np.zeros((ny, nx))
    width = width_fraction * nx
    x = (np.arange(nx) - 0.5 * (nx - 1)) / width
    prof = np.tanh(x) / math.tanh(x[-1])
    return np.repeat((0.5 * gradient * prof)[None, :], ny, axis=0)


def _thickness_map(rng: np.random.Generator, ny: int, nx: int, t_range: tuple[float, float],
                   correlation: float = FIELD_CORRELATION) -> np.ndarray:
    """Smooth t/lambda field (ny, nx) spanning exactly ``t_range``."""
    f = _smooth_field(rng, ny, nx, 1.0, correlation)
    lo, hi = float(f.min()), float(f.max())
    u = (f - lo) / (hi - lo) if hi > lo else np.full((ny, nx), 0.5)
    return t_range[0] + (t_range[1] - t_range[0]) * u


# --------------------------------------------------------------------------- anomaly shapes


def place(rng: np.random.Generator, ny: int, nx: int, n_bulk: int, k: int,
          shape: str) -> np.ndarray:
    """Boolean mask (ny, nx) with exactly ``k`` True pixels, all in rows >= n_bulk.

    Parameters
    ----------
    rng : numpy.random.Generator
    ny, nx : int
        Shape.
    n_bulk : int
        The first ``n_bulk`` rows (the bulk region) stay False.
    k : int
        Pixels to set.
    shape : {"pixels", "clusters", "line"}
        Isolated pixels (no 8-neighbour set while possible), small discs of
        radius 1.5-3 px, or thin (1-2 px) gently curving lines.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    truth = np.zeros((ny, nx), dtype=bool)
    if k == 0:
        return truth
    avail = np.zeros((ny, nx), dtype=bool)
    avail[n_bulk:] = True
    if shape == "pixels":
        _place_pixels(rng, truth, avail, k)
    elif shape == "clusters":
        _place_clusters(rng, truth, avail, k)
    else:
        _place_lines(rng, truth, avail, k)
    assert int(truth.sum()) == k and not truth[:n_bulk].any()
    return truth


def _place_pixels(rng, truth, avail, k) -> None:
    ny, nx = truth.shape
    cand = rng.permutation(np.flatnonzero(avail))
    n = 0
    for c in cand:  # isolated first: no 8-neighbour already anomalous
        y, x = divmod(int(c), nx)
        if not truth[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any():
            truth[y, x] = True
            n += 1
            if n == k:
                return
    for c in cand:  # too many to isolate: fill the rest at random
        y, x = divmod(int(c), nx)
        if not truth[y, x]:
            truth[y, x] = True
            n += 1
            if n == k:
                return


def _place_clusters(rng, truth, avail, k) -> None:
    ny, nx = truth.shape
    n = 0
    while n < k:
        c = int(rng.choice(np.flatnonzero(avail & ~truth)))
        cy, cx = divmod(c, nx)
        r = float(rng.uniform(1.5, 3.0))
        ri = int(math.ceil(r))
        y0, y1, x0, x1 = max(0, cy - ri), min(ny, cy + ri + 1), max(0, cx - ri), min(nx, cx + ri + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        ok = (d2 <= r * r) & avail[y0:y1, x0:x1] & ~truth[y0:y1, x0:x1]
        order = np.argsort(d2[ok], kind="stable")  # closest first: trimming keeps a compact blob
        ys, xs = yy[ok][order], xx[ok][order]
        take = min(len(ys), k - n)
        truth[ys[:take], xs[:take]] = True
        n += take


def trace_curve(rng: np.random.Generator, avail: np.ndarray,
                step: float = 0.5) -> list[tuple[int, int]]:
    """Pixels of a gently curving random line through a random available point, in order.

    Parameters
    ----------
    rng : numpy.random.Generator
    avail : ndarray of bool, shape (ny, nx)
        Where the line may run; it stops at the first pixel outside.
    step : float
        Step along the line, pixels.

    Returns
    -------
    list of (int, int)
        ``(y, x)`` of the line's pixels, end to end.
    """
    ny, nx = avail.shape
    c = int(rng.choice(np.flatnonzero(avail)))
    y0, x0 = divmod(c, nx)
    heading = float(rng.uniform(0.0, 2.0 * math.pi))
    curl = float(rng.normal(0.0, 0.02))
    halves = []
    for direction in (1.0, -1.0):
        y, x, h = float(y0), float(x0), heading if direction > 0 else heading + math.pi
        pts: list[tuple[int, int]] = []
        for _ in range(int(4 * (ny + nx) / step)):
            y += step * math.sin(h)
            x += step * math.cos(h)
            h += direction * curl + float(rng.normal(0.0, 0.03))
            iy, ix = int(round(y)), int(round(x))
            if not (0 <= iy < ny and 0 <= ix < nx) or not avail[iy, ix]:
                break
            if not pts or pts[-1] != (iy, ix):
                pts.append((iy, ix))
        halves.append(pts)
    return halves[1][::-1] + [(y0, x0)] + halves[0]


def _place_lines(rng, truth, avail, k) -> None:
    n = 0
    while n < k:
        pts = _trace_curve(rng, avail & ~truth)
        thick = int(rng.integers(1, 3))
        ordered: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for i, (y, x) in enumerate(pts):
            cells = [(y, x)]
            if thick == 2:  # second pixel across the local direction
                j0, j1 = max(0, i - 1), min(len(pts) - 1, i + 1)
                dy, dx = pts[j1][0] - pts[j0][0], pts[j1][1] - pts[j0][1]
                cells.append((y + 1, x) if abs(dx) >= abs(dy) else (y, x + 1))
            for cy, cx in cells:
                if (0 <= cy < truth.shape[0] and 0 <= cx < truth.shape[1] and avail[cy, cx]
                        and not truth[cy, cx] and (cy, cx) not in seen):
                    seen.add((cy, cx))
                    ordered.append((cy, cx))
        take = ordered[:k - n]
        if take:
            ys, xs = zip(*take)
            truth[list(ys), list(xs)] = True
        n += len(take)


# --------------------------------------------------------------------------- simulate


def row_chunks(ny: int, rows: int) -> list[slice]:
    """Slices of ``rows`` image rows covering ``0..ny`` (the last one may be shorter).

    Parameters
    ----------
    ny : int
        Image rows.
    rows : int
        Rows per chunk, >= 1.

    Returns
    -------
    list of slice
    """
    return [slice(r, min(ny, r + rows)) for r in range(0, ny, rows)]


# the names the simulators have always called
_smooth_field = smooth_field
_place = place
_trace_curve = trace_curve
_row_chunks = row_chunks
