"""Measuring a run: peak memory, CUDA memory, the device, the commit, HyperSpy, progress bars."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


class PeakRSS:
    """Sample the process's resident memory in a thread; ``peak_mb`` after the block.

    Use as a context manager: ``with PeakRSS() as mem: ...; mem.peak_mb``.

    Parameters
    ----------
    interval : float, default 0.01
        Seconds between samples.

    Attributes
    ----------
    peak : int
        Highest resident set size seen, in bytes.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        """Resident memory of this process, in bytes.

        Returns
        -------
        int
            Current RSS from ``/proc/self/statm`` on Linux; elsewhere the peak
            RSS so far from ``resource.getrusage`` (``ru_maxrss * 1024``).
        """
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_mb(self) -> float:
        """Peak resident memory in MiB."""
        return self.peak / 2**20


def _cuda_reset(device: str) -> None:
    try:
        import torch

        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001
        pass


def _cuda_peak_mb(device: str) -> float:
    try:
        import torch

        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # noqa: BLE001
        pass
    return float("nan")


def _resolved_device(device: str) -> str:
    from ..device import resolve_device

    return str(resolve_device(device))


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "n/a"
    except Exception:  # noqa: BLE001
        return "n/a"


def _hyperspy_available() -> bool:
    try:
        import hyperspy  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _tqdm():
    """tqdm when installed (the GPU machine may lack it), else a plain stand-in."""
    try:
        from tqdm.auto import tqdm

        return tqdm
    except ImportError:  # pragma: no cover - depends on the machine
        class _Plain:
            def __init__(self, it=None, **kw):
                self.it = it

            def __iter__(self):
                return iter(self.it)

            @staticmethod
            def write(msg):
                print(msg)

        return _Plain
