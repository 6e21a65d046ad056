"""Where the run folder used to be written; its one owner is now :mod:`eelsanom.pipeline`.

Kept so that ``from eelsanom.run import write_run, SEED_MAPS`` keeps working;
new code imports them from :mod:`eelsanom.pipeline`.
"""

from __future__ import annotations

from .pipeline import SEED_MAPS, write_run

__all__ = ["write_run", "SEED_MAPS"]
