"""The application commands: `/toonify`, the message menu "Toonify", `/quota`, `/forget` and
`/toonify-admin`.

`/toonify` offers the styles and strengths the service renders; `/toonify-admin` is shown by
default only to members who manage the server, and obeyed for the bot admins of
`discord.admins` only (a server's managers may also set that server's default quota).
`/quota` and `/forget` answer privately, as Telegram's do in a private chat. The descriptions
users read come from bots/texts.py, like every other word the bot says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import discord
from discord import app_commands

from bots import texts
from bots.adapter import refusing
from bots.discord.client import PLATFORM, ToonifyClient
from bots.discord.controls import forget_view
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
    quota: app_commands.Command[Any, ..., None] = app_commands.Command(
        name="quota", description=texts.DISCORD_QUOTA, callback=quota_left
    )
    forget: app_commands.Command[Any, ..., None] = app_commands.Command(
        name="forget", description=texts.DISCORD_FORGET, callback=forget_asked
    )
    return [toonify_command(styles), menu, quota, forget, AdminCommands()]


def toonify_command(styles: Mapping[str, StyleInfo]) -> app_commands.Command[Any, ..., None]:
    """`/toonify` with the styles and the toon levels (as many as the style with most) as
    choices; the service turns a level into the chosen style's strength."""
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name="toonify", description=texts.DISCORD_TOONIFY, callback=toonify_slash
    )
    style_choices = [app_commands.Choice(name=s.label, value=name) for name, s in styles.items()]
    levels = max((len(s.strengths) for s in styles.values()), default=1)
    level_choices = [
        app_commands.Choice(name=texts.level_choice(n, levels), value=n)
        for n in range(1, levels + 1)
    ]
    command = app_commands.choices(style=style_choices[:MAX_CHOICES])(command)
    return app_commands.choices(level=level_choices[:MAX_CHOICES])(command)


@app_commands.describe(
    image=texts.DISCORD_IMAGE, style=texts.DISCORD_STYLE, level=texts.DISCORD_LEVEL
)
async def toonify_slash(
    interaction: Interaction,
    image: discord.Attachment,
    style: str | None = None,
    level: int | None = None,
) -> None:
    """Toonify the attached photo; refusals and progress stay private to the requester."""
    await toonify(interaction, image, style, level, source=None)


async def toonify_message(interaction: Interaction, message: discord.Message) -> None:
    """Toonify the first image of someone's message (Apps > Toonify)."""
    await toonify(interaction, pick_attachment(message.attachments), None, None, source=message)


async def quota_left(interaction: Interaction) -> None:
    """Toons left today and when they reset, for the requester's eyes only."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    client = interaction.client
    who = client.requester(interaction.user, interaction.guild_id)
    await _answer(interaction, "a Discord /quota", client.service.quota_text(who))


async def forget_asked(interaction: Interaction) -> None:
    """Ask, privately, before deleting everything stored about the requester."""
    view = forget_view(interaction.user.id)
    await interaction.response.send_message(texts.FORGET_CONFIRM, view=view, ephemeral=True)


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
        await _admin(interaction, "quota", user, daily)

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
        await _answer(interaction, "admin server-quota", said)

    @app_commands.command(description=texts.DISCORD_ADMIN_BAN)
    @app_commands.describe(user=texts.DISCORD_ADMIN_USER)
    async def ban(self, interaction: Interaction, user: discord.User) -> None:
        """Stop a user, on Discord, from using the bot."""
        await _admin(interaction, "ban", user, None)

    @app_commands.command(description=texts.DISCORD_ADMIN_UNBAN)
    @app_commands.describe(user=texts.DISCORD_ADMIN_USER)
    async def unban(self, interaction: Interaction, user: discord.User) -> None:
        """Let a banned user use the bot again."""
        await _admin(interaction, "unban", user, None)

    @app_commands.command(description=texts.DISCORD_ADMIN_STATS)
    async def stats(self, interaction: Interaction) -> None:
        """Usage today and over the last week."""
        await _admin(interaction, "stats", None, None)


async def _admin(
    interaction: Interaction, action: str, user: discord.User | None, value: str | None
) -> None:
    """The service obeys bot admins only; its answer, or refusal, is private. The user is
    named as Discord shows them, even when the bot has never seen them."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    client = interaction.client
    who = client.requester(interaction.user, interaction.guild_id)
    target = f"{PLATFORM}:{user.id}" if user is not None else None
    name = user.display_name if user is not None else None
    said = client.service.admin(who, action, target, value, name=name)
    await _answer(interaction, f"admin {action}", said)


async def _answer(interaction: Interaction, what: str, answer: Awaitable[str]) -> None:
    """The deferred response becomes the answer, or the refusal."""
    try:
        with refusing(what):
            text = await answer
    except Refused as refused:
        text = refused.text
    await interaction.edit_original_response(content=clip(text))
