"""The composition root: storage, models, prepare pool, worker, service, adapters and ops.

Start-up order matters: models load and the prepare processes start before any adapter goes
online (nobody is accepted before the bot can serve them), and resumed jobs start once the
adapters can answer. Shutdown is the reverse: photos still being prepared stay queued, the
running batch finishes and is delivered, queued jobs are kept for the next start.

Signals: the first SIGINT or SIGTERM abandons a start at once, or stops a running bot cleanly;
another one while stopping exits at once (what was running is redone at the next start).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bots.adapter import Adapter
from bots.config import Settings
from bots.metrics import Metrics
from bots.ops import start_ops
from bots.service import ToonService
from bots.startup import StartupFault
from inference.backend import InferenceBackend
from inference.broker.client import RedisBackend
from inference.catalog import describe_styles, face_resolution
from inference.faces import make_detector
from inference.invert_plan import log_expected_speed
from inference.pipeline import Finished, Latents, StyleInfo, Toonifier
from inference.prepare import Prepared
from inference.prepare_pool import PoolStartError, PreparePool, PrepareSpec
from inference.worker import Engine, Worker
from storage import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

PURGE_EVERY = 6 * 3600.0
# Exit status when a second signal cuts a shutdown short.
FORCED_EXIT = 130


class Interrupted(Exception):
    """A signal arrived before the bot had started; everything started so far was stopped."""


class App:
    """Everything `toonify run` starts, in one object that tests can start and stop too.

    `engine` is the Toonifier (tests and benchmarks wrap it); `pool` defaults to prepare
    processes built from the configuration and the Toonifier's face detector.
    """

    def __init__(
        self,
        config: Settings,
        toonifier: Toonifier,
        store: Store,
        pool: PreparePool | None = None,
        engine: Engine[Prepared, Latents, Finished] | None = None,
    ) -> None:
        self.toonifier = toonifier
        pool = pool or PreparePool(
            PrepareSpec.of(toonifier.detector, config.faces, config.limits, toonifier.resolution),
            processes=config.worker.prepare_processes,
            timeout=config.limits.prepare_timeout,
        )
        self.worker = Worker(
            engine or toonifier,
            pool,
            queue_size=config.worker.queue_size,
            max_batch=config.worker.max_batch,
            job_timeout=config.worker.job_timeout,
            cache_size=config.worker.cache_size,
            cache_ttl=config.worker.cache_ttl,
        )
        self._compose(config, store, pool, self.worker, toonifier.styles, toonifier.default_style)
        self.metrics.watch_queue(lambda: self.worker.depth)
        self.metrics.watch_device(toonifier.device)

    def _compose(
        self,
        config: Settings,
        store: Store,
        pool: PreparePool,
        backend: InferenceBackend,
        styles: Mapping[str, StyleInfo],
        default_style: str,
    ) -> None:
        """What both kinds of application share: storage, the prepare pool, the service."""
        self.config = config
        self.store = store
        self.pool = pool
        self.metrics = Metrics()
        self.service = ToonService(config, store, backend, styles, default_style, self.metrics)
        self._adapters: list[Adapter] = []
        self._ops: web.AppRunner | None = None
        self._purge: asyncio.Task[None] | None = None

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.worker.alive,
            "worker_alive": self.worker.alive,
            "models_loaded": bool(self.toonifier.styles),
            "queue_depth": self.worker.depth,
            "prepare_processes": self.pool.size,
            "adapters": [type(adapter).__name__ for adapter in self._adapters],
        }

    async def _start_backend(self) -> None:
        self.worker.start()

    async def start(self, adapters: list[Adapter]) -> None:
        """Each adapter registers itself with the service as it starts."""
        await self._start_backend()
        try:
            await self.pool.start()
        except PoolStartError as exc:
            raise StartupFault(f"the prepare processes cannot start: {exc}") from exc
        if self.config.ops.port:
            self._ops = await start_ops(
                self.metrics, self.health, self.config.ops.host, self.config.ops.port
            )
        for adapter in adapters:
            self._adapters.append(adapter)  # first: a start cut short is stopped too
            await adapter.start()
        resumed = await self.service.resume()
        if resumed:
            log.info("resumed %d job(s) accepted before the restart", resumed)
        self._purge = asyncio.create_task(self._purge_old_jobs())

    async def stop(self) -> None:
        """Keep what is being prepared, finish the running batch, keep the queue; disconnect."""
        if self._purge is not None:
            # Wait for the cancellation: a purge cut off mid-query must let go of its
            # connection before the store closes, or the loop never finishes closing.
            self._purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge
        await self.pool.stop()
        await self.service.stop()
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


class BrokeredApp(App):
    """`toonify run` with `broker.url`: the adapters and the service, no models. Photos are
    prepared here (hostile files stay at the edge) and queued on Redis for `toonify worker`s;
    the styles come from the configuration and the model files' headers."""

    def __init__(self, config: Settings, store: Store, redis: Redis) -> None:
        pool = PreparePool(
            PrepareSpec.of(
                make_detector(config.faces, "cpu"),
                config.faces,
                config.limits,
                face_resolution(config.models),
            ),
            processes=config.worker.prepare_processes,
            timeout=config.limits.prepare_timeout,
        )
        self.backend = RedisBackend(
            redis,
            pool,
            queue_size=config.worker.queue_size,
            max_batch=config.worker.max_batch,
            cache_ttl=config.worker.cache_ttl,
            claim_after=config.broker.claim_after,
        )
        styles = describe_styles(config.models, config.styles)
        self._compose(config, store, pool, self.backend, styles, config.style)
        self.metrics.watch_queue(lambda: self.backend.depth)

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.backend.alive,
            "broker_alive": self.backend.alive,
            "jobs_followed": self.backend.depth,
            "prepare_processes": self.pool.size,
            "adapters": [type(adapter).__name__ for adapter in self._adapters],
        }

    async def _start_backend(self) -> None:
        try:
            await self.backend.start()
        except RedisError as exc:
            raise StartupFault(
                f"broker.url: Redis cannot be reached ({exc}); start it or fix the address"
            ) from exc


