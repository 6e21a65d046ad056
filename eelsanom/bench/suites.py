"""The suites ``eelsanom bench --suite`` runs: a table of suite name -> condition builder."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InputError
from .conditions import Condition
from .paper import paper_conditions
from .realistic import realistic_conditions

#: each suite: its name -> its condition builder ``builder(quick) -> list of Condition``;
#: a new suite is one more module with its conditions and one more entry here
SUITE_BUILDERS: dict[str, Callable[[bool], list[Condition]]] = {
    "paper": paper_conditions,
    "realistic": realistic_conditions,
}
SUITES = tuple(SUITE_BUILDERS)


def suite_conditions(suite: str, quick: bool) -> list[Condition]:
    """The conditions of a suite.

    Parameters
    ----------
    suite : {"paper", "realistic"}
    quick : bool
        The CPU-sized subset.

    Returns
    -------
    list of Condition

    Raises
    ------
    InputError
        When ``suite`` is unknown.
    """
    builder = SUITE_BUILDERS.get(suite)
    if builder is None:
        raise InputError(f"suite: expected one of {list(SUITES)}, got {suite!r}.")
    return builder(quick)
