"""Throughput of the admission path on a scratch SQLite file, for `toonify bench storage`."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from storage.records import Admitted, NewJob, UserRef
from storage.settings import QuotaSettings
from storage.store import Store

# Generous enough that nothing is refused: the bench measures the statements, not the policy.
_POLICY = QuotaSettings(daily=10**9, cooldown=0, max_in_flight=10**9)
_JOB = NewJob(UserRef("bench", "1"), style="toon", strength=32, chat={"chat_id": 1})


@dataclass(frozen=True)
class Rate:
    operation: str
    per_second: list[float]
    """One figure per run."""

    @property
    def median(self) -> float:
        return statistics.median(self.per_second)


async def _consume(storage: Store, ops: int) -> list[str]:
    ids = []
    for _ in range(ops):
        decision = await storage.quotas.consume(_JOB)
        assert isinstance(decision, Admitted), decision
        ids.append(decision.job_id)
    return ids


async def _refund(storage: Store, ids: list[str]) -> None:
    for job_id in ids:
        await storage.quotas.refund(job_id)


async def _consume_and_fail(storage: Store, ops: int) -> None:
    for _ in range(ops):
        decision = await storage.quotas.consume(_JOB)
        assert isinstance(decision, Admitted), decision
        await storage.jobs.mark_failed(decision.job_id, "bench", refund=True)


async def _concurrent(storage: Store, ops: int, tasks: int) -> None:
    users = [NewJob(UserRef("bench", f"u{i}"), style="toon", strength=32) for i in range(tasks)]
    await asyncio.gather(*(storage.quotas.consume(users[i % tasks]) for i in range(ops)))


async def _run(storage: Store, ops: int, tasks: int) -> dict[str, float]:
    """One run: each operation `ops` times, in operations per second."""
    rates = {}
    start = time.perf_counter()
    ids = await _consume(storage, ops)
    rates["consume"] = ops / (time.perf_counter() - start)
    start = time.perf_counter()
    await _refund(storage, ids)
    rates["refund"] = ops / (time.perf_counter() - start)
    start = time.perf_counter()
    await _consume_and_fail(storage, ops)
    rates["consume + mark_failed(refund)"] = ops / (time.perf_counter() - start)
    start = time.perf_counter()
    await _concurrent(storage, ops, tasks)
    rates[f"consume, {tasks} users at once"] = ops / (time.perf_counter() - start)
    return rates


async def measure(ops: int, runs: int, tasks: int, folder: Path | None = None) -> list[Rate]:
    """Operations per second, `runs` times each, on a new database in `folder` (default: temp).

    consume and refund run one after another for one user; the last row runs `tasks` users'
    requests at once (they queue for the process's one SQLite connection).
    """
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'bench.db'}"
        async with await Store.open(url, _POLICY) as storage:
            results = [await _run(storage, ops, tasks) for _ in range(runs)]
    return [Rate(name, [result[name] for result in results]) for name in results[0]]
