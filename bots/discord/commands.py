"""The application commands: `/toonify`, the message menu "Toonify" and `/toonify-admin`.

`/toonify` offers the styles and strengths the service renders; `/toonify-admin` is shown by
default only to members who manage the server, and obeyed for the bot admins of
`discord.admins` only (a server's managers may also set that server's default quota). The
descriptions users read come from bots/texts.py, like every other word the bot says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import discord
from discord import app_commands

from bots import texts
from bots.adapter import refusing
from bots.discord.client import PLATFORM, ToonifyClient
from bots.discord.posts import clip
from bots.discord.requests import pick_attachment, toonify
from bots.service import Refused
from inference.pipeline import StyleInfo

Interaction = discord.Interaction[ToonifyClient]
# Discord offers 25 choices per option at most.
MAX_CHOICES = 25


def application_commands(
    styles: Mapping[str, StyleInfo],
) -> list[app_commands.Command[Any, ..., Any] | app_commands.ContextMenu | app_commands.Group]:
    """Everything the command tree syncs, built fresh for each client."""
    menu = app_commands.ContextMenu(name=texts.DISCORD_MENU, callback=toonify_message)
    return [toonify_command(styles), menu, AdminCommands()]


def toonify_command(styles: Mapping[str, StyleInfo]) -> app_commands.Command[Any, ..., None]:
    """`/toonify` with the styles, and every strength of any of them, as choices."""
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name="toonify", description=texts.DISCORD_TOONIFY, callback=toonify_slash
    )
    style_choices = [app_commands.Choice(name=s.label, value=name) for name, s in styles.items()]
    strengths = sorted({r for s in styles.values() for r in s.strengths})
    strength_choices = [app_commands.Choice(name=str(r), value=r) for r in strengths]
    command = app_commands.choices(style=style_choices[:MAX_CHOICES])(command)
    return app_commands.choices(strength=strength_choices[:MAX_CHOICES])(command)


@app_commands.describe(
    image=texts.DISCORD_IMAGE, style=texts.DISCORD_STYLE, strength=texts.DISCORD_STRENGTH
)
async def toonify_slash(
    interaction: Interaction,
    image: discord.Attachment,
    style: str | None = None,
    strength: int | None = None,
) -> None:
    """Toonify the attached photo; refusals and progress stay private to the requester."""
    await toonify(interaction, image, style, strength, source=None)


async def toonify_message(interaction: Interaction, message: discord.Message) -> None:
    """Toonify the first image of someone's message (Apps > Toonify)."""
    await toonify(interaction, pick_attachment(message.attachments), None, None, source=message)


class AdminCommands(
    app_commands.Group,
    name="toonify-admin",
    description=texts.DISCORD_ADMIN,
    guild_only=True,
    default_permissions=discord.Permissions(manage_guild=True),
):
    """Quotas and bans; whoever sees the commands, only the bot admins are obeyed."""

    @app_commands.command(description=texts.DISCORD_ADMIN_QUOTA)
    @app_commands.describe(user=texts.DISCORD_ADMIN_USER, daily=texts.DISCORD_ADMIN_DAILY)
    async def quota(self, interaction: Interaction, user: discord.User, daily: str) -> None:
        """A user's daily toons: a number, unlimited, or the default."""
        await _admin(interaction, "quota", f"{PLATFORM}:{user.id}", daily)

    @app_commands.command(name="server-quota", description=texts.DISCORD_ADMIN_SERVER_QUOTA)
    @app_commands.describe(daily=texts.DISCORD_ADMIN_SERVER_DAILY)
    async def server_quota(self, interaction: Interaction, daily: str) -> None:
        """A server's default quota: its managers may set it as well as the bot admins."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        client = interaction.client
        who = client.requester(interaction.user, interaction.guild_id)
        if interaction.guild_id is None or not (
            who.is_admin or interaction.permissions.manage_guild
        ):
            await interaction.edit_original_response(content=texts.DISCORD_NOT_MANAGER)
            return
        said = client.service.set_group_quota(who, str(interaction.guild_id), daily)
        await _answer(interaction, "server-quota", said)

    @app_commands.command(description=texts.DISCORD_ADMIN_BAN)
    @app_commands.describe(user=texts.DISCORD_ADMIN_USER)
    async def ban(self, interaction: Interaction, user: discord.User) -> None:
        """Stop a user, on Discord, from using the bot."""
        await _admin(interaction, "ban", f"{PLATFORM}:{user.id}", None)

    @app_commands.command(description=texts.DISCORD_ADMIN_UNBAN)
    @app_commands.describe(user=texts.DISCORD_ADMIN_USER)
    async def unban(self, interaction: Interaction, user: discord.User) -> None:
        """Let a banned user use the bot again."""
        await _admin(interaction, "unban", f"{PLATFORM}:{user.id}", None)

    @app_commands.command(description=texts.DISCORD_ADMIN_STATS)
    async def stats(self, interaction: Interaction) -> None:
        """Usage today and over the last week."""
        await _admin(interaction, "stats", None, None)


async def _admin(
    interaction: Interaction, action: str, target: str | None, value: str | None
) -> None:
    """The service obeys bot admins only; its answer, or refusal, is private."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    client = interaction.client
    who = client.requester(interaction.user, interaction.guild_id)
    await _answer(interaction, action, client.service.admin(who, action, target, value))


async def _answer(interaction: Interaction, action: str, answer: Awaitable[str]) -> None:
    try:
        with refusing(f"admin {action}"):
            text = await answer
    except Refused as refused:
        text = refused.text
    await interaction.edit_original_response(content=clip(text))
