"""The ``eelsanom batch`` command line: its parser, its error lines and its exit status."""

from __future__ import annotations

import argparse
import logging
import os
import signal as _signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..io import SCANNED_EXTENSIONS
from .cluster import run_batch
from .records import EXIT_FAILED, SUMMARY_CSV


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
