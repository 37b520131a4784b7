"""The Discord adapter: `/toonify`, the message menu "Toonify" and DM photos in; toons out.

A request's job row is written before its interaction is acknowledged (Discord allows 3 s;
when writing takes longer than ADMIT_BEFORE_ACK, the acknowledgement goes first). It is
acknowledged ephemerally, so refusals, the place in the queue and progress stay private to the
requester; only the finished toon is posted for everyone, with buttons to change or delete
it. The buttons carry the result id and the requester in their custom ids
(`discord.ui.DynamicItem`), so they survive a restart: Delete keeps working, re-renders then
say the toon is too old (its faces were in memory).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import discord
import yarl
from discord import app_commands
from PIL import Image

from bots import texts
from bots.config import DiscordSettings, Settings
from bots.service import RefusalKind, Refused, Requester, Toon, ToonService, Upload
from bots.startup import StartupFault, until_reachable

log = logging.getLogger(__name__)

PLATFORM = "discord"
DISCORD_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=60)
CONNECT_TIMEOUT = 60.0
# Seconds the job row may take before the interaction is acknowledged first (Discord: 3 s).
ADMIT_BEFORE_ACK = 1.5
START_HINT = "check the network, or discord.api_base_url and discord.gateway_url"
TOKEN_FIX = "set TOONIFY_DISCORD_TOKEN to the token of the Developer Portal (Bot > Reset Token)"
DOWNLOAD_CHUNK = 64 * 1024
MESSAGE_LIMIT = 2000
SHRUNK_QUALITY = 90
PING_USERS = discord.AllowedMentions(everyone=False, roles=False, users=True)

_BUTTON_ID = r"toon:(?P<action>less|more|delete):(?P<result>[^:]+):(?P<owner>\d+)"
_SELECT_ID = r"toon:style:(?P<result>[^:]+):(?P<owner>\d+)"
_BUTTONS = {
    "less": (texts.LESS_TOON, discord.ButtonStyle.secondary),
    "more": (texts.MORE_TOON, discord.ButtonStyle.primary),
    "delete": (texts.DISCORD_DELETE, discord.ButtonStyle.danger),
}


def use_endpoints(settings: DiscordSettings) -> None:
    """Point discord.py at the configured REST base and gateway (class attributes: global)."""
    discord.http.Route.BASE = settings.api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


def download_origins(settings: DiscordSettings) -> frozenset[tuple[str, str, int | None]]:
    """Attachments are fetched only from Discord's CDN or from the configured API host."""
    api = yarl.URL(settings.api_base_url)
    origins = {(api.scheme, api.host or "", api.port)}
    origins.update(("https", host, 443) for host in DISCORD_CDN_HOSTS)
    return frozenset(origins)


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def internal_error(what: str, exc: BaseException) -> Refused:
    """A failure of ours: logged with a short id that the user can quote to an admin."""
    error_id = secrets.token_hex(4)
    log.error("discord %s failed (error %s)", what, error_id, exc_info=exc)
    return Refused(RefusalKind.INTERNAL, texts.internal_error(error_id), error_id)


def shrink_jpeg(image: bytes, limit: int) -> bytes:
    """Scale a JPEG down until it fits in `limit` bytes (Discord refuses bigger uploads)."""
    size = len(image)
    with Image.open(io.BytesIO(image)) as opened:
        photo = opened.convert("RGB")
    while size > limit and min(photo.size) > 1:
        scale = math.sqrt(limit / size) * 0.9
        photo = photo.resize(
            (max(1, int(photo.width * scale)), max(1, int(photo.height * scale))),
            Image.Resampling.LANCZOS,
        )
        out = io.BytesIO()
        photo.save(out, "JPEG", quality=SHRUNK_QUALITY)
        image, size = out.getvalue(), out.tell()
    return image


async def _file(toon: Toon, limit: int) -> discord.File:
    image = toon.image
    if len(image) > limit:
        image = await asyncio.to_thread(shrink_jpeg, image, limit)
    return discord.File(io.BytesIO(image), filename=toon.filename)


