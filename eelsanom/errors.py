"""Exceptions raised at the edges of eelsanom.

Every refusal of user input raises :class:`InputError` (a ``ValueError``) whose
message says what was expected, what was found and how to fix it. The CLI
prints such messages as one line on stderr and exits with status 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """User input (a file, an array, an option) that eelsanom cannot use.

    A ``ValueError`` subclass; the message states what was expected, what was
    found and how to fix it. The CLI prints it as one line on stderr and exits
    with status 2.
    """


class EnergyAxisMismatch(InputError):
    """A fitted model was applied to data on an incompatible energy axis.

    An :class:`InputError`: the data's energy axis (size, offset or dispersion
    in eV) differs from the one the model was fitted on.
    """


class NotFittedError(RuntimeError):
    """A detector was used before ``fit`` (or ``load``)."""


class Cancelled(RuntimeError):
    """Long work (training, scoring) was cancelled through its progress callback."""
