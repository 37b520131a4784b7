"""The bot as a real process against the fake Telegram: killed (SIGKILL, SIGTERM) and started
again on the same database, nothing it accepted is lost or charged twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

from bots import texts
from storage import JobStatus, UserRef
from tests.fakes.server import Call
from tests.fakes.telegram import FakeTelegram, replies_to
from tests.support.bot_process import GATE
from tests.support.crash_support import BotProcess, open_store, write_config
from tests.support.service_fixtures import face_jpeg

WAIT = 180.0
SELFIE = face_jpeg()


def bot(tmp_path: Path, fake: FakeTelegram, **env: str) -> BotProcess:
    config = write_config(tmp_path, fake)
    return BotProcess(config, {"TOONIFY_TELEGRAM_TOKEN": fake.token, **env})


def push_photos(fake: FakeTelegram, count: int, first_user: int = 100) -> list[dict[str, Any]]:
    """One photo from each of `count` users, in their private chats."""
    photos = []
    for n in range(count):
        user = fake.user(first_user + n)
        chat = fake.private_chat(user)
        photos.append(fake.push_message(chat, user, photo=fake.add_file(SELFIE)))
    return photos


async def used(folder: Path, user_id: int) -> int:
    store = await open_store(folder)
    try:
        return (await store.quotas.allowance(UserRef("telegram", str(user_id)))).used
    finally:
        await store.close()


async def status_within(folder: Path, job_id: str, wanted: JobStatus) -> bool:
    """Whether the job reaches `wanted` within WAIT: the bot marks a toon done only once
    Telegram's answer to sendPhoto has come back, a moment after the fake recorded the call."""
    store = await open_store(folder)
    try:
        async with asyncio.timeout(WAIT):
            while (job := await store.jobs.get(job_id)) is None or job.status is not wanted:
                await asyncio.sleep(0.05)
        return True
    except TimeoutError:
        return False
    finally:
        await store.close()


def successful_toons(fake: FakeTelegram, photo: dict[str, Any]) -> list[Call]:
    return [c for c in fake.calls_of("sendPhoto") if c.ok and replies_to(photo)(c)]


async def test_a_kill_during_a_delivery_retry_delivers_the_toon_once_after_the_restart(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    fake_telegram.fail_all("sendPhoto", 502)
    process = await bot(tmp_path, fake_telegram).start("run").running()
    [photo] = push_photos(fake_telegram, 1)
    await fake_telegram.wait_for("getFile", within=WAIT)
    async with asyncio.timeout(WAIT):  # Telegram answered 502 and the bot is retrying
        while not any(c.status == 502 for c in fake_telegram.calls_of("sendPhoto")):
            await asyncio.sleep(0.05)
    await process.kill()
    store = await open_store(tmp_path)
    [job] = await store.jobs.unfinished_jobs()
    await store.close()
    assert job.status is JobStatus.DELIVERING

    fake_telegram.heal("sendPhoto")
    again = await process.start("run").running()
    await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=WAIT)
    await again.wait_for("resumed 1 job")
    assert await status_within(tmp_path, job.id, JobStatus.DONE)
    again.signal(signal.SIGTERM)
    assert await again.exited() == 0
    assert len(successful_toons(fake_telegram, photo)) == 1
    assert await used(tmp_path, 100) == 1


async def test_a_kill_right_after_a_burst_was_fetched_loses_no_photo(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    process = await bot(tmp_path, fake_telegram).start("run").running()
    mark = fake_telegram.mark()
    photos = push_photos(fake_telegram, 10)
    await fake_telegram.wait_for("getUpdates", lambda c: bool(c.result), after=mark)
    await process.kill()  # the updates were handed out; their rows may not be written yet

    again = await process.start("run").running()
    for photo in photos:  # nothing refuses these, so every photo gets its toon
        await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=WAIT)
    again.signal(signal.SIGTERM)
    assert await again.exited() == 0
    for n, photo in enumerate(photos):
        assert len(successful_toons(fake_telegram, photo)) == 1
        assert await used(tmp_path, 100 + n) == 1


async def test_a_kill_after_the_rows_were_written_but_before_telegram_heard_gives_one_toon(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    process = await bot(tmp_path, fake_telegram).start("run").running()
    fake_telegram.fail_all("getUpdates", 502)  # after this batch, no offset reaches Telegram
    photos = push_photos(fake_telegram, 3)
    async with asyncio.timeout(WAIT):
        while len(await jobs_in(tmp_path)) < 3:
            await asyncio.sleep(0.05)
    await process.kill()

    fake_telegram.heal("getUpdates")  # the same three updates come again
    again = await process.start("run").running()
    for photo in photos:
        await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=WAIT)
    async with asyncio.timeout(WAIT):
        while any(status is not JobStatus.DONE for status in await jobs_in(tmp_path)):
            await asyncio.sleep(0.05)
    again.signal(signal.SIGTERM)
    assert await again.exited() == 0
    assert len(await jobs_in(tmp_path)) == 3
    for n, photo in enumerate(photos):
        assert len(successful_toons(fake_telegram, photo)) == 1
        assert await used(tmp_path, 100 + n) == 1


async def jobs_in(folder: Path) -> list[JobStatus]:
    """The status of every job row (none of this is an API the bot needs)."""
    path = folder / "toonify.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return [JobStatus(status) for (status,) in db.execute("SELECT status FROM jobs")]
        except sqlite3.OperationalError:  # not migrated yet
            return []


async def test_sigterm_keeps_photos_in_preparation_for_the_next_start(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("")
    process = await bot(tmp_path, fake_telegram, **{GATE: str(gate)}).start("run").running()
    photos = push_photos(fake_telegram, 2)
    async with asyncio.timeout(WAIT):  # one in its prepare process, one waiting for it
        while not gate.read_text():
            await asyncio.sleep(0.05)
    process.signal(signal.SIGTERM)
    assert await process.exited() == 0
    store = await open_store(tmp_path)
    jobs = await store.jobs.unfinished_jobs()
    await store.close()
    assert [job.status for job in jobs] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert not fake_telegram.calls_of("sendPhoto")

    gate.unlink()
    again = await process.start("run").running()
    for photo in photos:
        await fake_telegram.wait_for("sendPhoto", replies_to(photo), within=WAIT)
    again.signal(signal.SIGTERM)
    assert await again.exited() == 0
    restarted = [c for c in fake_telegram.calls_of("sendMessage", "editMessageText")]
    assert not any(c.params.get("text") == texts.RESTARTED for c in restarted)
