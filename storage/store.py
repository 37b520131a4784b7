"""The storage entry point: one object per process that owns the engine and the repositories."""

from __future__ import annotations

from datetime import timedelta
from types import TracebackType
from typing import Any, Self, cast

from sqlalchemy import CursorResult, delete, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

from storage.admin import Admin
from storage.clock import Clock, utc_now
from storage.engine import create_engine
from storage.jobs import Jobs
from storage.migrate import upgrade
from storage.models import AuditRow, Job, User
from storage.quotas import Quotas
from storage.records import UNFINISHED, UserRef
from storage.settings import QuotaSettings
from storage.users import find_user_id

FORGOTTEN_ACTOR = "(forgotten user)"


class Store:
    """Quotas, jobs and admin operations on one database.

    Open with `await Store.open(url, quota_settings)` (migrates first), close with
    `await storage.close()` or use it as an async context manager.
    """

    def __init__(self, engine: AsyncEngine, policy: QuotaSettings, clock: Clock = utc_now) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._clock = clock
        self.quotas = Quotas(self._sessions, policy, clock)
        self.jobs = Jobs(self._sessions, clock)
        self.admin = Admin(self._sessions, policy, clock)

    @classmethod
    async def open(cls, url: str, policy: QuotaSettings, *, clock: Clock = utc_now) -> Store:
        """Connect to `url` and migrate its schema to the newest revision."""
        engine = create_engine(url)
        try:
            await upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, policy, clock)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def forget(self, user: UserRef) -> bool:
        """Delete every row about `user`: their user row, jobs and the admin actions on them.

        Admin actions they took themselves stay in the audit log under an anonymous actor.
        This also clears their quota, usage and any ban. False if nothing was stored.
        """
        async with self._sessions.begin() as session:
            targeted = await _changed(
                session,
                delete(AuditRow)
                .where(AuditRow.target == str(user))
                .execution_options(synchronize_session=False),
            )
            acted = await _changed(
                session,
                update(AuditRow)
                .where(AuditRow.actor == str(user))
                .values(actor=FORGOTTEN_ACTOR)
                .execution_options(synchronize_session=False),
            )
            user_id = await find_user_id(session, user)
            if user_id is not None:
                await session.execute(delete(Job).where(Job.user_id == user_id))
                await session.execute(delete(User).where(User.id == user_id))
            return user_id is not None or bool(targeted or acted)

    async def purge_old_jobs(self, retention_days: int) -> int:
        """Delete finished jobs older than `retention_days`; unfinished ones are kept."""
        cutoff = self._clock() - timedelta(days=retention_days)
        async with self._sessions.begin() as session:
            return await _changed(
                session,
                delete(Job)
                .where(Job.status.not_in(UNFINISHED), Job.finished_at < cutoff)
                .execution_options(synchronize_session=False),
            )


async def _changed(session: AsyncSession, statement: Executable) -> int:
    """The rows a DELETE or UPDATE touched."""
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount
