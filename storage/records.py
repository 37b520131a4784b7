"""The plain values storage takes and returns; no SQLAlchemy object ever leaves the package."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Self

from storage.errors import InvalidRefError

_PLATFORM = re.compile(r"[a-z][a-z0-9_-]*")
_ID = re.compile(r"[^\s:]+")


@dataclass(frozen=True, slots=True)
class _Ref:
    platform: str
    id: str

    def __post_init__(self) -> None:
        if not (_PLATFORM.fullmatch(self.platform) and _ID.fullmatch(self.id)):
            raise InvalidRefError(f"{self.platform}:{self.id}")

    def __str__(self) -> str:
        return f"{self.platform}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> Self:
        """Read `platform:id`, the form admins type (telegram:12345, discord:6789)."""
        platform, sep, ident = text.strip().partition(":")
        if not sep:
            raise InvalidRefError(text)
        return cls(platform.lower(), ident)


@dataclass(frozen=True, slots=True)
class UserRef(_Ref):
    """A chat user: the platform's name and that platform's user id, as text."""


@dataclass(frozen=True, slots=True)
class GroupRef(_Ref):
    """A Discord server or Telegram group whose members get its own default quota."""


class JobStatus(StrEnum):
    """queued -> running -> delivering -> done, or failed / cancelled from any of the first three.

    `delivering`: the toon is drawn and being sent; it becomes `done` only once the platform
    confirmed the message. The toon itself is never stored, so after a crash `running` and
    `delivering` jobs are drawn again from their chat reference.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DELIVERING)


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a chat adapter knows when a request arrives; `chat` and `options` are opaque JSON.

    `chat` holds whatever the adapter needs to answer later (chat id, message id, interaction
    token...); `group` is the server or group id the request came from, if any.
    """

    user: UserRef
    style: str
    strength: int | None = None
    """None: the style's default strength."""
    chat: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    display_name: str = ""
    group: str | None = None
    key: str | None = None
    """The platform's identity of the request: a second NewJob with the same key is refused
    as DUPLICATE (a platform may deliver one request twice)."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    user: UserRef
    status: JobStatus
    style: str
    strength: int | None
    chat: dict[str, Any]
    options: dict[str, Any]
    day: date
    """The local day the toon was charged on."""
    refunded: bool
    attempts: int
    """How often inference started on this job (across restarts)."""
    failure: str | None
    timings: dict[str, float]
    """Seconds per stage, as `mark_delivering` (or `mark_done`) was given them."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def platform(self) -> str:
        return self.user.platform


@dataclass(frozen=True, slots=True)
class Allowance:
    """Today's quota of one user: what replies need to say what is left and when it resets."""

    limit: int | None
    """Toons per day; None means unlimited."""
    used: int
    resets_at: datetime
    """Next midnight in the quota's time zone (timezone-aware)."""
    resets_in: timedelta
    """From the moment the allowance was computed until `resets_at`."""

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


class DenialReason(StrEnum):
    BANNED = "banned"
    QUOTA = "quota"
    IN_FLIGHT = "in_flight"
    COOLDOWN = "cooldown"
    RATE = "rate"
    """Too many re-renders this minute."""
    DUPLICATE = "duplicate"
    """A job with the same request key exists: the request was admitted before."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """The toon is charged and its job row is queued."""

    job_id: str
    allowance: Allowance


@dataclass(frozen=True, slots=True)
class Denied:
    """Nothing was charged and no job was created."""

    reason: DenialReason
    allowance: Allowance
    retry_after: timedelta | None
    """COOLDOWN and RATE: wait this long; QUOTA: until the reset; others: None."""


Decision = Admitted | Denied

QuotaSource = Literal["default", "user", "unlimited"]


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """One user's quota as an admin sees it."""

    user: UserRef
    display_name: str
    allowance: Allowance
    source: QuotaSource
    """default: the config's (or a group's, per request); user: an override; unlimited."""
    banned: bool
    ban_reason: str
    in_flight: int
    last_request_at: datetime | None
    first_seen: datetime


@dataclass(frozen=True, slots=True)
class PeriodStats:
    toons: int
    """Charged requests, refunds deducted."""
    done: int
    failed: int
    cancelled: int
    refunded: int
    users: int


@dataclass(frozen=True, slots=True)
class TopUser:
    user: UserRef
    display_name: str
    toons: int


@dataclass(frozen=True, slots=True)
class UsageStats:
    day: date
    """Today in the quota's time zone; the week is this day and the six before."""
    today: PeriodStats
    last_7_days: PeriodStats
    top_users: list[TopUser]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    detail: str
