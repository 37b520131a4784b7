"""Job rows: look-ups and status transitions, each applied at most once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.clock import Clock
from storage.models import Job, User
from storage.quotas import Sessions, give_back
from storage.records import UNFINISHED, JobKind, JobRecord, JobStatus, UserRef

FAILURE_LENGTH = 512


def _records() -> Select[Any]:
    return select(Job, User.platform, User.platform_user_id).join(User, Job.user_id == User.id)


def _record(row: Any) -> JobRecord:
    job: Job = row.Job
    return JobRecord(
        id=job.id,
        user=UserRef(row.platform, row.platform_user_id),
        kind=JobKind(job.kind),
        status=JobStatus(job.status),
        style=job.style,
        strength=job.strength,
        chat=job.chat,
        options=job.options,
        day=job.day,
        refunded=job.refunded,
        failure=job.failure,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


class Jobs:
    """Transitions return False when the job is unknown or already past that point, so a
    cancellation racing a completion resolves to whichever came first."""

    def __init__(self, sessions: Sessions, clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._sessions.begin() as session:
            row = (await session.execute(_records().where(Job.id == job_id))).one_or_none()
            return None if row is None else _record(row)

    async def unfinished_jobs(self, platform: str | None = None) -> list[JobRecord]:
        """Queued and running jobs, oldest first: what a restart must resume or answer."""
        query = _records().where(Job.status.in_(UNFINISHED)).order_by(Job.created_at, Job.id)
        if platform is not None:
            query = query.where(User.platform == platform)
        async with self._sessions.begin() as session:
            return [_record(row) for row in await session.execute(query)]

    async def mark_running(self, job_id: str) -> bool:
        async with self._sessions.begin() as session:
            started = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, started_at=self._clock())
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            return started.one_or_none() is not None

    async def mark_done(self, job_id: str) -> bool:
        return await self._finish(job_id, JobStatus.DONE, None, refund=False)

    async def mark_failed(self, job_id: str, reason: str, *, refund: bool) -> bool:
        """`refund` when the failure is not the user's fault (our bug, a timeout, a full queue)."""
        return await self._finish(job_id, JobStatus.FAILED, reason[:FAILURE_LENGTH], refund=refund)

    async def mark_cancelled(self, job_id: str, *, refund: bool) -> bool:
        return await self._finish(job_id, JobStatus.CANCELLED, None, refund=refund)

    async def _finish(
        self, job_id: str, status: JobStatus, failure: str | None, *, refund: bool
    ) -> bool:
        async with self._sessions.begin() as session:
            finished = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(UNFINISHED))
                .values(status=status, failure=failure, finished_at=self._clock())
                .returning(Job.user_id, Job.kind)
                .execution_options(synchronize_session=False)
            )
            row = finished.one_or_none()
            if row is None:
                return False
            if row.kind == JobKind.TOON:
                await _leave_flight(session, row.user_id)
            if refund:
                await give_back(session, job_id)
            return True


async def _leave_flight(session: AsyncSession, user_id: int) -> None:
    await session.execute(
        update(User)
        .where(User.id == user_id, User.in_flight > 0)
        .values(in_flight=User.in_flight - 1)
        .execution_options(synchronize_session=False)
    )
