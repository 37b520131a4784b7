"""The single GPU worker: prepare processes in front, one queue, one inference thread, and the
finished jobs kept in memory for their re-renders. The in-process InferenceBackend.

The GPU is shared by everybody, so exactly one thread touches torch. The event loop only
queues work and receives events; every callback into the loop goes through
`call_soon_threadsafe`, so adapters never block on inference and never race the thread.

Memory: an exception kept as a job's outcome has its frames cleared first (its traceback would
otherwise keep the failed step's tensors alive until the cyclic garbage collector runs), and a
batch that runs out of memory is retried one job at a time only after the failed attempt is
gone and its memory handed back. Finished jobs (photo, aligned faces, codes) stay for
`cache_ttl` seconds, at most `cache_size` of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, ParamSpec, Protocol, TypeVar

from cachetools import TTLCache

from inference.backend import Handle
from inference.errors import Cancelled, Expired, JobTimeout, OutOfMemory, QueueFull, ShuttingDown
from inference.memory import detach_frames, is_out_of_memory, release_memory
from inference.stages import ProgressFn, Stage, StopFn

log = logging.getLogger(__name__)


class HasFaces(Protocol):
    @property
    def faces(self) -> Sized: ...


class Rendered(Protocol):
    @property
    def style(self) -> str: ...
    @property
    def strength(self) -> int: ...


P = TypeVar("P", bound=HasFaces)  # a prepared photo
L = TypeVar("L")  # the codes of its faces
F = TypeVar("F", bound=Rendered)  # a finished job
P_in = TypeVar("P_in", bound=HasFaces, contravariant=True)
P_out = TypeVar("P_out", bound=HasFaces, covariant=True)
T = TypeVar("T")
Args = ParamSpec("Args")


class Engine(Protocol[P_in, L, F]):
    """What the worker needs of the Toonifier (inference/pipeline.py)."""

    def invert(
        self,
        batch: Sequence[P_in],
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[L]: ...

    def finish(
        self, prepared: P_in, latents: L, style: str | None = None, strength: int | None = None
    ) -> F: ...

    def rerender(self, finished: F, style: str, strength: int) -> F: ...


class Preparer(Protocol[P_out]):
    """What turns a photo's bytes into a prepared photo (inference/prepare_pool.py)."""

    async def prepare(self, image: bytes) -> P_out: ...


def _ignore(stage: Stage, step: int, total: int) -> None:
    """Progress nobody follows."""


