"""Choosing the torch device: ``"auto"`` picks CUDA, then MPS, then the CPU."""

from __future__ import annotations

from .errors import InputError

__all__ = ["resolve_device"]


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
