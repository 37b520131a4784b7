from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from storage import (
    AdminInputError,
    Admitted,
    DenialReason,
    Denied,
    GroupRef,
    InvalidQuotaError,
    InvalidRefError,
    Store,
    UnknownUserError,
    UserRef,
)
from storage.models import Base
from tests.support.storage_support import ALICE, BOB, FakeClock, job, open_storage


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def storage(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with await open_storage(tmp_path, clock, cooldown=30, max_in_flight=1) as opened:
        yield opened


async def test_unknown_users_and_bad_quotas_are_refused_clearly(storage: Store) -> None:
    stranger = UserRef("telegram", "999")
    with pytest.raises(UnknownUserError, match=r"unknown user telegram:999"):
        await storage.admin.show(stranger)
    await storage.quotas.consume(job())
    for bad in (-1, "lots", 2.5, True):
        with pytest.raises(InvalidQuotaError, match=r"invalid daily quota .*whole number >= 0"):
            await storage.admin.set_quota(ALICE, bad, actor="cli:root")  # type: ignore[arg-type]
    with pytest.raises(InvalidQuotaError, match=r">= 0 or 'default'$"):
        await storage.admin.set_group_quota(
            GroupRef("discord", "1"),
            "unlimited",  # type: ignore[arg-type]
            actor="cli:root",
        )
    assert (await storage.admin.show(ALICE)).allowance.limit == 3
    assert await storage.admin.audit_log() == []


async def test_admins_act_on_users_the_bot_has_never_seen(storage: Store) -> None:
    stranger, other = UserRef("telegram", "999"), UserRef("discord", "777")
    banned = await storage.admin.ban(stranger, actor="cli:root", reason="spam elsewhere")
    assert banned.banned and banned.user == stranger
    assert (await storage.admin.set_quota(other, 9, actor="telegram:1")).allowance.limit == 9
    refused = await storage.quotas.consume(job(stranger))
    assert isinstance(refused, Denied) and refused.reason is DenialReason.BANNED
    assert isinstance(await storage.quotas.consume(job(other)), Admitted)
    assert (await storage.admin.show(other)).allowance.used == 1
    entries = {e.target: e for e in await storage.admin.audit_log()}
    assert entries["telegram:999"].detail == "spam elsewhere (user not seen before)"
    assert entries["discord:777"].detail == "9 (user not seen before)"


@pytest.mark.parametrize("text", ["telegram", "12345", ":12", "telegram:", "tele gram:1", "a:b c"])
def test_refs_must_be_platform_and_id(text: str) -> None:
    with pytest.raises(InvalidRefError, match="platform:id") as info:
        UserRef.parse(text)
    assert isinstance(info.value, AdminInputError)


def test_refs_parse_the_admin_form() -> None:
    assert UserRef.parse(" Telegram:12345 ") == UserRef("telegram", "12345")
    assert str(GroupRef.parse("discord:42")) == "discord:42"
    assert UserRef("discord", "1") != GroupRef("discord", "1")


async def test_show_set_reset_and_audit(storage: Store, clock: FakeClock) -> None:
    first = await storage.quotas.consume(job(name="Alice"))
    assert isinstance(first, Admitted)
    status = await storage.admin.show(ALICE)
    assert (status.source, status.allowance.limit, status.allowance.used) == ("default", 3, 1)
    assert status.in_flight == 1
    assert status.last_request_at == status.first_seen == clock.now

    clock.advance(seconds=1)
    status = await storage.admin.set_quota(ALICE, 10, actor="telegram:1")
    assert (status.source, status.allowance.limit, status.allowance.remaining) == ("user", 10, 9)
    clock.advance(seconds=1)
    assert (await storage.admin.set_quota(ALICE, "unlimited", actor="cli:root")).source == (
        "unlimited"
    )
    clock.advance(seconds=1)
    status = await storage.admin.set_quota(ALICE, "default", actor="cli:root")
    assert (status.source, status.allowance.limit) == ("default", 3)

    # reset: today's toons, the cooldown and a stale in-flight count all start over.
    refused = await storage.quotas.consume(job())
    assert isinstance(refused, Denied)
    assert refused.reason is DenialReason.IN_FLIGHT
    await storage.jobs.mark_done(first.job_id)
    assert (await storage.quotas.consume(job())).reason is DenialReason.COOLDOWN  # type: ignore[union-attr]
    clock.advance(seconds=1)
    status = await storage.admin.reset(ALICE, actor="cli:root")
    assert (status.allowance.used, status.in_flight, status.last_request_at) == (0, 0, None)
    assert isinstance(await storage.quotas.consume(job()), Admitted)

    log = await storage.admin.audit_log()
    assert [(e.action, e.actor, e.detail) for e in log] == [
        ("reset", "cli:root", ""),
        ("set_quota", "cli:root", "default"),
        ("set_quota", "cli:root", "unlimited"),
        ("set_quota", "telegram:1", "10"),
    ]
    assert log[-1].at == log[0].at - timedelta(seconds=3)
    assert {e.target for e in log} == {"telegram:1001"}
    assert await storage.admin.audit_log(target=BOB) == []
    assert len(await storage.admin.audit_log(limit=2)) == 2


async def test_ban_reason_is_kept_and_logged(storage: Store) -> None:
    await storage.quotas.consume(job(BOB))
    status = await storage.admin.ban(BOB, actor="cli:root", reason="sent other people's photos")
    assert (status.banned, status.ban_reason) == (True, "sent other people's photos")
    status = await storage.admin.unban(BOB, actor="cli:root")
    assert (status.banned, status.ban_reason) == (False, "")
    log = await storage.admin.audit_log(target=BOB)
    assert [(e.action, e.detail) for e in log] == [
        ("unban", ""),
        ("ban", "sent other people's photos"),
    ]


async def test_group_quota_changes_are_logged(storage: Store) -> None:
    server = GroupRef("discord", "777")
    await storage.admin.set_group_quota(server, 2, actor="cli:root")
    await storage.admin.set_group_quota(server, 4, actor="cli:root")
    assert await storage.admin.group_quota(server) == 4
    log = await storage.admin.audit_log(target=server)
    assert [(e.action, e.target, e.detail) for e in log] == [
        ("set_group_quota", "group discord:777", "4"),
        ("set_group_quota", "group discord:777", "2"),
    ]


async def test_usage_statistics(tmp_path: Path, clock: FakeClock) -> None:
    carol = UserRef("telegram", "3003")
    async with await open_storage(tmp_path, clock, daily=10) as storage:
        # Seven days ago: outside the week; six days ago: inside it.
        clock.advance(days=-7)
        await storage.quotas.consume(job(carol))
        clock.advance(days=1)
        for _ in range(3):
            await storage.quotas.consume(job(BOB, name="Bob"))
        clock.advance(days=6)
        done = await storage.quotas.consume(job(name="Alice"))
        failed = await storage.quotas.consume(job(name="Alice"))
        assert isinstance(done, Admitted)
        assert isinstance(failed, Admitted)
        await storage.jobs.mark_done(done.job_id)
        await storage.jobs.mark_failed(failed.job_id, "GPU error", refund=True)
        cancelled = await storage.quotas.consume(job(BOB))
        assert isinstance(cancelled, Admitted)
        await storage.jobs.mark_cancelled(cancelled.job_id, refund=False)

        stats = await storage.admin.stats(top=5)
    assert stats.day == clock.now.date()
    today = stats.today
    assert (today.toons, today.refunded, today.users) == (2, 1, 2)
    assert (today.done, today.failed, today.cancelled) == (1, 1, 1)
    week = stats.last_7_days
    assert (week.toons, week.users) == (5, 2)
    assert [(t.user, t.display_name, t.toons) for t in stats.top_users] == [
        (BOB, "Bob", 4),
        (ALICE, "Alice", 1),
    ]


async def test_forget_leaves_no_row_about_the_user(storage: Store, clock: FakeClock) -> None:
    victim = UserRef("telegram", "777000111")
    done = await storage.quotas.consume(job(victim, name="Forget Me"))
    assert isinstance(done, Admitted)
    await storage.jobs.mark_done(done.job_id)
    clock.advance(minutes=5)
    await storage.quotas.consume(job(victim))
    await storage.quotas.rerender(victim)
    await storage.quotas.consume(job(BOB, name="Bob"))
    await storage.admin.set_quota(victim, 9, actor="cli:root")
    await storage.admin.ban(victim, actor="cli:root", reason="Forget Me was rude")
    await storage.admin.ban(BOB, actor=str(victim), reason="spam")  # the victim as an admin
    async with storage.engine.connect() as conn:
        victim_id = await conn.scalar(
            select(Base.metadata.tables["users"].c.id).where(
                Base.metadata.tables["users"].c.platform_user_id == victim.id
            )
        )

    assert await storage.forget(victim) is True

    async with storage.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in (await conn.execute(table.select())).mappings():
                text = " ".join(str(value) for value in row.values())
                assert victim.id not in text, (table.name, row)
                assert "Forget Me" not in text, (table.name, row)
                assert row.get("user_id") != victim_id, (table.name, row)
    assert (await storage.admin.show(BOB)).banned
    assert [e.actor for e in await storage.admin.audit_log(target=BOB)] == ["(forgotten user)"]
    assert len(await storage.jobs.unfinished_jobs()) == 1
    with pytest.raises(UnknownUserError):
        await storage.admin.show(victim)
    assert await storage.forget(victim) is False
