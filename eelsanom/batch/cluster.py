"""Running the batch on Dask distributed: the cluster or scheduler, the futures, the summaries."""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..detectors import detector_class
from ..device import resolve_device
from ..errors import Cancelled, InputError
from ..io._files import _writing
from ..io.write import _normalise_formats
from ..modelfile import check_threshold_override, read_model
from ..progress import ProgressCallback, emit
from ..scoring import parse_threshold
from .inputs import (
    _check_batch_outputs,
    _clean_name,
    _complete,
    expand_inputs,
    file_sha256,
    folder_names,
)
from .records import BATCH_EXTENSIONS, BatchSummary, FileRecord
from .task import process_file

log = logging.getLogger(__package__)  # "eelsanom.batch", as before the split


def _cuda_gpus(params: dict[str, Any], device: str | None) -> int:
    """Number of local CUDA devices a model with ``params`` would use (0: the CPU).

    torch is imported only where a GPU may exist (NVIDIA device nodes on Linux),
    so a CPU-only client starts quickly.
    """
    if "device" not in params:
        return 0
    dev = device if device is not None else params.get("device")
    if str(dev).lower() in ("cpu", "mps"):
        return 0
    if device is None and sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*"):
        return 0
    try:
        if resolve_device(dev).type != "cuda":
            return 0
    except InputError:
        if device is not None:
            raise  # an explicit --device this machine lacks
        return 0
    import torch

    return 1 if ":" in str(dev) else int(torch.cuda.device_count())


def _start_client(scheduler: str | None, n_workers: int, n_gpus: int) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    if scheduler:
        if Path(scheduler).expanduser().is_file():
            return Client(scheduler_file=str(Path(scheduler).expanduser()), timeout="30s"), None
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"--scheduler: could not connect to {scheduler!r} ({exc}). Expected "
                             "the address of a running dask scheduler (tcp://HOST:PORT) or its "
                             "scheduler file (JSON).") from exc
    kw: dict[str, Any] = {}
    if n_gpus:
        kw["resources"] = {"GPU": 1}
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           silence_logs=logging.ERROR, **kw)
    return Client(cluster), cluster


def _dashboard(client: Any) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001
        return None
    if not link or "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return link


