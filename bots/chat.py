"""What a chat adapter and the service exchange: who asks (`Requester`), what they send
(`Upload`), how the service answers (`Reply`, `JobReply`) and how it reaches the platform again
for a stored job (`JobSource`). Nothing here knows a platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bots.refusals import Refused
from bots.toons import Toon


@dataclass(frozen=True)
class Requester:
    platform: str
    user_id: str
    name: str
    group_id: str | None = None
    is_admin: bool = False


@dataclass(frozen=True)
class Upload:
    size: int | None
    content_type: str | None
    filename: str | None = None


class Reply(Protocol):
    """How a re-render answers."""

    async def progress(self, text: str) -> None: ...

    async def deliver(self, toon: Toon) -> None: ...

    async def fail(self, error: Refused) -> None: ...


class JobReply(Reply, Protocol):
    """How a job answers: `deliver` returns once the platform has the toon and raises when it
    refused it for good (after the adapter's own retries)."""

    async def queued(self, text: str) -> None:
        """The first status: faces found, place in line."""

    async def started(self) -> None:
        """Inference began: the job no longer waits in line (a hint such as a chat action may
        show from now until `deliver` or `fail`)."""

    async def delivered(self) -> None:
        """The job is done: tidy up (status messages); best effort."""


class JobSource(Protocol):
    """What the service needs of an adapter to work from a job's stored chat reference."""

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        """The photo again; Refused for what the user must fix, anything else means gone."""

    def reply_for(self, ref: dict[str, Any]) -> JobReply:
        """A reply to the chat the request came from, for jobs resumed after a restart."""
