"""The single worker against a scripted engine: ordering, batching, failures, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from inference.worker import JobCancelled, JobTimeout, QueueFull, ShuttingDown, Worker


class Stop(Exception):
    pass


@dataclass
class ScriptedEngine:
    """Inverts in `steps` steps of `step_seconds`, like the real optimisation loop."""

    steps: int = 5
    step_seconds: float = 0.0
    batches: list[list[str]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    oom_above: int | None = None
    release: threading.Event | None = None

    def invert(
        self,
        batch: list[str],
        progress: Callable[[str, int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[str]:
        self.threads.add(threading.current_thread().name)
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if self.release is not None:
            self.release.wait(5)
        self.batches.append(list(batch))
        for step in range(self.steps):
            if should_stop and should_stop():
                raise Stop
            if "boom" in batch:
                raise RuntimeError("kaboom")
            time.sleep(self.step_seconds)
            if progress:
                progress("invert", step + 1, self.steps)
        return [f"w({name})" for name in batch]

    def finish(self, prepared: str, latents: str, style: Any = None, strength: Any = None) -> str:
        return f"toon:{prepared}:{latents}:{style}:{strength}"


async def started(engine: ScriptedEngine, **options: Any) -> Worker:
    options = {"queue_size": 50, **options}
    worker = Worker(engine, **options)
    worker.start()
    return worker


async def submit(worker: Worker, name: str, **kwargs: Any) -> Any:
    """Queue a job, then let the worker run (as an adapter's next await would)."""
    job = worker.submit(name, name, **kwargs)
    await asyncio.sleep(0)
    return job


async def test_every_job_gets_its_result_in_fifo_order() -> None:
    engine = ScriptedEngine()
    worker = await started(engine)
    jobs = [await submit(worker, f"u{i}", style="toon", strength=32) for i in range(20)]
    results = await asyncio.gather(*(job.future for job in jobs))
    assert [result for _, result in results] == [f"toon:u{i}:w(u{i}):toon:32" for i in range(20)]
    assert engine.batches == [[f"u{i}"] for i in range(20)]
    assert engine.threads == {next(iter(engine.threads))}
    assert next(iter(engine.threads)).startswith("inference")
    await worker.stop()


async def test_waiting_jobs_are_batched_up_to_max_batch() -> None:
    engine = ScriptedEngine(release=threading.Event())
    worker = await started(engine, max_batch=4)
    jobs = [await submit(worker, f"u{i}") for i in range(7)]
    await asyncio.sleep(0.05)
    engine.release.set()
    await asyncio.gather(*(job.future for job in jobs))
    assert engine.batches == [["u0"], ["u1", "u2", "u3", "u4"], ["u5", "u6"]]
    await worker.stop()


async def test_queue_full_is_refused_and_positions_are_reported() -> None:
    engine = ScriptedEngine(release=threading.Event())
    worker = await started(engine, queue_size=2)
    first = await submit(worker, "a")
    await asyncio.sleep(0.05)  # "a" is running now
    await submit(worker, "b")
    await submit(worker, "c")
    with pytest.raises(QueueFull):
        await submit(worker, "d")
    assert [worker.position(name) for name in "abcd"] == [1, 2, 3, None]
    engine.release.set()
    await first.future
    await worker.stop()


async def test_a_failing_job_fails_alone_and_the_next_still_runs() -> None:
    worker = await started(ScriptedEngine())
    boom = await submit(worker, "boom")
    fine = await submit(worker, "fine")
    with pytest.raises(RuntimeError, match="kaboom"):
        await boom.future
    assert (await fine.future)[1].startswith("toon:fine")
    await worker.stop()


async def test_cancel_queued_and_running_jobs() -> None:
    engine = ScriptedEngine(steps=200, step_seconds=0.01)
    worker = await started(engine)
    running = await submit(worker, "running")
    queued = await submit(worker, "queued")
    after = await submit(worker, "after")
    await asyncio.sleep(0.1)
    assert worker.cancel("queued")
    assert worker.cancel("running")
    with pytest.raises(JobCancelled):
        await queued.future
    started_at = time.monotonic()
    with pytest.raises(JobCancelled):
        await running.future
    assert time.monotonic() - started_at < 1.0  # stopped at its next step, not after 200
    engine.steps = 1
    assert (await after.future)[1].startswith("toon:after")
    assert ["queued"] not in engine.batches
    assert not worker.cancel("unknown")
    await worker.stop()


async def test_a_job_past_its_timeout_is_stopped() -> None:
    worker = await started(ScriptedEngine(steps=500, step_seconds=0.01), job_timeout=0.2)
    job = await submit(worker, "slow")
    with pytest.raises(JobTimeout):
        await job.future
    await worker.stop()


async def test_cuda_oom_retries_the_batch_one_job_at_a_time() -> None:
    engine = ScriptedEngine(release=threading.Event(), oom_above=1)
    worker = await started(engine, max_batch=3)
    jobs = [await submit(worker, f"u{i}") for i in range(3)]
    await asyncio.sleep(0.05)
    engine.release.set()
    results = await asyncio.gather(*(job.future for job in jobs))
    assert [result for _, result in results] == [f"toon:u{i}:w(u{i}):None:None" for i in range(3)]
    assert engine.batches == [["u0"], ["u1"], ["u2"]]
    await worker.stop()


async def test_progress_events_arrive_on_the_event_loop_thread() -> None:
    worker = await started(ScriptedEngine(steps=3))
    seen: list[tuple[str, int, int, str]] = []
    job = await submit(
        worker,
        "p",
        on_progress=lambda *event: seen.append((*event, threading.current_thread().name)),
    )
    await job.future
    await asyncio.sleep(0)
    assert [event[:3] for event in seen] == [
        ("start", 0, 1),
        ("invert", 1, 3),
        ("invert", 2, 3),
        ("invert", 3, 3),
        ("render", 0, 1),
    ]
    assert {event[3] for event in seen} == {threading.current_thread().name}
    await worker.stop()


async def test_event_loop_timer_fires_on_time_while_the_worker_computes() -> None:
    worker = await started(ScriptedEngine(steps=40, step_seconds=0.01))
    job = await submit(worker, "busy")
    late: list[float] = []
    for _ in range(10):
        before = time.monotonic()
        await asyncio.sleep(0.02)
        late.append(time.monotonic() - before - 0.02)
    await job.future
    assert max(late) < 0.1
    await worker.stop()


async def test_stop_finishes_the_running_job_and_hands_back_the_queue() -> None:
    engine = ScriptedEngine(steps=20, step_seconds=0.01)
    worker = await started(engine)
    running = await submit(worker, "running")
    waiting = await submit(worker, "waiting")
    await asyncio.sleep(0.05)
    left = await worker.stop()
    assert (await running.future)[1].startswith("toon:running")
    assert [job.id for job in left] == ["waiting"]
    with pytest.raises(ShuttingDown):
        await waiting.future
    with pytest.raises(ShuttingDown):
        await submit(worker, "late")
