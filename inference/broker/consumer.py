"""The `toonify worker` side of the broker: read jobs with the consumer group, run them on the
in-process Worker, store each outcome, then acknowledge.

A job's entry is acknowledged (and deleted) only in the transaction that stores its result, so
a worker killed mid-job leaves the entry pending; another worker takes it with XAUTOCLAIM once
it has sat idle for `broker.claim_after` seconds. A live worker renews its claims well before
that, however long its jobs run. The finished job stays in Redis for `worker.cache_ttl` for
the re-renders, which any worker draws; nothing of a job stays in this process once stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from inference.broker import keys
from inference.broker.keys import Event
from inference.broker.wire import dump_finished, failure_kind, load_finished, load_prepared
from inference.errors import Expired, ShuttingDown
from inference.pipeline import Finished, Latents
from inference.prepare import Prepared
from inference.stages import Stage
from inference.worker import Worker

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
# Batches a worker holds: the one running and the next, so the GPU never waits for Redis.
READ_AHEAD = 2
RETRY_SECONDS = 0.5
# Progress events per job at most this often (stage changes always go out).
PROGRESS_EVERY = 0.25


class WirePreparer:
    """The Worker's preparer here: the photo was prepared by the adapter; this decodes it."""

    async def prepare(self, image: bytes) -> Prepared:
        return await asyncio.to_thread(load_prepared, image)


@dataclass(frozen=True)
class Entry:
    stream: str
    id: str
    fields: dict[str, str]

    @property
    def job(self) -> str:
        return self.fields["job"]

    @property
    def queued_at(self) -> float:
        """Unix seconds the entry was added (its id starts with Redis's clock in ms)."""
        return int(self.id.split("-")[0]) / 1000


class Observer(Protocol):
    """What the consumer reports (a worker's /metrics: bots/metrics.py)."""

    def read(self, entries: int, lag: float) -> None:
        """`entries` taken in one read; `lag`: seconds the oldest of them waited."""

    def finished(self, outcome: str) -> None:
        """A job's outcome: done, or its failure kind."""


