"""The single worker against a scripted engine and preparer: ordering, batching, failures,
cancellation, the started signal and the cache that re-renders draw from."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch

from inference.backend import Handle
from inference.errors import Cancelled, Expired, JobTimeout, QueueFull, ShuttingDown
from inference.stages import Stage
from inference.worker import Worker


class Stop(Exception):
    pass


@dataclass(frozen=True)
class Photo:
    """A prepared photo: its name and a face per letter of `faces`."""

    name: str
    faces: str = "x"


@dataclass(frozen=True)
class Toon:
    name: str
    latents: str
    style: str
    strength: int


class ScriptedPreparer:
    """Photos are their names in bytes; "noface" is refused like a photo without a face."""

    async def prepare(self, image: bytes) -> Photo:
        await asyncio.sleep(0)
        name = image.decode()
        if name == "noface":
            raise ValueError("no face")
        return Photo(name, faces="xy" if name.startswith("pair") else "x")


@dataclass
class ScriptedEngine:
    """Inverts in `steps` steps of `step_seconds`, like the real optimisation loop."""

    steps: int = 5
    step_seconds: float = 0.0
    batches: list[list[str]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    rerenders: list[tuple[str, str, int]] = field(default_factory=list)
    oom_above: int | None = None
    release: threading.Event | None = None

    def invert(
        self,
        batch: Sequence[Photo],
        progress: Callable[[Stage, int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[str]:
        names = [photo.name for photo in batch]
        self.threads.add(threading.current_thread().name)
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if self.release is not None:
            self.release.wait(5)
        self.batches.append(names)
        for step in range(self.steps):
            if should_stop and should_stop():
                raise Stop
            if "boom" in names:
                raise RuntimeError("kaboom")
            time.sleep(self.step_seconds)
            if progress:
                progress(Stage.INVERT, step + 1, self.steps)
        return [f"w({name})" for name in names]

    def finish(
        self, prepared: Photo, latents: str, style: str | None = None, strength: int | None = None
    ) -> Toon:
        return Toon(prepared.name, latents, style or "toon", strength or 16)

    def rerender(self, finished: Toon, style: str, strength: int) -> Toon:
        self.threads.add(threading.current_thread().name)
        self.rerenders.append((finished.name, style, strength))
        return replace(finished, style=style, strength=strength)


async def started(engine: ScriptedEngine, **options: Any) -> Worker[Photo, str, Toon]:
    options = {"queue_size": 50, **options}
    worker = Worker(engine, ScriptedPreparer(), **options)
    worker.start()
    return worker


async def submit(worker: Worker[Photo, str, Toon], name: str, **kwargs: Any) -> Handle[Toon]:
    """Queue a job, then let the worker run (as an adapter's next await would)."""
    options = {"style": "toon", "strength": 16, **kwargs}
    handle = await worker.submit(name, name.encode(), **options)
    await asyncio.sleep(0)
    return handle


async def test_every_job_gets_its_result_in_fifo_order() -> None:
    engine = ScriptedEngine()
    worker = await started(engine)
    handles = [await submit(worker, f"u{i}", style="anime", strength=32) for i in range(20)]
    results = await asyncio.gather(*(handle.finished for handle in handles))
    assert results == [Toon(f"u{i}", f"w(u{i})", "anime", 32) for i in range(20)]
    assert engine.batches == [[f"u{i}"] for i in range(20)]
    assert engine.threads == {next(iter(engine.threads))}
    assert next(iter(engine.threads)).startswith("inference")
    await worker.stop()


async def test_a_handle_says_the_faces_found_and_the_place_in_line() -> None:
    engine = ScriptedEngine(release=threading.Event())
    worker = await started(engine, queue_size=2)
    first = await submit(worker, "a")
    await asyncio.sleep(0.05)  # "a" is running now
    second = await submit(worker, "pair-b")
    third = await submit(worker, "c")
    with pytest.raises(QueueFull):
        await submit(worker, "d")
    assert [h.position for h in (first, second, third)] == [1, 2, 3]
    assert [h.faces for h in (first, second, third)] == [1, 2, 1]
    assert await worker.waiting() == 2
    engine.release.set()
    await asyncio.gather(*(h.finished for h in (first, second, third)))
    assert await worker.waiting() == 0
    await worker.stop()


async def test_what_preparation_refuses_is_raised_by_submit_and_queues_nothing() -> None:
    worker = await started(ScriptedEngine())
    with pytest.raises(ValueError, match="no face"):
        await submit(worker, "noface")
    assert worker.depth == 0
    await worker.stop()


async def test_waiting_jobs_are_batched_up_to_max_batch() -> None:
    engine = ScriptedEngine(release=threading.Event())
    worker = await started(engine, max_batch=4)
    handles = [await submit(worker, f"u{i}") for i in range(7)]
    await asyncio.sleep(0.05)
    engine.release.set()
    await asyncio.gather(*(handle.finished for handle in handles))
    assert engine.batches == [["u0"], ["u1", "u2", "u3", "u4"], ["u5", "u6"]]
    await worker.stop()


async def test_a_failing_job_fails_alone_and_the_next_still_runs() -> None:
    worker = await started(ScriptedEngine())
    boom = await submit(worker, "boom")
    fine = await submit(worker, "fine")
    with pytest.raises(RuntimeError, match="kaboom"):
        await boom.finished
    assert (await fine.finished).name == "fine"
    await worker.stop()


async def test_started_says_whether_inference_began() -> None:
    engine = ScriptedEngine(steps=200, step_seconds=0.01)
    worker = await started(engine)
    running = await submit(worker, "running")
    queued = await submit(worker, "queued")
    assert await asyncio.wait_for(running.started, 5) is True
    assert not queued.started.done()
    assert await worker.cancel("queued")
    assert await queued.started is False
    assert await worker.cancel("running")
    with pytest.raises(Cancelled):
        await running.finished
    await worker.stop()


async def test_cancel_queued_and_running_jobs() -> None:
    engine = ScriptedEngine(steps=200, step_seconds=0.01)
    worker = await started(engine)
    running = await submit(worker, "running")
    queued = await submit(worker, "queued")
    after = await submit(worker, "after")
    await asyncio.sleep(0.1)
    assert await worker.cancel("queued")
    assert await worker.cancel("running")
    with pytest.raises(Cancelled):
        await queued.finished
    started_at = time.monotonic()
    with pytest.raises(Cancelled):
        await running.finished
    assert time.monotonic() - started_at < 1.0  # stopped at its next step, not after 200
    engine.steps = 1
    assert (await after.finished).name == "after"
    assert ["queued"] not in engine.batches
    assert not await worker.cancel("unknown")
    await worker.stop()


async def test_a_job_past_its_timeout_is_stopped() -> None:
    worker = await started(ScriptedEngine(steps=500, step_seconds=0.01), job_timeout=0.2)
    handle = await submit(worker, "slow")
    with pytest.raises(JobTimeout):
        await handle.finished
    await worker.stop()


async def test_cuda_oom_retries_the_batch_one_job_at_a_time() -> None:
    engine = ScriptedEngine(release=threading.Event(), oom_above=1)
    worker = await started(engine, max_batch=3)
    handles = [await submit(worker, f"u{i}") for i in range(3)]
    await asyncio.sleep(0.05)
    engine.release.set()
    results = await asyncio.gather(*(handle.finished for handle in handles))
    assert [result.name for result in results] == ["u0", "u1", "u2"]
    assert engine.batches == [["u0"], ["u1"], ["u2"]]
    await worker.stop()


async def test_progress_events_arrive_on_the_event_loop_thread() -> None:
    worker = await started(ScriptedEngine(steps=3))
    seen: list[tuple[Stage, int, int, str]] = []

    def record(stage: Stage, step: int, total: int) -> None:
        seen.append((stage, step, total, threading.current_thread().name))

    handle = await submit(worker, "p", on_progress=record)
    await handle.finished
    await asyncio.sleep(0)
    assert [event[:3] for event in seen] == [
        (Stage.INVERT, 1, 3),
        (Stage.INVERT, 2, 3),
        (Stage.INVERT, 3, 3),
        (Stage.RENDER, 0, 1),
    ]
    assert {event[3] for event in seen} == {threading.current_thread().name}
    await worker.stop()


async def test_a_rerender_draws_from_the_cache_on_the_inference_thread() -> None:
    engine = ScriptedEngine()
    worker = await started(engine)
    handle = await submit(worker, "me", style="toon", strength=16)
    await handle.finished
    engine.threads.clear()
    assert await worker.rerender("me", "toon", 32) == Toon("me", "w(me)", "toon", 32)
    assert await worker.rerender("me", "anime", 32) == Toon("me", "w(me)", "anime", 32)
    assert engine.threads == {next(iter(engine.threads))}
    assert next(iter(engine.threads)).startswith("inference")
    # As it is now: nothing to draw, so no trip to the inference thread.
    assert await worker.rerender("me", "anime", 32) == Toon("me", "w(me)", "anime", 32)
    assert engine.rerenders == [("me", "toon", 32), ("me", "anime", 32)]
    assert engine.batches == [["me"]]  # never inverted again
    with pytest.raises(Expired):
        await worker.rerender("someone else", "toon", 16)
    await worker.discard("me")
    with pytest.raises(Expired):
        await worker.rerender("me", "toon", 16)
    await worker.stop()


async def test_cached_jobs_expire_after_cache_ttl() -> None:
    worker = await started(ScriptedEngine(), cache_ttl=0.05)
    await (await submit(worker, "me")).finished
    await asyncio.sleep(0.2)
    with pytest.raises(Expired):
        await worker.rerender("me", "toon", 32)
    await worker.stop()


async def test_event_loop_timer_fires_on_time_while_the_worker_computes() -> None:
    worker = await started(ScriptedEngine(steps=40, step_seconds=0.01))
    handle = await submit(worker, "busy")
    late: list[float] = []
    for _ in range(10):
        before = time.monotonic()
        await asyncio.sleep(0.02)
        late.append(time.monotonic() - before - 0.02)
    await handle.finished
    assert max(late) < 0.1
    await worker.stop()


async def test_stop_finishes_the_running_job_and_ends_the_queue_in_shutting_down() -> None:
    engine = ScriptedEngine(steps=20, step_seconds=0.01)
    worker = await started(engine)
    running = await submit(worker, "running")
    waiting = await submit(worker, "waiting")
    await asyncio.sleep(0.05)
    await worker.stop()
    assert (await running.finished).name == "running"
    assert await waiting.started is False
    with pytest.raises(ShuttingDown):
        await waiting.finished
    with pytest.raises(ShuttingDown):
        await submit(worker, "late")