def run_batch(inputs: Iterable[str | os.PathLike], model: str | os.PathLike,
              out: str | os.PathLike, *, workers: int | None = None,
              scheduler: str | None = None, client: Any = None, force: bool = False,
              threshold: str | float | None = None, signal: int | None = None,
              device: str | None = None, formats: str | Sequence[str] | None = None,
              lazy: bool | None = None, overwrite: bool = False,
              progress: ProgressCallback | None = None) -> BatchSummary:
    """Score every input with ``model``, one Dask task per file; see the module docstring.

    Parameters
    ----------
    inputs : iterable of str or Path
        Files, directories (scanned for ``.dm3/.dm4/.hspy/.zspy/.emd``) or globs.
    model : str or Path
        Model file from ``eelsanom train`` / ``detect --model-out`` / ``det.save``.
    out : str or Path
        Output folder (created); one sub-folder per input plus ``summary.json/.csv``.
    workers : int, optional
        Worker processes of the LocalCluster (one thread each); default: the CPU
        count (the GPU count when the model runs on CUDA), at most the number of
        files to score.
    scheduler : str, optional
        Address (``tcp://host:8786``) or scheduler file of a running Dask scheduler
        to use instead of a LocalCluster.
    client : distributed.Client, optional
        An existing client to use (neither ``workers`` nor ``scheduler``).
    force : bool
        Redo inputs whose outputs are complete (default: skip them).
    threshold : str or float, optional
        Override the model's threshold rule (``robust[:K]``, ``otsu``, ``gmm``, percent,
        ``value:X``).
    signal : int, optional
        Which signal of multi-signal files.
    device : str, optional
        Override the model's torch device (``cpu``, ``cuda``, ...).
    formats : str or sequence of str, optional
        Map formats (``hspy``, ``zspy``, ``png``, ``tiff``); None: ``hspy,png``, plus
        ``zspy`` written block by block for a streamed file.
    lazy : bool, optional
        Stream each input block by block (True), load it whole (False), or decide per
        file by its size against the worker's free memory (None).
    overwrite : bool
        Also replace existing files in ``out`` that eelsanom did not write (its own
        earlier outputs, listed in the folder's ``.eelsanom-run.json``, are replaced
        anyway); inputs are never written.
    progress : callable, optional
        Receives a :class:`~eelsanom.progress.ProgressEvent` (stage ``"batch"``,
        step = files finished, total = files) as files finish, with ``message`` set
        once to the dashboard address; return ``False`` to cancel.

    Returns
    -------
    BatchSummary

    Raises
    ------
    InputError
        Missing or unreadable model, no input files, both ``workers`` and
        ``scheduler``, a bad threshold/format/worker count, an unreachable scheduler.
    Cancelled, KeyboardInterrupt
        After writing the summary (unfinished files ``"cancelled"``).
    """
    t_start = time.perf_counter()
    if sum(x is not None for x in (workers, scheduler, client)) > 1:
        raise InputError("give at most one of workers (--workers), scheduler (--scheduler) and "
                         "client: a LocalCluster is started only without a scheduler.")
    if workers is not None and int(workers) < 1:
        raise InputError(f"--workers: expected a positive number of worker processes, got "
                         f"{workers}.")
    model_p = Path(model).expanduser()
    if not model_p.is_file():
        raise InputError(f"--model: {str(model)!r} is not a file. Expected a model file written "
                         "by `eelsanom train` or `eelsanom detect --model-out`.")
    header, params, state, _ = read_model(model_p)  # refuses a bad model before any cluster
    detector_class(header["detector"])
    if threshold is not None:
        parse_threshold(threshold)
        threshold = str(threshold)
        check_threshold_override(model_p, threshold, "calibration" in state)
    n_gpus = _cuda_gpus(params, device) if scheduler is None and client is None else 0
    fmts = None if formats is None else ",".join(  # None: hspy,png (+ zspy when streamed)
        _normalise_formats(formats.split(",") if isinstance(formats, str) else formats))
    out_p = Path(out).expanduser().absolute()
    files, missing = expand_inputs(inputs, exclude=[out_p])
    if not files:
        raise InputError(f"no input files: expected spectrum-image files, folders holding "
                         f"{'/'.join(BATCH_EXTENSIONS)} files or glob patterns; found nothing "
                         f"at {missing or list(inputs)}.")
    model_abs = str(model_p.absolute())
    sha = file_sha256(model_p)
    settings = {"threshold": threshold, "signal": signal, "formats": fmts, "device": device}
    names = folder_names(files)
    _check_batch_outputs(out_p, files, names, model_abs, header["detector"], fmts,
                         overwrite=overwrite, force=force, sha=sha, settings=settings)
    with _writing(out_p):
        out_p.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(records=[], out=out_p, model=model_abs, model_sha256=sha,
                           settings=settings)
    summary.records = [FileRecord(input=m, name=_clean_name(m), status="failed",
                                  seconds=0.0, error="matches no file; expected an existing file, folder or glob "
                                  "pattern (check the path)")
                       for m in missing]
    todo: list[tuple[FileRecord, Path]] = []
    for path, name in zip(files, names):
        rec = FileRecord(input=str(path), name=name)
        folder = out_p / name
        done = None if force else _complete(folder, path, sha, settings)
        if done is not None:
            rec.status, rec.seconds, rec.output = "skipped", 0.0, str(folder)
            for k in ("anomaly_fraction", "n_pixels", "n_flagged", "threshold"):
                setattr(rec, k, done.get(k))
        else:
            todo.append((rec, folder))
        summary.records.append(rec)
    total = len(summary.records)

    def finished() -> int:
        return sum(r.status not in ("pending",) for r in summary.records)

    def report(message: str = "", rec: FileRecord | None = None) -> None:
        c = summary.counts
        summary.seconds = time.perf_counter() - t_start
        summary.write()
        metrics: dict[str, Any] = {k: c[k] for k in ("done", "skipped", "failed") if c[k]}
        if rec is not None:
            metrics["last"] = f"{rec.name}: {rec.status}"
        emit(progress, "batch", finished(), total, message, **metrics)

    own_client = client is None
    cluster = None
    futures: dict[Any, FileRecord] = {}
    try:
        # the first summary inside the try: an interrupt arriving just after it is on disk
        # (SIGTERM as soon as summary.json appears) still rewrites it with "cancelled"
        report()
        if not todo:
            return summary
        if own_client:
            n = workers or (n_gpus or os.cpu_count() or 1)
            if n_gpus and n > n_gpus:
                log.warning("the model runs on CUDA: %d worker(s), one per GPU (not %d)",
                            n_gpus, n)
                n = n_gpus
            n = max(1, min(n, len(todo)))
            client, cluster = _start_client(scheduler, n, n_gpus)
        info = client.scheduler_info()
        summary.workers = len(info.get("workers", {}))
        summary.dashboard = _dashboard(client)
        gpu_res = bool(n_gpus)
        if not gpu_res and str(device).lower() != "cpu" and "device" in params:
            gpu_res = any("GPU" in (w.get("resources") or {})
                          for w in info.get("workers", {}).values())
        if summary.dashboard:
            log.info("dask dashboard: %s", summary.dashboard)
            report(f"dask dashboard: {summary.dashboard}")
        from distributed import as_completed

        torch_threads = 1 if cluster is not None else None
        for rec, folder in todo:
            fut = client.submit(
                process_file, rec.input, str(folder), rec.name, model=model_abs,
                model_sha256=sha, settings=settings, lazy=lazy, torch_threads=torch_threads,
                local_gpus=n_gpus, key=f"eelsanom-batch-{rec.name}-{os.urandom(4).hex()}",
                pure=False, resources={"GPU": 1} if gpu_res else None)
            futures[fut] = rec
        for fut in as_completed(list(futures)):
            rec = futures.pop(fut)
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. the worker died (KilledWorker)
                res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            for k, v in res.items():
                if k in FileRecord.__dataclass_fields__ and k not in ("input", "name"):
                    setattr(rec, k, v)
            report(rec=rec)
    except (KeyboardInterrupt, Cancelled):
        # wait for the running files unless closing the client stops their workers (a
        # cluster the batch started); a client of an outside scheduler leaves them running
        _stop(client, futures, wait=cluster is None)
        if own_client and client is not None:  # wait for the workers to stop writing
            client.close()
            if cluster is not None:
                cluster.close()
            client = cluster = None
        for rec, folder in todo:
            if rec.status != "pending":
                continue
            rec.status = "cancelled"
            done = _complete(folder, Path(rec.input), sha, settings)
            if done is not None:  # finished while the batch stopped
                rec.status, rec.output = "done", str(folder)
                for k in ("seconds", "anomaly_fraction", "n_pixels", "n_flagged", "threshold"):
                    setattr(rec, k, done.get(k))
        summary.seconds = time.perf_counter() - t_start
        summary.write()
        raise
    finally:
        if own_client and client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    summary.seconds = time.perf_counter() - t_start
    summary.write()
    return summary


