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
as ``eelsanom apply``); this package keeps the rest of the feature: the records and
summaries (:mod:`.records`), the inputs and the resume rule, ``done.json``
(:mod:`.inputs`), the per-file job a worker runs (:mod:`.task`), the cluster and its
futures (:mod:`.cluster`) and the ``batch`` command line (:mod:`.command`). Every name
stays importable from ``eelsanom.batch``.
"""

from __future__ import annotations

from .cluster import (  # noqa: F401
    _cuda_gpus,
    _dashboard,
    _start_client,
    _stop,
    run_batch,
)
from .command import (  # noqa: F401
    add_parser,
    error_line,
    main,
)
from .inputs import (  # noqa: F401
    _check_batch_outputs,
    _clean_name,
    _complete,
    _fingerprint,
    _inside,
    _is_input,
    _read_done,
    _scan,
    expand_inputs,
    file_sha256,
    folder_names,
)
from .records import (  # noqa: F401
    _GLOB_CHARS,
    BATCH_EXTENSIONS,
    CSV_COLUMNS,
    DONE_NAME,
    EXIT_FAILED,
    SUMMARY_CSV,
    SUMMARY_JSON,
    BatchSummary,
    FileRecord,
)
from .task import (  # noqa: F401
    _detector,
    _local,
    _worker_gpu,
    process_file,
)

__all__ = ["BATCH_EXTENSIONS", "BatchSummary", "FileRecord", "expand_inputs", "folder_names",
           "process_file", "run_batch", "add_parser", "main"]
