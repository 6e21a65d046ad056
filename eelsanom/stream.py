"""Scoring and training on spectrum images larger than memory, block by block.

A :class:`~eelsanom.spectrum.SpectrumImage` whose data is a dask array (e.g.
``load_spectrum_image(path, lazy=True)``) is scored by :func:`score_streaming`
one spatial block at a time through :meth:`BaseDetector.score_block
<eelsanom.detectors.base.BaseDetector.score_block>`: each block is read (dask
computes only its chunks), scored and dropped, so resident memory is bounded by
the block size, not the file size. Per-pixel models (PCA, RX) read the block
alone; the 3D-CVAE also reads its ``score_context`` pixels around the block (its
network's receptive field plus its widest pooling kernel, 22 pixels with the
defaults), which makes every block's scores equal that block of the
whole-image score. The result is the eager result to float tolerance.

What stays in memory is the per-pixel output, a few ``(ny, nx)`` maps and the
latent codes ``(ny, nx, d)``: an ``n_energy``-th (resp. ``d / n_energy``) of the
cube. The threshold needs the whole NLL map, so it is computed after the last
block; the mask is then written.

With ``out``, the maps are also written to disk as they are produced: the NLL
map and the latent codes block by block into ``<stem>_nll.zspy`` and
``<stem>_latent.zspy`` (zarr stores laid out exactly as HyperSpy writes a
calibrated ``Signal2D`` / ``Signal1D``, the same names and metadata as
:func:`eelsanom.io.save_result`), the mask into ``<stem>_mask.zspy`` once the
threshold is known. Each store is written under a hidden temporary name and
renamed into place when complete, so an interrupted run leaves no partial store
under a final name.

Training (:func:`fit_streaming`) never reads the whole cube either: a per-pixel
model gathers only the bulk-mask pixels, one band of rows at a time, randomly
subsampled to at most ``max_train_pixels``; a spatial model (the 3D-CVAE, which
reads the bounding box of its mask plus its halo) is trained on a window of at
most ``max_train_pixels`` pixels holding the most bulk pixels.

:func:`should_stream` says whether a cube is worth streaming: above a quarter
of the available memory (``psutil``), or above ``EELSANOM_STREAM_BYTES`` bytes
when that environment variable is set.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .detectors.base import check_train_mask
from .errors import InputError
from .io._files import _check_output, _commit, _remove, _tmp_sibling, _writing
from .io.read import STREAM_ENV, should_stream, stream_decision, stream_threshold_bytes
from .io.signals import _latent_signal, map_to_signal
from .io.write import _map_labels, _result_info, _safe_stem
from .progress import ProgressCallback, emit
from .result import AnomalyResult
from .spectrum import Axis, SpectrumImage, _jsonify, as_spectrum_image

log = logging.getLogger(__name__)

__all__ = ["STREAM_ENV", "BLOCK_VALUES", "TRAIN_VALUES", "stream_threshold_bytes",
           "should_stream", "stream_decision", "plan_blocks", "fit_streaming", "score_streaming"]

#: default values (pixels x channels) per streamed block: 32 MiB of float32
BLOCK_VALUES = 1 << 23
#: default cap on the values gathered for training: 64 MiB of float32 spectra
TRAIN_VALUES = 1 << 24


# ----------------------------------------------------------------------------- blocks
def _regular_chunk(chunks: Any, axis: int) -> int | None:
    """The chunk size of a dask array along ``axis`` when regular (all but the last equal)."""
    try:
        c = tuple(chunks[axis])
    except (TypeError, IndexError):
        return None
    if not c or len(set(c[:-1])) > 1 or c[-1] > c[0]:
        return None
    return int(c[0])


def plan_blocks(nav_shape: tuple[int, int], n_energy: int, *, chunk_pixels: int | None = None,
                chunks: Any = None, context: int = 0
                ) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """Split the navigation grid into blocks of at most about ``chunk_pixels`` pixels.

    Whole-width bands of rows when a row fits and ``context`` is 0, else
    near-square tiles (a block read with ``context`` pixels around it wastes least
    when square); a block side larger than the data's (regular) dask chunk is
    rounded down to a multiple of it so that no chunk is read twice.

    Parameters
    ----------
    nav_shape : (ny, nx)
    n_energy : int
    chunk_pixels : int, optional
        Pixels per block; default ``BLOCK_VALUES // n_energy`` (32 MiB of float32).
    chunks : dask ``.chunks`` of the data, optional
    context : int
        The detector's ``score_context``.

    Returns
    -------
    (bh, bw, blocks)
        Block height and width and the ``(y0, y1, x0, x1)`` blocks in row-major order.
    """
    ny, nx = (int(v) for v in nav_shape)
    if chunk_pixels is None:
        chunk_pixels = BLOCK_VALUES // max(1, int(n_energy))
    cp = max(1, int(chunk_pixels))
    if nx <= (cp if context <= 0 else math.isqrt(cp)):
        bw, bh = nx, max(1, min(ny, cp // nx))
    else:
        bh = max(1, min(ny, math.isqrt(cp)))
        bw = max(1, min(nx, cp // bh))
    for axis, (b, n) in enumerate(((bh, ny), (bw, nx))):
        c = _regular_chunk(chunks, axis) if chunks is not None else None
        if c and c < b < n:
            b = (b // c) * c
        if axis == 0:
            bh = b
        else:
            bw = b
    blocks = [(y, min(y + bh, ny), x, min(x + bw, nx))
              for y in range(0, ny, bh) for x in range(0, nx, bw)]
    return bh, bw, blocks


def _compute(block: Any, where: str) -> np.ndarray:
    """A (lazy) block as float32 numpy, refusing NaN/inf."""
    arr = np.asarray(block.compute() if hasattr(block, "compute") else block, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"expected finite values, found {int(bad.sum())} NaN/inf values in "
                         f"{where}. Replace them first, e.g. s.data = np.nan_to_num(s.data).")
    return arr


# ----------------------------------------------------------------------------- training
def _best_window(mask: np.ndarray, box: tuple[int, int, int, int], cap: int
                 ) -> tuple[int, int, int, int]:
    """A window of at most ``cap`` pixels inside ``box`` holding the most ``mask`` pixels."""
    r0, r1, c0, c1 = box
    bh, bw = r1 - r0, c1 - c0
    f = math.sqrt(cap / (bh * bw))
    h = max(1, min(bh, int(bh * f)))
    w = max(1, min(bw, cap // h))
    ii = np.zeros((bh + 1, bw + 1), np.int64)
    ii[1:, 1:] = np.cumsum(np.cumsum(mask[r0:r1, c0:c1], axis=0), axis=1)
    best, arg = -1, (r0, r0 + h, c0, c0 + w)
    sy, sx = max(1, h // 4), max(1, w // 4)
    ys = sorted(set(range(0, bh - h + 1, sy)) | {bh - h})
    xs = sorted(set(range(0, bw - w + 1, sx)) | {bw - w})
    for y in ys:
        for x in xs:
            n = ii[y + h, x + w] - ii[y, x + w] - ii[y + h, x] + ii[y, x]
            if n > best:
                best, arg = int(n), (r0 + y, r0 + y + h, c0 + x, c0 + x + w)
    return arg


def _crop(si: SpectrumImage, y0: int, y1: int, x0: int, x1: int) -> SpectrumImage:
    """A lazy spatial crop with its calibrated axes."""
    return replace(si, data=si.data[y0:y1, x0:x1],
                   y=replace(si.y, size=y1 - y0, offset=si.y.offset + y0 * si.y.scale),
                   x=replace(si.x, size=x1 - x0, offset=si.x.offset + x0 * si.x.scale),
                   ground_truth=None if si.ground_truth is None
                   else si.ground_truth[y0:y1, x0:x1])


def fit_streaming(detector: Any, si: Any, train_mask: Any = None, *,
                  max_train_pixels: int | None = None, chunk_pixels: int | None = None,
                  seed: int = 0, progress: ProgressCallback | None = None) -> Any:
    """Fit ``detector`` on a (lazy) spectrum image without reading the whole cube.

    Eager data, or a training set within the cap, give exactly ``detector.fit(si,
    train_mask)``. Otherwise:

    - per-pixel models (``score_context == 0``: PCA, RX): the bulk pixels (all
      pixels with no mask) are gathered one band of rows at a time, only the bands
      holding them; beyond ``max_train_pixels`` a seeded random subset of them. The
      detector is fitted on them as a one-row image (the same pixels in the same
      order as an eager fit, so the same model when nothing is subsampled);
      with no mask it still trains robustly (trimming);
    - spatial models (the 3D-CVAE, which reads only its mask's bounding box plus
      its halo): when that box exceeds ``max_train_pixels``, the mask is cut to
      the window of at most that many pixels holding the most bulk pixels (with
      no mask, the image is cropped to a central window and trained on robustly).

    Parameters
    ----------
    detector : BaseDetector
    si : SpectrumImage (numpy or dask data)
    train_mask : ndarray of bool, shape (ny, nx), optional
    max_train_pixels : int, optional
        Default ``TRAIN_VALUES // n_energy`` (64 MiB of float32 spectra).
    chunk_pixels : int, optional
        Pixels read at once (see :func:`plan_blocks`).
    seed : int
        Seeds the random subset.
    progress : callable, optional

    Returns
    -------
    detector (fitted)
    """
    si = as_spectrum_image(si, what="training data")
    if not si.is_lazy:
        return detector.fit(si, train_mask, progress=progress)
    detector._validate_params()
    mask = check_train_mask(train_mask, si.nav_shape, min_pixels=detector.min_train_pixels)
    er = getattr(detector, "energy_range", None)
    sic = si.crop_energy(er[0], er[1]) if er is not None else si
    ny, nx = sic.nav_shape
    ne = sic.n_energy
    cap = int(max_train_pixels) if max_train_pixels else TRAIN_VALUES // ne
    cap = max(cap, int(detector.min_train_pixels))
    if int(getattr(detector, "score_context", 0)) > 0:
        box = (0, ny, 0, nx)
        if mask is not None:
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        area = (box[1] - box[0]) * (box[3] - box[2])
        if area <= cap:
            log.info("training %s on the %s (%d px) read lazily", type(detector).__name__,
                     "bulk mask's bounding box" if mask is not None else "whole image", area)
            return detector.fit(si, mask, progress=progress)
        win = _best_window(np.ones((ny, nx), bool) if mask is None else mask, box, cap)
        y0, y1, x0, x1 = win
        if mask is None:
            log.info("training %s robustly on the window y %d:%d, x %d:%d (%d px; the image has "
                     "%d, more than the cap of %d)", type(detector).__name__, y0, y1, x0, x1,
                     (y1 - y0) * (x1 - x0), ny * nx, cap)
            return detector.fit(_crop(si, *win), None, progress=progress)
        sub = np.zeros_like(mask)
        sub[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
        log.info("training %s on the %d bulk pixels in the window y %d:%d, x %d:%d (the mask's "
                 "bounding box has %d px, more than the cap of %d)", type(detector).__name__,
                 int(sub.sum()), y0, y1, x0, x1, area, cap)
        return detector.fit(si, check_train_mask(sub, (ny, nx),
                                                 min_pixels=detector.min_train_pixels),
                            progress=progress)
    # per-pixel model: gather the training spectra band by band
    sel = np.flatnonzero(mask.ravel()) if mask is not None else np.arange(ny * nx)
    n_all = sel.size
    if n_all > cap:
        sel = np.sort(np.random.default_rng(seed).choice(sel, size=cap, replace=False))
        log.info("training %s on a random %d of the %d %s pixels (cap %d = %d values / %d "
                 "channels)", type(detector).__name__, sel.size, n_all,
                 "bulk" if mask is not None else "image's", cap, TRAIN_VALUES, ne)
    X = np.empty((sel.size, ne), np.float32)
    step = max(1, (chunk_pixels or BLOCK_VALUES // ne) // nx)
    bands = list(range(0, ny, step))
    for k, y0 in enumerate(bands):
        y1 = min(ny, y0 + step)
        i0, i1 = np.searchsorted(sel, [y0 * nx, y1 * nx])
        if i1 > i0:
            flat = sel[i0:i1] - y0 * nx
            c0, c1 = int((flat % nx).min()), int((flat % nx).max()) + 1
            band = _compute(sic.data[y0:y1, c0:c1], f"rows {y0}:{y1}")
            X[i0:i1] = band[flat // nx, flat % nx - c0]
        emit(progress, "read", k + 1, len(bands))
    train = SpectrumImage(X[None], energy=sic.energy, y=Axis(1, 1.0, 0.0, "px", "y"),
                          x=Axis(sel.size, 1.0, 0.0, "px", "pixel"), title=si.title,
                          source=si.source)
    if mask is None:  # robust training scores each row's image neighbourhood too
        detector._train_positions = (sel, (ny, nx))
    try:
        return detector.fit(train, None if mask is None else np.ones((1, sel.size), bool),
                            progress=progress)
    finally:
        detector.__dict__.pop("_train_positions", None)


# ----------------------------------------------------------------------------- writing
class _ZspyMap:
    """A map written block by block into a ``.zspy`` store HyperSpy reads as a calibrated signal.

    The store is made by HyperSpy itself from a lazy all-zero signal carrying the
    final axes and metadata (so the layout is HyperSpy's), under a hidden
    temporary name; blocks are then written into its zarr array, the metadata
    completed, and the store renamed into place by :meth:`commit`.
    """

    def __init__(self, signal: Any, path: Path, protect: Iterable[Any]) -> None:
        import zarr

        self.path = _check_output(path, overwrite=True, protect=protect)
        self.tmp = _tmp_sibling(self.path)
        try:
            with _writing(self.path), warnings.catch_warnings():  # zarr 2 deprecates the store
                warnings.simplefilter("ignore", FutureWarning)
                signal.save(self.tmp, overwrite=True, show_progressbar=False)
                store = zarr.storage.NestedDirectoryStore(str(self.tmp))
            root = zarr.open_group(store, mode="r+")
            exps = root["Experiments"]
            (name,) = list(exps.group_keys())
            self.group = exps[name]
            self.data = self.group["data"]
        except BaseException:
            self.abort()
            raise

    def write(self, region: tuple[int, int, int, int], block: np.ndarray) -> None:
        y0, y1, x0, x1 = region
        with _writing(self.path):  # a full disk: named, and the temporary store removed
            self.data[y0:y1, x0:x1] = block

    def set_metadata(self, node: str, values: dict[str, Any]) -> None:
        """Set ``metadata.<node>.<key>`` (HyperSpy's zspy stores ``None`` as ``'_None_'``)."""
        self.group["metadata"][node].attrs.update(
            {k: ("_None_" if v is None else _jsonify(v)) for k, v in values.items()})

    def commit(self) -> Path:
        with _writing(self.path):
            _commit(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        _remove(self.tmp)


def _lazy_like(sig: Any, chunks: tuple[int, ...]) -> Any:
    import dask.array as da

    lazy = sig.as_lazy()
    lazy.data = da.zeros(sig.data.shape, dtype=sig.data.dtype, chunks=chunks)
    return lazy


def _map_store(like: Any, shape: tuple[int, int], dtype: Any, path: Path, *, title: str,
               quantity: str, info: dict[str, Any], chunks: tuple[int, int],
               protect: Iterable[Any]) -> _ZspyMap:
    sig = map_to_signal(np.zeros(shape, dtype), like, title=title, quantity=quantity)
    sig.metadata.add_dictionary({"eelsanom": dict(info)})
    return _ZspyMap(_lazy_like(sig, chunks), path, protect)


def _latent_store(like: Any, shape: tuple[int, int, int], path: Path, *, title: str,
                  info: dict[str, Any], chunks: tuple[int, int], protect: Iterable[Any]
                  ) -> _ZspyMap:
    sig = _latent_signal(np.zeros(shape, np.float32), like, title=title)
    sig.metadata.add_dictionary({"eelsanom": dict(info)})
    return _ZspyMap(_lazy_like(sig, (*chunks, shape[2])), path, protect)


# ----------------------------------------------------------------------------- scoring
def score_streaming(detector: Any, si: Any, *, out: str | os.PathLike | None = None,
                    stem: str | None = None, chunk_pixels: int | None = None,
                    protect: Iterable[Any] = (), progress: ProgressCallback | None = None
                    ) -> AnomalyResult:
    """Score ``si`` block by block (never holding the cube), optionally writing ``.zspy`` maps.

    Parameters
    ----------
    detector : BaseDetector
        Fitted.
    si : SpectrumImage
        numpy or dask data (a lazily loaded file).
    out : str or Path, optional
        Output folder: write ``<stem>_nll.zspy`` and ``<stem>_latent.zspy`` (when the
        detector has latent codes) block by block as they are scored, and
        ``<stem>_mask.zspy`` once the threshold is known; same names, layout and
        metadata as :func:`eelsanom.io.save_result` with ``formats=("zspy",)``.
    stem : str, optional
        File-name stem; default the input file's name (or ``"result"``).
    chunk_pixels : int, optional
        Pixels per block (see :func:`plan_blocks`); default 32 MiB of spectra per block.
        Resident memory is about this block plus its ``score_context`` halo, plus
        the detector's working memory for it (the 3D-CVAE's ``tile_size`` bounds that).
    protect : iterable of paths
        Paths never written (the input file).
    progress : callable, optional
        Receives ``"score"`` events, one per block.

    Returns
    -------
    AnomalyResult
        Equal to ``detector.score(si)`` to float tolerance. ``info["streaming"]``
        records the blocks; ``info["outputs"]`` the files written (with ``out``).
    """
    siw = detector.window(si)
    ny, nx = siw.nav_shape
    chunks = getattr(siw.data, "chunks", None)
    ctx = int(getattr(detector, "score_context", 0))
    bh, bw, blocks = plan_blocks((ny, nx), siw.n_energy, chunk_pixels=chunk_pixels,
                                 chunks=chunks, context=ctx)
    log.info("streaming %s over %d block(s) of up to %d x %d px (context %d px)",
             type(detector).__name__, len(blocks), bh, bw, ctx)
    method = str(detector.method)
    if out is not None:
        stem = _safe_stem(stem or (Path(si.source).name.split(".")[0] if si.source
                                   else "result"))
        outdir = Path(out).expanduser()
        outdir.mkdir(parents=True, exist_ok=True)
    info_params = {"params": detector.get_params()}
    placeholder = AnomalyResult(nll=np.zeros((0, 0)), threshold=float("nan"),
                                threshold_method="", mask=np.zeros((0, 0), bool), method=method,
                                y=siw.y, x=siw.x, energy=siw.energy, info=info_params)
    nll = np.empty((ny, nx), np.float64)
    latent: np.ndarray | None = None
    maps: dict[str, np.ndarray] = {}
    stores: dict[str, _ZspyMap] = {}
    t0 = time.perf_counter()
    try:
        if out is not None:
            title, quantity = _map_labels(stem, method)["nll"]
            stores["nll"] = _map_store(siw, (ny, nx), np.float32, outdir / f"{stem}_nll.zspy",
                                       title=title, quantity=quantity,
                                       info=_result_info(placeholder), chunks=(bh, bw),
                                       protect=protect)
        for i, region in enumerate(blocks):
            y0, y1, x0, x1 = region
            b_nll, b_lat, b_maps = detector.score_block(siw, region)
            nll[y0:y1, x0:x1] = b_nll
            if b_lat is not None:
                if latent is None:
                    latent = np.zeros((ny, nx, b_lat.shape[-1]), np.float32)
                    if out is not None:
                        stores["latent"] = _latent_store(
                            siw, latent.shape, outdir / f"{stem}_latent.zspy",
                            title=_map_labels(stem, method)["latent"][0],
                            info=_result_info(placeholder), chunks=(bh, bw), protect=protect)
                latent[y0:y1, x0:x1] = b_lat
                if "latent" in stores:
                    stores["latent"].write(region, np.asarray(b_lat, np.float32))
            for k, v in b_maps.items():
                v = np.asarray(v)
                if k not in maps:
                    maps[k] = np.zeros((ny, nx) + v.shape[2:], v.dtype)
                maps[k][y0:y1, x0:x1] = v
            if "nll" in stores:
                stores["nll"].write(region, b_nll.astype(np.float32))
            emit(progress, "score", i + 1, len(blocks))
        dt = time.perf_counter() - t0
        # the threshold needs the whole NLL map (ny x nx floats, small): only now the mask
        result = detector._result(siw, nll, latent, maps, score_seconds=dt)
        t, label = result.threshold, result.threshold_method
        if out is not None:
            final = _result_info(result)
            title, quantity = _map_labels(stem, method, t, label)["mask"]
            stores["mask"] = _map_store(
                siw, (ny, nx), bool, outdir / f"{stem}_mask.zspy", title=title,
                quantity=quantity, info=final, chunks=(bh, bw), protect=protect)
            for region in blocks:
                y0, y1, x0, x1 = region
                stores["mask"].write(region, result.mask[y0:y1, x0:x1])
            written = {}
            for name, store in stores.items():
                store.set_metadata("eelsanom", final)
                written[f"{name}_zspy"] = store.commit()
            result.info["outputs"] = {k: str(v) for k, v in written.items()}
    except BaseException:
        for store in stores.values():
            store.abort()
        raise
    result.info["streaming"] = {"blocks": len(blocks), "block_shape": [bh, bw],
                                "context": ctx}
    log.info("streamed %d block(s) in %.1f s", len(blocks), dt)
    return result
