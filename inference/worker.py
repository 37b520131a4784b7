"""The single GPU worker: one queue, one asyncio task, one inference thread.

The GPU is shared by everybody, so exactly one thread touches torch. The event loop only
queues work and receives events; every callback into the loop goes through
`call_soon_threadsafe`, so adapters never block on inference and never race the thread.

Memory: an exception kept as a job's outcome has its frames cleared first (its traceback would
otherwise keep the failed step's tensors alive until the cyclic garbage collector runs), and a
batch that runs out of memory is retried one job at a time only after the failed attempt is
gone and its memory handed back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from inference.memory import detach_frames, is_out_of_memory, release_memory

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFn = Callable[[str, int, int], None]


class QueueFull(Exception):
    """The queue holds `queue_size` jobs already."""


class JobCancelled(Exception):
    """The job was cancelled before it finished."""


class JobTimeout(Exception):
    """The job ran longer than `job_timeout` seconds."""


class OutOfMemory(Exception):
    """The job alone needs more accelerator memory than is free; the other jobs went on."""


class ShuttingDown(Exception):
    """The worker stopped before the job could run; the service keeps it for the next start."""


class Engine(Protocol):
    """What the worker needs of the Toonifier (inference/pipeline.py); photos arrive prepared
    (inference/prepare_pool.py)."""

    def invert(
        self,
        batch: list[Any],
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Any]: ...

    def finish(
        self, prepared: Any, latents: Any, style: str | None = None, strength: int | None = None
    ) -> Any: ...


@dataclass(eq=False)
class Job:
    """One toonify request as the worker sees it; `future` resolves on the event loop."""

    id: str
    prepared: Any
    style: str | None
    strength: int | None
    on_progress: ProgressFn
    future: asyncio.Future[Any]
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = float("inf")

    def stopped(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline


class Worker:
    """Drains the queue in FIFO order, `max_batch` waiting jobs inverted together."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int,
        max_batch: int = 1,
        job_timeout: float = 300.0,
    ) -> None:
        self._engine = engine
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._job_timeout = job_timeout
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
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
    def waiting(self) -> int:
        """Jobs in line, not running yet."""
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self._queue_size

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        self._task = asyncio.create_task(self._drain(), name="inference-worker")

    def submit(
        self,
        job_id: str,
        prepared: Any,
        *,
        style: str | None = None,
        strength: int | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Job:
        """Queue a job; its 1-based place in line is `position(job.id)`."""
        if not self._accepting:
            raise ShuttingDown
        if self.full:
            raise QueueFull
        assert self._loop is not None
        job = Job(
            job_id,
            prepared,
            style,
            strength,
            on_progress or (lambda *_: None),
            self._loop.create_future(),
        )
        self._waiting.append(job)
        self._wakeup.set()
        return job

    def position(self, job_id: str) -> int | None:
        """1 while running, then 2, 3... in line; None when unknown."""
        for job in self._running:
            if job.id == job_id:
                return 1
        for index, job in enumerate(self._waiting):
            if job.id == job_id:
                return index + 1 + bool(self._running)
        return None

    def cancel(self, job_id: str) -> bool:
        """A waiting job leaves the queue now; a running one stops at its next step."""
        for job in list(self._waiting):
            if job.id == job_id:
                self._waiting.remove(job)
                job.future.set_exception(JobCancelled())
                return True
        for job in self._running:
            if job.id == job_id:
                job.cancelled.set()
                return True
        return False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the inference thread (re-renders), between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def stop(self) -> list[Job]:
        """Stop accepting, let the running batch finish, and hand back the jobs still waiting."""
        self._accepting = False
        left = list(self._waiting)
        self._waiting.clear()
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._thread.shutdown(wait=True)
        for job in left:
            job.future.set_exception(ShuttingDown())
        return left

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

    async def _run(self, batch: list[Job]) -> None:
        self._running = batch
        start = time.monotonic()
        for job in batch:
            job.deadline = start + self._job_timeout
            job.on_progress("start", 0, len(batch))
        try:
            outcomes = await self.call(self._process, batch)
        except BaseException as exc:  # a bug in the worker itself: fail the batch, keep going
            log.exception("inference batch crashed")
            outcomes = [detach_frames(exc)] * len(batch)
        finally:
            self._running = []
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _emit(self, job: Job, stage: str, step: int, total: int) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(job.on_progress, stage, step, total)

    def _process(self, batch: list[Job]) -> list[Any]:
        """Runs on the inference thread: invert the batch together, then finish each job.

        Each outcome is `(prepared, result)` or the exception that job ended with.
        """
        outcomes: list[Any] = [self._stop_reason(job) for job in batch]
        ready = [(index, job.prepared) for index, job in enumerate(batch) if not job.stopped()]
        if ready:
            for index, outcome in self._invert_and_finish(batch, ready):
                outcomes[index] = outcome
        return outcomes

    def _invert_and_finish(
        self, batch: list[Job], ready: list[tuple[int, Any]]
    ) -> list[tuple[int, Any]]:
        """Invert `ready` together, then finish each job.

        A batch that runs out of memory is dropped and its memory freed before each job is
        tried alone; a job that runs out alone fails alone, with OutOfMemory.
        """
        jobs = [batch[index] for index, _ in ready]
        found = self._invert(jobs, [prepared for _, prepared in ready])
        if _ran_out(found):
            del found  # the failed batch's last reference, before its memory is given back
            release_memory()
            if len(ready) > 1:
                log.warning("out of memory with %d jobs; retrying one at a time", len(ready))
                return [done for item in ready for done in self._invert_and_finish(batch, [item])]
            log.warning("job %s ran out of memory alone; it fails", jobs[0].id)
            return [(ready[0][0], self._failure(jobs[0], OutOfMemory()))]
        if isinstance(found, BaseException):
            return [(index, self._failure(batch[index], found)) for index, _ in ready]
        results: list[tuple[int, Any]] = []
        for (index, prepared), job, latent in zip(ready, jobs, found, strict=True):
            outcome = self._finish(job, prepared, latent)
            if _ran_out(outcome):
                del outcome
                release_memory()
                log.warning("job %s ran out of memory rendering; it fails", job.id)
                outcome = OutOfMemory()
            results.append((index, outcome))
        return results

    def _invert(self, jobs: list[Job], prepared: list[Any]) -> list[Any] | BaseException:
        """The batch's latents, or the exception the inversion ended with (frames cleared)."""

        def progress(stage: str, step: int, total: int) -> None:
            for job in jobs:
                self._emit(job, stage, step, total)

        try:
            return self._engine.invert(
                prepared,
                progress=progress,
                should_stop=lambda: all(job.stopped() for job in jobs),
            )
        except Exception as exc:
            return detach_frames(exc)

    def _finish(self, job: Job, prepared: Any, latent: Any) -> Any:
        """`(prepared, result)`, or the exception rendering ended with (frames cleared)."""
        if job.stopped():
            return self._stop_reason(job)
        self._emit(job, "render", 0, 1)
        try:
            return prepared, self._engine.finish(prepared, latent, job.style, job.strength)
        except Exception as exc:
            return detach_frames(exc)

    def _failure(self, job: Job, exc: BaseException) -> BaseException:
        """Why the job ended: stopped on purpose, or the error."""
        return self._stop_reason(job) if job.stopped() else exc

    @staticmethod
    def _stop_reason(job: Job) -> Exception:
        return JobCancelled() if job.cancelled.is_set() else JobTimeout()


def _ran_out(outcome: object) -> bool:
    return isinstance(outcome, BaseException) and is_out_of_memory(outcome)
