"""Talking to Telegram reliably: its flood limits respected and transient network errors retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from telegram.error import BadRequest, NetworkError, TimedOut
from telegram.ext import AIORateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

# Waits before each retry; one more attempt follows the last wait.
RETRY_DELAYS = (0.5, 1.5, 4.0)
# 429s are waited out this many times per request before giving up.
FLOOD_RETRIES = 3


async def retrying(call: Callable[[], Awaitable[T]], *, retry_timeouts: bool = True) -> T:
    """Run `call`, repeating it after connection failures.

    BadRequest is a NetworkError in python-telegram-bot but means the request itself is wrong,
    so it is never repeated. A timeout may hide a request Telegram did carry out: callers that
    must not do it twice (sending a message) pass `retry_timeouts=False`.
    """
    for delay in RETRY_DELAYS:
        try:
            return await call()
        except BadRequest:
            raise
        except TimedOut:
            if not retry_timeouts:
                raise
            log.warning("Telegram timed out, retrying in %.1f s", delay)
        except NetworkError as exc:
            log.warning("Telegram network error, retrying in %.1f s: %s", delay, exc)
        await asyncio.sleep(delay)
    return await call()


class RetryingRateLimiter(AIORateLimiter):
    """Telegram's flood limits (AIORateLimiter: paced sends, 429 retry_after waited out) plus
    retries of every Bot API call that failed on the way, which the library does not do itself.
    """

    def __init__(self) -> None:
        super().__init__(max_retries=FLOOD_RETRIES)

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        limited = super().process_request

        async def attempt() -> bool | dict[str, Any] | list[dict[str, Any]]:
            return await limited(callback, args, kwargs, endpoint, data, rate_limit_args)

        return await retrying(attempt, retry_timeouts=not endpoint.startswith("send"))
