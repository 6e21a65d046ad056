"""Per-pixel latent maps and the 2-D view of the codes, as the napari latent panel shows them.

Qt-free, so that a notebook gets exactly what the panel draws::

    from eelsanom.latent.maps import compute_latent_maps, project_codes
    maps = compute_latent_maps(result, reference_result, reference_label="PCA-6")
    maps.maps["procrustes_residual"]          # (ny, nx)
    coords, explained = project_codes(result.latent)

- :func:`compute_latent_maps`: local intrinsic dimension of each pixel's codes and, against
  a reference space over the same pixels, the relative-representation agreement, the mutual
  k-NN overlap and the Procrustes residual (divided by the RMS norm of the codes);
- :func:`project_codes`: the codes on their first two principal axes;
- :func:`scatter_indices`: which pixels a scatter of the codes shows (a fixed-seed random
  subsample above a maximum, the most anomalous drawn last).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .alignment import procrustes
from .dimension import local_dimension_map
from .relative import relative_agreement
from .similarity import mutual_knn_map

__all__ = ["LatentMaps", "compute_latent_maps", "project_codes", "scatter_indices",
           "MAP_KEYS", "TWO_SPACE_KEYS", "SCATTER_SEED", "N_ANCHORS"]

#: Keys of :attr:`LatentMaps.maps`, in the order the panel lists them.
MAP_KEYS = ("local_dimension", "relative_agreement", "mutual_knn", "procrustes_residual",
            "seed_disagreement")
#: The maps that compare two spaces (present only with a reference).
TWO_SPACE_KEYS = ("relative_agreement", "mutual_knn", "procrustes_residual")
#: Seed of the scatter's random subsample.
SCATTER_SEED = 0
#: k-means anchors of the relative representations.
N_ANCHORS = 32


def _flat_codes(latent: Any) -> tuple[np.ndarray, tuple[int, int]]:
    z = getattr(latent, "latent", latent)  # an AnomalyResult's codes, or the array itself
    if z is None:
        raise InputError("latent codes: expected an array of shape (ny, nx, d) or a result "
                         "with latent codes, found a result without them (RX keeps none); "
                         "use a 3D-CVAE or PCA result.")
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 3:
        raise InputError(f"latent codes: expected shape (ny, nx, d), found {z.shape}. Pass "
                         "result.latent (or the result itself).")
    return z.reshape(-1, z.shape[2]), (int(z.shape[0]), int(z.shape[1]))


def project_codes(latent: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codes projected on their first two principal axes.

    Parameters
    ----------
    latent : AnomalyResult or array of shape (ny, nx, d)

    Returns
    -------
    coords : ndarray of shape (ny * nx, 2)
        Row-major pixel order; ``coords[:, 1]`` is 0 for a one-dimensional latent.
        Rows with non-finite codes are NaN. Each axis's sign is fixed (its largest
        loading is positive), so the picture does not flip between runs.
    explained : ndarray of shape (2,)
        Fraction of the codes' variance along each axis (0 for a missing axis).

    Raises
    ------
    InputError
        ``latent`` is not of shape (ny, nx, d), or the result has no codes.
    """
    z, _ = _flat_codes(latent)
    ok = np.all(np.isfinite(z), axis=1)
    coords = np.full((z.shape[0], 2), np.nan)
    explained = np.zeros(2)
    if ok.sum() < 2:
        return coords, explained
    zc = z[ok] - z[ok].mean(axis=0)
    cov = zc.T @ zc / max(1, zc.shape[0] - 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1][:2]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    v = v * np.where(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])] < 0, -1.0, 1.0)
    coords[ok, : v.shape[1]] = zc @ v
    if v.shape[1] == 1:
        coords[ok, 1] = 0.0
    total = float(np.clip(np.trace(cov), 0.0, None))
    explained[: w.size] = w / total if total > 0 else 0.0
    return coords, explained


