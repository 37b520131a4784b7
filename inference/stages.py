"""The stages of one job, named once from the inversion loop to the words users read, and how
long work reports them."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class Stage(StrEnum):
    DETECT = "detect"
    INVERT = "invert"
    RENDER = "render"


ProgressFn = Callable[[Stage, int, int], None]
"""Called with a stage, the steps done and the steps in all."""
StopFn = Callable[[], bool]
"""Asked between steps: True stops the work with Cancelled."""
