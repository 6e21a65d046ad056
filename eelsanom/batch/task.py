"""The per-file job a Dask worker runs: load, score, write the outputs of ``apply``."""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from ..detectors import load_detector
from ..errors import InputError
from ..io import write_json
from ..io._files import _remove
from ..pipeline import load_input, run_formats, score_input, write_run
from .inputs import _fingerprint
from .records import DONE_NAME

log = logging.getLogger(__package__)  # "eelsanom.batch", as before the split


_local = threading.local()


def _detector(model: str, model_sha256: str):
    """The model, loaded once per worker thread (a detector is not shared between threads)."""
    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    key = (model, model_sha256)
    if key not in cache:
        cache.clear()
        cache[key] = load_detector(model)
    return cache[key]


def _worker_gpu(n_gpus: int) -> str | None:
    """``cuda:<i>`` for LocalCluster worker number i (one worker per GPU)."""
    if n_gpus <= 0:
        return None
    try:
        from distributed import get_worker

        name = get_worker().name
        return f"cuda:{int(name) % n_gpus}"
    except (ImportError, ValueError, TypeError):
        return "cuda"


def process_file(path: str, folder: str, name: str, *, model: str, model_sha256: str,
                 settings: dict[str, Any], lazy: bool | None = None,
                 torch_threads: int | None = None,
                 local_gpus: int = 0) -> dict[str, Any]:
    """Score one file with the model and write its outputs; never raises for a bad file.

    Runs on a Dask worker (or anywhere): HyperSpy and torch are imported here.
    The outputs are those of ``eelsanom apply`` (``<name>_nll.hspy``, masks,
    pictures, ``<name>_summary.json``) in ``folder``, then ``done.json`` last.

    Parameters
    ----------
    path : str
        Input file.
    folder, name : str
        Output folder and the stem of the files written in it.
    model, model_sha256 : str
        Model file and its hash (recorded in ``done.json``).
    settings : dict
        ``threshold`` (None: the model's rule), ``signal``, ``formats``, ``device``.
    lazy : bool, optional
        True: stream the file block by block (:mod:`eelsanom.stream`); False: load it
        whole; None: stream when it is larger than a quarter of the free memory.
    torch_threads : int, optional
        Limit torch's intra-op threads (one-thread workers).
    local_gpus : int
        > 0: a LocalCluster worker with one GPU each; score on ``cuda:<worker index>``.

    Returns
    -------
    dict
        The :class:`FileRecord` fields (``status`` ``"done"`` or ``"failed"``).
    """
    t0 = time.perf_counter()
    out = Path(folder)
    rec: dict[str, Any] = {"input": path, "name": name, "status": "failed", "output": "",
                           "started": time.time()}
    try:
        from distributed import get_worker

        rec["worker"] = str(get_worker().address)
    except (ImportError, ValueError):
        rec["worker"] = "local"
    try:
        import dask

        # dask arrays inside the task (HyperSpy's lazy reading) compute here, in this thread:
        # on a worker dask would otherwise send them to the cluster and let this worker start
        # more files than it has threads (and move the data between workers)
        with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
            warnings.simplefilter("ignore")
            if torch_threads:
                import torch

                torch.set_num_threads(int(torch_threads))
            _remove(out / DONE_NAME)  # the folder is incomplete until done.json is back
            fp = _fingerprint(Path(path))
            det = _detector(model, model_sha256)
            if settings.get("threshold") is not None:
                det.threshold = settings["threshold"]
            dev = settings.get("device")
            if local_gpus and ":" not in str(dev):  # one LocalCluster worker per GPU
                dev = _worker_gpu(local_gpus)
            if dev is not None and "device" in det.get_params():
                det.set_params(device=dev)
            # eager, or streamed block by block (--lazy, or automatically for a cube larger
            # than a quarter of the worker's free memory): the same path as `apply`
            si = load_input(path, signal=settings.get("signal"), lazy=lazy)
            result = score_input(det, si, out=out, stem=name, formats=settings["formats"],
                                 protect=[model])
            summary = write_run(result, si, out, name,
                                formats=run_formats(settings["formats"], streamed=si.is_lazy),
                                protect=[model],
                                extra={"model": model, "model_sha256": model_sha256})
            c = summary["counts"]
            rec.update(status="done", n_pixels=int(c["pixels"]), n_flagged=int(c["flagged"]),
                       anomaly_fraction=float(c["flagged_fraction"]),
                       threshold=float(result.threshold), output=str(out))
            rec["seconds"] = time.perf_counter() - t0
            write_json({"status": "done", "eelsanom_version": __version__, "input": path,
                        **fp, "model": model, "model_sha256": model_sha256,
                        "settings": settings, "seconds": rec["seconds"],
                        "n_pixels": rec["n_pixels"], "n_flagged": rec["n_flagged"],
                        "anomaly_fraction": rec["anomaly_fraction"],
                        "threshold": rec["threshold"],
                        "threshold_method": result.threshold_method,
                        "outputs": summary["outputs"],
                        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(
                            timespec="seconds")},
                       out / DONE_NAME, protect=[path, model])
    except InputError as exc:
        rec.update(status="failed", output="", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch
        rec.update(status="failed", output="", error=f"{type(exc).__name__}: {exc}")
    if rec["status"] == "failed":
        rec["seconds"] = time.perf_counter() - t0
        log.info("%s failed: %s", path, rec["error"])
    return rec