class Consumer:
    """Feeds the Worker from the streams while it has room for another batch."""

    def __init__(
        self,
        redis: Redis,
        worker: Worker[Prepared, Latents, Finished],
        name: str,
        *,
        max_batch: int,
        cache_ttl: float,
        claim_after: float,
        observer: Observer,
    ) -> None:
        self._redis = redis
        self._worker = worker
        self._name = name
        self._max_batch = max_batch
        self._cache_ttl = int(cache_ttl)
        self._claim_after = claim_after
        self._observer = observer
        self._held: dict[str, Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def held(self) -> int:
        """Entries this worker has taken and not yet settled."""
        return len(self._held)

    async def run(self) -> None:
        """Until stop(): read, claim, renew (every Redis outage is waited out); then finish
        what was taken. What the Worker had not started stays pending here, and another
        worker claims it."""
        renew = asyncio.create_task(self._renew(), name="broker-renew")
        try:
            while not self._stopping.is_set():
                try:
                    await self._take()
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await keys.ensure_groups(self._redis)  # Redis restarted empty
                except RedisError as exc:
                    log.warning("Redis unreachable (%s); retrying", exc)
                    await asyncio.sleep(RETRY_SECONDS)
            await self._worker.stop()
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            with contextlib.suppress(RedisError):  # else its heartbeat ages out
                await self._redis.zrem(keys.WORKERS, self._name)
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)

    def stop(self) -> None:
        """Take nothing more; run() returns once what was taken is settled."""
        self._stopping.set()

    # -- taking entries ----------------------------------------------------------------------

    async def _take(self) -> None:
        """Re-renders first; jobs of dead workers before new ones; only with room for them."""
        if self.held >= READ_AHEAD * self._max_batch:  # a batch running, the next one in hand
            await asyncio.sleep(0.05)
            return
        entries = await self._claimed(keys.RERENDERS) + await self._claimed(keys.JOBS)
        if not entries:
            answer = await self._redis.xreadgroup(
                keys.GROUP,
                self._name,
                {keys.RERENDERS: ">", keys.JOBS: ">"},
                count=self._max_batch,
                block=READ_BLOCK_MS,
            )
            entries = [
                Entry(stream.decode(), entry.decode(), _text(fields))
                for stream, found in keys.stream_answer(answer)
                for entry, fields in found
            ]
        if entries:
            self._observer.read(len(entries), time.time() - entries[0].queued_at)
        for entry in entries:
            self._held[entry.id] = entry
            serve = self._rerender if entry.stream == keys.RERENDERS else self._run
            task = asyncio.create_task(self._settle(entry, serve))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _claimed(self, stream: str) -> list[Entry]:
        """Entries another worker took and then left idle past `claim_after`."""
        _, found, _ = await self._redis.xautoclaim(
            stream,
            keys.GROUP,
            self._name,
            min_idle_time=int(self._claim_after * 1000),
            count=self._max_batch,
        )
        entries = [
            Entry(stream, entry.decode(), _text(fields)) for entry, fields in found if fields
        ]
        for entry in entries:
            log.info("took over job %s from a worker that stopped answering", entry.job)
        return entries

    async def _renew(self) -> None:
        """Reset the idle time of every entry held here, so no other worker claims them."""
        while True:
            by_stream: dict[str, list[str]] = {}
            for entry in list(self._held.values()):
                by_stream.setdefault(entry.stream, []).append(entry.id)
            try:
                await self._redis.zadd(keys.WORKERS, {self._name: time.time()})
                for stream, ids in by_stream.items():
                    await self._redis.xclaim(
                        stream, keys.GROUP, self._name, 0, list[Any](ids), justid=True
                    )
            except RedisError as exc:
                log.warning("could not renew this worker's claims (%s)", exc)
            await asyncio.sleep(self._claim_after / 4)

    # -- serving entries ---------------------------------------------------------------------

    async def _settle(self, entry: Entry, serve: Callable[[Entry], Awaitable[None]]) -> None:
        try:
            await serve(entry)
        except ShuttingDown:
            pass  # left pending: another worker claims it
        except Exception as exc:
            log.warning("job %s left for another worker: %s", entry.job, exc)
        finally:
            self._held.pop(entry.id, None)

    async def _run(self, entry: Entry) -> None:
        job = entry.job
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.result(job))
            pipe.exists(keys.cancel(job))
            pipe.get(keys.prepared(job))
            done, cancelled, stored = await pipe.execute()
        if done:  # queued twice: it was done already
            await self._store_outcome(
                entry, job, {"event": Event.FINISHED, "result": keys.result(job)}
            )
            return
        if cancelled:
            await self._fail(entry, job, "cancelled")
            return
        blob = keys.blob(stored)
        if blob is None:
            await self._fail(entry, job, "expired")
            return
        handle = await self._worker.submit(
            job,
            blob,
            style=entry.fields["style"],
            strength=int(entry.fields["strength"]),
            on_progress=_Relay(self._redis, job),
        )
        watch = asyncio.create_task(self._watch_cancel(job))
        try:
            if await handle.started:
                log.info("job %s started", job)
                await _retrying(self._redis.xadd, keys.events(job), {"event": Event.STARTED})
            finished = await handle.finished
        except ShuttingDown:
            raise
        except Exception as exc:
            kind = failure_kind(exc)
            if kind == "error":  # a bug: its cause is only here, the adapter sees the job id
                log.error("job %s failed on this worker", job, exc_info=exc)
            await self._fail(entry, job, kind)
            return
        finally:
            watch.cancel()
        await self._worker.discard(job)
        blob = await asyncio.to_thread(dump_finished, finished)
        await self._store(entry, job, keys.result(job), blob, self._cache_ttl)

    async def _rerender(self, entry: Entry) -> None:
        job, reply = entry.job, entry.fields["reply"]
        stored = keys.blob(await self._redis.get(keys.result(job)))
        if stored is None:
            await self._fail(entry, reply, failure_kind(Expired()))
            return
        self._worker.keep(reply, await asyncio.to_thread(load_finished, stored))
        try:
            finished = await self._worker.rerender(
                reply, entry.fields["style"], int(entry.fields["strength"])
            )
        except Exception as exc:
            await self._fail(entry, reply, failure_kind(exc))
            return
        finally:
            await self._worker.discard(reply)
        blob = await asyncio.to_thread(dump_finished, finished)
        await _retrying(self._redis.set, keys.result(job), blob, ex=self._cache_ttl, xx=True)
        await self._store(entry, reply, keys.result(reply), blob, keys.RERENDER_TTL)

    async def _store(self, entry: Entry, key: str, result: str, blob: bytes, ttl: int) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(result, blob, ex=ttl)
                _settle_entry(
                    pipe, entry, key, {"event": Event.FINISHED, "result": result}, self._cache_ttl
                )
                await pipe.execute()

        await _retrying(write)
        log.info("job %s stored", key)
        self._observer.finished("done")

    async def _store_outcome(self, entry: Entry, key: str, event: dict[str, str]) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                _settle_entry(pipe, entry, key, event, self._cache_ttl)
                await pipe.execute()

        await _retrying(write)

    async def _fail(self, entry: Entry, key: str, kind: str) -> None:
        await self._store_outcome(entry, key, {"event": Event.FAILED, "kind": kind})
        self._observer.finished(kind)

    async def _watch_cancel(self, job: str) -> None:
        """The user's cancel reaches the running job at its next step."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            try:
                if await self._redis.exists(keys.cancel(job)):
                    await self._worker.cancel(job)
                    return
            except RedisError:
                continue


def _settle_entry(pipe: Any, entry: Entry, key: str, event: dict[str, str], ttl: int) -> None:
    """In one transaction: the outcome event, then the entry acknowledged and deleted (the
    stream holds only unfinished jobs) and the prepared photo dropped."""
    pipe.xadd(keys.events(key), event, maxlen=keys.EVENTS_KEPT, approximate=False)
    pipe.expire(keys.events(key), ttl)
    pipe.xack(entry.stream, keys.GROUP, entry.id)
    pipe.xdel(entry.stream, entry.id)
    if entry.stream == keys.JOBS:
        pipe.delete(keys.prepared(entry.job))


class _Relay:
    """The Worker's progress calls (on the event loop) as events, a few per second."""

    def __init__(self, redis: Redis, job: str) -> None:
        self._redis = redis
        self._job = job
        self._last = 0.0
        self._stage: Stage | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def __call__(self, stage: Stage, step: int, total: int) -> None:
        now = time.monotonic()
        if stage == self._stage and now - self._last < PROGRESS_EVERY:
            return
        self._stage, self._last = stage, now
        event = {"event": Event.PROGRESS, "stage": stage.value, "step": step, "total": total}
        task = asyncio.create_task(keys.send(self._redis, keys.events(self._job), event))
        self._sending.add(task)  # progress may be lost in an outage
        task.add_done_callback(self._sending.discard)


async def _retrying(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A write that must happen: retried through a Redis outage (the result is kept until
    Redis takes it; a restarted Redis has lost the entry, XACK of it is then a no-op)."""
    warned = False
    while True:
        try:
            return await call(*args, **kwargs)
        except RedisError as exc:
            if not warned:
                log.warning("Redis unreachable while storing a result (%s); retrying", exc)
                warned = True
            await asyncio.sleep(RETRY_SECONDS)


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}
