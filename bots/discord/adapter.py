"""The Discord adapter: discord.py in front of the platform-neutral ToonService.

It builds the client (bots/discord/client.py) with the commands (commands.py), the toon's
persistent controls (controls.py) and DM photos (requests.py), logs in with network failures
retried, connects, and fetches photos for the service by the URL stored with a job. A request
is acknowledged ephemerally, so refusals, the place in the queue and progress stay private to
the requester; only the finished toon is posted for everyone, with controls to change or
delete it (replies.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import discord

from bots.config import Settings
from bots.discord.client import PLATFORM, ToonifyClient
from bots.discord.commands import application_commands
from bots.discord.controls import CONTROLS
from bots.discord.replies import ChannelReply
from bots.discord.requests import reply_for, toonify_dm
from bots.service import ToonService
from bots.startup import StartupFault, required_token, until_reachable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 60.0
START_HINT = "check the network, or discord.api_base_url and discord.gateway_url"
TOKEN_FIX = "set TOONIFY_DISCORD_TOKEN to the token of the Developer Portal (Bot > Reset Token)"


class DiscordAdapter:
    """The Discord side of the bot: build with the config and the service, then start/stop."""

    def __init__(self, config: Settings, service: ToonService) -> None:
        self._token = required_token(config.discord.token, "Discord", TOKEN_FIX)
        self._service = service
        self.client = ToonifyClient(config, service, on_dm=toonify_dm)
        for command in application_commands(service.styles):
            self.client.tree.add_command(command)
        self.client.add_dynamic_items(*CONTROLS)
        self._running: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Log in and sync the commands (network failures retried), then connect; discord.py
        keeps the gateway up afterwards.

        A rejected token ends the start. A gateway still unreachable after CONNECT_TIMEOUT is
        only logged: discord.py keeps trying in the background.
        """
        self._service.register(PLATFORM, self)
        await until_reachable(
            self._login,
            what="Discord",
            transient=(aiohttp.ClientError, OSError, TimeoutError, discord.DiscordServerError),
            hint=START_HINT,
            between=self._close_http,
        )
        connected = asyncio.create_task(self.client.connected.wait())
        self._running = asyncio.create_task(self.client.connect(), name="discord-client")
        try:
            done, _ = await asyncio.wait(
                {self._running, connected},
                timeout=CONNECT_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            connected.cancel()
        if self._running in done:
            error = self._running.exception()
            raise StartupFault(f"the Discord gateway refused the bot: {error}")
        if not done:
            log.warning("no Discord gateway after %.0f s; still trying", CONNECT_TIMEOUT)

    async def _login(self) -> None:
        try:
            await self.client.login(self._token)
        except discord.LoginFailure as exc:
            raise StartupFault(f"Discord rejected the bot token ({exc}): {TOKEN_FIX}") from exc

    async def _close_http(self) -> None:
        """discord.py opens a new HTTP session at each login: close the one that failed (and
        let the next login make a new connection pool, as the closed session took its own)."""
        await self.client.http.close()
        self.client.http.connector = discord.utils.MISSING

    async def stop(self) -> None:
        """Also after a start that failed or was cut short: every session is closed."""
        await self.client.close()
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)

    # -- JobSource: the service works from the stored reference ------------------------------

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        return await self.client.downloads.fetch(ref["url"])

    def reply_for(self, ref: dict[str, Any]) -> ChannelReply:
        return reply_for(self.client, ref)
