"""Time as storage sees it: an injectable clock and the daily quota window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware; tests inject a fake one."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """The calendar day `now` falls in, in the quota's time zone, and when it ends."""

    day: date
    resets_at: datetime

    @classmethod
    def at(cls, now: datetime, zone: ZoneInfo) -> DailyWindow:
        day = now.astimezone(zone).date()
        # A midnight skipped by a DST jump resolves to the first instant of the new day.
        midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
        return cls(day, midnight.astimezone(UTC).astimezone(zone))

    def resets_in(self, now: datetime) -> timedelta:
        # Through UTC: subtracting two datetimes sharing a tzinfo ignores DST offsets.
        return self.resets_at.astimezone(UTC) - now.astimezone(UTC)
