"""What admins do to quotas (from the CLI or chat), each change written to the audit log."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from sqlalchemy import delete, desc, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.clock import Clock, DailyWindow
from storage.errors import InvalidQuotaError
from storage.models import AuditRow, GroupQuota, Job, User
from storage.quotas import Sessions, allowance, effective_limit
from storage.records import (
    UNFINISHED,
    AuditEntry,
    GroupRef,
    JobStatus,
    PeriodStats,
    QuotaSource,
    QuotaStatus,
    TopUser,
    UsageStats,
    UserRef,
)
from storage.settings import QuotaSettings
from storage.users import create_user, find_user_id, known_user_id

UserQuota = int | Literal["unlimited", "default"]
"""A daily quota an admin sets: a number, no limit, or back to the configured default."""

DETAIL_LENGTH = 512


USER_WORDS = ("unlimited", "default")
GROUP_WORDS = ("default",)


def parse_quota(text: str) -> UserQuota:
    """Read a quota as an admin types it: a number, 'unlimited' or 'default'."""
    word = text.strip().lower()
    if word in USER_WORDS:
        return cast(UserQuota, word)
    try:
        return _checked(int(word), USER_WORDS)
    except ValueError:
        raise InvalidQuotaError(text, USER_WORDS) from None


def _checked(daily: object, words: tuple[str, ...]) -> UserQuota:
    if isinstance(daily, str) and daily in words:
        return cast(UserQuota, daily)
    if isinstance(daily, int) and not isinstance(daily, bool) and daily >= 0:
        return daily
    raise InvalidQuotaError(daily, words)


def group_target(group: GroupRef) -> str:
    return f"group {group}"


class Admin:
    def __init__(self, sessions: Sessions, policy: QuotaSettings, clock: Clock) -> None:
        self._sessions = sessions
        self._policy = policy
        self._zone = ZoneInfo(policy.timezone)
        self._clock = clock

    async def show(self, user: UserRef) -> QuotaStatus:
        """UnknownUserError if they never used the bot."""
        async with self._sessions.begin() as session:
            return await self._status(session, await known_user_id(session, user))

    async def set_quota(self, user: UserRef, daily: UserQuota, *, actor: str) -> QuotaStatus:
        """Override a user's daily quota; InvalidQuotaError for anything but n >= 0 or the words."""
        daily = _checked(daily, USER_WORDS)
        values = {
            "unlimited": daily == "unlimited",
            "daily_limit": daily if isinstance(daily, int) else None,
        }
        return await self._change(user, values, actor, "set_quota", str(daily))

    async def reset(self, user: UserRef, *, actor: str) -> QuotaStatus:
        """Today's toons back to zero, cooldown and re-render limit cleared, and the in-flight
        count recomputed from the jobs really queued or running."""
        today = DailyWindow.at(self._clock(), self._zone).day
        in_flight = (
            select(func.count(Job.id))
            .where(Job.user_id == User.id, Job.status.in_(UNFINISHED))
            .scalar_subquery()
        )
        values = {
            "window_day": today,
            "used": 0,
            "last_request_at": None,
            "rerender_tat": None,
            "in_flight": in_flight,
        }
        return await self._change(user, values, actor, "reset", "")

    async def ban(self, user: UserRef, *, actor: str, reason: str = "") -> QuotaStatus:
        reason = reason[:256]
        values = {"banned": True, "ban_reason": reason}
        return await self._change(user, values, actor, "ban", reason)

    async def unban(self, user: UserRef, *, actor: str) -> QuotaStatus:
        return await self._change(user, {"banned": False, "ban_reason": ""}, actor, "unban", "")

    async def group_quota(self, group: GroupRef) -> int | None:
        """A server's or group's default daily quota; None: the configured default applies."""
        query = select(GroupQuota.daily).filter_by(platform=group.platform, group_id=group.id)
        async with self._sessions.begin() as session:
            return await session.scalar(query)

    async def set_group_quota(self, group: GroupRef, daily: UserQuota, *, actor: str) -> None:
        """Default quota for requests made in `group` (user overrides still win); a number or
        "default" (InvalidQuotaError for "unlimited": grant that per user)."""
        daily = _checked(daily, GROUP_WORDS)
        key = {"platform": group.platform, "group_id": group.id}
        async with self._sessions.begin() as session:
            await session.execute(delete(GroupQuota).filter_by(**key))
            if daily != "default":
                await session.execute(insert(GroupQuota).values(**key, daily=daily))
            await self._audit(session, actor, "set_group_quota", group_target(group), str(daily))

    async def stats(self, *, top: int = 10) -> UsageStats:
        """Today and the last 7 days (local days, today included), and the `top` users."""
        today = DailyWindow.at(self._clock(), self._zone).day
        first = today - timedelta(days=6)
        period = select(
            Job.day, Job.status, Job.refunded, Job.user_id, func.count().label("n")
        ).where(Job.day >= first, Job.day <= today)
        period = period.group_by(Job.day, Job.status, Job.refunded, Job.user_id)
        toons = func.count(Job.id).label("toons")
        leaders = (
            select(User.platform, User.platform_user_id, User.display_name, toons)
            .join(Job, Job.user_id == User.id)
            .where(Job.day >= first, Job.day <= today, ~Job.refunded)
            .group_by(User.id, User.platform, User.platform_user_id, User.display_name)
            .order_by(desc(toons), User.id)
            .limit(top)
        )
        async with self._sessions.begin() as session:
            rows = (await session.execute(period)).all()
            best = (await session.execute(leaders)).all()
        return UsageStats(
            day=today,
            today=_summary(row for row in rows if row.day == today),
            last_7_days=_summary(rows),
            top_users=[
                TopUser(UserRef(r.platform, r.platform_user_id), r.display_name, r.toons)
                for r in best
            ],
        )

    async def audit_log(
        self, *, target: UserRef | GroupRef | None = None, limit: int = 50
    ) -> list[AuditEntry]:
        """The newest admin actions first, all of them or those on one user or group."""
        query = select(AuditRow).order_by(desc(AuditRow.at), desc(AuditRow.id)).limit(limit)
        if target is not None:
            name = group_target(target) if isinstance(target, GroupRef) else str(target)
            query = query.where(AuditRow.target == name)
        async with self._sessions.begin() as session:
            rows = (await session.scalars(query)).all()
        return [AuditEntry(r.at, r.actor, r.action, r.target, r.detail) for r in rows]

    async def _change(
        self, user: UserRef, values: dict[str, Any], actor: str, action: str, detail: str
    ) -> QuotaStatus:
        """Change a user's row, creating it for someone who never used the bot (so a ban or
        a quota can be set in advance); the audit log says which."""
        async with self._sessions.begin() as session:
            user_id = await find_user_id(session, user)
            if user_id is None:
                await create_user(session, user, "", self._clock())
                user_id = await known_user_id(session, user)
                detail = f"{detail} (user not seen before)".lstrip()
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(values)
                .execution_options(synchronize_session=False)
            )
            await self._audit(session, actor, action, str(user), detail)
            return await self._status(session, user_id)

    async def _audit(
        self, session: AsyncSession, actor: str, action: str, target: str, detail: str
    ) -> None:
        await session.execute(
            insert(AuditRow).values(
                at=self._clock(),
                actor=actor,
                action=action,
                target=target,
                detail=detail[:DETAIL_LENGTH],
            )
        )

    async def _status(self, session: AsyncSession, user_id: int) -> QuotaStatus:
        now = self._clock()
        window = DailyWindow.at(now, self._zone)
        query = select(User).where(User.id == user_id).execution_options(populate_existing=True)
        user = (await session.execute(query)).scalar_one()
        source: QuotaSource = "default"
        if user.unlimited:
            source = "unlimited"
        elif user.daily_limit is not None:
            source = "user"
        used = user.used if user.window_day == window.day else 0
        limit = effective_limit(user.unlimited, user.daily_limit, self._policy.daily)
        return QuotaStatus(
            user=UserRef(user.platform, user.platform_user_id),
            display_name=user.display_name,
            allowance=allowance(limit, used, window, now),
            source=source,
            banned=user.banned,
            ban_reason=user.ban_reason,
            in_flight=user.in_flight,
            last_request_at=user.last_request_at,
            first_seen=user.created_at,
        )


def _summary(rows: Iterable[Any]) -> PeriodStats:
    counts = {"toons": 0, "done": 0, "failed": 0, "cancelled": 0, "refunded": 0}
    users: set[int] = set()
    for row in rows:
        users.add(row.user_id)
        if row.refunded:
            counts["refunded"] += row.n
        else:
            counts["toons"] += row.n
        if row.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
            counts[str(row.status)] += row.n
    return PeriodStats(users=len(users), **counts)
