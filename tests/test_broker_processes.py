"""`toonify run` with a broker and `toonify worker`s as real processes on a real redis-server,
against the fake Telegram: a worker killed mid-job and a Redis restart lose nothing admitted,
and every user gets exactly one toon and is charged once."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from inference.broker import keys
from tests.fakes.telegram import FakeTelegram, replies_to
from tests.support.bot_process import INFERENCE_GATE
from tests.support.crash_support import BotProcess, write_config
from tests.support.servers import RedisServer
from tests.test_crash import WAIT, push_photos, successful_toons, used

WORKER_RUNNING = "toonify worker is running"


async def start(
    tmp_path: Path, fake: FakeTelegram, redis: RedisServer, workers: int
) -> tuple[BotProcess, list[BotProcess]]:
    """The adapter and `workers` workers on one config, running; every inversion waits while
    tmp_path/gate exists."""
    config = write_config(tmp_path, fake, broker={"url": redis.url, "claim_after": 2.0})
    env = {"TOONIFY_TELEGRAM_TOKEN": fake.token, INFERENCE_GATE: str(tmp_path / "gate")}
    adapter = BotProcess(config, env, log="adapter.log").start("run")
    started = [
        BotProcess(config, env, log=f"worker{n}.log").start("worker") for n in range(workers)
    ]
    await adapter.running()
    for worker in started:
        await worker.running(WORKER_RUNNING)
    return adapter, started


def started_jobs(worker: BotProcess) -> set[str]:
    return set(re.findall(r"job (\w+) started", worker.output))


async def until_queued(redis: RedisServer, count: int) -> None:
    """Every admitted photo is prepared and on the stream."""
    client = Redis.from_url(redis.url)
    try:
        async with asyncio.timeout(WAIT):
            while await client.xlen(keys.JOBS) < count:
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def one_toon_each(
    fake: FakeTelegram, tmp_path: Path, photos: list[dict[str, Any]], *running: BotProcess
) -> None:
    """Every photo gets its toon; after a clean stop, exactly one each, charged once."""
    for photo in photos:
        await fake.wait_for("sendPhoto", replies_to(photo), within=WAIT)
    for process in running:
        process.signal(signal.SIGTERM)
    for process in running:
        assert await process.exited() == 0, process.output
    for n, photo in enumerate(photos):
        assert len(successful_toons(fake, photo)) == 1
        assert await used(tmp_path, 100 + n) == 1


async def test_a_worker_killed_mid_job_leaves_its_jobs_to_the_other_one(
    fake_telegram: FakeTelegram, tmp_path: Path, redis: RedisServer
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("")
    adapter, (doomed, survivor) = await start(tmp_path, fake_telegram, redis, workers=2)
    photos = push_photos(fake_telegram, 6)
    await until_queued(redis, 6)
    async with asyncio.timeout(WAIT):  # the burst is spread: each worker runs one of it
        while not (started_jobs(doomed) and started_jobs(survivor)):
            await asyncio.sleep(0.05)
    taken = started_jobs(doomed)
    await doomed.kill()

    gate.unlink()
    await one_toon_each(fake_telegram, tmp_path, photos, adapter, survivor)
    for job in taken:  # what the killed worker had started, the other one finished
        assert f"job {job} stored" in survivor.output


async def test_a_redis_restart_mid_burst_loses_no_admitted_job(
    fake_telegram: FakeTelegram, tmp_path: Path, redis: RedisServer
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("")
    adapter, [worker] = await start(tmp_path, fake_telegram, redis, workers=1)
    photos = push_photos(fake_telegram, 4)
    await until_queued(redis, 4)
    async with asyncio.timeout(WAIT):
        while not started_jobs(worker):
            await asyncio.sleep(0.05)
    redis.restart()  # without persistence: the stream, the photos and the events are gone

    gate.unlink()
    await one_toon_each(fake_telegram, tmp_path, photos, adapter, worker)
    # The worker held two (one running, one read ahead) and may have stored them in the new
    # Redis before the adapter looked; the two only on the stream had to be queued again.
    requeued = re.search(
        r"Redis restarted; (\d+) job\(s\) it had lost queued again", adapter.output
    )
    assert requeued is not None and int(requeued[1]) >= 2, adapter.output
