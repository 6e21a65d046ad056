"""The batch's records: one :class:`FileRecord` per input, the :class:`BatchSummary`, the output names."""

from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..io import SCANNED_EXTENSIONS, atomic_write_bytes, write_json

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
