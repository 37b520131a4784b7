"""Photos per second through the prepare pool, against preparing on one thread in the bot.

Every photo of a run is sent at once, as a burst of users would: with N processes up to N
photos are decoded, searched for faces and aligned at the same time, each paying the trip to
its process and back (the photo's bytes there, the decoded photo and aligned faces back).

Beside the rate, each run counts the CPU seconds it took: the bot process's and its prepare
processes' (Linux /proc). Their sum per photo is what a photo costs whatever else runs on the
machine, so 1 / (CPU seconds per photo) is the rate one free core can reach.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference.faces import FaceDetector
from inference.prepare import prepare_photo
from inference.prepare_pool import PreparePool, PrepareSpec


@dataclass(frozen=True)
class Throughput:
    """Photos per second and CPU seconds per photo of each run, all processes together and the
    bot's own share (`processes` 0: one thread in the bot's process)."""

    processes: int
    per_second: list[float]
    cpu_per_photo: list[float]
    bot_cpu_per_photo: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_second)

    @property
    def per_core(self) -> float:
        """Photos per second that one core fully given to preparation would reach."""
        return 1 / statistics.median(self.cpu_per_photo)


async def pool_throughput(
    spec: PrepareSpec, processes: int, photos: Sequence[bytes], runs: int
) -> Throughput:
    pool = PreparePool(spec, processes=processes, timeout=600)
    await pool.start()
    try:
        await asyncio.gather(*(pool.prepare(photo) for photo in photos[:processes]))  # warm-up

        async def burst() -> None:
            await asyncio.gather(*(pool.prepare(photo) for photo in photos))

        return await _measure(processes, burst, len(photos), runs)
    finally:
        await pool.stop()


async def thread_throughput(
    detector: FaceDetector, spec: PrepareSpec, photos: Sequence[bytes], runs: int
) -> Throughput:
    """What the bot did before the pool: every photo on one preparation thread."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as thread:

        def one(photo: bytes) -> object:
            return prepare_photo(photo, detector, spec.limits, spec.resolution)

        await loop.run_in_executor(thread, one, photos[0])  # warm-up

        async def burst() -> None:
            await asyncio.gather(*(loop.run_in_executor(thread, one, p) for p in photos))

        return await _measure(0, burst, len(photos), runs)


async def _measure(
    processes: int, burst: Callable[[], Awaitable[None]], count: int, runs: int
) -> Throughput:
    rates, cpu, bot_cpu = [], [], []
    for _ in range(runs):
        start, bot, children = time.perf_counter(), time.process_time(), _children_cpu()
        await burst()
        rates.append(count / (time.perf_counter() - start))
        bot = time.process_time() - bot
        bot_cpu.append(bot / count)
        cpu.append((bot + _children_cpu() - children) / count)
    return Throughput(processes, rates, cpu, bot_cpu)


def _children_cpu() -> float:
    """CPU seconds so far of this process's running child processes."""
    return sum(_cpu_of(pid) for pid in _children())


def _children() -> list[int]:
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _stat(entry.name)[1] == me:
            pids.append(int(entry.name))
    return pids


def _cpu_of(pid: int) -> float:
    _, _, ticks = _stat(str(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[str, int, int]:
    """State, parent id and user + system clock ticks of a process (0s if it is gone)."""
    try:
        text = (Path("/proc") / pid / "stat").read_text()
    except OSError:
        return "", 0, 0
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[11]) + int(fields[12])
