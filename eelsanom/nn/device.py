"""Device helpers of the 3D-CVAE: the torch device, CPU threads, mixed precision, memory layout.

Tensors of the network use the ``Conv3d`` layout ``(batch, 1, energy, y, x)`` in
``channels_last_3d`` memory format (about 3x faster on the CPU and what cuDNN
prefers): :func:`channels_last` puts a tensor in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..device import resolve_device

__all__ = ["resolve_device", "torch_threads", "autocast", "channels_last"]


@contextlib.contextmanager
def torch_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, use one torch thread per core for the duration (restored afterwards).

    The cores counted are those this process may run on (its CPU affinity), less
    one while a GUI runs, ``OMP_NUM_THREADS`` when set (:func:`eelsanom.device.cpu_threads`);
    on other devices the thread count is left alone.

    Parameters
    ----------
    device : torch.device
        Device the work inside the ``with`` block runs on.

    Yields
    ------
    None
        Control returns to the ``with`` block; the previous thread count is
        restored on exit, also after an exception.
    """
    if device.type != "cpu":
        yield
        return
    from ..device import cpu_work

    with cpu_work():
        yield


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere.

    Parameters
    ----------
    device : torch.device
        Device the network runs on.
    enabled : bool
        Whether mixed precision is wanted (ignored unless ``device`` is CUDA).

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast("cuda", dtype=torch.bfloat16)`` or a
        ``contextlib.nullcontext()``.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (5-D) in ``channels_last_3d`` memory format (the network's layout).

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, E, h, w)

    Returns
    -------
    torch.Tensor
        The same values, ``channels_last_3d`` contiguous (``x`` itself when it already is).
    """
    return x.contiguous(memory_format=torch.channels_last_3d)
