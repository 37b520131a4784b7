"""Jobs through a real redis-server to `toonify worker`s: in one process here (the service with
its broker backend, workers on tiny models); tests/test_broker_processes.py kills real ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bots.app import BrokeredApp
from bots.config import Settings
from bots.service import Requester
from bots.worker_app import WorkerApp
from inference.broker import keys
from inference.catalog import describe_styles, face_resolution
from inference.pipeline import Toonifier
from storage import Store, UserRef
from tests.support.servers import RedisServer
from tests.support.service_fixtures import (
    PLATFORM,
    Photos,
    RecordingReply,
    face_jpeg,
    settings,
    submit,
)
from tests.support.tiny_toonify import PSP_STYLE, write_psp_style

WHO = Requester(PLATFORM, "7", "Ada")


def brokered(tmp_path: Path, redis: RedisServer, **sections: dict[str, Any]) -> Settings:
    return settings(tmp_path, broker={"url": redis.url, "claim_after": 2.0}, **sections)


@contextlib.asynccontextmanager
async def bot(config: Settings, photos: Photos | None = None) -> AsyncIterator[BrokeredApp]:
    store = await Store.open(config.storage.url, config.quota)
    app = BrokeredApp(config, store, Redis.from_url(config.broker.url))
    app.service.register(PLATFORM, photos or Photos())
    await app.start([])
    try:
        yield app
    finally:
        await app.stop()


@contextlib.asynccontextmanager
async def worker(config: Settings) -> AsyncIterator[WorkerApp]:
    toonifier = await asyncio.to_thread(Toonifier.from_config, config)
    app = WorkerApp(config, toonifier, Redis.from_url(config.broker.url))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_the_adapter_knows_the_styles_and_face_size_without_loading_a_model(
    tmp_path: Path,
) -> None:
    config = settings(tmp_path)
    write_psp_style(config.models.dir)
    config = settings(tmp_path, styles={"psp": PSP_STYLE})
    loaded = await asyncio.to_thread(Toonifier.from_config, config)
    assert describe_styles(config.models, config.styles) == dict(loaded.styles)
    assert face_resolution(config.models) == loaded.resolution


async def test_a_job_runs_on_a_worker_and_its_rerender_on_another_from_the_codes_in_redis(
    tmp_path: Path, redis: RedisServer
) -> None:
    config = brokered(tmp_path, redis)
    reply = RecordingReply()
    async with bot(config) as app:
        async with worker(config) as first:
            ticket = await submit(app, WHO, face_jpeg(), reply)
            await reply.wait()
            assert first.metrics.render().count(b'toonify_worker_jobs_total{outcome="done"} 1.0')
        [toon] = reply.toons
        assert toon.strength == 16
        client = Redis.from_url(config.broker.url)
        assert await client.xlen(keys.JOBS) == 0  # acknowledged and deleted once stored
        assert not await client.exists(keys.prepared(ticket.job_id))
        async with worker(config):
            again = RecordingReply()
            await app.service.rerender(WHO, ticket.job_id, again, change="more")
        [redrawn] = again.toons
        assert redrawn.strength == 32
        assert redrawn.image != toon.image
        await app.service.forget(WHO)
        assert not await client.exists(keys.result(ticket.job_id))
        await client.aclose()
    assert reply.progress_texts  # the worker's progress reached the chat


async def test_the_queue_bound_counts_every_adapters_jobs_on_the_stream(
    tmp_path: Path, redis: RedisServer
) -> None:
    config = brokered(tmp_path, redis, worker={"queue_size": 2, "prepare_processes": 1})
    async with bot(config) as app:  # no worker: everything waits
        for n in range(2):
            await submit(app, Requester(PLATFORM, str(n), "x"), face_jpeg(), RecordingReply())
        client = Redis.from_url(config.broker.url)
        await client.xadd(keys.JOBS, {"job": "another-adapters", "style": "toon", "strength": 16})
        await client.aclose()
        assert await app.backend.waiting() == 3
        refused = RecordingReply()
        try:
            await submit(app, Requester(PLATFORM, "9", "x"), face_jpeg(), refused)
        except Exception as exc:
            assert getattr(exc, "kind", None) == "queue_full"
        else:
            raise AssertionError("a full queue admitted another job")


async def test_a_restarted_adapter_follows_its_queued_job_instead_of_queueing_it_twice(
    tmp_path: Path, redis: RedisServer
) -> None:
    config = brokered(tmp_path, redis)
    async with bot(config) as app:  # no worker yet: the job waits on the stream
        ticket = await submit(app, WHO, face_jpeg(), RecordingReply())
    photos = Photos()
    client = Redis.from_url(config.broker.url)
    async with bot(config, photos) as app:
        async with asyncio.timeout(60):  # resumed: fetched, prepared, found on the stream
            while app.backend.depth < 1:
                await asyncio.sleep(0.05)
        assert await client.xlen(keys.JOBS) == 1
        async with worker(config):
            [reply] = photos.replies.values()
            await reply.wait()
        assert len(reply.toons) == 1
        assert reply.toons[0].result_id == ticket.job_id
        allowance = await app.store.quotas.allowance(UserRef(PLATFORM, WHO.user_id))
        assert allowance.used == 1
    await client.aclose()
