"""Receiving Telegram updates so that none is confirmed before its request was admitted.

Telegram forgets an update once the bot confirms it: the next getUpdates call with a higher
offset, or a 200 answer to the webhook POST. python-telegram-bot 22's Updater confirms an
update as soon as it is queued, before any handler ran (`Updater._start_polling` moves its
offset past every fetched update, and its webhook handler answers right after queueing), and
it has no hook to hold the offset back. So the bot receives updates here and hands each one
to `Application.process_update`, whose handlers return once the request is admitted (its
job row written, or its refusal sent); only then is the update confirmed, so a crash before
that makes Telegram deliver it again. Handlers never wait for downloads, preparation or
inference, so one slow request never holds up the others for long.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from telegram import Update
from telegram.error import NetworkError, TelegramError
from telegram.ext import Application, ContextTypes, ExtBot, JobQueue

log = logging.getLogger(__name__)

# Seconds Telegram holds a getUpdates request open when there is nothing new (long polling).
POLL_TIMEOUT = 10
# While an update is still being handled its offset cannot move on; poll again after this
# many seconds at the latest, to see the updates that came after it.
HELD_POLL_INTERVAL = 1.0
# Seconds the last confirmation at shutdown may take; without it updates come again (and
# are recognised as duplicates by their request key).
CONFIRM_TIMEOUT = 1.0
ERROR_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

Context = ContextTypes.DEFAULT_TYPE
# The Application that Application.builder() builds with a rate limiter (whose per-call
# arguments are ints), otherwise with the default types.
TelegramApp = Application[
    ExtBot[int], Context, dict[Any, Any], dict[Any, Any], dict[Any, Any], JobQueue[Context]
]


async def _handle(app: TelegramApp, update: Update) -> None:
    try:
        await app.process_update(update)
    except Exception:  # process_update reports handler errors itself; this is a bug of ours
        log.exception("update %d could not be processed", update.update_id)


class Poller:
    """Long polling that confirms an update only once its handler has returned."""

    def __init__(self, app: TelegramApp, allowed_updates: Sequence[str]) -> None:
        self._app = app
        self._allowed = list(allowed_updates)
        self._handling: dict[int, asyncio.Task[None]] = {}
        self._next = 0  # the first update id not fetched yet
        self._task: asyncio.Task[None] | None = None

    @property
    def _offset(self) -> int:
        """Telegram forgets every update below this: all of them are handled."""
        return min(self._handling, default=self._next)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="telegram-poller")

    async def stop(self) -> None:
        """Stop fetching, let the updates in hand be admitted, then confirm them."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._handling:
            await asyncio.gather(*self._handling.values(), return_exceptions=True)
        if self._next:
            try:
                async with asyncio.timeout(CONFIRM_TIMEOUT):
                    await self._app.bot.get_updates(offset=self._next, timeout=0, limit=1)
            except (TimeoutError, TelegramError) as exc:
                log.info("last updates not confirmed (%s); they come again after the start", exc)

    async def _poll(self) -> None:
        failures = 0
        while True:
            try:
                updates = await self._app.bot.get_updates(
                    offset=self._offset,
                    timeout=0 if self._handling else POLL_TIMEOUT,
                    allowed_updates=self._allowed,
                )
            except TelegramError as exc:
                delay = ERROR_DELAYS[min(failures, len(ERROR_DELAYS) - 1)]
                failures += 1
                kind = "network error" if isinstance(exc, NetworkError) else "error"
                log.warning("getUpdates %s (%s); polling again in %.0f s", kind, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            fresh = [update for update in updates if update.update_id >= self._next]
            for update in fresh:
                self._begin(update)
            if self._handling and not fresh:
                await asyncio.wait(
                    set(self._handling.values()),
                    timeout=HELD_POLL_INTERVAL,
                    return_when=asyncio.FIRST_COMPLETED,
                )

    def _begin(self, update: Update) -> None:
        ident = update.update_id
        task = asyncio.create_task(_handle(self._app, update), name=f"telegram-update-{ident}")
        self._handling[ident] = task
        task.add_done_callback(lambda _: self._handling.pop(ident, None))
        self._next = ident + 1


class WebhookServer:
    """Telegram's webhook POSTs, answered once the update's handler has returned."""

    def __init__(self, app: TelegramApp, secret: str, path: str) -> None:
        self._app = app
        self._secret = secret.encode()
        self._path = "/" + path.lstrip("/")
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        server = web.Application()
        server.router.add_post(self._path, self._on_update)
        self._runner = web.AppRunner(server, access_log=None, shutdown_timeout=CONFIRM_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _on_update(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return web.Response(status=403)
        try:
            update = Update.de_json(await request.json(), self._app.bot)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("webhook: an update that cannot be read (%s)", exc)
            return web.Response(status=400)
        await _handle(self._app, update)
        return web.Response()
