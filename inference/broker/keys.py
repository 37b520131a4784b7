"""The Redis names, message fields and consumer group the adapters and the workers share.

jobs stream      one entry per unfinished job ({job, style, strength}), deleted once its
                 outcome is stored, so its length is the whole queue (waiting and running)
rerenders stream re-render requests ({job, style, strength, reply}); workers read it first
prepared:<job>   the prepared photo (wire.dump_prepared), until the job is finished
result:<id>      a finished job (wire.dump_finished), kept for re-renders
events:<id>      what happened to a job or a re-render: started, progress, finished, failed
cancel:<job>     set when the user cancels; workers check it before and while running
workers          sorted set: worker name -> last heartbeat (unix seconds)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

PREFIX = "toonify"
JOBS = f"{PREFIX}:jobs"
RERENDERS = f"{PREFIX}:rerenders"
GROUP = "workers"
WORKERS = f"{PREFIX}:workers"
# A re-render's result is read once, right away.
RERENDER_TTL = 300
# Progress events kept per job: the adapter only shows the latest.
EVENTS_KEPT = 16


class Event(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"
    FAILED = "failed"


def prepared(job_id: str) -> str:
    return f"{PREFIX}:prepared:{job_id}"


def result(job_id: str) -> str:
    return f"{PREFIX}:result:{job_id}"


def events(job_id: str) -> str:
    return f"{PREFIX}:events:{job_id}"


def cancel(job_id: str) -> str:
    return f"{PREFIX}:cancel:{job_id}"


def wake(name: str) -> str:
    """An adapter's own stream: a write there ends its blocking read (a new job to follow)."""
    return f"{PREFIX}:wake:{name}"


async def ensure_groups(redis: Redis) -> None:
    """The workers' consumer group on both streams, from their first entry: jobs queued before
    any worker started (or before Redis restarted empty) are read too."""
    for stream in (JOBS, RERENDERS):
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]
StreamAnswer = list[tuple[bytes, StreamEntries]]
"""What XREAD and XREADGROUP answer (the client's own types do not say)."""


def stream_answer(value: object) -> StreamAnswer:
    return cast(StreamAnswer, value or [])


def blob(value: object) -> bytes | None:
    """A GET's answer as the bytes it is (the client never decodes: decode_responses off)."""
    assert value is None or isinstance(value, bytes)
    return value


async def send(redis: Redis, stream: str, fields: Mapping[Any, Any]) -> None:
    """XADD that may be lost (progress, a wake-up): its failure is logged by nobody."""
    with contextlib.suppress(RedisError):
        await redis.xadd(stream, dict(fields), maxlen=EVENTS_KEPT)
