"""Job rows: look-ups and status transitions, each applied at most once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.clock import Clock
from storage.models import Job, User
from storage.quotas import Sessions, give_back
from storage.records import UNFINISHED, JobRecord, JobStatus, UserRef

FAILURE_LENGTH = 512


def _records() -> Select[Job, str, str]:
    return select(Job, User.platform, User.platform_user_id).join(User, Job.user_id == User.id)


def _record(row: Any) -> JobRecord:
    job: Job = row.Job
    return JobRecord(
        id=job.id,
        user=UserRef(row.platform, row.platform_user_id),
        status=JobStatus(job.status),
        style=job.style,
        strength=job.strength,
        chat=job.chat,
        options=job.options,
        day=job.day,
        refunded=job.refunded,
        attempts=job.attempts,
        failure=job.failure,
        timings=job.timings,
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

    async def ids_of(self, user: UserRef) -> list[str]:
        """Every job id of `user`, whatever its status: what /forget also drops from memory."""
        query = select(Job.id).join(User, Job.user_id == User.id)
        query = query.where(User.platform == user.platform, User.platform_user_id == user.id)
        async with self._sessions.begin() as session:
            return list((await session.scalars(query)).all())

    async def unfinished_jobs(self, platform: str | None = None) -> list[JobRecord]:
        """Queued, running and delivering jobs, oldest first: what a restart must resume."""
        query = _records().where(Job.status.in_(UNFINISHED)).order_by(Job.created_at, Job.id)
        if platform is not None:
            query = query.where(User.platform == platform)
        async with self._sessions.begin() as session:
            return [_record(row) for row in await session.execute(query)]

    async def mark_running(self, job_id: str) -> bool:
        """Inference starts: counted in `attempts`."""
        return await self._move(
            job_id,
            (JobStatus.QUEUED,),
            status=JobStatus.RUNNING,
            started_at=self._clock(),
            attempts=Job.attempts + 1,
        )

    async def mark_delivering(self, job_id: str, *, timings: Mapping[str, float]) -> bool:
        """The toon is drawn (`timings`: seconds per pipeline stage) and is being sent.

        From `queued` too: the worker reports a start in the background and may finish first.
        """
        return await self._move(
            job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            status=JobStatus.DELIVERING,
            timings=dict(timings),
        )

    async def requeue(self, job_id: str) -> bool:
        """Back to `queued` after a restart: a running or delivering job is drawn again."""
        return await self._move(
            job_id, (JobStatus.RUNNING, JobStatus.DELIVERING), status=JobStatus.QUEUED
        )

    async def mark_done(self, job_id: str) -> bool:
        """The platform confirmed the toon. One transaction: a crash between the platform's
        confirmation and its commit is the only way a toon is drawn and sent twice."""
        return await self._finish(job_id, JobStatus.DONE, refund=False)

    async def mark_failed(self, job_id: str, reason: str, *, refund: bool) -> bool:
        """`refund` when the failure is not the user's fault (our bug, a timeout, a full queue)."""
        return await self._finish(
            job_id, JobStatus.FAILED, refund=refund, failure=reason[:FAILURE_LENGTH]
        )

    async def mark_cancelled(self, job_id: str, *, refund: bool) -> bool:
        return await self._finish(job_id, JobStatus.CANCELLED, refund=refund)

    async def _move(self, job_id: str, sources: tuple[JobStatus, ...], **values: Any) -> bool:
        async with self._sessions.begin() as session:
            moved = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(sources))
                .values(values)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            return moved.one_or_none() is not None

    async def _finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        refund: bool,
        failure: str | None = None,
    ) -> bool:
        """Move an unfinished job to `status` and free its in-flight slot, exactly once."""
        values = {"status": status, "failure": failure, "finished_at": self._clock()}
        async with self._sessions.begin() as session:
            finished = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(UNFINISHED))
                .values(values)
                .returning(Job.user_id)
                .execution_options(synchronize_session=False)
            )
            user_id = finished.scalar_one_or_none()
            if user_id is None:
                return False
            await _leave_flight(session, user_id)
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
