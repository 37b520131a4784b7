"""What every chat adapter is to the rest of the bot, and the little both of them share.

bots/app.py builds one adapter per enabled platform (bots/telegram/, bots/discord/), starts
and stops it; once started, the adapter is the service's JobSource for its platform. Both
adapters turn a failure of ours into the same reply: an internal error with a short id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol

from bots import texts
from bots.service import JobSource, RefusalKind, Refused

log = logging.getLogger(__name__)


class Adapter(JobSource, Protocol):
    """A chat platform's side of the bot."""

    async def start(self) -> None:
        """Connect, register with the service as its platform's JobSource, take requests."""

    async def stop(self) -> None:
        """Also called after a start that failed or was cut short."""


def internal_error(what: str, exc: BaseException) -> Refused:
    """A failure of ours: logged with a short id that the user can quote to an admin."""
    error_id = secrets.token_hex(4)
    log.error("%s failed (error %s)", what, error_id, exc_info=exc)
    return Refused(RefusalKind.INTERNAL, texts.internal_error(error_id), error_id)


@contextlib.contextmanager
def refusing(what: str) -> Iterator[None]:
    """Whatever goes wrong inside comes out as a Refused: the user's own, or an internal
    error of ours (logged under its id) for anything else."""
    try:
        yield
    except Refused:
        raise
    except Exception as exc:
        raise internal_error(what, exc) from None


class Background:
    """Tasks an adapter runs beside its handlers (re-renders, typing, chat actions): kept
    referenced while they run, cancelled when the adapter stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self, work: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
