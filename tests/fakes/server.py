"""What the fake chat servers share: serving on 127.0.0.1, the record of every call the bot
made, and waiting on that record (tests wait on what the bot did, never on its handlers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

# Request bodies a fake accepts: uploads of toons and photos (aiohttp's default is 1 MiB).
MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """One file of a multipart request."""

    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Call:
    """One request the bot made, and how the fake answered it.

    `name` is the Bot API method or the name of the Discord route; `params` Telegram's fields
    (JSON-decoded where they are JSON) or the Discord route's path parameters, whose JSON body
    is `payload`; `files` the uploads by part name. `status` is the HTTP status answered (0
    when the connection was dropped), `result` what the answer carried.
    """

    name: str
    params: dict[str, Any]
    files: dict[str, Upload] = field(default_factory=dict)
    payload: Any = None
    status: int = 200
    result: Any = None
    at: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class FakeServer:
    """An aiohttp app on a free port of 127.0.0.1 that records calls and says when its state
    changed (a new call, or anything a fake wants its waiters to look at again)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _listen(self, app: web.Application) -> str:
        """Serve `app`; its base URL. Shutting down cancels the handlers still running
        (a long poll), as a server that goes away would."""
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _stop_listening(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def record(self, call: Call) -> None:
        self.calls.append(call)
        self.changed()

    def changed(self) -> None:
        """Wake everyone waiting for a change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def next_change(self) -> None:
        await self._changed.wait()

    def mark(self) -> int:
        """A point in the record, for `wait_for(after=...)`."""
        return len(self.calls)

    def calls_of(self, *names: str) -> list[Call]:
        return [call for call in self.calls if call.name in names]

    async def wait_until(
        self, probe: Callable[[], T | None], *, within: float = 10.0, what: str = "a condition"
    ) -> T:
        """What `probe` returns once it is not None, looking again after every change."""
        try:
            async with asyncio.timeout(within):
                while (found := probe()) is None:
                    await self.next_change()
                return found
        except TimeoutError:
            seen = ", ".join(f"{call.name}:{call.status}" for call in self.calls)
            raise AssertionError(
                f"timed out waiting for {what} within {within}s; calls: {seen}"
            ) from None

    async def wait_for(
        self,
        name: str,
        where: Callable[[Call], bool] | None = None,
        *,
        after: int = 0,
        within: float = 10.0,
    ) -> Call:
        """The first successful call `name` that `where` accepts, made already or later;
        `after` skips the calls recorded before `mark()` returned it."""

        def probe() -> Call | None:
            calls = self.calls[after:]
            return next((c for c in calls if c.name == name and c.ok and _accepts(where, c)), None)

        return await self.wait_until(probe, within=within, what=f"a successful {name}")


def _accepts(where: Callable[[Call], bool] | None, call: Call) -> bool:
    return where is None or where(call)
