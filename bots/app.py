"""The composition root: storage, models, worker, service, adapters and the ops endpoint.

Start-up order matters: models load before any adapter goes online (nobody is accepted
before the bot can serve them), and resumed jobs are queued once the adapters can answer.
Shutdown is the reverse: stop accepting, finish the running job, keep what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bots.config import Settings
from bots.metrics import Metrics
from bots.ops import start_ops
from bots.service import ToonService
from inference.invert_plan import log_expected_speed
from inference.pipeline import Toonifier
from inference.worker import Worker
from storage import Store

log = logging.getLogger(__name__)

PURGE_EVERY = 6 * 3600.0


class App:
    """Everything `toonify run` starts, in one object that tests can start and stop too."""

    def __init__(self, config: Settings, toonifier: Toonifier, store: Store) -> None:
        self.config = config
        self.toonifier = toonifier
        self.store = store
        self.metrics = Metrics()
        self.worker = Worker(
            toonifier,
            queue_size=config.worker.queue_size,
            max_batch=config.worker.max_batch,
            job_timeout=config.worker.job_timeout,
        )
        self.metrics.watch_queue(lambda: self.worker.depth)
        self.service = ToonService(
            config,
            store,
            self.worker,
            dict(toonifier.styles),
            toonifier.default_style,
            _renderer(toonifier),
            self.metrics,
        )
        self._adapters: list[Any] = []
        self._ops: web.AppRunner | None = None
        self._purge: asyncio.Task[None] | None = None

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.worker.alive,
            "worker_alive": self.worker.alive,
            "models_loaded": bool(self.toonifier.styles),
            "queue_depth": self.worker.depth,
            "adapters": [type(adapter).__name__ for adapter in self._adapters],
        }

    async def start(self, adapters: list[Any]) -> None:
        """`adapters` have async start() and stop() and register themselves with the service."""
        self.worker.start()
        if self.config.ops.port:
            self._ops = await start_ops(
                self.metrics, self.health, self.config.ops.host, self.config.ops.port
            )
        for adapter in adapters:
            await adapter.start()
            self._adapters.append(adapter)
        resumed = await self.service.resume()
        if resumed:
            log.info("resumed %d job(s) accepted before the restart", resumed)
        self._purge = asyncio.create_task(self._purge_old_jobs())

    async def stop(self) -> None:
        """Stop accepting, finish the running job, leave the queued ones for the next start."""
        if self._purge is not None:
            # Wait for the cancellation: a purge cut off mid-query must let go of its
            # connection before the store closes, or the loop never finishes closing.
            self._purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge
        left = await self.worker.stop()
        if left:
            log.info("%d queued job(s) kept for the next start", len(left))
        await self.service.drain()
        for adapter in reversed(self._adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping %s failed", type(adapter).__name__)
        if self._ops is not None:
            await self._ops.cleanup()
        await self.store.close()

    async def _purge_old_jobs(self) -> None:
        while True:
            removed = await self.store.purge_old_jobs(self.config.storage.retention_days)
            if removed:
                log.info("deleted %d job row(s) past the retention period", removed)
            await asyncio.sleep(PURGE_EVERY)


def _renderer(toonifier: Toonifier) -> Any:
    def render(prepared: Any, latents: Any, style: str, strength: int) -> Any:
        return toonifier.render(prepared.photo, prepared.faces, latents, style, strength)

    return render


def make_adapters(config: Settings, service: ToonService) -> list[Any]:
    """The enabled chat adapters; imported here so a disabled platform costs nothing."""
    adapters: list[Any] = []
    if config.telegram.enabled:
        from bots.telegram_bot import TelegramBot

        adapters.append(TelegramBot(config.telegram, service))
    if config.discord.enabled:
        from bots.discord_bot import DiscordAdapter

        adapters.append(DiscordAdapter(config, service))
    return adapters


@contextlib.asynccontextmanager
async def running_app(config: Settings) -> AsyncIterator[App]:
    """Load models (off the event loop), open storage, start everything; stop on exit."""
    log.info("loading models on %s", config.models.device)
    toonifier = await asyncio.to_thread(Toonifier.from_config, config)
    await asyncio.to_thread(log_expected_speed, toonifier, config.invert)
    store = await Store.open(config.storage.url, config.quota)
    app = App(config, toonifier, store)
    await app.start(make_adapters(config, app.service))
    try:
        yield app
    finally:
        await app.stop()


async def serve(config: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_app(config):
            log.info("toonify-bot is running")
            await stop.wait()
            log.info("shutting down: finishing the running job, keeping the queue")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