@dataclass(eq=False)
class _Job(Generic[P, F]):
    """One queued request as the worker sees it; its handle resolves on the event loop."""

    prepared: P
    style: str
    strength: int
    on_progress: ProgressFn
    handle: Handle[F]
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = float("inf")

    @property
    def id(self) -> str:
        return self.handle.job_id

    def stopped(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline


class Worker(Generic[P, L, F]):
    """Drains the queue in FIFO order, `max_batch` waiting jobs inverted together."""

    def __init__(
        self,
        engine: Engine[P, L, F],
        preparer: Preparer[P],
        *,
        queue_size: int,
        max_batch: int = 1,
        job_timeout: float = 300.0,
        cache_size: int = 256,
        cache_ttl: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._preparer = preparer
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._job_timeout = job_timeout
        self._cache: TTLCache[str, F] = TTLCache(cache_size, cache_ttl)
        self._waiting: deque[_Job[P, F]] = deque()
        self._running: list[_Job[P, F]] = []
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return len(self._waiting) + len(self._running)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self._queue_size

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        self._task = asyncio.create_task(self._drain(), name="inference-worker")

    async def submit(
        self,
        job_id: str,
        photo: bytes,
        *,
        style: str,
        strength: int,
        on_progress: ProgressFn | None = None,
    ) -> Handle[F]:
        """Prepare the photo in the prepare pool, then queue it (see InferenceBackend)."""
        if not self._accepting:
            raise ShuttingDown
        prepared = await self._preparer.prepare(photo)
        if not self._accepting:
            raise ShuttingDown
        if self.full:
            raise QueueFull
        assert self._loop is not None
        position = len(self._waiting) + 1 + bool(self._running)
        handle = Handle[F](
            job_id,
            len(prepared.faces),
            position,
            self._loop.create_future(),
            self._loop.create_future(),
            self._max_batch,
        )
        self._waiting.append(_Job(prepared, style, strength, on_progress or _ignore, handle))
        self._wakeup.set()
        return handle

    async def waiting(self) -> int:
        return len(self._waiting)

    async def cancel(self, job_id: str) -> bool:
        """A waiting job leaves the queue now; a running one stops at its next step."""
        for job in list(self._waiting):
            if job.id == job_id:
                self._waiting.remove(job)
                job.handle.started.set_result(False)
                job.handle.finished.set_exception(Cancelled())
                return True
        for job in self._running:
            if job.id == job_id:
                job.cancelled.set()
                return True
        return False

    async def rerender(self, job_id: str, style: str, strength: int) -> F:
        """Render the cached job again on the inference thread, between batches."""
        finished = self._cache.get(job_id)
        if finished is None:
            raise Expired
        if (style, strength) != (finished.style, finished.strength):
            finished = await self._call(self._engine.rerender, finished, style, strength)
        if job_id in self._cache:  # not discarded meanwhile; stays another cache_ttl
            self._cache[job_id] = finished
        return finished

    async def discard(self, job_id: str) -> None:
        self._cache.pop(job_id, None)

    def keep(self, job_id: str, finished: F) -> None:
        """Cache a job finished elsewhere, so that it can be re-rendered here."""
        self._cache[job_id] = finished

    async def stop(self) -> None:
        """Stop accepting, let the running batch finish; the jobs still waiting end in
        ShuttingDown."""
        self._accepting = False
        left = list(self._waiting)
        self._waiting.clear()
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._thread.shutdown(wait=True)
        for job in left:
            job.handle.started.set_result(False)
            job.handle.finished.set_exception(ShuttingDown())

    async def _call(self, fn: Callable[Args, T], *args: Args.args, **kwargs: Args.kwargs) -> T:
        """`fn` on the inference thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    async def _drain(self) -> None:
        while self._accepting or self._waiting:
            if not self._waiting:
                self._wakeup.clear()
                if not self._accepting:
                    break
                await self._wakeup.wait()
                continue
            batch = [self._waiting.popleft()]
            while self._waiting and len(batch) < self._max_batch:
                batch.append(self._waiting.popleft())
            await self._run(batch)

    async def _run(self, batch: list[_Job[P, F]]) -> None:
        self._running = batch
        start = time.monotonic()
        for job in batch:
            job.deadline = start + self._job_timeout
            job.handle.started.set_result(True)
        outcomes: list[F | BaseException]
        try:
            outcomes = await self._call(self._process, batch)
        except BaseException as exc:  # a bug in the worker itself: fail the batch, keep going
            log.exception("inference batch crashed")
            outcomes = [detach_frames(exc)] * len(batch)
        finally:
            self._running = []
        for job, outcome in zip(batch, outcomes, strict=True):
            finished = job.handle.finished
            if finished.done():
                continue
            if isinstance(outcome, BaseException):
                finished.set_exception(outcome)
            else:
                self._cache[job.id] = outcome
                finished.set_result(outcome)

    def _emit(self, job: _Job[P, F], stage: Stage, step: int, total: int) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(job.on_progress, stage, step, total)

    def _process(self, batch: list[_Job[P, F]]) -> list[F | BaseException]:
        """Runs on the inference thread: invert the batch together, then finish each job.

        Each outcome is the finished job or the exception that job ended with.
        """
        outcomes: list[F | BaseException] = [_stop_reason(job) for job in batch]
        ready = [index for index, job in enumerate(batch) if not job.stopped()]
        if ready:
            for index, outcome in self._invert_and_finish([batch[i] for i in ready]):
                outcomes[ready[index]] = outcome
        return outcomes

    def _invert_and_finish(self, jobs: list[_Job[P, F]]) -> list[tuple[int, F | BaseException]]:
        """Invert `jobs` together, then finish each; (index in `jobs`, outcome) pairs.

        A batch that runs out of memory is dropped and its memory freed before each job is
        tried alone; a job that runs out alone fails alone, with OutOfMemory.
        """
        found = self._invert(jobs)
        if _ran_out(found):
            del found  # the failed batch's last reference, before its memory is given back
            release_memory()
            if len(jobs) > 1:
                log.warning("out of memory with %d jobs; retrying one at a time", len(jobs))
                return [
                    (index, outcome)
                    for index, job in enumerate(jobs)
                    for _, outcome in self._invert_and_finish([job])
                ]
            log.warning("job %s ran out of memory alone; it fails", jobs[0].id)
            return [(0, _failure(jobs[0], OutOfMemory()))]
        if isinstance(found, BaseException):
            return [(index, _failure(job, found)) for index, job in enumerate(jobs)]
        results: list[tuple[int, F | BaseException]] = []
        for index, (job, latents) in enumerate(zip(jobs, found, strict=True)):
            outcome = self._finish(job, latents)
            if _ran_out(outcome):
                del outcome
                release_memory()
                log.warning("job %s ran out of memory rendering; it fails", job.id)
                outcome = OutOfMemory()
            results.append((index, outcome))
        return results

    def _invert(self, jobs: list[_Job[P, F]]) -> list[L] | BaseException:
        """The batch's codes, or the exception the inversion ended with (frames cleared)."""

        def progress(stage: Stage, step: int, total: int) -> None:
            for job in jobs:
                self._emit(job, stage, step, total)

        try:
            return self._engine.invert(
                [job.prepared for job in jobs],
                progress=progress,
                should_stop=lambda: all(job.stopped() for job in jobs),
            )
        except Exception as exc:
            return detach_frames(exc)

    def _finish(self, job: _Job[P, F], latents: L) -> F | BaseException:
        """The finished job, or the exception rendering ended with (frames cleared)."""
        if job.stopped():
            return _stop_reason(job)
        self._emit(job, Stage.RENDER, 0, 1)
        try:
            return self._engine.finish(job.prepared, latents, job.style, job.strength)
        except Exception as exc:
            return detach_frames(exc)


def _failure(job: _Job[P, F], exc: BaseException) -> BaseException:
    """Why the job ended: stopped on purpose, or the error."""
    return _stop_reason(job) if job.stopped() else exc


def _stop_reason(job: _Job[P, F]) -> Exception:
    return Cancelled() if job.cancelled.is_set() else JobTimeout()


def _ran_out(outcome: object) -> bool:
    return isinstance(outcome, BaseException) and is_out_of_memory(outcome)
