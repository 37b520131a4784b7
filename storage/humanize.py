"""Short English phrases for quota replies ("2 toons left today, resets in 5 h")."""

from __future__ import annotations

import math
from datetime import timedelta

from storage.records import Allowance


def humanize_duration(span: timedelta) -> str:
    """Seconds under a minute, minutes under an hour, else whole hours; waits round up."""
    seconds = max(math.ceil(span.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{round(seconds / 3600)} h"


def describe_allowance(allowance: Allowance) -> str:
    """E.g. "2 toons left today, resets in 5 h", "no toons left today, resets in 40 min"."""
    left = allowance.remaining
    if left is None:
        return "unlimited toons today"
    count = "no toons" if left == 0 else f"{left} toon" + ("" if left == 1 else "s")
    return f"{count} left today, resets in {humanize_duration(allowance.resets_in)}"
