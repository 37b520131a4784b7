from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from storage import Admitted, DenialReason, Denied, JobStatus, NewJob, UserRef
from tests.support.storage_support import ALICE, BOB, FakeClock, job, open_storage


def job_id(decision: object) -> str:
    assert isinstance(decision, Admitted), decision
    return decision.job_id


async def test_state_and_jobs_survive_reopening(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await open_storage(tmp_path, clock) as storage:
        first = job_id(await storage.quotas.consume(job(name="Alice")))
        clock.advance(seconds=1)
        second = job_id(await storage.quotas.consume(job()))
        clock.advance(seconds=1)
        third = job_id(await storage.quotas.consume(job(BOB)))
        clock.advance(seconds=1)
        fourth = job_id(await storage.quotas.consume(job(BOB, options={"faces_only": True})))
        clock.advance(seconds=1)
        await storage.jobs.mark_running(first)
        await storage.jobs.mark_done(second)
        await storage.admin.ban(BOB, actor="cli:root", reason="spam")
    async with await open_storage(tmp_path, clock) as storage:
        unfinished = await storage.jobs.unfinished_jobs()
        assert [j.id for j in unfinished] == [first, third, fourth]
        running = unfinished[0]
        assert running.status is JobStatus.RUNNING
        assert running.user == ALICE
        assert running.platform == "telegram"
        assert running.chat == {"chat_id": 555, "message_id": 7}
        assert running.options == {"faces": "all"}
        assert (running.style, running.strength) == ("toon", 32)
        assert running.started_at == clock.now
        assert running.created_at == clock.now - timedelta(seconds=4)
        assert unfinished[2].options == {"faces_only": True}
        assert [j.id for j in await storage.jobs.unfinished_jobs("discord")] == [third, fourth]
        assert (await storage.quotas.allowance(ALICE)).used == 2
        decision = await storage.quotas.consume(job(BOB))
        assert isinstance(decision, Denied)
        assert decision.reason is DenialReason.BANNED
        assert (await storage.admin.show(ALICE)).display_name == "Alice"


async def test_transitions_happen_once_and_in_order(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await open_storage(tmp_path, clock) as storage:
        ident = job_id(await storage.quotas.consume(job()))
        clock.advance(seconds=3)
        assert await storage.jobs.mark_running(ident)
        assert not await storage.jobs.mark_running(ident)
        clock.advance(seconds=40)
        assert await storage.jobs.mark_failed(ident, "no face found" * 100, refund=False)
        assert not await storage.jobs.mark_done(ident)
        assert not await storage.jobs.mark_cancelled(ident, refund=True)
        record = await storage.jobs.get(ident)
        assert record is not None
        assert record.status is JobStatus.FAILED
        assert record.failure is not None
        assert record.failure.startswith("no face found")
        assert len(record.failure) == 512
        assert record.finished_at is not None
        assert record.started_at is not None
        assert record.finished_at - record.started_at == timedelta(seconds=40)
        assert not record.refunded
        # The late cancel did not refund, and the failure freed the in-flight slot exactly once.
        status = await storage.admin.show(ALICE)
        assert (status.allowance.used, status.in_flight) == (1, 0)
        assert await storage.jobs.get("unknown") is None
        assert not await storage.jobs.mark_running("unknown")


async def test_delivering_keeps_stage_timings_until_done(tmp_path: Path) -> None:
    async with await open_storage(tmp_path, FakeClock()) as storage:
        ident = job_id(await storage.quotas.consume(NewJob(ALICE, style="toon")))
        timings = {"invert": 41.5, "render": 0.8}
        assert await storage.jobs.mark_running(ident)
        assert await storage.jobs.mark_delivering(ident, timings=timings)
        assert not await storage.jobs.mark_running(ident)
        delivering = await storage.jobs.get(ident)
        assert delivering is not None and delivering.status is JobStatus.DELIVERING
        assert [j.id for j in await storage.jobs.unfinished_jobs()] == [ident]
        assert (await storage.admin.show(ALICE)).in_flight == 1
        assert await storage.jobs.mark_done(ident)
        record = await storage.jobs.get(ident)
        assert record is not None
        assert record.strength is None
        assert record.timings == timings
        assert record.status is JobStatus.DONE
        assert (await storage.admin.show(ALICE)).in_flight == 0


async def test_a_restart_requeues_running_and_delivering_jobs_and_counts_attempts(
    tmp_path: Path,
) -> None:
    async with await open_storage(tmp_path, FakeClock()) as storage:
        running = job_id(await storage.quotas.consume(job()))
        delivering = job_id(await storage.quotas.consume(job(BOB)))
        queued = job_id(await storage.quotas.consume(job(name="again")))
        for ident in (running, delivering):
            assert await storage.jobs.mark_running(ident)
        assert await storage.jobs.mark_delivering(delivering, timings={})
        for ident in (running, delivering):
            assert await storage.jobs.requeue(ident)
        assert not await storage.jobs.requeue(queued)
        records = {j.id: j for j in await storage.jobs.unfinished_jobs()}
        assert {j.status for j in records.values()} == {JobStatus.QUEUED}
        assert [records[i].attempts for i in (running, delivering, queued)] == [1, 1, 0]
        assert await storage.jobs.mark_running(running)
        again = await storage.jobs.get(running)
        assert again is not None and again.attempts == 2


async def test_a_request_key_admits_one_job(tmp_path: Path) -> None:
    async with await open_storage(tmp_path, FakeClock()) as storage:
        first = job_id(await storage.quotas.consume(replace(job(), key="telegram:555:7")))
        again = await storage.quotas.consume(replace(job(), key="telegram:555:7"))
        assert isinstance(again, Denied) and again.reason is DenialReason.DUPLICATE
        other = await storage.quotas.consume(replace(job(), key="telegram:555:8"))
        assert isinstance(other, Admitted)
        status = await storage.admin.show(ALICE)
        assert (status.allowance.used, status.in_flight) == (2, 2)
        assert {j.id for j in await storage.jobs.unfinished_jobs()} == {first, other.job_id}


async def test_cancelled_queued_job_is_not_resumed(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await open_storage(tmp_path, clock) as storage:
        ident = job_id(await storage.quotas.consume(job()))
        assert await storage.jobs.mark_cancelled(ident, refund=True)
        assert await storage.jobs.unfinished_jobs() == []
        record = await storage.jobs.get(ident)
        assert record is not None
        assert (record.status, record.refunded) == (JobStatus.CANCELLED, True)
        assert (await storage.quotas.allowance(ALICE)).used == 0


async def test_retention_purges_old_finished_jobs_only(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await open_storage(tmp_path, clock) as storage:
        old_done = job_id(await storage.quotas.consume(job()))
        await storage.jobs.mark_done(old_done)
        old_stuck = job_id(await storage.quotas.consume(job(BOB)))
        clock.advance(days=29)
        recent = job_id(await storage.quotas.consume(job()))
        await storage.jobs.mark_failed(recent, "timeout", refund=True)
        clock.advance(days=1, seconds=1)
        assert await storage.purge_old_jobs(30) == 1
        assert await storage.jobs.get(old_done) is None
        assert await storage.jobs.get(old_stuck) is not None
        assert await storage.jobs.get(recent) is not None
        assert await storage.purge_old_jobs(30) == 0


async def test_a_users_job_ids_are_all_of_theirs_and_only_theirs(tmp_path: Path) -> None:
    async with await open_storage(tmp_path, FakeClock()) as storage:
        done = job_id(await storage.quotas.consume(job()))
        await storage.jobs.mark_done(done)
        queued = job_id(await storage.quotas.consume(job()))
        bobs = job_id(await storage.quotas.consume(job(BOB)))
        assert sorted(await storage.jobs.ids_of(ALICE)) == sorted([done, queued])
        assert await storage.jobs.ids_of(BOB) == [bobs]
        assert await storage.jobs.ids_of(UserRef("telegram", "nobody")) == []
