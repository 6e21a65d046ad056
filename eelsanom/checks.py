"""One way of checking a parameter: the helpers every detector and latent tool calls.

Each helper refuses a bad value with an :class:`~eelsanom.errors.InputError` whose
message names the parameter, says what was expected and what came
(``"lr: expected a number > 0 and <= 1, got -1."``), plus an optional ``fix``
sentence; on success it returns the value converted (``int``, ``float``).
Booleans are never accepted as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_positive",
           "check_choice", "check_window"]


def _fail(name: str, expected: str, value: Any, fix: str) -> InputError:
    return InputError(f"{name}: expected {expected}, got {value!r}." + (f" {fix}" if fix else ""))


def is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (Python or numpy, not a bool) in ``[low, high]``.

    Parameters
    ----------
    value : object
        The value to test.
    low, high : int, optional
        Inclusive bounds (None: unbounded).

    Returns
    -------
    bool
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value: Any, low: float | None = None, high: float | None = None, *,
              low_open: bool = False) -> bool:
    """Whether ``value`` is a finite real number (not a bool) in the given range.

    Parameters
    ----------
    value : object
        The value to test.
    low, high : float, optional
        Bounds (None: unbounded); ``high`` is inclusive.
    low_open : bool, default False
        ``low`` itself is excluded (``value > low``).

    Returns
    -------
    bool
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    v = float(value)
    if not math.isfinite(v):
        return False
    ok_low = low is None or (v > low if low_open else v >= low)
    return ok_low and (high is None or v <= high)


def _int_range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an integer in [{low}, {high}]"
    if low is not None:
        return f"an integer >= {low}"
    return "an integer" if high is None else f"an integer <= {high}"


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *,
              allow_none: bool = False, fix: str = "") -> int | None:
    """``value`` as an ``int`` in ``[low, high]`` (or ``None`` when ``allow_none``).

    Parameters
    ----------
    name : str
        Parameter name for the message.
    value : object
        The value.
    low, high : int, optional
        Inclusive bounds (None: unbounded).
    allow_none : bool, default False
        Accept ``None`` (meaning "automatic"); it is returned unchanged.
    fix : str, optional
        Sentence appended to the message (how to fix it).

    Returns
    -------
    int or None
        ``int(value)``.

    Raises
    ------
    InputError
        When ``value`` is not an integer (bools refused) or outside the range.
    """
    if value is None and allow_none:
        return None
    if not is_int(value, low, high):
        expected = ("None (automatic) or " if allow_none else "") + _int_range(low, high)
        raise _fail(name, expected, value, fix)
    return int(value)


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False, allow_none: bool = False, fix: str = ""
                 ) -> float | None:
    """``value`` as a finite ``float`` in the range (or ``None`` when ``allow_none``).

    Parameters
    ----------
    name : str
        Parameter name for the message.
    value : object
        The value.
    low, high : float, optional
        Bounds (None: unbounded); ``high`` is inclusive.
    low_open : bool, default False
        ``low`` itself is excluded.
    allow_none : bool, default False
        Accept ``None``; it is returned unchanged.
    fix : str, optional
        Sentence appended to the message.

    Returns
    -------
    float or None
        ``float(value)``.

    Raises
    ------
    InputError
        When ``value`` is not a finite number (bools refused) or outside the range.
    """
    if value is None and allow_none:
        return None
    if not is_number(value, low, high, low_open=low_open):
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            parts.append(f"<= {high}")
        expected = ("None or " if allow_none else "") + "a number" + (
            " " + " and ".join(parts) if parts else "")
        raise _fail(name, expected, value, fix)
    return float(value)


def check_positive(name: str, value: Any, *, fix: str = "") -> float:
    """``value`` as a finite ``float > 0``; strings holding a number are accepted.

    Parameters
    ----------
    name : str
        Parameter name for the message.
    value : object
        The value (a number or its text).
    fix : str, optional
        Sentence appended to the message.

    Returns
    -------
    float

    Raises
    ------
    InputError
        When ``value`` is not a number, not finite, or not positive.
    """
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise _fail(name, "a positive number", value, fix) from None
    if isinstance(value, bool) or not math.isfinite(f) or f <= 0:
        raise _fail(name, "a positive number", value, fix)
    return f


def check_choice(name: str, value: Any, allowed: Iterable[Any], *, fix: str = "") -> Any:
    """``value`` unchanged when it is one of ``allowed``.

    Parameters
    ----------
    name : str
        Parameter name for the message.
    value : object
        The value.
    allowed : iterable
        The accepted values.
    fix : str, optional
        Sentence appended to the message.

    Returns
    -------
    object
        ``value``.

    Raises
    ------
    InputError
        When ``value`` is not among ``allowed``.
    """
    allowed = list(allowed)
    if value not in allowed:
        raise _fail(name, f"one of {allowed}", value, fix)
    return value


def check_window(name: str, value: Any) -> tuple[float | None, float | None] | None:
    """An energy window ``(start, stop)`` in eV (either may be None), or None for all.

    Parameters
    ----------
    name : str
        Parameter name for the message.
    value : sequence of two numbers or None, or None
        The window.

    Returns
    -------
    (float or None, float or None) or None
        The window as a tuple; ``None`` when ``value`` is.

    Raises
    ------
    InputError
        When ``value`` is not two values, or ``start >= stop``.
    """
    if value is None:
        return None
    try:
        start, stop = value
    except (TypeError, ValueError):
        raise _fail(name, "(start_eV, stop_eV) with start < stop", value, "") from None
    try:
        ordered = start is None or stop is None or start < stop
    except TypeError:
        ordered = False
    if not ordered:
        raise _fail(name, "(start_eV, stop_eV) with start < stop", value, "")
    return start, stop