def _caption(toon: Toon, owner_id: int, *, in_server: bool) -> str:
    """In a server the requester is named, since anyone may see (and press) the result."""
    return _clip(f"<@{owner_id}> {toon.caption}" if in_server else toon.caption)


def _pick_attachment(attachments: list[discord.Attachment]) -> discord.Attachment | None:
    """The first image; else the first file, so that the refusal names what is wrong."""
    for attachment in attachments:
        if (attachment.content_type or "").startswith("image/"):
            return attachment
    return attachments[0] if attachments else None


def _bot(interaction: discord.Interaction) -> DiscordBot:
    return cast(DiscordBot, interaction.client)


# ---------------------------------------------------------------------------- result controls


@dataclass(frozen=True)
class Controls:
    """The buttons and style menu under a toon, rebuilt from the message when one is used."""

    result_id: str
    owner_id: int
    styles: tuple[tuple[str, str], ...]
    style: str
    can_less: bool
    can_more: bool

    @classmethod
    def of(cls, toon: Toon, owner_id: int) -> Controls:
        return cls(
            toon.result_id,
            owner_id,
            tuple(toon.styles),
            toon.style,
            toon.can_less,
            toon.can_more,
        )

    @classmethod
    def from_message(cls, message: discord.Message) -> Controls | None:
        found: dict[str, Any] = {"styles": (), "style": "", "can_less": False, "can_more": False}
        for row in message.components:
            for item in getattr(row, "children", ()):
                custom_id = getattr(item, "custom_id", None) or ""
                if match := re.fullmatch(_BUTTON_ID, custom_id):
                    found.update(result_id=match["result"], owner_id=int(match["owner"]))
                    found[f"can_{match['action']}"] = not item.disabled
                elif re.fullmatch(_SELECT_ID, custom_id):
                    found["styles"] = tuple((o.value, o.label) for o in item.options)
                    found["style"] = next((o.value for o in item.options if o.default), "")
        if "result_id" not in found:
            return None
        return cls(
            found["result_id"],
            found["owner_id"],
            found["styles"],
            found["style"],
            found["can_less"],
            found["can_more"],
        )

    def view(self, *, busy: bool = False) -> discord.ui.View:
        """`busy` disables everything while a re-render runs."""
        view = discord.ui.View(timeout=None)
        view.add_item(ToonButton("less", self.result_id, self.owner_id, busy or not self.can_less))
        view.add_item(ToonButton("more", self.result_id, self.owner_id, busy or not self.can_more))
        view.add_item(ToonButton("delete", self.result_id, self.owner_id, busy))
        if len(self.styles) > 1:
            view.add_item(StyleSelect(self.result_id, self.owner_id, self.styles, self.style, busy))
        return view


class ToonButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=_BUTTON_ID):
    """Less toon, More toon, Delete."""

    def __init__(self, action: str, result_id: str, owner_id: int, disabled: bool = False) -> None:
        label, style = _BUTTONS[action]
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            label=label,
            style=style,
            custom_id=f"toon:{action}:{result_id}:{owner_id}",
            disabled=disabled,
            row=0,
        )
        super().__init__(button)
        self.action, self.result_id, self.owner_id = action, result_id, owner_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> ToonButton:
        return cls(match["action"], match["result"], int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _bot(interaction).on_toon_button(
            interaction, self.action, self.result_id, self.owner_id
        )


class StyleSelect(discord.ui.DynamicItem[discord.ui.Select[discord.ui.View]], template=_SELECT_ID):
    """Render the same faces in another style."""

    def __init__(
        self,
        result_id: str,
        owner_id: int,
        styles: tuple[tuple[str, str], ...],
        current: str,
        disabled: bool = False,
    ) -> None:
        options = [
            discord.SelectOption(label=label or name, value=name, default=name == current)
            for name, label in styles[:25]
        ]
        select: discord.ui.Select[discord.ui.View] = discord.ui.Select(
            custom_id=f"toon:style:{result_id}:{owner_id}",
            placeholder=texts.DISCORD_STYLE_PLACEHOLDER,
            options=options,
            disabled=disabled,
            row=1,
        )
        super().__init__(select)
        self.result_id, self.owner_id = result_id, owner_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> StyleSelect:
        options = cast(discord.ui.Select[discord.ui.View], item).options
        styles = tuple((o.value, o.label) for o in options)
        current = next((o.value for o in options if o.default), "")
        return cls(match["result"], int(match["owner"]), styles, current)

    async def callback(self, interaction: discord.Interaction) -> None:
        [style] = self.item.values
        await _bot(interaction).on_toon_button(
            interaction, f"style:{style}", self.result_id, self.owner_id
        )


# ---------------------------------------------------------------------------- replies


class _InteractionReply:
    """Answers `/toonify` and the message menu: a private status, then a public toon.

    A refusal at admission is the interaction's (ephemeral) response. An admitted request is
    acknowledged with an ephemeral deferral, which is then edited with the place in the queue
    (always before the toon can arrive: a followup sent while the deferral is still
    "thinking" would replace it and stay private) and progress, and removed once the toon is
    posted as a public followup. Interaction tokens last 15 minutes; after that, or when the
    acknowledgement came too late, answers go through the channel instead.
    """

    def __init__(self, bot: DiscordBot, interaction: discord.Interaction) -> None:
        self._bot = bot
        self._interaction = interaction
        self._owner_id = interaction.user.id
        self._lock = asyncio.Lock()
        self._finished = False
        self._acknowledged = asyncio.Event()
        self._lost = False  # the interaction could not be acknowledged in time

    def _channel_reply(self) -> _ChannelReply:
        channel_id = self._interaction.channel_id or 0
        private = self._interaction.guild_id is None
        return _ChannelReply(self._bot, channel_id, self._owner_id, reference=None, private=private)

    def _gone(self) -> bool:
        return self._lost or self._interaction.is_expired()

    async def acknowledge(self) -> None:
        """The deferred ephemeral response ("thinking..."); the status from then on."""
        if self._acknowledged.is_set():
            return
        try:
            await self._interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as exc:
            log.warning("interaction not acknowledged (%s); answering in the channel", exc)
            self._lost = True
        self._acknowledged.set()

    async def queued(self, text: str) -> None:
        await self.progress(text)

    async def progress(self, text: str) -> None:
        await self._acknowledged.wait()
        async with self._lock:
            if not self._finished and not self._gone():
                await self._interaction.edit_original_response(content=_clip(text))

    async def deliver(self, toon: Toon) -> None:
        """Returns once Discord has the toon; raises when it refused it for good."""
        await self._acknowledged.wait()
        async with self._lock:
            self._finished = True
            if self._gone():
                await self._channel_reply().deliver(toon)
                return
            await self._interaction.followup.send(
                _caption(toon, self._owner_id, in_server=self._interaction.guild_id is not None),
                file=await _file(toon, self._interaction.filesize_limit),
                view=Controls.of(toon, self._owner_id).view(),
                allowed_mentions=PING_USERS,
                wait=True,
            )

    async def delivered(self) -> None:
        """The private status makes way for the public toon."""
        async with self._lock:
            if not self._gone():
                await self._interaction.delete_original_response()

    async def fail(self, error: Refused) -> None:
        async with self._lock:
            self._finished = True
            if not self._acknowledged.is_set():  # refused at admission
                await self._interaction.response.send_message(_clip(error.text), ephemeral=True)
                return
            if self._gone():
                await self._channel_reply().fail(error)
                return
            await self._interaction.edit_original_response(content=_clip(error.text))


class _ChannelReply:
    """Answers in a channel: photos sent by DM, and jobs resumed after a restart.

    In a DM a status message is edited in place. In a server channel (a resumed slash
    command) only the toon is posted, and a refusal goes to the requester's DMs instead.
    """

    def __init__(
        self,
        bot: DiscordBot,
        channel_id: int,
        owner_id: int,
        *,
        reference: int | None,
        private: bool,
    ) -> None:
        self._bot = bot
        self._channel = bot.get_partial_messageable(channel_id)
        self._owner_id = owner_id
        self._private = private
        self._reference = (
            discord.MessageReference(
                message_id=reference, channel_id=channel_id, fail_if_not_exists=False
            )
            if reference is not None
            else None
        )
        self._status: discord.Message | None = None
        self._lock = asyncio.Lock()
        self._finished = False
        self._typing: asyncio.Task[None] | None = None

    def _replying(self) -> dict[str, Any]:
        return {"reference": self._reference} if self._reference is not None else {}

    def working(self) -> None:
        """Show the bot typing while the photo is fetched and prepared."""
        if self._typing is None:
            self._typing = self._bot.in_background(self._type())

    async def _type(self) -> None:
        async with self._channel.typing():
            await asyncio.Event().wait()  # until cancelled by the first news

    def _news(self) -> None:
        if self._typing is not None:
            self._typing.cancel()

    async def queued(self, text: str) -> None:
        self._news()
        await self.progress(text)

    async def progress(self, text: str) -> None:
        if not self._private:
            return
        async with self._lock:
            if self._finished:
                return
            if self._status is None:
                self._status = await self._channel.send(_clip(text), **self._replying())
            else:
                await self._status.edit(content=_clip(text))

    async def deliver(self, toon: Toon) -> None:
        async with self._lock:
            self._finished = True
            await self._channel.send(
                _caption(toon, self._owner_id, in_server=not self._private),
                file=await _file(toon, discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES),
                view=Controls.of(toon, self._owner_id).view(),
                allowed_mentions=PING_USERS,
                **self._replying(),
            )

    async def delivered(self) -> None:
        async with self._lock:
            if self._status is not None:
                await self._status.delete()

    async def fail(self, error: Refused) -> None:
        self._news()
        async with self._lock:
            self._finished = True
            if self._status is not None:
                await self._status.edit(content=_clip(error.text))
            elif self._private:
                await self._channel.send(_clip(error.text), **self._replying())
            else:
                dm = await self._bot.create_dm(discord.Object(self._owner_id))
                await dm.send(_clip(error.text))


class _RerenderReply:
    """Answers a button or the style menu by editing the toon's message in place."""

    def __init__(self, interaction: discord.Interaction, controls: Controls | None) -> None:
        self._interaction = interaction
        self._controls = controls

    async def progress(self, text: str) -> None:
        """Re-renders are short; the disabled buttons already say one is running."""

    async def deliver(self, toon: Toon) -> None:
        owner_id = self._interaction.user.id
        try:
            await self._interaction.edit_original_response(
                content=_caption(toon, owner_id, in_server=self._interaction.guild_id is not None),
                attachments=[await _file(toon, self._interaction.filesize_limit)],
                view=Controls.of(toon, owner_id).view(),
            )
        except discord.HTTPException as exc:
            await self.fail(internal_error("re-render delivery", exc))

    async def fail(self, error: Refused) -> None:
        """Buttons usable again, and a note only the requester sees."""
        if self._controls is not None:
            await self._interaction.edit_original_response(view=self._controls.view())
        await self._interaction.followup.send(_clip(error.text), ephemeral=True)


# ---------------------------------------------------------------------------- the client


class DiscordBot(discord.Client):
    """The discord.py client for toonify: commands, DMs and restart-safe replies."""

    def __init__(self, config: Settings, service: ToonService) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.dm_messages = True
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self._config = config
        self._settings = config.discord
        self._service = service
        self._origins = download_origins(config.discord)
        self._session: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.tree = app_commands.CommandTree(self)
        self.tree.error(self._on_command_error)
        self._add_commands()
        service.register(PLATFORM, self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def login(self, token: str) -> None:
        use_endpoints(self._settings)
        await super().login(token)

    async def setup_hook(self) -> None:
        """Runs at every login attempt (bots.startup retries them)."""
        self._session = self._session or aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT)
        self.add_dynamic_items(ToonButton, StyleSelect)
        await self._sync_commands()

    async def on_connect(self) -> None:
        self.connected.set()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await super().close()
        if self._session is not None:
            await self._session.close()

    def in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task that closing the client cancels."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _sync_commands(self) -> None:
        """Globally, or only to the configured servers (instant updates, no global copies)."""
        if not self._settings.servers:
            await self.tree.sync()
            return
        for server in self._settings.servers:
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

    # -- commands ----------------------------------------------------------------------------

    def _add_commands(self) -> None:
        styles = self._config.styles
        style_choices = [
            app_commands.Choice(name=s.label or name, value=name) for name, s in styles.items()
        ][:25]
        strengths = sorted({r for s in styles.values() for r in s.strengths})
        strength_choices = [app_commands.Choice(name=str(r), value=r) for r in strengths][:25]

        @app_commands.command(name="toonify", description=texts.DISCORD_TOONIFY)
        @app_commands.describe(
            image=texts.DISCORD_IMAGE, style=texts.DISCORD_STYLE, strength=texts.DISCORD_STRENGTH
        )
        @app_commands.choices(style=style_choices, strength=strength_choices)
        async def toonify(
            interaction: discord.Interaction,
            image: discord.Attachment,
            style: str | None = None,
            strength: int | None = None,
        ) -> None:
            await self._toonify(interaction, image, style, strength, source=None)

        async def toonify_message(
            interaction: discord.Interaction, message: discord.Message
        ) -> None:
            attachment = _pick_attachment(message.attachments)
            await self._toonify(interaction, attachment, None, None, source=message)

        self.tree.add_command(toonify)
        self.tree.add_command(
            app_commands.ContextMenu(name=texts.DISCORD_MENU, callback=toonify_message)
        )
        self.tree.add_command(self._admin_commands())

    def _admin_commands(self) -> app_commands.Group:
        admin = app_commands.Group(
            name="toonify-admin",
            description=texts.DISCORD_ADMIN,
            guild_only=True,
            default_permissions=discord.Permissions(manage_guild=True),
        )

        @admin.command(name="quota", description=texts.DISCORD_ADMIN_QUOTA)
        @app_commands.describe(user=texts.DISCORD_ADMIN_USER, daily=texts.DISCORD_ADMIN_DAILY)
        async def quota(interaction: discord.Interaction, user: discord.User, daily: str) -> None:
            await self._admin(interaction, "quota", f"{PLATFORM}:{user.id}", daily)

        @admin.command(name="server-quota", description=texts.DISCORD_ADMIN_SERVER_QUOTA)
        @app_commands.describe(daily=texts.DISCORD_ADMIN_SERVER_DAILY)
        async def server_quota(interaction: discord.Interaction, daily: str) -> None:
            await self._server_quota(interaction, daily)

        @admin.command(name="ban", description=texts.DISCORD_ADMIN_BAN)
        @app_commands.describe(user=texts.DISCORD_ADMIN_USER)
        async def ban(interaction: discord.Interaction, user: discord.User) -> None:
            await self._admin(interaction, "ban", f"{PLATFORM}:{user.id}", None)

        @admin.command(name="unban", description=texts.DISCORD_ADMIN_UNBAN)
        @app_commands.describe(user=texts.DISCORD_ADMIN_USER)
        async def unban(interaction: discord.Interaction, user: discord.User) -> None:
            await self._admin(interaction, "unban", f"{PLATFORM}:{user.id}", None)

        @admin.command(name="stats", description=texts.DISCORD_ADMIN_STATS)
        async def stats(interaction: discord.Interaction) -> None:
            await self._admin(interaction, "stats", None, None)

        return admin

    # -- requests ----------------------------------------------------------------------------

    def _requester(
        self, user: discord.abc.User, guild_id: int | None, *, is_admin: bool | None = None
    ) -> Requester:
        return Requester(
            PLATFORM,
            str(user.id),
            user.display_name,
            group_id=str(guild_id) if guild_id is not None else None,
            is_admin=user.id in self._settings.admins if is_admin is None else is_admin,
        )

    def _check_options(self, style: str | None, strength: int | None) -> None:
        info = self._config.styles[style or self._config.style]
        if strength is not None and strength not in info.strengths:
            label = info.label or style or self._config.style
            raise Refused(
                RefusalKind.BAD_INPUT, texts.bad_strength(strength, label, info.strengths)
            )

    async def _toonify(
        self,
        interaction: discord.Interaction,
        attachment: discord.Attachment | None,
        style: str | None,
        strength: int | None,
        *,
        source: discord.Message | None,
    ) -> None:
        """Admit, then acknowledge: a crash in between leaves a job row that is resumed."""
        reply = _InteractionReply(self, interaction)
        try:
            if attachment is None:
                raise Refused(RefusalKind.NOT_IMAGE, texts.DISCORD_NO_IMAGE)
            self._check_options(style, strength)
            ref = self._ref(interaction.user, interaction.channel_id, interaction.guild_id)
            ref.update(url=attachment.url, message_id=str(source.id) if source else None)
            who = self._requester(interaction.user, interaction.guild_id)
            key = f"{PLATFORM}:interaction:{interaction.id}"
            admission = asyncio.ensure_future(
                self._admit(who, attachment, reply, ref, key, style, strength)
            )
            if not (await asyncio.wait({admission}, timeout=ADMIT_BEFORE_ACK))[0]:
                await reply.acknowledge()  # the row is slow to come: keep the interaction
            await admission
        except Refused as refused:
            await reply.fail(refused)
            return
        await reply.acknowledge()

    async def on_message(self, message: discord.Message) -> None:
        """A photo sent in a DM is toonified; anything else there gets the help text."""
        if message.author.bot or message.guild is not None:
            return
        attachment = _pick_attachment(message.attachments)
        if attachment is None:
            await message.channel.send(texts.DISCORD_HELP)
            return
        reply = _ChannelReply(
            self, message.channel.id, message.author.id, reference=message.id, private=True
        )
        ref = self._ref(message.author, message.channel.id, None)
        ref.update(url=attachment.url, message_id=str(message.id))
        who = self._requester(message.author, None)
        key = f"{PLATFORM}:message:{message.id}"
        try:
            await self._admit(who, attachment, reply, ref, key, None, None)
        except Refused as refused:
            await reply.fail(refused)
            return
        reply.working()

    @staticmethod
    def _ref(
        user: discord.abc.User, channel_id: int | None, guild_id: int | None
    ) -> dict[str, Any]:
        """Enough to answer after a restart; no token, no photo (only its Discord URL)."""
        return {
            "user_id": str(user.id),
            "channel_id": str(channel_id),
            "guild_id": str(guild_id) if guild_id is not None else None,
        }

    async def _admit(
        self,
        who: Requester,
        attachment: discord.Attachment,
        reply: _InteractionReply | _ChannelReply,
        ref: dict[str, Any],
        key: str,
        style: str | None,
        strength: int | None,
    ) -> None:
        """The service judges what Discord says about the file and writes the job row."""
        upload = Upload(attachment.size, attachment.content_type, attachment.filename)
        try:
            await self._service.admit(
                who, upload, reply, ref=ref, key=key, style=style, strength=strength
            )
        except Refused:
            raise
        except Exception as exc:
            raise internal_error("toonify", exc) from None

    async def _download(self, url: str) -> bytes:
        """Fetch an attachment from an allowed host, refusing it once past the size limit."""
        parsed = yarl.URL(url)
        if (parsed.scheme, parsed.host or "", parsed.port) not in self._origins:
            log.warning("refusing to download an attachment from %s", parsed.host)
            raise Refused(RefusalKind.RESEND, texts.DISCORD_DOWNLOAD_FAILED)
        if self._session is None:
            raise RuntimeError("the bot has not started")
        limit = self._config.limits.max_bytes
        data = bytearray()
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise Refused(RefusalKind.RESEND, texts.DISCORD_DOWNLOAD_FAILED)
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                    data += chunk
                    if len(data) > limit:
                        raise Refused(RefusalKind.TOO_LARGE, texts.too_large(limit))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("attachment download failed: %s", type(exc).__name__)
            raise Refused(RefusalKind.RESEND, texts.DISCORD_DOWNLOAD_FAILED) from None
        return bytes(data)

    # -- buttons -----------------------------------------------------------------------------

    async def on_toon_button(
        self, interaction: discord.Interaction, change: str, result_id: str, owner_id: int
    ) -> None:
        """Less, More, a style, or Delete; only the requester may use them."""
        if interaction.user.id != owner_id:
            text = texts.DISCORD_DELETE_NOT_YOURS if change == "delete" else texts.NOT_YOURS
            await interaction.response.send_message(text, ephemeral=True)
            return
        if change == "delete":
            await interaction.response.defer()
            await interaction.delete_original_response()
            return
        controls = Controls.from_message(interaction.message) if interaction.message else None
        if controls is None:
            await interaction.response.defer()
        else:
            await interaction.response.edit_message(view=controls.view(busy=True))
        who = self._requester(interaction.user, interaction.guild_id)
        reply = _RerenderReply(interaction, controls)
        try:
            await self._service.rerender(who, result_id, reply, change=change)
        except Exception as exc:
            await reply.fail(exc if isinstance(exc, Refused) else internal_error("re-render", exc))

    # -- admin -------------------------------------------------------------------------------

    async def _admin(
        self, interaction: discord.Interaction, action: str, target: str | None, value: str | None
    ) -> None:
        """Obeyed for the bot admins of `discord.admins` only, whoever can see the command."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        who = self._requester(interaction.user, interaction.guild_id)
        await self._answer_admin(
            interaction, action, self._service.admin(who, action, target, value)
        )

    async def _server_quota(self, interaction: discord.Interaction, daily: str) -> None:
        """A server's default quota: bot admins, or that server's managers."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        who = self._requester(interaction.user, interaction.guild_id)
        if interaction.guild_id is None or not (
            who.is_admin or interaction.permissions.manage_guild
        ):
            await interaction.edit_original_response(content=texts.DISCORD_NOT_MANAGER)
            return
        answer = self._service.set_group_quota(who, str(interaction.guild_id), daily)
        await self._answer_admin(interaction, "server-quota", answer)

    @staticmethod
    async def _answer_admin(
        interaction: discord.Interaction, action: str, answer: Awaitable[str]
    ) -> None:
        try:
            text = await answer
        except Refused as refused:
            text = refused.text
        except Exception as exc:
            text = internal_error(f"admin {action}", exc).text
        await interaction.edit_original_response(content=_clip(text))

    async def _on_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        text = internal_error("command", error).text
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not report a command error to the user")

    # -- the service works from the stored reference (bots.service.JobSource) --------------

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        return await self._download(ref["url"])

    def reply_for(self, ref: dict[str, Any]) -> _ChannelReply:
        message_id = ref.get("message_id")
        return _ChannelReply(
            self,
            int(ref["channel_id"]),
            int(ref["user_id"]),
            reference=int(message_id) if message_id else None,
            private=ref.get("guild_id") is None,
        )


class DiscordAdapter:
    """What bots/app.py starts and stops: the client, logged in and connected once started."""

    def __init__(self, config: Settings, service: ToonService) -> None:
        token = config.discord.token
        if token is None or not token.get_secret_value().strip():
            raise StartupFault(f"the Discord token is empty: {TOKEN_FIX}")
        self._token = token.get_secret_value().strip()
        self.client = DiscordBot(config, service)
        self._running: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Log in and sync the commands (network failures retried), then connect; discord.py
        keeps the gateway up afterwards.

        A rejected token ends the start. A gateway still unreachable after CONNECT_TIMEOUT is
        only logged: discord.py keeps trying in the background.
        """
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