def make_adapters(config: Settings, service: ToonService) -> list[Adapter]:
    """The enabled chat adapters; imported here so a disabled platform costs nothing."""
    adapters: list[Adapter] = []
    if config.telegram.enabled:
        from bots.telegram.adapter import TelegramAdapter

        adapters.append(TelegramAdapter(config, service))
    if config.discord.enabled:
        from bots.discord.adapter import DiscordAdapter

        adapters.append(DiscordAdapter(config, service))
    return adapters


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """`work()` on a thread of its own that the process does not wait for at exit, so that a
    signal ends the process at once even while models load."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)

    threading.Thread(target=run, name="load-models", daemon=True).start()
    return await asyncio.wrap_future(future)


@contextlib.asynccontextmanager
async def running_app(config: Settings) -> AsyncIterator[App]:
    """Load models (off the event loop) unless a broker's workers run them, open storage,
    start everything; stop on exit."""
    app: App
    if config.broker.url:
        log.info("jobs go to the workers behind %s", without_password(config.broker.url))
        store = await Store.open(config.storage.url, config.quota)
        app = BrokeredApp(config, store, Redis.from_url(config.broker.url))
    else:
        log.info("loading models on %s", config.models.device)
        toonifier = await in_daemon_thread(lambda: Toonifier.from_config(config))
        await in_daemon_thread(lambda: log_expected_speed(toonifier, config.invert))
        store = await Store.open(config.storage.url, config.quota)
        app = App(config, toonifier, store)
    try:
        await app.start(make_adapters(config, app.service))
        yield app
    finally:
        await app.stop()


def without_password(url: str) -> str:
    """A Redis URL fit for the log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}{parts.path}"


class _Signals:
    """What SIGINT and SIGTERM do: cut a start short, stop cleanly, or (again) exit now."""

    def __init__(self, main: asyncio.Task[Any]) -> None:
        self.main = main
        self.stop = asyncio.Event()
        self.running = False
        self.interrupted = False

    def __call__(self) -> None:
        if self.interrupted or self.stop.is_set():
            log.warning("signal received again: exiting now; running jobs resume at next start")
            os._exit(FORCED_EXIT)
        if self.running:
            self.stop.set()
        else:
            self.interrupted = True
            self.main.cancel()


async def serve(
    config: Settings,
    running: Callable[[Settings], contextlib.AbstractAsyncContextManager[object]] = running_app,
    name: str = "toonify-bot",
) -> None:
    """Run `running(config)` (the bot, or a worker) until SIGINT or SIGTERM, then shut down
    cleanly; Interrupted if it came while starting."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals = _Signals(main)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals)
    try:
        async with running(config):
            signals.running = True
            log.info("%s is running", name)
            await signals.stop.wait()
            log.info("shutting down: finishing the running job, keeping the queue")
    except asyncio.CancelledError:
        if not signals.interrupted:
            raise
        main.uncancel()
        raise Interrupted from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
