"""The Telegram adapter: python-telegram-bot in front of the platform-neutral ToonService.

It builds the library's Application (the configured Bot API server, flood limits and retries:
bots/telegram/net.py), routes updates to bots/telegram/handlers.py, receives them itself so
that each is confirmed only once its request was admitted (bots/telegram/updates.py), and
fetches photos for the service by the file id stored with a job (bots/telegram/requests.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from telegram import BotCommand, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter
from telegram.ext import Application

from bots import texts
from bots.adapter import Background
from bots.config import Settings
from bots.service import ToonService
from bots.startup import StartupFault, required_token, until_reachable
from bots.telegram.handlers import Handlers
from bots.telegram.net import RetryingRateLimiter, retrying
from bots.telegram.replies import Replies, StatusReply
from bots.telegram.requests import PLATFORM, Requests
from bots.telegram.updates import Poller, TelegramApp, WebhookServer

log = logging.getLogger(__name__)

T = TypeVar("T")

ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
START_HINT = "check the network, or telegram.api_base_url"
TOKEN_FIX = "copy the token @BotFather gave you into TOONIFY_TELEGRAM_TOKEN"


class TelegramAdapter:
    """The Telegram side of the bot: build with the config and the service, then start/stop."""

    def __init__(self, config: Settings, service: ToonService) -> None:
        self._config = config.telegram
        self._service = service
        self._background = Background()
        self._poller: Poller | None = None
        self._webhook: WebhookServer | None = None
        self.app: TelegramApp = (
            Application.builder()
            .token(required_token(self._config.token, "Telegram", TOKEN_FIX))
            .base_url(self._config.api_base_url)
            .base_file_url(self._config.file_base_url)
            .rate_limiter(RetryingRateLimiter())
            .concurrent_updates(True)
            .updater(None)
            .build()
        )
        admins = frozenset(self._config.admins)
        replies = Replies(self.app.bot, self._background)
        self._requests = Requests(service, admins, replies, self._background)
        handlers = Handlers(service, self._requests)
        self.app.add_handlers(handlers.routes())
        self.app.add_error_handler(handlers.on_error)

    async def start(self) -> None:
        """Connect, publish the command menu, then receive updates (long polling or webhook)."""
        await self._reach(self.app.initialize)
        commands = [BotCommand(name, description) for name, description in texts.COMMANDS]
        await self._reach(lambda: self.app.bot.set_my_commands(commands))
        self._service.register(PLATFORM, self)
        await self.app.start()
        if self._config.mode == "webhook":
            await self._start_webhook()
        else:
            await self._reach(lambda: self.app.bot.delete_webhook())
            self._poller = Poller(self.app, ALLOWED_UPDATES)
            self._poller.start()

    async def _start_webhook(self) -> None:
        secret = self._config.webhook_secret
        token = secret.get_secret_value() if secret else secrets.token_urlsafe(32)
        self._webhook = WebhookServer(self.app, token, urlsplit(self._config.webhook_url).path)
        await self._webhook.start(self._config.webhook_listen, self._config.webhook_port)
        await self._reach(
            lambda: self.app.bot.set_webhook(
                self._config.webhook_url, secret_token=token, allowed_updates=ALLOWED_UPDATES
            ),
            refused="telegram.webhook_url",
        )

    async def _reach(self, call: Callable[[], Awaitable[T]], refused: str = "the request") -> T:
        """A start-up call to Telegram: network failures retried, a refusal ends the start."""

        async def attempt() -> T:
            try:
                return await call()
            except InvalidToken as exc:
                raise StartupFault(f"Telegram rejected the bot token ({exc}): {TOKEN_FIX}") from exc
            except BadRequest as exc:
                raise StartupFault(f"Telegram refused {refused}: {exc.message}") from exc

        return await until_reachable(
            attempt, what="Telegram", transient=(NetworkError, RetryAfter), hint=START_HINT
        )

    async def stop(self) -> None:
        """Stop receiving (confirming what was admitted), drop background work, disconnect.

        Also after a start that failed or was cut short."""
        if self._poller is not None:
            await self._poller.stop()
        if self._webhook is not None:
            await self._webhook.stop()
        self._background.cancel()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()

    # ---- JobSource: the service works from the stored reference ----------------------------

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        async def download() -> bytes:
            file = await self.app.bot.get_file(str(ref["file_id"]))
            return bytes(await file.download_as_bytearray())

        return await retrying(download)

    def reply_for(self, ref: dict[str, Any]) -> StatusReply:
        return self._requests.reply_for(ref)
