"""Score many files with one saved model on Dask distributed: ``eelsanom batch``.

One task per input file runs on a :mod:`dask.distributed` cluster: a
``LocalCluster`` of worker *processes* (one thread each) by default, or an
existing scheduler given by address or scheduler file (an HPC cluster started
with dask-jobqueue, ``dask scheduler`` + ``dask worker`` by hand, ...).

Layout of the output folder ``DIR``::

    DIR/summary.json, DIR/summary.csv     every input: status, seconds, anomaly fraction, ...
    DIR/<name>/<name>_nll.hspy ...        one folder per input (the outputs of ``apply``)
    DIR/<name>/<name>_summary.json        the per-file summary ``apply`` writes
    DIR/<name>/done.json                  written last: marks the folder complete

``<name>`` is the input's stem; inputs sharing a stem get their parent folder's
name in front (then the extension, then a hash of the path) until the names
are unique. Every output is written atomically and ``done.json`` last, so an
interrupted batch (Ctrl-C, a killed job) leaves no folder that looks complete;
a rerun skips the inputs whose ``done.json`` matches the input (path, size,
modification time), the model (SHA-256) and the settings, and redoes the rest
(``force=True`` redoes everything). The summaries are rewritten (atomically)
each time a file finishes.

A file that cannot be scored (unreadable, truncated, not a spectrum image, a
single spectrum, an energy axis the model does not cover, ...) is recorded with
status ``"failed"`` and its error message; it never stops the others.

GPUs: when the model runs on CUDA on this machine, the LocalCluster gets one
worker per GPU (``workers`` is capped at the GPU count), each declaring the
worker resource ``GPU=1`` and scoring on its own GPU (``cuda:<worker index>``),
and every file asks for ``GPU=1`` -- one file per GPU at a time. With an
existing scheduler whose workers declare a ``GPU`` resource (``dask worker
--resources GPU=1``, one worker per GPU), every file asks for ``GPU=1`` too
(unless the model is forced onto the CPU).

The per-file work is :func:`process_file` (load, ``detector.score``, the
outputs of ``apply``); its ``lazy`` flag is passed to the loader, the hook for
streaming single large files. The CLI (``eelsanom batch``, :func:`add_parser`
and :func:`main`) exits with 0 when every file is done or skipped,
:data:`EXIT_FAILED` (1) when some failed, 2 for bad arguments and 130 when
interrupted by Ctrl-C or SIGTERM (a SLURM time limit); the summaries are then
written first, listing the unfinished files as ``"cancelled"``.

Loading, scoring and writing a file are :mod:`eelsanom.pipeline`'s (the same steps
as ``eelsanom apply``); this module (about 1,000 lines) keeps one feature whole:
the inputs, the records and summaries, the resume rule (``done.json``), the
cluster and the ``batch`` command line, which change together.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import glob
import hashlib
import io as _io
import json
import logging
import os
import re
import signal as _signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .detectors import detector_class, load_detector
from .device import resolve_device
from .errors import Cancelled, InputError
from .io import SCANNED_EXTENSIONS, atomic_write_bytes, check_outputs, write_json
from .io._files import _remove, _writing
from .io.write import _normalise_formats
from .modelfile import read_model
from .pipeline import input_stem, load_input, planned_outputs, run_formats, score_input, write_run
from .progress import ProgressCallback, emit
from .scoring import parse_threshold

log = logging.getLogger(__name__)

__all__ = ["BATCH_EXTENSIONS", "BatchSummary", "FileRecord", "expand_inputs", "folder_names",
           "process_file", "run_batch", "add_parser", "main"]

#: Extensions picked up when a directory is given as input (lower case; listed once, in
#: :data:`eelsanom.io.SCANNED_EXTENSIONS`).
BATCH_EXTENSIONS: tuple[str, ...] = SCANNED_EXTENSIONS
DONE_NAME = "done.json"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
CSV_COLUMNS = ("input", "status", "seconds", "anomaly_fraction", "n_pixels", "n_flagged",
               "output", "error")
#: CLI exit status when at least one file failed (the others were still scored).
EXIT_FAILED = 1
_GLOB_CHARS = re.compile(r"[*?\[]")


# ----------------------------------------------------------------------------- records
@dataclass
class FileRecord:
    """One input of a batch and what became of it.

    ``status`` is ``"pending"`` while queued, then ``"done"`` (scored now),
    ``"skipped"`` (complete outputs from an earlier run), ``"failed"`` (``error``
    says why) or ``"cancelled"`` (the batch was interrupted first). ``seconds`` is
    the time this run spent on the file (load, score, write) from ``started`` (Unix
    time); ``output`` the file's output folder (empty when it failed); ``worker`` the
    Dask worker's address.

    Attributes
    ----------
    input : str
        The input file's path (or, for an input that matched nothing, the text given).
    name : str
        Name of the file's output folder in the batch's ``out`` (see :func:`folder_names`).
    status : str
        ``"pending"``, ``"done"``, ``"skipped"``, ``"failed"`` or ``"cancelled"``.
    seconds : float or None
        Time this run spent on the file, in seconds (0 when skipped).
    anomaly_fraction : float or None
        Fraction of the pixels flagged anomalous (0 to 1).
    n_pixels, n_flagged : int or None
        Number of pixels scored, and of pixels flagged (NLL above the threshold).
    threshold : float or None
        The NLL threshold applied.
    output : str
        The file's output folder (empty when it failed).
    error : str
        Why the file failed (empty otherwise).
    worker : str
        Address of the Dask worker that scored it (``"local"`` outside a worker).
    started : float or None
        When the worker started on the file (Unix time, seconds).
    """

    input: str
    name: str
    status: str = "pending"
    seconds: float | None = None
    anomaly_fraction: float | None = None
    n_pixels: int | None = None
    n_flagged: int | None = None
    threshold: float | None = None
    output: str = ""
    error: str = ""
    worker: str = ""
    started: float | None = None

    def csv_row(self) -> dict[str, Any]:
        """The record as one row of ``summary.csv``.

        Returns
        -------
        dict of str -> object
            The ``CSV_COLUMNS`` fields; ``seconds`` and ``anomaly_fraction`` formatted
            to 6 significant digits, ``None`` as ``""``.
        """
        row = {k: getattr(self, k) for k in CSV_COLUMNS}
        for k in ("seconds", "anomaly_fraction"):
            if row[k] is not None:
                row[k] = f"{row[k]:.6g}"
        return {k: "" if v is None else v for k, v in row.items()}


@dataclass
class BatchSummary:
    """What :func:`run_batch` did: one :class:`FileRecord` per input, in input order.

    Attributes
    ----------
    records : list of FileRecord
        One per input, in input order (inputs that matched no file first).
    out : Path
        The batch's output folder (absolute).
    model : str
        Absolute path of the model file.
    model_sha256 : str
        SHA-256 of the model file (hex).
    seconds : float
        Wall-clock time of the whole batch, in seconds.
    dashboard : str or None
        Address of the Dask dashboard, when there is one.
    workers : int
        Number of Dask workers used.
    settings : dict
        ``threshold``, ``signal``, ``formats`` and ``device`` overrides (None: the
        model's own), recorded in each ``done.json``.
    """

    records: list[FileRecord]
    out: Path
    model: str
    model_sha256: str
    seconds: float = 0.0
    dashboard: str | None = None
    workers: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Number of records per status.

        Keys ``done``, ``skipped``, ``failed``, ``cancelled`` and ``pending``, each
        present even when 0.
        """
        c = {s: 0 for s in ("done", "skipped", "failed", "cancelled", "pending")}
        for r in self.records:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    @property
    def ok(self) -> bool:
        """True when every input is done or skipped."""
        return all(r.status in ("done", "skipped") for r in self.records)

    @property
    def failed(self) -> list[FileRecord]:
        """The records whose status is ``"failed"``, in input order."""
        return [r for r in self.records if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        """The summary as written to ``summary.json``.

        Returns
        -------
        dict of str -> object
            Package version, model and its SHA-256, ``out``, ``settings``, ``workers``,
            ``dashboard``, ``seconds``, ``counts``, ``updated`` (UTC, ISO 8601) and
            ``files`` (one dict of :class:`FileRecord` fields per input).
        """
        return {"eelsanom_version": __version__, "model": self.model,
                "model_sha256": self.model_sha256, "out": str(self.out),
                "settings": self.settings, "workers": self.workers, "dashboard": self.dashboard,
                "seconds": self.seconds, "counts": self.counts,
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "files": [asdict(r) for r in self.records]}

    def write(self) -> None:
        """(Re)write ``summary.json`` and ``summary.csv`` in ``out``, atomically."""
        write_json(self.to_dict(), self.out / SUMMARY_JSON)
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow(r.csv_row())
        atomic_write_bytes(self.out / SUMMARY_CSV, buf.getvalue().encode("utf-8"))


# ----------------------------------------------------------------------------- inputs
def _is_input(p: Path) -> bool:
    return p.suffix.lower() in BATCH_EXTENSIONS and not p.name.startswith(".")


def _scan(folder: Path, exclude: Sequence[Path]) -> list[Path]:
    """Files with :data:`BATCH_EXTENSIONS` under ``folder`` (recursive, sorted); ``.zspy``
    folders count as files, hidden entries and ``exclude`` folders are skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rp = Path(root)
        keep = []
        for d in sorted(dirs):
            dp = rp / d
            if d.startswith(".") or any(_inside(dp, e) for e in exclude):
                continue
            if _is_input(dp):
                found.append(dp)  # a .zspy dataset folder
            else:
                keep.append(d)
        dirs[:] = keep
        found.extend(rp / f for f in sorted(files) if _is_input(rp / f))
    return sorted(found)


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def expand_inputs(inputs: Iterable[str | os.PathLike], *, exclude: Sequence[str | os.PathLike] = ()
                  ) -> tuple[list[Path], list[str]]:
    """Turn the command line's INPUTS into a list of files.

    Parameters
    ----------
    inputs : iterable of str or Path
        Files (any extension; ``.zspy`` folders count as files), directories
        (scanned recursively for ``.dm3/.dm4/.hspy/.zspy/.emd``) or glob patterns
        (``data/*.dm4``, ``runs/**/*.hspy``).
    exclude : sequence of paths
        Folders never scanned (the batch's output folder).

    Returns
    -------
    files : list of Path
        Absolute paths, duplicates removed, in the order given (directories and
        globs sorted).
    missing : list of str
        Inputs naming nothing that exists (globs that matched nothing included).
    """
    excl = [Path(e).expanduser() for e in exclude]
    files: list[Path] = []
    missing: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        p = Path(os.path.abspath(p))
        key = os.path.normcase(str(p.resolve()))
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        s = os.fspath(item)
        p = Path(s).expanduser()
        if p.exists():
            matches = [p]
        elif _GLOB_CHARS.search(s):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(s), recursive=True))]
            matches = [m for m in matches if m.is_file() or _is_input(m)
                       or (m.is_dir() and not m.name.startswith("."))]
        else:
            matches = []
        if not matches:
            missing.append(s)
            continue
        for m in matches:
            if m.is_dir() and m.suffix.lower() != ".zspy":
                for f in _scan(m, excl):
                    add(f)
            elif not any(_inside(m, e) for e in excl) or p.exists():
                add(m)
    return files, missing


def _clean_name(s: str) -> str:
    s = re.sub(r"[\\/:\x00-\x1f]", "_", s).strip() or "input"
    if s.startswith("."):
        s = "_" + s[1:]
    if s.lower() in (SUMMARY_JSON, SUMMARY_CSV):
        s += "_file"
    return s


def folder_names(paths: Sequence[Path]) -> list[str]:
    """A unique (case-insensitively) output folder name per input path.

    The stem (``data/a/x.dm4`` -> ``x``); where stems collide, the parent
    folder's name is put in front (``a_x``), then the extension is kept
    (``a_x_dm4``), and last a hash of the path is appended (``x-1a2b3c4d``).

    Parameters
    ----------
    paths : sequence of Path
        The input files.

    Returns
    -------
    list of str
        One folder name per path, in the same order (path separators, control
        characters and a leading ``.`` replaced by ``_``).
    """
    def level(p: Path, k: int) -> str:
        stem = input_stem(p)
        if k == 0:
            return stem
        if k == 1:
            return f"{p.parent.name}_{stem}"
        if k == 2:
            return f"{p.parent.name}_{stem}_{p.suffix.lstrip('.').lower()}"
        digest = hashlib.sha1(os.path.normcase(str(p)).encode()).hexdigest()[:8]
        return f"{stem}-{digest}"

    levels = [0] * len(paths)
    while True:
        names = [_clean_name(level(p, k)) for p, k in zip(paths, levels)]
        low = [n.lower() for n in names]
        clash = [i for i, n in enumerate(low) if low.count(n) > 1 and levels[i] < 3]
        if not clash:
            return names
        for i in clash:
            levels[i] += 1


def _fingerprint(p: Path) -> dict[str, Any]:
    """Size and modification time of a file (or of the newest file in a ``.zspy`` folder)."""
    if p.is_dir():
        size, mtime = 0, p.stat().st_mtime_ns
        for root, _dirs, files in os.walk(p):
            for f in files:
                st = os.stat(os.path.join(root, f))
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
        return {"size": size, "mtime_ns": mtime}
    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex).

    Parameters
    ----------
    path : str or Path
        The file (read in 1 MiB blocks).

    Returns
    -------
    str
        The 64-character hexadecimal digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _complete(folder: Path, path: Path, model_sha256: str, settings: dict[str, Any]
              ) -> dict[str, Any] | None:
    """The ``done.json`` of ``folder`` when it records this input, model and settings and its
    outputs all exist; else None."""
    done = _read_done(folder)
    if not done or done.get("status") != "done":
        return None
    try:
        fp = _fingerprint(path)
    except OSError:
        return None
    if (done.get("input") != str(path) or done.get("size") != fp["size"]
            or done.get("mtime_ns") != fp["mtime_ns"] or done.get("model_sha256") != model_sha256
            or done.get("settings") != settings):
        return None
    if not all(Path(v).exists() for v in (done.get("outputs") or {}).values()):
        return None
    return done


def _check_batch_outputs(out: Path, files: Sequence[Path], names: Sequence[str], model: str,
                         method: str, formats: str | None, *, overwrite: bool, force: bool,
                         sha: str, settings: dict[str, Any]) -> None:
    """:func:`eelsanom.io.check_outputs` on everything the batch will write (the summaries,
    each input's folder and maps), before any cluster starts: no output is an input, every
    folder is writable, and no file eelsanom did not write is replaced without ``overwrite``."""
    inputs = [*map(str, files), model]
    paths: list[Path] = [out / SUMMARY_JSON, out / SUMMARY_CSV]
    for path, name in zip(files, names):
        folder = out / name
        if not force and _complete(folder, path, sha, settings) is not None:
            continue  # skipped: nothing is written there
        paths += [folder / DONE_NAME,
                  *planned_outputs(folder, name, method, formats=formats)]
    check_outputs(paths, inputs, overwrite=overwrite, what="--out")


# ----------------------------------------------------------------------------- the task
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


# ----------------------------------------------------------------------------- the batch
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
    header, params, _, _ = read_model(model_p)  # refuses a bad model before any cluster starts
    detector_class(header["detector"])
    if threshold is not None:
        parse_threshold(threshold)
        threshold = str(threshold)
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
        _stop(client, futures, wait=not own_client)
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


# ----------------------------------------------------------------------------- CLI
def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to the ``eelsanom`` subparsers ``sub``.

    Parameters
    ----------
    sub : argparse subparsers action
        What ``ArgumentParser.add_subparsers()`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``batch`` subparser (its ``func`` default is :func:`main`).
    """
    p = sub.add_parser(
        "batch", help="score many files with a saved model on Dask (one task per file)",
        description="Score many files with one saved model, one Dask task per file, on a "
        "LocalCluster (default) or an existing scheduler. Each file's outputs go to OUT/<name>/; "
        "OUT/summary.csv and OUT/summary.json list every input. A rerun skips complete outputs. "
        f"Exit status: 0 all done or skipped, {EXIT_FAILED} some files failed, 2 bad arguments, "
        "130 interrupted.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=f"files, folders (scanned for {'/'.join(SCANNED_EXTENSIONS)}) or globs")
    p.add_argument("--model", required=True, help="model file from `eelsanom train`")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes, one thread each (default: CPU count; "
                        "GPU count when the model runs on CUDA)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use a running Dask scheduler: tcp://HOST:PORT or its scheduler file")
    p.add_argument("--force", action="store_true", help="redo files whose outputs are complete")
    p.add_argument("--overwrite", action="store_true",
                   help="also replace existing files in OUT that eelsanom did not write (its own "
                        "earlier outputs are replaced without it; inputs never are)")
    p.add_argument("--threshold", default=None,
                   help="override the model's threshold rule (robust[:K] | otsu | gmm | "
                        "PERCENT | value:X)")
    p.add_argument("--device", default=None, help="override the model's device (cpu | cuda)")
    p.add_argument("--signal", type=int, default=None, metavar="INDEX",
                   help="which signal in files holding several")
    p.add_argument("--formats", default=None,
                   help="map formats, comma-separated from hspy,zspy,tiff,png (default: "
                        "hspy,png; zspy,hspy,png for a streamed file)")
    p.add_argument("--lazy", action=argparse.BooleanOptionalAction, default=None,
                   help="stream each file block by block (default: when the cube is larger "
                        "than a quarter of the worker's free memory or $EELSANOM_STREAM_BYTES)")
    p.set_defaults(func=main)
    return p


def error_line(path: str | os.PathLike, error: str) -> str:
    """The stderr line of a failed file, naming its path once.

    Errors raised while reading a file usually name it already; then the path is
    not put in front of the message a second time.

    Parameters
    ----------
    path : str or Path
        The input as listed in the summary.
    error : str
        Its error message.

    Returns
    -------
    str
        ``"eelsanom: error: <error>"`` when the message contains the path (as given
        or resolved), else ``"eelsanom: error: <path>: <error>"`` (a message that
        starts with the file's name and a colon loses that start).
    """
    p = str(path)
    try:
        resolved = str(Path(p).resolve())
    except (OSError, RuntimeError):
        resolved = p
    if p in error or resolved in error:
        return f"eelsanom: error: {error}"
    name = Path(p).name
    if name and error.startswith(f"{name}: "):  # the loader's "<file name>: ..." prefix
        error = error[len(name) + 2:]
    return f"eelsanom: error: {p}: {error}"


def main(args: argparse.Namespace) -> int:
    """Run ``eelsanom batch``; return the exit status (0, :data:`EXIT_FAILED`).

    Shows a progress bar on stderr (unless ``args.quiet``), then prints each failed
    file's error and, unless quiet, a one-line count of the files.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of the parser :func:`add_parser` built (``inputs``, ``model``,
        ``out``, ``workers``, ``scheduler``, ``force``, ``threshold``, ``signal``,
        ``device``, ``formats``, ``lazy``; ``quiet`` and ``verbose`` when present).

    Returns
    -------
    int
        0 when every file is done or skipped, :data:`EXIT_FAILED` when some failed.

    Raises
    ------
    InputError
        As :func:`run_batch` (the CLI turns it into exit status 2).
    Cancelled, KeyboardInterrupt
        When interrupted, after the summaries are written.
    """
    quiet = bool(getattr(args, "quiet", False))
    if not getattr(args, "verbose", False):  # dask logs its INFO lines (cluster start/stop)
        import distributed  # noqa: F401 - its import sets its loggers' levels: override after

        for name in ("distributed", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)
    bar = None

    def progress(ev: Any) -> None:
        nonlocal bar
        if quiet:
            return
        from tqdm.auto import tqdm

        if bar is None:
            bar = tqdm(total=ev.total, desc="batch", unit="file", file=sys.stderr,
                       dynamic_ncols=True)
        if ev.message:
            bar.write(ev.message, file=sys.stderr)
        bar.n = ev.step
        bar.set_postfix(ev.metrics, refresh=False)
        bar.refresh()

    def on_sigterm(signum: int, frame: Any) -> None:  # a SLURM time limit, `kill`: as Ctrl-C
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)  # once: let the summaries be written
        raise KeyboardInterrupt

    old = None
    if threading.current_thread() is threading.main_thread():
        old = _signal.signal(_signal.SIGTERM, on_sigterm)
    try:
        s = run_batch(args.inputs, args.model, args.out, workers=args.workers,
                      scheduler=args.scheduler, force=args.force, threshold=args.threshold,
                      signal=args.signal, device=args.device, formats=args.formats,
                      lazy=args.lazy, overwrite=bool(getattr(args, "overwrite", False)),
                      progress=progress)
    finally:
        if old is not None:
            _signal.signal(_signal.SIGTERM, old)
        if bar is not None:
            bar.close()
    for r in s.failed:
        print(error_line(r.input, r.error), file=sys.stderr)
    if not quiet:
        c = s.counts
        print(f"batch: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed of "
              f"{len(s.records)} files in {s.seconds:.1f} s; summary in "
              f"{s.out / SUMMARY_CSV}")
    return 0 if s.ok else EXIT_FAILED
