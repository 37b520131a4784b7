"""The benchmarks' chat platform: every job's photo is the same one, and a reply only records
that the toon was delivered. It drives the real service (admission, prepare pool, worker,
delivery) the way an adapter does, without a chat library in the way."""

from __future__ import annotations

import asyncio
from typing import Any

from bots.app import App
from bots.service import Refused, Requester, Toon, Upload

PLATFORM = "bench"


class BenchReply:
    """One job's replies: `done` is set once the toon is delivered."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def queued(self, text: str) -> None:
        pass

    async def started(self) -> None:
        pass

    async def progress(self, text: str) -> None:
        pass

    async def deliver(self, toon: Toon) -> None:
        pass

    async def delivered(self) -> None:
        self.done.set()

    async def fail(self, error: Refused) -> None:
        raise RuntimeError(f"benchmark job failed: {error.text}")


class BenchPlatform:
    """What the service fetches every job's photo from."""

    def __init__(self, photo: bytes) -> None:
        self._photo = photo

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        return self._photo

    def reply_for(self, ref: dict[str, Any]) -> BenchReply:
        return BenchReply()


async def submit(app: App, user: str, reply: BenchReply) -> str | None:
    """Send the photo as `user` would; the job's id."""
    who = Requester(PLATFORM, user, user)
    return await app.service.admit(who, Upload(None, None), reply, ref={})
