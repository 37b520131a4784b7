"""What the broker costs and what more workers buy, on tiny random models.

Overhead per job: jobs sent one after another through the embedded worker and through Redis
with a worker in this same process (both on the timed Toonifier of bench/service.py), each
minus the seconds the Toonifier itself took; the difference is the broker's own cost (wire
encoding, Redis round trips, the event stream). Throughput: a burst through Redis to 1, 2, ...
`toonify worker` processes (one torch thread each), the adapter in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.platform import PLATFORM, BenchPlatform
from bench.service import (
    TimedEngine,
    all_at_once,
    astronaut_jpeg,
    embedded_app,
    one_by_one,
    tiny_config,
)
from bots.app import BrokeredApp
from bots.config import Settings
from bots.worker_app import WorkerApp
from storage import Store

WORKER_READY = "toonify worker is running"
START_TIMEOUT = 300.0


@dataclass(frozen=True)
class BrokerFigures:
    jobs: int
    embedded_ms: list[float]
    brokered_ms: list[float]
    throughput: dict[int, list[float]]


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """`url`, or a redis-server of our own (from PATH, no persistence) for the run."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server on PATH: install it or pass --redis URL")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder]
        command += ["--save", "", "--appendonly", "no"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait()


def _brokered(config: Settings, url: str) -> Settings:
    return config.model_copy(update={"broker": config.broker.model_copy(update={"url": url})})


async def _flush(url: str) -> None:
    redis = Redis.from_url(url)
    await redis.flushdb()
    await redis.aclose()


async def _brokered_app(config: Settings, photo: bytes) -> BrokeredApp:
    store = await Store.open(config.storage.url, config.quota)
    app = BrokeredApp(config, store, Redis.from_url(config.broker.url))
    app.service.register(PLATFORM, BenchPlatform(photo))
    await app.start([])
    return app


async def _overheads(folder: Path, url: str, jobs: int, steps: int, photo: bytes) -> list[float]:
    """Milliseconds per job outside the Toonifier: embedded, then through Redis."""
    app, engine = await embedded_app(folder, steps, 1, jobs, photo)
    try:
        embedded = await one_by_one(app, engine, jobs)
    finally:
        await app.stop()
    await _flush(url)
    config = _brokered(tiny_config(folder, steps, 1, jobs), url)
    engine = TimedEngine(app.toonifier)
    worker = WorkerApp(config, app.toonifier, Redis.from_url(url), engine)
    await worker.start()
    brokered = await _brokered_app(config, photo)
    try:
        through = await one_by_one(brokered, engine, jobs)
    finally:
        await brokered.stop()
        await worker.stop()
    return [embedded, through]


@contextlib.asynccontextmanager
async def _workers(config: Settings, count: int, folder: Path) -> AsyncIterator[None]:
    """`count` `toonify worker` processes on `config`, each on one torch thread, ready."""
    sections = ("models", "styles", "faces", "invert", "worker", "broker")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env |= {f"TOONIFY_{s.upper()}": json.dumps(config.model_dump(mode="json")[s]) for s in sections}
    env["TOONIFY_STYLE"] = config.style
    logs = [folder / f"worker{n}.log" for n in range(count)]
    command = [sys.executable, "-m", "bots", "--config", os.devnull, "worker"]
    workers = []
    for log in logs:
        with log.open("wb") as out:
            workers.append(
                await asyncio.create_subprocess_exec(*command, env=env, stdout=out, stderr=out)
            )
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not all(WORKER_READY in log.read_text(errors="replace") for log in logs):
                for worker, log in zip(workers, logs, strict=True):
                    if worker.returncode is not None:
                        raise RuntimeError(f"a worker exited:\n{log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            await worker.wait()


async def _throughput(
    folder: Path, url: str, jobs: int, steps: int, workers: int, photo: bytes
) -> float:
    await _flush(url)
    config = _brokered(tiny_config(folder, steps, 1, jobs), url)
    async with _workers(config, workers, folder):
        app = await _brokered_app(config, photo)
        try:
            return await all_at_once(app, jobs)
        finally:
            await app.stop()


async def measure(
    url: str, jobs: int, runs: int, steps: int, worker_counts: list[int]
) -> BrokerFigures:
    photo = astronaut_jpeg()
    embedded: list[float] = []
    brokered: list[float] = []
    throughput: dict[int, list[float]] = {count: [] for count in worker_counts}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            alone, through = await _overheads(Path(folder), url, jobs, steps, photo)
        embedded.append(alone)
        brokered.append(through)
        for count in worker_counts:
            with tempfile.TemporaryDirectory() as folder:
                rate = await _throughput(Path(folder), url, jobs, steps, count, photo)
            throughput[count].append(rate)
    return BrokerFigures(jobs, embedded, brokered, throughput)
