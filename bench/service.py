"""What the request flow costs around inference, measured on tiny random models.

Overhead is everything a job pays outside the Toonifier's own calls: admission and job rows in
SQLite, the hand-off to a prepare process and back, the queue, thread hand-offs, progress
relaying, JPEG encoding and delivery.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image
from skimage import data

from bench.platform import PLATFORM, BenchPlatform, BenchReply, submit
from bots.app import App
from bots.config import Settings
from inference.architecture import Architecture
from inference.checkpoints import save_generator
from inference.pipeline import Finished, Latents, Toonifier
from inference.prepare import Prepared
from inference.stages import ProgressFn, StopFn
from inference.stylegan2 import Generator
from storage import Store

T = TypeVar("T")

PREPARE_STAGES = ("decode", "detect", "align")
TINY = Architecture(
    resolution=32, channel_multiplier=1, w_dim=64, n_mlp=2, channel_max=16, channel_base=512
)


@dataclass(frozen=True)
class ServiceFigures:
    jobs: int
    overhead_ms: list[float]
    throughput: dict[int, list[float]]


class TimedEngine:
    """The real Toonifier, adding up the seconds its own calls take (and those its photos
    took in their prepare process)."""

    def __init__(self, inner: Toonifier) -> None:
        self._inner = inner
        self.seconds = 0.0
        self._lock = threading.Lock()

    def _timed(self, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return work()
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - start

    def invert(
        self,
        batch: Sequence[Prepared],
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> list[Latents]:
        return self._timed(lambda: self._inner.invert(batch, progress, should_stop))

    def finish(
        self,
        prepared: Prepared,
        latents: Latents,
        style: str | None = None,
        strength: int | None = None,
    ) -> Finished:
        with self._lock:
            self.seconds += sum(prepared.timings.get(s, 0.0) for s in PREPARE_STAGES)
        return self._timed(lambda: self._inner.finish(prepared, latents, style, strength))

    def rerender(self, finished: Finished, style: str, strength: int) -> Finished:
        return self._timed(lambda: self._inner.rerender(finished, style, strength))


def tiny_config(folder: Path, steps: int, max_batch: int, jobs: int) -> Settings:
    generator = Generator(TINY)
    save_generator(generator, folder / "ffhq.safetensors", source="bench")
    save_generator(generator, folder / "toon.safetensors", source="bench")
    return Settings(
        models={"dir": str(folder), "face": "ffhq", "device": "cpu"},
        styles={
            "toon": {"label": "Toon", "model": "toon", "strengths": [8, 16], "default_strength": 16}
        },
        faces={"backend": "dlib"},
        invert={"loss": "pixel", "steps": steps},
        worker={
            "queue_size": jobs,
            "max_batch": max_batch,
            "progress_interval": 0.5,
            "prepare_processes": 1,
        },
        quota={"daily": 1_000_000, "cooldown": 0, "max_in_flight": jobs},
        storage={"url": f"sqlite+aiosqlite:///{folder / 'bench.db'}"},
    )


def astronaut_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def embedded_app(
    folder: Path, steps: int, max_batch: int, jobs: int, photo: bytes
) -> tuple[App, TimedEngine]:
    config = tiny_config(folder, steps, max_batch, jobs)
    toonifier = await asyncio.to_thread(Toonifier.from_config, config)
    engine = TimedEngine(toonifier)
    store = await Store.open(config.storage.url, config.quota)
    app = App(config, toonifier, store, engine=engine)
    app.service.register(PLATFORM, BenchPlatform(photo))
    await app.start([])
    return app, engine


async def one_by_one(app: App, engine: TimedEngine, jobs: int) -> float:
    """Milliseconds per job outside the Toonifier, jobs sent one after another."""
    engine.seconds = 0.0
    start = time.perf_counter()
    for _ in range(jobs):
        reply = BenchReply()
        await submit(app, "solo", reply)
        await reply.done.wait()
    return 1000 * (time.perf_counter() - start - engine.seconds) / jobs


async def all_at_once(app: App, jobs: int) -> float:
    """Jobs per second with `jobs` users sending at the same moment."""
    replies = [BenchReply() for _ in range(jobs)]
    start = time.perf_counter()
    await asyncio.gather(*(submit(app, str(n), reply) for n, reply in enumerate(replies)))
    await asyncio.gather(*(reply.done.wait() for reply in replies))
    return jobs / (time.perf_counter() - start)


async def measure(jobs: int, runs: int, steps: int, batches: list[int]) -> ServiceFigures:
    photo = astronaut_jpeg()
    overhead: list[float] = []
    throughput: dict[int, list[float]] = {batch: [] for batch in batches}
    for batch in batches:
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as folder:
                app, engine = await embedded_app(Path(folder), steps, batch, jobs, photo)
                try:
                    if batch == batches[0]:
                        overhead.append(await one_by_one(app, engine, jobs))
                    throughput[batch].append(await all_at_once(app, jobs))
                finally:
                    await app.stop()
    return ServiceFigures(jobs, overhead, throughput)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
