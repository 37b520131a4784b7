"""`toonify worker`: the models, the in-process Worker and a Redis consumer that feeds it, plus
/healthz and /metrics; as many of these run as there are GPUs to fill (see inference/broker/).

Start-up loads the models before the first job is taken; shutdown takes nothing more and
finishes what it took (what it had not started is claimed by another worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bots.app import in_daemon_thread, without_password
from bots.config import Settings
from bots.metrics import WorkerMetrics
from bots.ops import start_ops
from bots.startup import StartupFault
from inference.broker import keys
from inference.broker.consumer import Consumer, WirePreparer
from inference.invert_plan import log_expected_speed
from inference.pipeline import Finished, Latents, Toonifier
from inference.prepare import Prepared
from inference.worker import Engine, Worker

log = logging.getLogger(__name__)

# Jobs a worker holds at once, in batches: one running, one read ahead, and the jobs it claims.
HELD_BATCHES = 4


class WorkerApp:
    """One `toonify worker` process, startable and stoppable by tests too; `engine` stands in
    for the Toonifier (benchmarks time it)."""

    def __init__(
        self,
        config: Settings,
        toonifier: Toonifier,
        redis: Redis,
        engine: Engine[Prepared, Latents, Finished] | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        batch = config.worker.max_batch
        self.worker: Worker[Prepared, Latents, Finished] = Worker(
            engine or toonifier,
            WirePreparer(),
            queue_size=HELD_BATCHES * batch,
            max_batch=batch,
            job_timeout=config.worker.job_timeout,
            cache_size=HELD_BATCHES * batch,  # only while a result is being stored
            cache_ttl=config.worker.cache_ttl,
        )
        self.metrics = WorkerMetrics()
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.consumer = Consumer(
            redis,
            self.worker,
            self.name,
            max_batch=batch,
            cache_ttl=config.worker.cache_ttl,
            claim_after=config.broker.claim_after,
            observer=self.metrics,
        )
        self.metrics.watch(toonifier.device, lambda: self.consumer.held)
        self._task: asyncio.Task[None] | None = None
        self._ops: web.AppRunner | None = None

    def health(self) -> dict[str, Any]:
        alive = self._task is not None and not self._task.done() and self.worker.alive
        return {"ok": alive, "worker": self.name, "jobs_held": self.consumer.held}

    async def start(self) -> None:
        try:
            await self.redis.ping()
            await keys.ensure_groups(self.redis)
        except RedisError as exc:
            raise StartupFault(
                f"broker.url: Redis cannot be reached ({exc}); start it or fix the address"
            ) from exc
        self.worker.start()
        self._task = asyncio.create_task(self.consumer.run(), name="broker-consumer")
        if self.config.ops.port:
            self._ops = await start_ops(
                self.metrics, self.health, self.config.ops.host, self.config.ops.port
            )

    async def stop(self) -> None:
        self.consumer.stop()
        if self._task is not None:
            await self._task
        else:
            await self.worker.stop()
        if self._ops is not None:
            await self._ops.cleanup()
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def running_worker(config: Settings) -> AsyncIterator[WorkerApp]:
    """Load the models (off the event loop), then take jobs until the context ends."""
    if not config.broker.url:
        raise StartupFault("toonify worker needs broker.url (redis://host:6379/0)")
    log.info("loading models on %s", config.models.device)
    toonifier = await in_daemon_thread(lambda: Toonifier.from_config(config))
    await in_daemon_thread(lambda: log_expected_speed(toonifier, config.invert))
    log.info("taking jobs from %s", without_password(config.broker.url))
    app = WorkerApp(config, toonifier, Redis.from_url(config.broker.url))
    try:
        await app.start()
        yield app
    finally:
        await app.stop()
