"""Choosing the torch device (``"auto"`` picks CUDA, then MPS, then the CPU) and CPU threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .errors import InputError

__all__ = ["resolve_device", "cpu_threads", "reserve_gui_core", "cpu_work", "intra_op_threads"]

#: whether a GUI runs in this process: CPU work then leaves one core to it
_GUI_CORE = False


def reserve_gui_core(on: bool = True) -> None:
    """Say that a GUI runs in this process, so CPU work leaves one core to it (:func:`cpu_threads`).

    Parameters
    ----------
    on : bool, default True
        ``False`` gives the core back.
    """
    global _GUI_CORE
    _GUI_CORE = bool(on)


def cpu_threads() -> int:
    """Threads the CPU work of one detector uses: the cores this process may run on.

    ``OMP_NUM_THREADS``, when set to a positive number, replaces the core count
    (so a benchmark asking for one thread gets one); one core is left to a GUI
    (:func:`reserve_gui_core`) when there are at least two.

    Returns
    -------
    int
        At least 1.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        n = int(env)
    else:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        n = int(n or 1)
    if _GUI_CORE and n > 1:
        n -= 1
    return max(1, n)


@contextlib.contextmanager
def cpu_work() -> Iterator[int]:
    """torch's intra-op threads set to :func:`cpu_threads` for the block (restored afterwards).

    Yields
    ------
    int
        The thread count used.
    """
    with intra_op_threads(cpu_threads()) as n:
        yield n


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[int]:
    """torch's intra-op threads set to ``n`` for the block (restored afterwards).

    Parameters
    ----------
    n : int
        Threads, at least 1.

    Yields
    ------
    int
        ``n``.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield max(1, int(n))
    finally:
        torch.set_num_threads(old)


def resolve_device(device: str | None = "auto"):
    """Return a ``torch.device`` for ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Parameters
    ----------
    device : str or None, default "auto"
        Device name (case and surrounding spaces ignored). ``"auto"`` or ``None``
        picks CUDA if available, then MPS, then the CPU. Anything
        ``torch.device`` accepts is passed through after the checks below.

    Returns
    -------
    torch.device
        The device to run on.

    Raises
    ------
    InputError
        When ``device`` is not a valid torch device name, or names a CUDA device
        (or CUDA index) or MPS that does not exist on this machine.
    """
    import torch

    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got "
                         f"{device!r}.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} was requested but this machine has no CUDA GPU "
                             "visible to PyTorch; use --device cpu (or auto).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible.")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device {device!r} was requested but MPS is not available; use "
                             "--device cpu (or auto).")
    return dev
