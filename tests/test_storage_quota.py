from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage import (
    Admitted,
    DenialReason,
    Denied,
    GroupRef,
    Store,
    UserRef,
)
from storage.models import Job, User
from tests.support.storage_support import ALICE, BOB, FakeClock, job, open_storage, policy


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def storage(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with await open_storage(tmp_path, clock) as opened:
        yield opened


def admitted(decision: object) -> Admitted:
    assert isinstance(decision, Admitted), decision
    return decision


def refused(decision: object, reason: DenialReason) -> Denied:
    assert isinstance(decision, Denied), decision
    assert decision.reason is reason, decision
    return decision


async def charged_rows(storage: Store, user: UserRef = ALICE) -> tuple[int, int]:
    """(`user`'s users.used, all job rows), read straight from the tables."""
    async with storage.engine.connect() as conn:
        used = await conn.scalar(select(User.used).where(User.platform_user_id == user.id))
        jobs = await conn.scalar(select(func.count()).select_from(Job))
    return used or 0, jobs or 0


async def test_concurrent_consumes_never_exceed_the_quota(
    database_url: str, clock: FakeClock
) -> None:
    # Four engines (four connections) on one database, 200 requests at once: exactly 50 pass.
    opened = [await Store.open(database_url, policy(daily=50), clock=clock) for _ in range(4)]
    try:
        decisions = await asyncio.gather(*(opened[i % 4].quotas.consume(job()) for i in range(200)))
        assert sum(isinstance(d, Admitted) for d in decisions) == 50
        assert {d.reason for d in decisions if isinstance(d, Denied)} == {DenialReason.QUOTA}
        assert await charged_rows(opened[0]) == (50, 50)
        assert sorted(d.allowance.used for d in decisions if isinstance(d, Admitted)) == list(
            range(1, 51)
        )
    finally:
        for each in opened:
            await each.close()


def _hammer(url: str, user: UserRef, start: object, results: object, attempts: int) -> None:
    async def run() -> tuple[int, set[str]]:
        async with await Store.open(url, policy(daily=60)) as storage:
            # Connect the pool before the start, so both processes hammer at full speed.
            await asyncio.gather(*(storage.quotas.allowance(BOB) for _ in range(attempts)))
            start.wait()  # type: ignore[attr-defined]
            decisions = await asyncio.gather(
                *(storage.quotas.consume(job(user)) for _ in range(attempts))
            )
        reasons = {str(d.reason) for d in decisions if isinstance(d, Denied)}
        return sum(isinstance(d, Admitted) for d in decisions), reasons

    results.put(asyncio.run(run()))  # type: ignore[attr-defined]


async def _race(url: str, user: UserRef) -> list[int]:
    """Two processes, 100 requests each for one user's 60 toons: the toons each got."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    args = (url, user, start, results, 100)
    workers = [ctx.Process(target=_hammer, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [await asyncio.to_thread(results.get, timeout=60) for _ in workers]
    for worker in workers:
        await asyncio.to_thread(worker.join, 30)
        assert worker.exitcode == 0
    assert set().union(*(reasons for _, reasons in outcomes)) == {"quota"}
    return [count for count, _ in outcomes]


async def test_two_processes_never_exceed_the_quota(database_url: str) -> None:
    async with await Store.open(database_url, policy()):
        pass
    # A busy machine may run one process's burst before the other starts; race again (as a
    # new user) until both really competed for the same toons, checking the total each time.
    rounds = []
    for attempt in range(5):
        user = UserRef("telegram", f"race{attempt}")
        counts = await _race(database_url, user)
        rounds.append(counts)
        assert sum(counts) == 60, rounds
        async with await Store.open(database_url, policy()) as storage:
            assert await charged_rows(storage, user) == (60, 60 * len(rounds))
        if min(counts) > 0:
            break
    assert min(rounds[-1]) > 0, rounds


async def test_refused_requests_charge_nothing(storage: Store) -> None:
    for _ in range(3):
        admitted(await storage.quotas.consume(job()))
    for _ in range(3):
        quota = refused(await storage.quotas.consume(job()), DenialReason.QUOTA)
        assert quota.allowance.remaining == 0
    assert await charged_rows(storage) == (3, 3)


async def test_refund_gives_one_back_once(storage: Store) -> None:
    ids = [admitted(await storage.quotas.consume(job())).job_id for _ in range(3)]
    refused(await storage.quotas.consume(job()), DenialReason.QUOTA)
    assert await storage.quotas.refund(ids[0]) is True
    assert await storage.quotas.refund(ids[0]) is False
    assert (await storage.quotas.allowance(ALICE)).remaining == 1
    admitted(await storage.quotas.consume(job()))
    refused(await storage.quotas.consume(job()), DenialReason.QUOTA)
    assert await storage.quotas.refund("no-such-job") is False


async def test_failure_refunds_only_when_asked(storage: Store) -> None:
    first = admitted(await storage.quotas.consume(job())).job_id
    second = admitted(await storage.quotas.consume(job())).job_id
    assert await storage.jobs.mark_failed(first, "user sent no face", refund=False)
    assert (await storage.quotas.allowance(ALICE)).used == 2
    assert await storage.jobs.mark_failed(second, "GPU out of memory", refund=True)
    assert (await storage.quotas.allowance(ALICE)).used == 1
    # A refund after the failure that already refunded gives nothing more.
    assert await storage.quotas.refund(second) is False


async def test_refund_of_yesterdays_job_leaves_today_alone(
    storage: Store, clock: FakeClock
) -> None:
    clock.now = datetime(2025, 6, 10, 23, 59, tzinfo=UTC)
    yesterday = admitted(await storage.quotas.consume(job())).job_id
    clock.advance(minutes=2)
    for _ in range(3):
        admitted(await storage.quotas.consume(job()))
    assert await storage.quotas.refund(yesterday) is True
    refused(await storage.quotas.consume(job()), DenialReason.QUOTA)


@pytest.mark.parametrize(
    ("start", "reset", "resets_in"),
    [
        # Winter: Berlin is UTC+1, midnight is 23:00 UTC.
        ("2025-01-15T22:30:00", "2025-01-15T23:00:00", timedelta(minutes=30)),
        # Spring forward on 30 March: that day has 23 hours, midnight after it is 22:00 UTC.
        ("2025-03-29T23:30:00", "2025-03-30T22:00:00", timedelta(hours=22, minutes=30)),
        # Fall back on 26 October: 25 hours, midnight after it is 23:00 UTC.
        ("2025-10-25T22:30:00", "2025-10-26T23:00:00", timedelta(hours=24, minutes=30)),
    ],
)
async def test_window_resets_at_local_midnight(
    tmp_path: Path, start: str, reset: str, resets_in: timedelta
) -> None:
    clock = FakeClock(datetime.fromisoformat(start).replace(tzinfo=UTC))
    reset_at = datetime.fromisoformat(reset).replace(tzinfo=UTC)
    async with await open_storage(tmp_path, clock, daily=2, timezone="Europe/Berlin") as storage:
        first = admitted(await storage.quotas.consume(job()))
        assert first.allowance.resets_at == reset_at
        assert first.allowance.resets_in == resets_in
        admitted(await storage.quotas.consume(job()))
        clock.now = reset_at - timedelta(seconds=1)
        late = refused(await storage.quotas.consume(job()), DenialReason.QUOTA)
        assert late.retry_after == timedelta(seconds=1)
        clock.now = reset_at
        fresh = admitted(await storage.quotas.consume(job()))
        assert fresh.allowance.used == 1
        assert fresh.allowance.resets_at == reset_at + timedelta(days=1)


async def test_window_follows_the_configured_zone(tmp_path: Path) -> None:
    # 22:30 UTC on a summer day is already tomorrow in Berlin but not in UTC.
    clock = FakeClock(datetime(2025, 6, 10, 21, 30, tzinfo=UTC))
    async with await open_storage(tmp_path, clock, daily=1, timezone="Europe/Berlin") as berlin:
        admitted(await berlin.quotas.consume(job()))
        clock.advance(hours=1)
        admitted(await berlin.quotas.consume(job()))
    clock.now = datetime(2025, 6, 10, 21, 30, tzinfo=UTC)
    async with await open_storage(tmp_path / "utc", clock, daily=1) as utc:
        admitted(await utc.quotas.consume(job()))
        clock.advance(hours=1)
        refused(await utc.quotas.consume(job()), DenialReason.QUOTA)


async def test_cooldown_refuses_with_time_left(tmp_path: Path, clock: FakeClock) -> None:
    async with await open_storage(tmp_path, clock, cooldown=20) as storage:
        first = admitted(await storage.quotas.consume(job()))
        await storage.jobs.mark_done(first.job_id)
        clock.advance(seconds=5)
        wait = refused(await storage.quotas.consume(job()), DenialReason.COOLDOWN)
        assert wait.retry_after == timedelta(seconds=15)
        admitted(await storage.quotas.consume(job(BOB)))  # per user
        clock.advance(seconds=15)
        admitted(await storage.quotas.consume(job()))
        assert await charged_rows(storage) == (2, 3)


async def test_in_flight_cap_until_a_job_finishes(tmp_path: Path, clock: FakeClock) -> None:
    async with await open_storage(tmp_path, clock, max_in_flight=2) as storage:
        first = admitted(await storage.quotas.consume(job())).job_id
        second = admitted(await storage.quotas.consume(job())).job_id
        busy = refused(await storage.quotas.consume(job()), DenialReason.IN_FLIGHT)
        assert busy.retry_after is None
        assert busy.allowance.remaining == 1
        await storage.jobs.mark_running(first)
        refused(await storage.quotas.consume(job()), DenialReason.IN_FLIGHT)
        assert await storage.jobs.mark_done(first)
        assert not await storage.jobs.mark_done(first)  # a second finish frees nothing
        admitted(await storage.quotas.consume(job()))
        refused(await storage.quotas.consume(job()), DenialReason.QUOTA)
        await storage.jobs.mark_cancelled(second, refund=True)
        admitted(await storage.quotas.consume(job()))


async def test_ban_refuses_everything_until_unbanned(storage: Store) -> None:
    admitted(await storage.quotas.consume(job(name="Alice")))
    await storage.admin.ban(ALICE, actor="cli:root", reason="spam")
    banned = refused(await storage.quotas.consume(job()), DenialReason.BANNED)
    assert banned.retry_after is None
    refused(await storage.quotas.rerender(ALICE), DenialReason.BANNED)
    assert await storage.quotas.is_banned(ALICE)
    assert not await storage.quotas.is_banned(BOB)
    await storage.admin.unban(ALICE, actor="cli:root")
    admitted(await storage.quotas.consume(job()))


async def test_quota_outranks_cooldown_in_the_reason(tmp_path: Path, clock: FakeClock) -> None:
    async with await open_storage(tmp_path, clock, daily=1, cooldown=60) as storage:
        admitted(await storage.quotas.consume(job()))
        refused(await storage.quotas.consume(job()), DenialReason.QUOTA)


async def test_overrides_group_defaults_and_unlimited(storage: Store) -> None:
    server = GroupRef("discord", "9000")
    await storage.admin.set_group_quota(server, 1, actor="cli:root")
    admitted(await storage.quotas.consume(job(BOB, group="9000")))
    refused(await storage.quotas.consume(job(BOB, group="9000")), DenialReason.QUOTA)
    # Elsewhere the configured default (3) applies to the same daily count.
    assert (await storage.quotas.allowance(BOB)).remaining == 2
    admitted(await storage.quotas.consume(job(BOB)))
    # A Telegram group with the same id is another group.
    assert (await storage.quotas.allowance(ALICE, group="9000")).limit == 3
    await storage.admin.set_quota(BOB, 5, actor="cli:root")
    admitted(await storage.quotas.consume(job(BOB, group="9000")))
    await storage.admin.set_quota(BOB, "unlimited", actor="cli:root")
    for _ in range(10):
        assert admitted(await storage.quotas.consume(job(BOB))).allowance.remaining is None
    await storage.admin.set_quota(BOB, 0, actor="cli:root")
    refused(await storage.quotas.consume(job(BOB)), DenialReason.QUOTA)
    await storage.admin.set_group_quota(server, "default", actor="cli:root")
    assert await storage.admin.group_quota(server) is None


async def test_rerenders_are_rate_limited_not_charged(tmp_path: Path, clock: FakeClock) -> None:
    async with await open_storage(tmp_path, clock, rerenders_per_minute=3, daily=1) as storage:
        admitted(await storage.quotas.consume(job()))
        for _ in range(3):
            assert await storage.quotas.rerender(ALICE) is None
        wait = refused(await storage.quotas.rerender(ALICE), DenialReason.RATE)
        assert wait.retry_after == timedelta(seconds=20)
        assert wait.allowance.used == 1
        assert await storage.quotas.rerender(BOB) is None  # per user
        clock.advance(seconds=19)
        refused(await storage.quotas.rerender(ALICE), DenialReason.RATE)
        clock.advance(seconds=1)
        assert await storage.quotas.rerender(ALICE) is None
        refused(await storage.quotas.rerender(ALICE), DenialReason.RATE)
        clock.advance(minutes=1)
        for _ in range(3):
            assert await storage.quotas.rerender(ALICE) is None
        assert await charged_rows(storage) == (1, 1)
