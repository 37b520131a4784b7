"""Starting against services that may not be reachable yet, and the faults that end a start.

Network failures while starting (DNS, refused connections, timeouts, 5xx) are retried for as
long as it takes, with a capped exponential backoff and one log line per attempt; Ctrl-C
interrupts the wait at once. What retrying cannot fix (a rejected token, a missing model) is a
StartupFault, whose message is the one line the operator sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import SecretStr

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY = 1.0
MAX_DELAY = 60.0


class StartupFault(Exception):
    """A fault only the operator can fix; str() says what and how, on one line."""


def required_token(token: SecretStr | None, platform: str, fix: str) -> str:
    """The bot token without stray blanks; a missing or blank one ends the start."""
    value = token.get_secret_value().strip() if token is not None else ""
    if not value:
        raise StartupFault(f"the {platform} token is empty: {fix}")
    return value


async def until_reachable(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    transient: tuple[type[BaseException], ...],
    hint: str,
    between: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """`call()` until it does not fail with a `transient` error; `between` tidies up after
    each failed attempt. `hint` tells the operator what to check."""
    delay, attempt = FIRST_DELAY, 0
    while True:
        attempt += 1
        try:
            return await call()
        except transient as exc:
            log.warning(
                "%s is unreachable (attempt %d: %s: %s); retrying in %.0f s; %s",
                what,
                attempt,
                type(exc).__name__,
                exc,
                delay,
                hint,
            )
            log.debug("attempt %d", attempt, exc_info=exc)
        if between is not None:
            await between()
        await asyncio.sleep(delay)
        delay = min(2 * delay, MAX_DELAY)
