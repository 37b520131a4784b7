"""Admission: one conditional UPDATE decides ban, quota, in-flight cap and cooldown at once.

The UPDATE only matches the user's row when every check passes and charges the toon in the
same statement, so concurrent requests (other tasks, processes or connections) can never both
take the last toon: nothing is read first and written back later. Only after a refusal is the
row read, to tell the user why.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Update, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.clock import Clock, DailyWindow
from storage.models import GroupQuota, Job, User
from storage.records import (
    Admitted,
    Allowance,
    Decision,
    DenialReason,
    Denied,
    JobStatus,
    NewJob,
    UserRef,
)
from storage.settings import QuotaSettings
from storage.users import NAME_LENGTH, by_ref, create_user

Sessions = async_sessionmaker[AsyncSession]

RATE_PERIOD = 60.0
"""Seconds over which `rerenders_per_minute` counts."""


def new_job_id() -> str:
    """Twelve hex digits: short enough to quote to an admin, unique enough for job rows."""
    return secrets.token_hex(6)


def effective_limit(unlimited: bool, override: int | None, default: int) -> int | None:
    """Toons per day for a user; None is unlimited."""
    if unlimited:
        return None
    return default if override is None else override


def allowance(limit: int | None, used: int, window: DailyWindow, now: datetime) -> Allowance:
    return Allowance(limit, used, window.resets_at, window.resets_in(now))


class Quotas:
    """Charges, refunds and rate limits per user, counted in daily windows of one time zone."""

    def __init__(self, sessions: Sessions, policy: QuotaSettings, clock: Clock) -> None:
        self._sessions = sessions
        self._policy = policy
        self._zone = ZoneInfo(policy.timezone)
        self._clock = clock

    async def consume(self, job: NewJob) -> Decision:
        """Charge one toon and queue its job, or say why not (then nothing is charged)."""
        try:
            async with self._sessions.begin() as session:
                return await self._consume(session, job)
        except IntegrityError:
            if job.key is None:
                raise
            # The same request admitted at this very moment by another process.
            async with self._sessions.begin() as session:
                return await self._consume(session, job)

    async def _consume(self, session: AsyncSession, job: NewJob) -> Decision:
        now = self._clock()
        window = DailyWindow.at(now, self._zone)
        used_today = case((User.window_day == window.day, User.used), else_=0)
        default = await self._default_limit(session, job.user.platform, job.group)
        if job.key is not None and await _admitted_before(session, job.key):
            state = await _state(session, job.user)
            quota = self._allowance_of(state, default, window, now)
            return Denied(DenialReason.DUPLICATE, quota, None)
        charge = (
            update(User)
            .where(by_ref(job.user), *self._admissible(used_today, default, now))
            .values(
                window_day=window.day,
                used=used_today + 1,
                in_flight=User.in_flight + 1,
                last_request_at=now,
                **_renamed(job),
            )
            .returning(User.id, User.used, User.daily_limit, User.unlimited)
            .execution_options(synchronize_session=False)
        )
        row = await _gate(session, charge, job.user, job.display_name, now)
        if row is None:
            return await self._denial(session, job.user, default, window, now)
        job_id = await _add_job(session, row.id, job, window, now)
        limit = effective_limit(row.unlimited, row.daily_limit, default)
        return Admitted(job_id, allowance(limit, row.used, window, now))

    def _admissible(
        self, used_today: ColumnElement[int], default: int, now: datetime
    ) -> list[ColumnElement[bool]]:
        checks = [
            ~User.banned,
            or_(User.unlimited, used_today < func.coalesce(User.daily_limit, default)),
            User.in_flight < self._policy.max_in_flight,
        ]
        if self._policy.cooldown:
            # Checked only when configured: the clocks of two processes may disagree slightly.
            cooldown_start = now - timedelta(seconds=self._policy.cooldown)
            checks.append(
                or_(User.last_request_at.is_(None), User.last_request_at <= cooldown_start)
            )
        return checks

    async def rerender(self, user: UserRef) -> Denied | None:
        """Count a re-render if `user` is within `rerenders_per_minute`; None when it may run.

        Never charged against the quota. The generic cell rate algorithm: a burst of N, then
        one every 60/N seconds. Denied: RATE (retry_after) or BANNED.
        """
        now = self._clock()
        clock = now.timestamp()
        interval = RATE_PERIOD / self._policy.rerenders_per_minute
        latest_allowed = clock + RATE_PERIOD - interval
        async with self._sessions.begin() as session:
            count = (
                update(User)
                .where(
                    by_ref(user),
                    ~User.banned,
                    or_(User.rerender_tat.is_(None), User.rerender_tat <= latest_allowed),
                )
                .values(
                    rerender_tat=case(
                        (or_(User.rerender_tat.is_(None), User.rerender_tat < clock), clock),
                        else_=User.rerender_tat,
                    )
                    + interval
                )
                .returning(User.id)
                .execution_options(synchronize_session=False)
            )
            if await _gate(session, count, user, "", now) is not None:
                return None
            window = DailyWindow.at(now, self._zone)
            default = self._policy.daily
            return await self._denial(session, user, default, window, now, latest_allowed)

    async def is_banned(self, user: UserRef) -> bool:
        """For a check before downloading anything; `consume` checks again."""
        async with self._sessions.begin() as session:
            return bool(await session.scalar(select(User.banned).where(by_ref(user))))

    async def refund(self, job_id: str) -> bool:
        """Give back the toon a job was charged; False if it was not charged or already refunded."""
        async with self._sessions.begin() as session:
            return await give_back(session, job_id)

    async def allowance(self, user: UserRef, group: str | None = None) -> Allowance:
        """What `user` has left today (in `group`), without charging anything."""
        now = self._clock()
        window = DailyWindow.at(now, self._zone)
        async with self._sessions.begin() as session:
            default = await self._default_limit(session, user.platform, group)
            state = await _state(session, user)
            if state is None:
                return allowance(default, 0, window, now)
            return self._allowance_of(state, default, window, now)

    async def _default_limit(self, session: AsyncSession, platform: str, group: str | None) -> int:
        if group is not None:
            daily = await session.scalar(
                select(GroupQuota.daily).where(
                    GroupQuota.platform == platform, GroupQuota.group_id == group
                )
            )
            if daily is not None:
                return daily
        return self._policy.daily

    def _allowance_of(
        self, state: Any, default: int, window: DailyWindow, now: datetime
    ) -> Allowance:
        used = state.used if state.window_day == window.day else 0
        limit = effective_limit(state.unlimited, state.daily_limit, default)
        return allowance(limit, used, window, now)

    async def _denial(
        self,
        session: AsyncSession,
        user: UserRef,
        default: int,
        window: DailyWindow,
        now: datetime,
        rerender_latest: float | None = None,
    ) -> Denied:
        """Why the conditional UPDATE matched nothing, most lasting reason first."""
        state = await _state(session, user)
        quota = self._allowance_of(state, default, window, now)
        if state.banned:
            return Denied(DenialReason.BANNED, quota, None)
        if rerender_latest is not None:
            wait = timedelta(seconds=state.rerender_tat - rerender_latest)
            return Denied(DenialReason.RATE, quota, wait)
        if quota.remaining == 0:
            return Denied(DenialReason.QUOTA, quota, quota.resets_in)
        if state.in_flight >= self._policy.max_in_flight:
            return Denied(DenialReason.IN_FLIGHT, quota, None)
        cooldown_end = state.last_request_at + timedelta(seconds=self._policy.cooldown)
        return Denied(DenialReason.COOLDOWN, quota, cooldown_end - now)


async def _gate(
    session: AsyncSession, gate: Update, user: UserRef, display_name: str, now: datetime
) -> Any:
    """Run a conditional UPDATE of the user's row; when it matched nothing, make sure the row
    exists and run it once more. Also when another connection created the row meanwhile: the
    first UPDATE may not have seen it (PostgreSQL, READ COMMITTED), and refusing then would
    turn a first request into a made-up cooldown."""
    row = (await session.execute(gate)).one_or_none()
    if row is None:
        await create_user(session, user, display_name, now)
        row = (await session.execute(gate)).one_or_none()
    return row


def _renamed(job: NewJob) -> dict[str, str]:
    """Keep the display name current without another statement."""
    return {"display_name": job.display_name[:NAME_LENGTH]} if job.display_name else {}


async def _admitted_before(session: AsyncSession, key: str) -> bool:
    return await session.scalar(select(Job.id).where(Job.request_key == key)) is not None


async def _state(session: AsyncSession, user: UserRef) -> Any:
    query = select(
        User.banned,
        User.unlimited,
        User.daily_limit,
        User.window_day,
        User.used,
        User.in_flight,
        User.last_request_at,
        User.rerender_tat,
    ).where(by_ref(user))
    return (await session.execute(query)).one_or_none()


async def _add_job(
    session: AsyncSession,
    user_id: int,
    job: NewJob,
    window: DailyWindow,
    now: datetime,
) -> str:
    job_id = new_job_id()
    await session.execute(
        insert(Job).values(
            id=job_id,
            user_id=user_id,
            request_key=job.key,
            status=JobStatus.QUEUED,
            style=job.style,
            strength=job.strength,
            chat=dict(job.chat),
            options=dict(job.options),
            day=window.day,
            refunded=False,
            attempts=0,
            created_at=now,
        )
    )
    return job_id


async def give_back(session: AsyncSession, job_id: str) -> bool:
    """Refund a charged job once, on the day it was charged (a past day's refund changes stats)."""
    refunded = await session.execute(
        update(Job)
        .where(Job.id == job_id, ~Job.refunded)
        .values(refunded=True)
        .returning(Job.user_id, Job.day)
        .execution_options(synchronize_session=False)
    )
    row = refunded.one_or_none()
    if row is None:
        return False
    await session.execute(
        update(User)
        .where(User.id == row.user_id, User.window_day == row.day, User.used > 0)
        .values(used=User.used - 1)
        .execution_options(synchronize_session=False)
    )
    return True
