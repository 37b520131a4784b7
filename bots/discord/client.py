"""discord.py's client for toonify, and what the commands, controls and DMs reach through it.

Commands, persistent controls and DM photos get the client from the interaction or the message
(`client_of`); through it they reach the service, who is an admin, the attachment downloads and
the tasks that closing the client cancels. Which commands and controls there are is decided in
bots/discord/adapter.py, so this module depends on none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import discord
from discord import app_commands

from bots.adapter import Background, internal_error
from bots.config import Settings
from bots.discord.net import Downloads, use_endpoints
from bots.service import Requester, ToonService

log = logging.getLogger(__name__)

PLATFORM = "discord"

DirectMessages = Callable[["ToonifyClient", discord.Message], Awaitable[None]]


class ToonifyClient(discord.Client):
    """Guilds and direct messages only: no privileged intent, photos come in DMs and
    interactions. `on_dm` answers a user's direct message."""

    def __init__(self, config: Settings, service: ToonService, on_dm: DirectMessages) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.dm_messages = True
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.settings = config.discord
        self.service = service
        self.downloads = Downloads(config.discord, config.limits.max_bytes)
        self.background = Background()
        self.connected = asyncio.Event()
        self.tree = app_commands.CommandTree(self)
        self.tree.error(self._on_command_error)
        self._on_dm = on_dm

    def requester(self, user: discord.abc.User, guild_id: int | None) -> Requester:
        return Requester(
            PLATFORM,
            str(user.id),
            user.display_name,
            group_id=str(guild_id) if guild_id is not None else None,
            is_admin=user.id in self.settings.admins,
        )

    async def login(self, token: str) -> None:
        use_endpoints(self.settings)
        await super().login(token)

    async def setup_hook(self) -> None:
        """Runs at every login attempt (bots.startup retries them)."""
        self.downloads.open()
        await self._sync_commands()

    async def on_connect(self) -> None:
        self.connected.set()

    async def on_message(self, message: discord.Message) -> None:
        """Only DMs: server messages arrive without their content (no message-content intent)."""
        if not message.author.bot and message.guild is None:
            await self._on_dm(self, message)

    async def close(self) -> None:
        self.background.cancel()
        await super().close()
        await self.downloads.close()

    async def _sync_commands(self) -> None:
        """Globally, or only to the configured servers (instant updates, no global copies)."""
        if not self.settings.servers:
            await self.tree.sync()
            return
        for server in self.settings.servers:
            guild = discord.Object(server)
            self.tree.copy_global_to(guild=guild)
            try:
                await self.tree.sync(guild=guild)
            except discord.HTTPException as exc:
                log.error(
                    "could not sync commands to server %s (is the bot in it?): %s", server, exc
                )
        self.tree.clear_commands(guild=None)
        await self.tree.sync()

    async def _on_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        text = internal_error("a Discord command", error).text
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not report a command error to the user")


def client_of(interaction: discord.Interaction) -> ToonifyClient:
    """The client that received `interaction`: always ours, in this bot."""
    client = interaction.client
    if not isinstance(client, ToonifyClient):
        raise TypeError(f"an interaction of another client: {type(client).__name__}")
    return client