def _stop(client: Any, futures: dict[Any, Any], *, wait: bool, timeout: float = 600.0) -> None:
    """Cancel the files not started; with ``wait``, let those a worker is running finish.

    A task already running on a worker cannot be interrupted: cancelling its
    future only forgets it while the worker goes on writing that file's
    folder. On a scheduler the batch does not own (closing its own client stops
    its workers), the batch therefore waits for those files, so that when it
    returns no worker is still writing and a rerun finds each file done or
    untouched, never half-written.
    """
    running: set[Any] = set()
    if wait and client is not None:
        try:
            running = {k for keys in client.processing().values() for k in keys}
        except Exception:  # noqa: BLE001 - the scheduler is gone: nothing to wait for
            running = set()
    keep = [f for f in futures if f.key in running]
    for fut in futures:
        if fut.key not in running:
            fut.cancel()
    if keep:
        from distributed import wait as _wait

        log.info("waiting for %d file(s) a worker is still processing", len(keep))
        _wait(keep, timeout=timeout)
    if wait and client is not None:
        # a file may have started between the look at the scheduler and the cancel: the
        # scheduler then forgets it while its worker goes on writing, so ask the workers
        _wait_workers_idle(client, {str(f.key) for f in futures}, timeout)


def _executing_keys(dask_worker: Any) -> list[str]:
    """The keys of the tasks a worker is executing now (run on the worker)."""
    st = dask_worker.state
    return [str(ts.key) for ts in (*st.executing, *st.long_running)]


def _wait_workers_idle(client: Any, keys: set[str], timeout: float) -> None:
    """Wait until no worker executes any of ``keys`` (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            busy = client.run(_executing_keys)
        except Exception:  # noqa: BLE001 - the cluster is gone: nothing is writing
            return
        if not any(k in keys for ks in busy.values() for k in ks):
            return
        time.sleep(0.2)
    log.warning("a worker was still processing a cancelled file after %.0f s", timeout)