def scatter_indices(valid: Any, values: Any, max_points: int,
                    seed: int = SCATTER_SEED) -> np.ndarray:
    """Flat pixel indices a scatter of the codes shows.

    All valid pixels, or ``max_points`` of them drawn at random with ``seed``; ordered by
    ascending ``values`` (the most anomalous drawn last, on top).

    Parameters
    ----------
    valid : bool array of shape (n,)
        Pixels that may be shown (finite codes and score).
    values : array of shape (n,)
        The score that orders them (e.g. the NLL).
    max_points : int
        At most this many indices (at least 1).
    seed : int
        Seed of the random subsample.

    Returns
    -------
    ndarray of int, shape (m,)
        ``m = min(max_points, valid.sum())``.

    Raises
    ------
    InputError
        ``valid`` and ``values`` differ in length, or ``max_points`` < 1.
    """
    valid = np.asarray(valid, bool).ravel()
    values = np.asarray(values).ravel()
    if valid.shape != values.shape:
        raise InputError(f"scatter_indices: expected valid and values of the same length, "
                         f"found {valid.size} and {values.size}.")
    if int(max_points) < 1:
        raise InputError(f"scatter_indices: expected max_points >= 1, found {max_points}.")
    idx = np.flatnonzero(valid)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(max_points),
                                                         replace=False))
    return idx[np.argsort(values[idx], kind="stable")]


@dataclass
class LatentMaps:
    """The output of :func:`compute_latent_maps`.

    Attributes
    ----------
    maps : dict of str -> ndarray of shape (ny, nx)
        Keys of :data:`MAP_KEYS` (float32).
    reference : str
        The reference space of the two-space maps ("" when none).
    summary : dict of str -> float
        Scalar read-outs (median local dimension, mean agreement, mean kNN overlap,
        Procrustes relative residual).
    seconds : float
        Time the maps took.
    """

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    reference: str = ""
    summary: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def compute_latent_maps(latent: Any, reference: Any = None, *, reference_label: str = "",
                        k: int = 20, n_anchors: int = N_ANCHORS,
                        seed_disagreement: Any = None) -> LatentMaps:
    """Per-pixel maps of ``latent`` (and against ``reference``), as the napari panel shows.

    Parameters
    ----------
    latent : AnomalyResult or array of shape (ny, nx, d)
    reference : AnomalyResult or array of shape (ny, nx, d_ref), optional
        A second space over the same pixels (e.g. a PCA fitted on the bulk, or another
        run); None computes the single-space map only.
    reference_label : str
        How to call the reference (kept in :attr:`LatentMaps.reference`).
    k : int
        Neighbours for the local intrinsic dimension and the mutual k-NN overlap.
    n_anchors : int
        k-means anchors of the relative representations (seed 0).
    seed_disagreement : array of shape (ny, nx), optional
        Passed through as the ``"seed_disagreement"`` map (a result's
        ``maps["seed_disagreement"]`` when trained with several seeds).

    Returns
    -------
    LatentMaps
        ``maps["local_dimension"]`` always; the three two-space maps with a reference.

    Raises
    ------
    InputError
        Codes of the wrong shape, spaces over different pixels, ``k`` too large for the
        image, or a seed map of another shape.
    """
    _, shape = _flat_codes(latent)
    if reference is not None:
        _, ref_shape = _flat_codes(reference)
        if ref_shape != shape:
            raise InputError(f"compute_latent_maps: the reference covers {ref_shape} pixels, "
                             f"the codes {shape}; expected the same image.")
    if seed_disagreement is not None and np.shape(seed_disagreement) != shape:
        raise InputError(f"compute_latent_maps: expected a seed-disagreement map of shape "
                         f"{shape}, found {np.shape(seed_disagreement)}.")
    t0 = time.perf_counter()
    out = LatentMaps(reference=reference_label if reference is not None else "")
    out.maps["local_dimension"] = np.asarray(local_dimension_map(latent, k=k), np.float32)
    if reference is not None:
        out.maps["relative_agreement"] = np.asarray(
            relative_agreement(latent, reference, n_anchors=n_anchors, seed=0), np.float32)
        out.maps["mutual_knn"] = np.asarray(mutual_knn_map(latent, reference, k=k),
                                            np.float32)
        pr = procrustes(reference, latent)
        rms = pr.rms_b if pr.rms_b > 0 else 1.0
        out.maps["procrustes_residual"] = np.asarray(pr.residual_map / rms, np.float32)
        out.summary.update(
            relative_agreement=float(np.nanmean(out.maps["relative_agreement"])),
            mutual_knn=float(np.mean(out.maps["mutual_knn"])),
            procrustes_relative_residual=float(pr.relative_residual))
    if seed_disagreement is not None:
        out.maps["seed_disagreement"] = np.asarray(seed_disagreement, np.float32)
    out.summary["local_dimension"] = float(np.nanmedian(out.maps["local_dimension"]))
    out.seconds = time.perf_counter() - t0
    return out
