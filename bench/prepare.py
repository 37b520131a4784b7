"""Photos per second through the prepare pool, against preparing on one thread in the bot.

Every photo of a run is sent at once, as a burst of users would: with N processes up to N
photos are decoded, searched for faces and aligned at the same time, each paying the trip to
its process and back (the photo's bytes there, the decoded photo and aligned faces back).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from inference.faces import FaceDetector
from inference.prepare import prepare_photo
from inference.prepare_pool import PreparePool, PrepareSpec


@dataclass(frozen=True)
class Throughput:
    """Photos per second of each run (`processes` 0: one thread in the bot's process)."""

    processes: int
    per_second: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_second)


async def pool_throughput(
    spec: PrepareSpec, processes: int, photos: Sequence[bytes], runs: int
) -> Throughput:
    pool = PreparePool(spec, processes=processes, timeout=600)
    await pool.start()
    try:
        await asyncio.gather(*(pool.prepare(photo) for photo in photos[:processes]))  # warm-up
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            await asyncio.gather(*(pool.prepare(photo) for photo in photos))
            rates.append(len(photos) / (time.perf_counter() - start))
    finally:
        await pool.stop()
    return Throughput(processes, rates)


async def thread_throughput(
    detector: FaceDetector, spec: PrepareSpec, photos: Sequence[bytes], runs: int
) -> Throughput:
    """What the bot did before the pool: every photo on one preparation thread."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as thread:

        def one(photo: bytes) -> object:
            return prepare_photo(photo, detector, spec.limits, spec.resolution)

        await loop.run_in_executor(thread, one, photos[0])  # warm-up
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            await asyncio.gather(*(loop.run_in_executor(thread, one, p) for p in photos))
            rates.append(len(photos) / (time.perf_counter() - start))
    return Throughput(0, rates)
