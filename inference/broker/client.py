"""The chat side of the broker: an InferenceBackend that queues prepared photos on a Redis Stream
for `toonify worker` processes and follows each job's events back.

Photos are prepared here, in this process's prepare pool, so that hostile files stay at the
edge and workers only ever read aligned faces. Each job this process follows keeps its
prepared blob in memory until it ends: when Redis comes back empty (it restarted without
persistence), every job whose entry vanished is queued again from that copy, so a restart
loses nothing admitted. Duplicates (a job queued twice, a slow worker that was thought dead)
are harmless: a job id has one outcome here, the first one that arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from inference.backend import Handle
from inference.broker import keys
from inference.broker.keys import Event
from inference.broker.wire import dump_prepared, failure, load_finished
from inference.errors import Expired, QueueFull, ShuttingDown
from inference.pipeline import Finished
from inference.prepare import Prepared
from inference.stages import ProgressFn, Stage
from inference.worker import Preparer

log = logging.getLogger(__name__)

# How long one blocking read waits; also how often Redis is checked for a restart.
READ_BLOCK_MS = 1000
RETRY_SECONDS = 0.5
# Redis's run id is compared this often: a restart may happen between two reads.
RESTART_CHECK_SECONDS = 2.0


@dataclass(eq=False)
class _Flight:
    """A job (or a re-render) this process follows until its outcome arrives."""

    handle: Handle[Finished]
    fields: dict[str, str]
    """The stream entry."""
    blob: bytes | None
    """The prepared photo, to queue again if Redis loses it; None for re-renders."""
    on_progress: ProgressFn | None
    last_event: str = "0"


@dataclass(frozen=True)
class _Survey:
    lanes: int
    """Live workers times their batch: how many jobs run at once across the cluster."""
    known: bool
    """The job is finished already, or still on the stream (its photo is in Redis)."""
    length: int
    """Unfinished jobs (waiting or running), from every adapter."""
    waiting: int
    """Of them, those no worker has taken yet."""


class RedisBackend:
    """Jobs go on `keys.JOBS`, their outcomes come back on `keys.events(job)`."""

    def __init__(
        self,
        redis: Redis,
        preparer: Preparer[Prepared],
        *,
        queue_size: int,
        max_batch: int,
        cache_ttl: float,
        claim_after: float,
    ) -> None:
        self._redis = redis
        self._preparer = preparer
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._cache_ttl = int(cache_ttl)
        self._claim_after = claim_after
        self._flights: dict[str, _Flight] = {}
        self._waking: set[asyncio.Task[None]] = set()
        self._name = uuid.uuid4().hex
        self._reader: asyncio.Task[None] | None = None
        self._run_id = ""
        self._accepting = False

    @property
    def depth(self) -> int:
        """Jobs this process follows (queued or running on some worker)."""
        return len(self._flights)

    @property
    def alive(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def start(self) -> None:
        """Raises RedisError when Redis cannot be reached."""
        self._run_id = await self._server_run()
        await keys.ensure_groups(self._redis)
        self._accepting = True
        self._reader = asyncio.create_task(self._read(), name="broker-events")

    async def submit(
        self,
        job_id: str,
        photo: bytes,
        *,
        style: str,
        strength: int,
        on_progress: ProgressFn | None = None,
    ) -> Handle[Finished]:
        """Prepare the photo here, then queue it, unless this job is queued or done already
        (a restart of this process: the job is followed, not run again)."""
        if not self._accepting:
            raise ShuttingDown
        prepared = await self._preparer.prepare(photo)
        if not self._accepting:
            raise ShuttingDown
        loop = asyncio.get_running_loop()
        handle = Handle[Finished](
            job_id, len(prepared.faces), 1, loop.create_future(), loop.create_future()
        )
        fields = {"job": job_id, "style": style, "strength": str(strength)}
        flight = _Flight(handle, fields, dump_prepared(prepared), on_progress)
        while True:  # an outage of Redis is waited out: the photo is prepared already
            try:
                survey = await self._survey(job_id)
                handle.lanes = survey.lanes
                handle.position = max(survey.length, 1)
                if not survey.known:
                    if survey.waiting >= self._queue_size:
                        raise QueueFull
                    await self._enqueue(job_id, flight)
                    handle.position = survey.length + 1  # every unfinished job is ahead
                break
            except RedisError as exc:
                if not self._accepting:
                    raise ShuttingDown from exc
                log.warning("Redis unreachable while queueing job %s (%s); retrying", job_id, exc)
                await asyncio.sleep(RETRY_SECONDS)
        self._follow(job_id, flight)
        return handle

    async def waiting(self) -> int:
        """Jobs on the stream that no worker has taken yet, from every adapter."""
        return (await self._survey("")).waiting

    async def cancel(self, job_id: str) -> bool:
        """Workers see the mark before they start the job, or at its next step."""
        flight = self._flights.get(job_id)
        if flight is None:
            return False
        await self._redis.set(keys.cancel(job_id), 1, ex=self._cache_ttl)
        return True

    async def rerender(self, job_id: str, style: str, strength: int) -> Finished:
        """Nothing changed: the stored result itself; else any worker draws it from the codes
        in Redis (Expired once they are gone)."""
        stored = keys.blob(await self._redis.get(keys.result(job_id)))
        if stored is None:
            raise Expired
        finished = await asyncio.to_thread(load_finished, stored)
        if (style, strength) == (finished.style, finished.strength):
            return finished
        loop = asyncio.get_running_loop()
        request = uuid.uuid4().hex
        handle = Handle[Finished](request, 0, 1, loop.create_future(), loop.create_future())
        fields = {"job": job_id, "style": style, "strength": str(strength), "reply": request}
        flight = _Flight(handle, fields, None, None)
        await self._redis.xadd(keys.RERENDERS, fields)  # type: ignore[arg-type]
        self._follow(request, flight)
        return await handle.finished

    async def discard(self, job_id: str) -> None:
        await self._redis.delete(keys.result(job_id), keys.prepared(job_id))

    async def stop(self) -> None:
        """Jobs no worker started stay on the stream (the next start follows them again);
        the running ones are waited for, as the embedded worker waits for its batch."""
        self._accepting = False
        for flight in list(self._flights.values()):
            if not flight.handle.started.done():
                flight.handle.started.set_result(False)
                flight.handle.finished.set_exception(ShuttingDown())
        self._flights = {k: f for k, f in self._flights.items() if not f.handle.finished.done()}
        running = [f.handle.finished for f in self._flights.values()]
        if running:
            await asyncio.wait(running)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._redis.delete(keys.wake(self._name))
        await self._redis.aclose()

    # -- queueing ----------------------------------------------------------------------------

    async def _survey(self, job_id: str) -> _Survey:
        """The queue and the job's traces in Redis, in one round trip."""
        since = time.time() - self._claim_after
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcount(keys.WORKERS, since, "+inf")
            pipe.exists(keys.result(job_id), keys.prepared(job_id))
            pipe.xlen(keys.JOBS)
            pipe.xpending(keys.JOBS, keys.GROUP)
            workers, traces, length, pending = await pipe.execute(raise_on_error=False)
        for answer in (workers, traces, length):
            if isinstance(answer, Exception):
                raise answer
        taken = 0 if isinstance(pending, ResponseError) else int(pending["pending"])  # no group
        return _Survey(
            lanes=max(int(workers), 1) * self._max_batch,
            known=bool(traces),
            length=int(length),
            waiting=max(int(length) - taken, 0),
        )

    async def _enqueue(self, job_id: str, flight: _Flight) -> None:
        """The photo and the stream entry in one transaction: both exist or neither."""
        assert flight.blob is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.prepared(job_id), flight.blob, ex=self._cache_ttl)
            pipe.xadd(keys.JOBS, flight.fields)  # type: ignore[arg-type]
            await pipe.execute()

    def _follow(self, key: str, flight: _Flight) -> None:
        self._flights[key] = flight
        self._wake_reader()

    def _wake_reader(self) -> None:
        """End the reader's blocking read, so that it reads the new job's events too."""
        task = asyncio.create_task(keys.send(self._redis, keys.wake(self._name), {"n": 1}))
        self._waking.add(task)
        task.add_done_callback(self._waking.discard)

    # -- events ------------------------------------------------------------------------------

    async def _read(self) -> None:
        """One blocking read over every followed job's events; after an outage, or every few
        seconds, check whether Redis restarted and queue again whatever it lost."""
        wake = keys.wake(self._name)
        wake_from = "0"
        lost_contact = False
        checked = time.monotonic()
        while True:
            streams = {keys.events(key): f.last_event for key, f in self._flights.items()}
            streams[wake] = wake_from
            try:
                if lost_contact or time.monotonic() - checked > RESTART_CHECK_SECONDS:
                    await self._check_restart()
                    checked = time.monotonic()
                    lost_contact = False
                answer = await self._redis.xread(streams, block=READ_BLOCK_MS)  # type: ignore[arg-type]
                for stream, entries in keys.stream_answer(answer):
                    name = stream.decode()
                    if name == wake:
                        wake_from = entries[-1][0].decode()
                        continue
                    key = name.removeprefix(keys.events(""))
                    for entry, fields in entries:
                        await self._on_event(key, entry.decode(), fields)
            except RedisError as exc:
                if not lost_contact:
                    log.warning("Redis unreachable (%s); retrying", exc)
                lost_contact = True
                await asyncio.sleep(RETRY_SECONDS)

    async def _on_event(self, key: str, entry: str, fields: dict[bytes, bytes]) -> None:
        flight = self._flights.get(key)
        if flight is None:
            return
        event = {k.decode(): v.decode() for k, v in fields.items()}
        handle = flight.handle
        kind = Event(event["event"])
        if kind == Event.PROGRESS and flight.on_progress is not None:
            flight.on_progress(Stage(event["stage"]), int(event["step"]), int(event["total"]))
        elif kind == Event.STARTED and not handle.started.done():
            handle.started.set_result(True)
        elif kind == Event.FINISHED:
            stored = keys.blob(await self._redis.get(event["result"]))
            self._settle(key, True)
            if stored is None:
                handle.finished.set_exception(Expired())
            else:
                try:
                    handle.finished.set_result(await asyncio.to_thread(load_finished, stored))
                except Exception as exc:
                    handle.finished.set_exception(exc)
        elif kind == Event.FAILED:
            self._settle(key, False)
            handle.finished.set_exception(failure(event["kind"]))
        flight.last_event = entry

    def _settle(self, key: str, started: bool) -> None:
        """The flight's outcome is here: stop following it."""
        handle = self._flights.pop(key).handle
        if not handle.started.done():
            handle.started.set_result(started)

    async def _server_run(self) -> str:
        info = await self._redis.info("server")
        return str(info["run_id"])

    async def _check_restart(self) -> None:
        """Redis restarted: queue again every followed job it no longer has."""
        run_id = await self._server_run()
        if run_id == self._run_id:
            return
        self._run_id = run_id
        await keys.ensure_groups(self._redis)
        lost = 0
        for key, flight in list(self._flights.items()):
            if flight.blob is None:  # a re-render: its codes went with Redis
                del self._flights[key]
                flight.handle.finished.set_exception(Expired())
            elif not (await self._survey(key)).known:
                flight.last_event = "0"
                await self._enqueue(key, flight)
                lost += 1
        log.warning("Redis restarted; %d job(s) it had lost queued again", lost)
