"""A fake Discord gateway and REST API on 127.0.0.1 that the real discord.py client talks to.

It keeps just enough state (users, channels, messages, interactions, synced commands) to
answer the way Discord does, and enforces the rules that bite bots in production: the 3 s
acknowledgement window, one acknowledgement per interaction, a deferred response keeping
its visibility, gateway intents, the commands a member may see, and Discord's size limits.
Every REST call is recorded; tests wait on the record, never on the bot's handlers
(tests/fakes/server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import mimetypes
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import discord
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from PIL import Image

from tests.fakes.server import MAX_BODY, Call, FakeServer, Upload

API_PREFIX = "/api/v10"
# Discord's upload limit outside boosted servers (discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES).
UPLOAD_LIMIT = 10 * 1024 * 1024
HEARTBEAT_ACK_DELAY = 0.05
EPHEMERAL = 1 << 6
LOADING = 1 << 7
# Gateway intents that decide which message events a bot receives.
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15
# Permission bits: what an ordinary member has, and the one admin commands ask for.
MANAGE_GUILD = 1 << 5
MEMBER = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16) | (1 << 31)
# Interaction and callback types.
APPLICATION_COMMAND, MESSAGE_COMPONENT = 2, 3
CHAT_INPUT, MESSAGE_COMMAND = 1, 3
CALLBACK_MESSAGE, CALLBACK_DEFER, CALLBACK_DEFER_UPDATE, CALLBACK_UPDATE = 4, 5, 6, 7
BUTTON, STRING_SELECT = 2, 3

_DISCORD_EPOCH_MS = 1_420_070_400_000
_counter = itertools.count(1)


def snowflake() -> int:
    """A fresh id shaped like Discord's: creation time in the high bits."""
    return ((int(time.time() * 1000) - _DISCORD_EPOCH_MS) << 22) | (next(_counter) & 0x3FFFFF)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class FakeError(Exception):
    """Discord's error reply: HTTP status, JSON error code and message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class FakeUser:
    id: int
    name: str
    permissions: int = MEMBER
    bot: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name.title(),
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    def member_json(self) -> dict[str, Any]:
        return {
            "user": self.json(),
            "roles": [],
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "permissions": str(self.permissions),
        }


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    edited: bool = False
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.json(),
            "content": self.content,
            "timestamp": _now(),
            "edited_timestamp": _now() if self.edited else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
            data["webhook_id"] = self.interaction_metadata["application_id"]
            data["application_id"] = self.interaction_metadata["application_id"]
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        return data

    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row["components"] if c["type"] == BUTTON]

    def selects(self) -> list[dict[str, Any]]:
        return [
            c for row in self.components for c in row["components"] if c["type"] == STRING_SELECT
        ]


@dataclass
class FakeInteraction:
    id: int
    token: str
    user: FakeUser
    payload: dict[str, Any]
    dispatched_at: float
    source_message_id: int | None = None
    response_type: int | None = None
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)


@dataclass
class _Channel:
    id: int
    guild_id: int | None
    recipient: FakeUser | None = None

    def json(self) -> dict[str, Any]:
        if self.recipient is not None:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self.recipient.json()],
            }
        return {
            "id": str(self.id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }


@dataclass
class _Request:
    params: dict[str, str]
    query: Mapping[str, str]
    payload: Any
    files: list[Upload]
    headers: Mapping[str, str]


@dataclass
class Reply:
    status: int = 200
    body: Any = None


_Handler = Callable[[_Request], Awaitable[Reply]]


class FakeDiscord(FakeServer):
    """Discord for one bot: one application, one server with one text channel, DMs."""

    def __init__(self, *, token: str = "fake-bot-token", heartbeat_ms: int = 41_250) -> None:
        super().__init__()
        self.token = token
        self.heartbeat_ms = heartbeat_ms
        self.ack_deadline = 3.0
        self.upload_limit = UPLOAD_LIMIT
        self.app_id = snowflake()
        self.bot = FakeUser(snowflake(), "toonify", bot=True)
        self.owner = FakeUser(snowflake(), "owner", permissions=MEMBER | MANAGE_GUILD)
        self.guild_id = snowflake()
        self.channel_id = snowflake()
        self.errors: list[str] = []
        self.unknown_routes: list[str] = []
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[str, FakeInteraction] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.heartbeats = 0
        self.identify: dict[str, Any] | None = None
        self.resumes = 0
        self.gateway_urls: list[str] = []
        self.filtered_events: list[tuple[str, int]] = []
        self.users: dict[int, FakeUser] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self._channels: dict[int, _Channel] = {
            self.channel_id: _Channel(self.channel_id, self.guild_id)
        }
        self._blobs: dict[int, bytes] = {}
        self._ws: web.WebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._session_id: str | None = None
        self._ready = asyncio.Event()
        self.base_url = ""

    # ---------------------------------------------------------------- lifecycle

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/gateway"

    @classmethod
    @contextlib.asynccontextmanager
    async def serve(cls, **kwargs: Any) -> AsyncIterator[FakeDiscord]:
        """Run the fake and point discord.py at it; restore discord.py's defaults after."""
        fake = cls(**kwargs)
        await fake._start()
        saved_base = discord.http.Route.BASE
        saved_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = fake.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
        try:
            yield fake
        finally:
            discord.http.Route.BASE = saved_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved_gateway
            await fake._stop()
        if fake.errors or fake.unknown_routes:
            raise AssertionError(f"fake Discord: {fake.errors + fake.unknown_routes}")

    async def _start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._download)
        routes: list[tuple[str, str, str, _Handler]] = [
            ("GET", "/users/@me", "get_me", self._get_me),
            ("GET", "/oauth2/applications/@me", "get_application", self._get_application),
            ("PUT", "/applications/{app}/commands", "sync_commands", self._sync),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", "sync_commands", self._sync),
            ("GET", "/applications/{app}/commands", "get_commands", self._get_commands),
            (
                "GET",
                "/applications/{app}/guilds/{guild}/commands",
                "get_commands",
                self._get_commands,
            ),
            ("POST", "/interactions/{interaction}/{token}/callback", "callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", "followup", self._followup),
            (
                "GET",
                "/webhooks/{app}/{token}/messages/{message}",
                "get_response",
                self._get_response,
            ),
            (
                "PATCH",
                "/webhooks/{app}/{token}/messages/{message}",
                "edit_response",
                self._edit_response,
            ),
            (
                "DELETE",
                "/webhooks/{app}/{token}/messages/{message}",
                "delete_response",
                self._delete_response,
            ),
            ("POST", "/users/@me/channels", "create_dm", self._create_dm),
            ("POST", "/channels/{channel}/messages", "create_message", self._create_message),
            ("PATCH", "/channels/{channel}/messages/{message}", "edit_message", self._edit_message),
            (
                "DELETE",
                "/channels/{channel}/messages/{message}",
                "delete_message",
                self._delete_message,
            ),
            ("POST", "/channels/{channel}/typing", "typing", self._typing),
        ]
        for method, path, name, handler in routes:
            app.router.add_route(method, API_PREFIX + path, self._wrap(name, handler))
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self.base_url = await self._listen(app)

    async def _stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self._stop_listening()

    # ---------------------------------------------------------------- waiting

    async def wait_for_response(
        self,
        interaction: FakeInteraction,
        where: Callable[[FakeMessage], object] = lambda _: True,
        *,
        within: float = 10.0,
    ) -> FakeMessage:
        """The first of the bot's live responses to `interaction` that satisfies `where`."""

        def probe() -> FakeMessage | None:
            return next((m for m in self.responses(interaction) if where(m)), None)

        return await self.wait_until(probe, within=within, what="a response")

    async def wait_until_ready(self, within: float = 10.0) -> None:
        """Until a client has identified (or resumed) and may receive events."""
        async with asyncio.timeout(within):
            await self._ready.wait()

    # ---------------------------------------------------------------- users and files

    def add_user(self, name: str, *, manage_guild: bool = False) -> FakeUser:
        user = FakeUser(snowflake(), name, MEMBER | (MANAGE_GUILD if manage_guild else 0))
        self.users[user.id] = user
        return user

    def attachment(
        self,
        data: bytes,
        filename: str = "photo.jpg",
        *,
        content_type: str | None = None,
        size: int | None = None,
        channel_id: int | None = None,
    ) -> dict[str, Any]:
        """An attachment served by this fake; `size` may claim more than `data` holds."""
        attachment_id = snowflake()
        self._blobs[attachment_id] = data
        kind = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        url = f"{self.base_url}/attachments/{channel_id or 0}/{attachment_id}/{filename}"
        url += f"?ex={int(time.time()) + 86400:x}&is={int(time.time()):x}&hm={secrets.token_hex(8)}"
        found: dict[str, Any] = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": url,
            "proxy_url": url,
            "content_type": kind,
        }
        if kind.startswith("image/"):
            with contextlib.suppress(OSError, Image.DecompressionBombError):
                found["width"], found["height"] = Image.open(BytesIO(data)).size
        return found

    def attachment_bytes(self, attachment: Mapping[str, Any]) -> bytes:
        return self._blobs[int(attachment["id"])]

    def files_of(self, message: FakeMessage) -> list[bytes]:
        return [self.attachment_bytes(a) for a in message.attachments]

    def dm_channel(self, user: FakeUser) -> int:
        for channel in self._channels.values():
            if channel.recipient == user:
                return channel.id
        channel = _Channel(snowflake(), None, user)
        self._channels[channel.id] = channel
        return channel.id

    # ---------------------------------------------------------------- events a user causes

    async def send_dm(
        self, user: FakeUser, content: str = "", attachments: Iterable[dict[str, Any]] = ()
    ) -> FakeMessage:
        """`user` writes to the bot in their DM channel."""
        message = self._store(FakeMessage(snowflake(), self.dm_channel(user), None, user, content))
        message.attachments = list(attachments)
        await self._message_event(message)
        return message

    async def post_in_server(
        self, user: FakeUser, content: str = "", attachments: Iterable[dict[str, Any]] = ()
    ) -> FakeMessage:
        """`user` posts in the server's text channel."""
        message = FakeMessage(snowflake(), self.channel_id, self.guild_id, user, content)
        message.attachments = list(attachments)
        await self._message_event(self._store(message))
        return message

    async def slash_command(
        self,
        command: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeUser,
        in_dm: bool = False,
        bypass_permissions: bool = False,
    ) -> FakeInteraction:
        """`user` runs `/command [subcommand] option:value...`.

        Option values may be attachments from `attachment()`, FakeUsers, str, int, float or
        bool. Like Discord's client, this refuses commands that were not synced or that the
        member may not see (unless a server admin opened them up: `bypass_permissions`), and
        options the command does not declare, lacks, or whose value is not among its choices.
        """
        name, *sub = command.split()
        synced = self._find_command(name, CHAT_INPUT, in_dm=in_dm)
        self._check_visible(synced, user, in_dm=in_dm, bypass=bypass_permissions)
        resolved: dict[str, dict[str, Any]] = {}
        built = [self._option(k, v, resolved) for k, v in (options or {}).items()]
        _check_options(synced, sub, built)
        for subcommand in reversed(sub):
            built = [{"type": 1, "name": subcommand, "options": built}]
        data: dict[str, Any] = {
            "id": synced["id"],
            "name": name,
            "type": CHAT_INPUT,
            "options": built,
            "resolved": resolved,
        }
        if synced.get("guild_id"):
            data["guild_id"] = synced["guild_id"]
        return await self._interact(APPLICATION_COMMAND, data, user, in_dm=in_dm)

    async def message_command(
        self, name: str, message: FakeMessage, *, user: FakeUser
    ) -> FakeInteraction:
        """`user` picks Apps > `name` on `message`, where that message was posted."""
        in_dm = message.guild_id is None
        synced = self._find_command(name, MESSAGE_COMMAND, in_dm=in_dm)
        self._check_visible(synced, user, in_dm=in_dm, bypass=False)
        data: dict[str, Any] = {
            "id": synced["id"],
            "name": name,
            "type": MESSAGE_COMMAND,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): message.json()}},
        }
        if synced.get("guild_id"):
            data["guild_id"] = synced["guild_id"]
        return await self._interact(
            APPLICATION_COMMAND, data, user, in_dm=in_dm, channel_id=message.channel_id
        )

    async def press_button(
        self, message: FakeMessage, label: str, *, user: FakeUser
    ) -> FakeInteraction:
        """`user` clicks the enabled button labelled `label` on `message`."""
        button = next((b for b in message.buttons() if b.get("label") == label), None)
        if button is None or button.get("disabled"):
            raise LookupError(f"no enabled button {label!r} on message {message.id}")
        data = {"custom_id": button["custom_id"], "component_type": BUTTON}
        return await self._component(message, data, user)

    async def choose(
        self, message: FakeMessage, values: list[str], *, user: FakeUser
    ) -> FakeInteraction:
        """`user` picks `values` in the (only) select menu on `message`."""
        menu = next(iter(message.selects()), None)
        if menu is None or menu.get("disabled"):
            raise LookupError(f"no enabled select menu on message {message.id}")
        offered = {o["value"] for o in menu["options"]}
        if not set(values) <= offered:
            raise LookupError(f"{values} not among the options {sorted(offered)}")
        data = {"custom_id": menu["custom_id"], "component_type": STRING_SELECT, "values": values}
        return await self._component(message, data, user)

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the gateway connection as a network loss would; the client should resume."""
        self._ready.clear()
        if self._ws is not None:
            await self._ws.close(code=code)

    # ---------------------------------------------------------------- reading what the bot did

    def original(self, interaction: FakeInteraction) -> FakeMessage | None:
        if interaction.original_id is None:
            return None
        return self.messages[interaction.original_id]

    def responses(self, interaction: FakeInteraction) -> list[FakeMessage]:
        """The messages the bot showed for `interaction` that still exist, original first."""
        ids = [interaction.original_id, *interaction.followup_ids]
        if interaction.response_type in (CALLBACK_DEFER_UPDATE, CALLBACK_UPDATE):
            ids = list(interaction.followup_ids)
        found = (self.messages[i] for i in dict.fromkeys(ids) if i is not None)
        return [m for m in found if not m.deleted]

    def channel_messages(self, channel_id: int) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    # ---------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.gateway_urls.append(str(request.rel_url))
        if self._ws is not None:
            await self._ws.close(code=4000)
        self._ws = ws
        await self._send(ws, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}})
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                await self._on_gateway(ws, json.loads(frame.data))
        if self._ws is ws:
            self._ws = None
            self._ready.clear()
        return ws

    async def _send(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        frame = {"op": 0, "d": None, "s": None, "t": None, **message}
        async with self._send_lock:
            await ws.send_str(json.dumps(frame))

    async def _on_gateway(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        op, data = message.get("op"), message.get("d")
        if op == 1:
            self.heartbeats += 1
            # A real network's latency: an instant ACK races discord.py's keep-alive thread,
            # which then warns that it "can't keep up".
            await asyncio.sleep(HEARTBEAT_ACK_DELAY)
            await self._send(ws, {"op": 11})
        elif op == 2:
            if data["token"] != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
                return
            self.identify = data
            self._session_id = secrets.token_hex(16)
            self._seq = 0
            await self._send_event(ws, "READY", self._ready_payload())
            await self._send_event(ws, "GUILD_CREATE", self._guild_payload())
            self._ready.set()
        elif op == 6:
            if data["session_id"] != self._session_id or data["token"] != self.token:
                await self._send(ws, {"op": 9, "d": False})
                return
            self.resumes += 1
            await self._send_event(ws, "RESUMED", {})
            self._ready.set()
        self.changed()

    async def _send_event(self, ws: web.WebSocketResponse, event: str, data: Any) -> None:
        self._seq += 1
        await self._send(ws, {"op": 0, "t": event, "s": self._seq, "d": data})

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        if self._ws is None or not self._ready.is_set():
            raise RuntimeError(f"no identified gateway connection to dispatch {event} on")
        await self._send_event(self._ws, event, data)

    def _ready_payload(self) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot.json(),
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": self._session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }

    def _guild_payload(self) -> dict[str, Any]:
        everyone = {
            "id": str(self.guild_id),
            "name": "@everyone",
            "permissions": str(MEMBER),
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return {
            "id": str(self.guild_id),
            "name": "Test Server",
            "icon": None,
            "owner_id": str(self.owner.id),
            "roles": [everyone],
            "channels": [self._channels[self.channel_id].json()],
            "members": [self.bot.member_json()],
            "member_count": 2,
            "features": [],
            "emojis": [],
            "stickers": [],
            "threads": [],
            "voice_states": [],
            "presences": [],
            "large": False,
            "unavailable": False,
            "joined_at": _now(),
            "preferred_locale": "en-US",
        }

    def _intents(self) -> int:
        return int(self.identify["intents"]) if self.identify else 0

    async def _message_event(self, message: FakeMessage) -> None:
        """MESSAGE_CREATE as the bot's intents let it see the message."""
        intents = self._intents()
        needed = DIRECT_MESSAGES if message.guild_id is None else GUILD_MESSAGES
        if not intents & needed:
            self.filtered_events.append(("MESSAGE_CREATE", message.id))
            return
        data = message.json()
        if message.guild_id is not None:
            data["member"] = {k: v for k, v in message.author.member_json().items() if k != "user"}
            if not intents & MESSAGE_CONTENT and message.author != self.bot:
                data.update(content="", attachments=[], embeds=[], components=[])
        await self._dispatch("MESSAGE_CREATE", data)

    # ---------------------------------------------------------------- interactions (dispatch)

    def _find_command(self, name: str, kind: int, *, in_dm: bool) -> dict[str, Any]:
        scopes: list[int | None] = [None] if in_dm else [self.guild_id, None]
        for scope in scopes:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", CHAT_INPUT) == kind:
                    return command
        where = "in DMs" if in_dm else "in the server"
        raise LookupError(f"command {name!r} (type {kind}) is not synced {where}")

    def _check_visible(
        self, command: dict[str, Any], user: FakeUser, *, in_dm: bool, bypass: bool
    ) -> None:
        contexts = command.get("contexts")
        if in_dm:
            if command.get("dm_permission") is False or (
                contexts is not None and 1 not in contexts
            ):
                raise LookupError(f"command {command['name']!r} is not offered in DMs")
            return
        if contexts is not None and 0 not in contexts:
            raise LookupError(f"command {command['name']!r} is not offered in servers")
        needed = command.get("default_member_permissions")
        if needed is not None and not bypass and int(needed) & ~user.permissions:
            raise PermissionError(f"{user.name} cannot see command {command['name']!r}")

    def _option(self, name: str, value: Any, resolved: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if isinstance(value, dict) and "filename" in value:
            resolved.setdefault("attachments", {})[value["id"]] = value
            return {"name": name, "type": 11, "value": value["id"]}
        if isinstance(value, FakeUser):
            resolved.setdefault("users", {})[str(value.id)] = value.json()
            member = {k: v for k, v in value.member_json().items() if k != "user"}
            resolved.setdefault("members", {})[str(value.id)] = member
            return {"name": name, "type": 6, "value": str(value.id)}
        kinds = {bool: 5, int: 4, float: 10, str: 3}
        return {"name": name, "type": kinds[type(value)], "value": value}

    async def _component(
        self, message: FakeMessage, data: dict[str, Any], user: FakeUser
    ) -> FakeInteraction:
        if message.deleted:
            raise LookupError(f"message {message.id} was deleted")
        return await self._interact(
            MESSAGE_COMPONENT,
            data,
            user,
            in_dm=message.guild_id is None,
            channel_id=message.channel_id,
            source=message,
        )

    async def _interact(
        self,
        kind: int,
        data: dict[str, Any],
        user: FakeUser,
        *,
        in_dm: bool,
        channel_id: int | None = None,
        source: FakeMessage | None = None,
    ) -> FakeInteraction:
        interaction_id, token = snowflake(), f"itoken.{secrets.token_urlsafe(24)}"
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.app_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "attachment_size_limit": self.upload_limit,
            "app_permissions": str(MEMBER),
            "entitlements": [],
        }
        if in_dm:
            channel = self._channels[channel_id or self.dm_channel(user)]
            payload.update(context=1, user=user.json(), channel_id=str(channel.id))
            payload["authorizing_integration_owners"] = {"0": str(self.guild_id)}
        else:
            channel = self._channels[channel_id or self.channel_id]
            payload.update(
                context=0,
                guild_id=str(self.guild_id),
                guild={"id": str(self.guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                channel_id=str(channel.id),
                member=user.member_json(),
            )
            payload["authorizing_integration_owners"] = {"0": str(self.guild_id)}
        payload["channel"] = channel.json()
        if source is not None:
            payload["message"] = source.json()
        loop = asyncio.get_running_loop()
        interaction = FakeInteraction(interaction_id, token, user, payload, loop.time())
        interaction.source_message_id = source.id if source else None
        self.interactions[token] = interaction
        await self._dispatch("INTERACTION_CREATE", payload)
        return interaction

    # ---------------------------------------------------------------- REST plumbing

    def _wrap(
        self, name: str, handler: _Handler
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            payload, files = await _read_body(request)
            parsed = _Request(
                dict(request.match_info),
                request.query,
                payload,
                list(files.values()),
                request.headers,
            )
            try:
                reply = await handler(parsed)
            except FakeError as exc:
                reply = Reply(exc.status, {"message": str(exc), "code": exc.code})
            except Exception as exc:
                self.errors.append(f"{request.method} {request.path}: {exc!r}")
                reply = Reply(400, {"message": f"fake Discord failed: {exc!r}", "code": 0})
            self.record(
                Call(name, parsed.params, files, payload, status=reply.status, result=reply.body)
            )
            return _respond(reply)

        return serve

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown_routes.append(f"{request.method} {request.path}")
        return _respond(Reply(404, {"message": "404: Not Found", "code": 0}))

    def _check_auth(self, request: _Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise FakeError(401, 0, "401: Unauthorized")

    async def _download(self, request: web.Request) -> web.Response:
        attachment_id = int(request.match_info["attachment"])
        found = attachment_id in self._blobs
        self.record(Call("download", dict(request.match_info), status=200 if found else 404))
        if not found:
            return web.Response(status=404)
        kind = mimetypes.guess_type(request.match_info["filename"])[0]
        return web.Response(body=self._blobs[attachment_id], content_type=kind)

    # ---------------------------------------------------------------- REST: application

    async def _get_me(self, request: _Request) -> Reply:
        self._check_auth(request)
        return Reply(body=self.bot.json())

    async def _get_application(self, request: _Request) -> Reply:
        self._check_auth(request)
        return Reply(
            body={
                "id": str(self.app_id),
                "name": "Toonify",
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.json(),
                "verify_key": secrets.token_hex(32),
                "flags": 0,
                "summary": "",
                "team": None,
            }
        )

    def _check_app(self, request: _Request) -> None:
        if request.params["app"] != str(self.app_id):
            raise FakeError(404, 10002, "Unknown Application")

    async def _sync(self, request: _Request) -> Reply:
        self._check_auth(request)
        self._check_app(request)
        scope = int(request.params["guild"]) if "guild" in request.params else None
        if scope is not None and scope != self.guild_id:
            raise FakeError(403, 50001, "Missing Access")
        synced = []
        for command in request.payload:
            _validate_command(command)
            entry = {
                **command,
                "id": str(snowflake()),
                "application_id": str(self.app_id),
                "version": str(snowflake()),
                "type": command.get("type", CHAT_INPUT),
                "description": command.get("description", ""),
                "options": command.get("options", []),
            }
            if command.get("default_member_permissions") is not None:
                entry["default_member_permissions"] = str(command["default_member_permissions"])
            if scope is not None:
                entry["guild_id"] = str(scope)
            synced.append(entry)
        self.commands[scope] = synced
        return Reply(body=synced)

    async def _get_commands(self, request: _Request) -> Reply:
        self._check_auth(request)
        self._check_app(request)
        scope = int(request.params["guild"]) if "guild" in request.params else None
        return Reply(body=self.commands.get(scope, []))

    # ---------------------------------------------------------------- REST: interactions

    def _interaction(self, token: str) -> FakeInteraction:
        found = self.interactions.get(token)
        if found is None or found.response_type is None:
            raise FakeError(404, 10015, "Unknown Webhook")
        return found

    async def _callback(self, request: _Request) -> Reply:
        interaction = self.interactions.get(request.params["token"])
        if interaction is None or str(interaction.id) != request.params["interaction"]:
            raise FakeError(404, 10062, "Unknown interaction")
        if asyncio.get_running_loop().time() - interaction.dispatched_at > self.ack_deadline:
            raise FakeError(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            raise FakeError(400, 40060, "Interaction has already been acknowledged.")
        kind, data = request.payload["type"], request.payload.get("data") or {}
        is_component = interaction.payload["type"] == MESSAGE_COMPONENT
        if kind in (CALLBACK_DEFER_UPDATE, CALLBACK_UPDATE) and not is_component:
            raise FakeError(400, 50035, "Invalid Form Body: callback type needs a component")
        if kind not in (CALLBACK_MESSAGE, CALLBACK_DEFER, CALLBACK_DEFER_UPDATE, CALLBACK_UPDATE):
            raise FakeError(400, 50035, f"Invalid Form Body: callback type {kind}")
        message: FakeMessage | None
        if kind in (CALLBACK_DEFER_UPDATE, CALLBACK_UPDATE):
            message = self.messages[interaction.source_message_id or 0]
            if kind == CALLBACK_UPDATE:
                self._apply_edit(message, data, request.files)
        else:
            loading = kind == CALLBACK_DEFER
            message = self._new_response(interaction, data, request.files, loading=loading)
        interaction.response_type = kind
        interaction.original_id = message.id
        self.changed()
        body: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.payload["type"],
                "response_message_id": str(message.id),
                "response_message_loading": message.loading,
                "response_message_ephemeral": message.ephemeral,
            },
            "resource": {"type": kind},
        }
        if kind != CALLBACK_DEFER_UPDATE:
            body["resource"]["message"] = message.json()
        if kind == CALLBACK_MESSAGE and not message.ephemeral:
            await self._message_event(message)
        return Reply(body=body)

    def _new_response(
        self,
        interaction: FakeInteraction,
        data: dict[str, Any],
        files: list[Upload],
        *,
        loading: bool = False,
    ) -> FakeMessage:
        payload = interaction.payload
        guild_id = int(payload["guild_id"]) if "guild_id" in payload else None
        message = FakeMessage(snowflake(), int(payload["channel_id"]), guild_id, self.bot)
        message.type = {APPLICATION_COMMAND: 20, MESSAGE_COMPONENT: 0}[payload["type"]]
        if payload["type"] == APPLICATION_COMMAND and payload["data"]["type"] != CHAT_INPUT:
            message.type = 23
        message.interaction_metadata = {
            "id": payload["id"],
            "type": payload["type"],
            "user": interaction.user.json(),
            "application_id": str(self.app_id),
            "authorizing_integration_owners": payload["authorizing_integration_owners"],
        }
        if interaction.original_id is not None:
            message.interaction_metadata["original_response_message_id"] = str(
                interaction.original_id
            )
        message.flags = (data.get("flags", 0) & EPHEMERAL) | (LOADING if loading else 0)
        self._apply_edit(message, {} if loading else data, files, new=True)
        return self._store(message)

    async def _followup(self, request: _Request) -> Reply:
        self._check_app(request)
        interaction = self._interaction(request.params["token"])
        original = self.original(interaction)
        if original is not None and original.loading and not original.deleted:
            # The first followup after a deferral replaces the "thinking" message and keeps
            # its visibility, whatever flags the followup asks for.
            self._apply_edit(original, request.payload, request.files, new=True)
            message = original
        else:
            message = self._new_response(interaction, request.payload, request.files)
            interaction.followup_ids.append(message.id)
        if not message.ephemeral:
            await self._message_event(message)
        if request.query.get("wait") not in ("1", "true", "True"):
            return Reply(204)
        return Reply(body=message.json())

    def _response_message(self, request: _Request) -> FakeMessage:
        self._check_app(request)
        interaction = self._interaction(request.params["token"])
        wanted = request.params["message"]
        if wanted == "@original":
            message_id = interaction.original_id
        elif int(wanted) in (interaction.original_id, *interaction.followup_ids):
            message_id = int(wanted)
        else:
            message_id = None
        message = self.messages.get(message_id or 0)
        if message is None or message.deleted:
            raise FakeError(404, 10008, "Unknown Message")
        return message

    async def _get_response(self, request: _Request) -> Reply:
        return Reply(body=self._response_message(request).json())

    async def _edit_response(self, request: _Request) -> Reply:
        message = self._response_message(request)
        self._apply_edit(message, request.payload, request.files)
        return Reply(body=message.json())

    async def _delete_response(self, request: _Request) -> Reply:
        self._response_message(request).deleted = True
        return Reply(204)

    # ---------------------------------------------------------------- REST: channels

    async def _create_dm(self, request: _Request) -> Reply:
        self._check_auth(request)
        user = self.users.get(int(request.payload["recipient_id"]))
        if user is None or user.bot:
            raise FakeError(400, 50007, "Cannot send messages to this user")
        return Reply(body=self._channels[self.dm_channel(user)].json())

    def _channel(self, request: _Request) -> _Channel:
        self._check_auth(request)
        channel = self._channels.get(int(request.params["channel"]))
        if channel is None:
            raise FakeError(404, 10003, "Unknown Channel")
        return channel

    async def _create_message(self, request: _Request) -> Reply:
        channel = self._channel(request)
        message = FakeMessage(snowflake(), channel.id, channel.guild_id, self.bot)
        self._apply_edit(message, request.payload, request.files, new=True)
        reference = request.payload.get("message_reference")
        if reference is not None:
            if int(reference["message_id"]) not in self.messages:
                raise FakeError(400, 50035, "Invalid Form Body: unknown message_reference")
            message.message_reference = {
                "type": 0,
                "channel_id": str(channel.id),
                "message_id": str(reference["message_id"]),
            }
        self._store(message)
        await self._message_event(message)
        return Reply(body=message.json())

    def _own_message(self, request: _Request) -> FakeMessage:
        channel = self._channel(request)
        message = self.messages.get(int(request.params["message"]))
        if message is None or message.deleted or message.channel_id != channel.id:
            raise FakeError(404, 10008, "Unknown Message")
        if message.author != self.bot:
            raise FakeError(403, 50005, "Cannot edit a message authored by another user")
        return message

    async def _edit_message(self, request: _Request) -> Reply:
        message = self._own_message(request)
        self._apply_edit(message, request.payload, request.files)
        return Reply(body=message.json())

    async def _delete_message(self, request: _Request) -> Reply:
        self._own_message(request).deleted = True
        return Reply(204)

    async def _typing(self, request: _Request) -> Reply:
        self._channel(request)
        return Reply(204)

    # ---------------------------------------------------------------- message state

    def _store(self, message: FakeMessage) -> FakeMessage:
        self.messages[message.id] = message
        return message

    def _apply_edit(
        self,
        message: FakeMessage,
        data: Mapping[str, Any],
        files: list[Upload],
        *,
        new: bool = False,
    ) -> None:
        """Validate a create or edit payload, then apply it as Discord does.

        A message created as a deferral's "thinking" placeholder may be empty; any content
        that lands on it (an edit or the first followup) ends the loading state.
        """
        content = (data.get("content") or "") if "content" in data else message.content
        embeds = (data.get("embeds") or []) if "embeds" in data else message.embeds
        components = message.components
        if "components" in data:
            components = _validate_components(data.get("components") or [])
        kept = message.attachments
        if "attachments" in data:
            wanted = {str(a["id"]) for a in data.get("attachments") or []}
            kept = [a for a in message.attachments if a["id"] in wanted]
        if any(len(upload.data) > self.upload_limit for upload in files):
            raise FakeError(413, 40005, "Request entity too large")
        if len(content) > 2000:
            raise FakeError(400, 50035, "Invalid Form Body: content longer than 2000")
        placeholder = new and message.loading and not data
        if not (content or embeds or components or kept or files or placeholder):
            raise FakeError(400, 50006, "Cannot send an empty message")
        message.content, message.embeds, message.components = content, embeds, components
        channel = message.channel_id
        uploaded = [self.attachment(u.data, u.filename or "", channel_id=channel) for u in files]
        message.attachments = kept + uploaded
        message.edited = not new
        if not placeholder:
            message.flags &= ~LOADING


async def _read_body(request: web.Request) -> tuple[Any, dict[str, Upload]]:
    """JSON body, or multipart `payload_json` plus `files[n]` parts."""
    if request.content_type == "application/json":
        return await request.json(), {}
    if not request.content_type.startswith("multipart/"):
        return None, {}
    payload: Any = None
    files: dict[str, Upload] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "payload_json":
            payload = json.loads(await part.text())
        else:
            data = bytes(await part.read())
            kind = part.headers.get("Content-Type", "application/octet-stream")
            files[part.name or ""] = Upload(part.filename or "", kind, data)
    return payload, files


def _respond(reply: Reply) -> web.Response:
    """Content-Type exactly application/json: discord.py treats anything else as text."""
    if reply.body is None:
        return web.Response(status=reply.status)
    body = json.dumps(reply.body).encode()
    return web.Response(
        status=reply.status, body=body, headers={"Content-Type": "application/json"}
    )


def _validate_command(command: Mapping[str, Any]) -> None:
    name, kind = command["name"], command.get("type", CHAT_INPUT)
    if not 1 <= len(name) <= 32:
        raise FakeError(400, 50035, f"Invalid Form Body: command name {name!r}")
    if kind == CHAT_INPUT:
        if name != name.lower() or " " in name:
            raise FakeError(400, 50035, f"Invalid Form Body: chat command name {name!r}")
        if not 1 <= len(command.get("description", "")) <= 100:
            raise FakeError(400, 50035, f"Invalid Form Body: description of {name!r}")
    for option in command.get("options", []):
        if not 1 <= len(option.get("description", "")) <= 100:
            raise FakeError(400, 50035, f"Invalid Form Body: option {option['name']!r}")
        if len(option.get("choices") or []) > 25:
            raise FakeError(400, 50035, f"Invalid Form Body: too many choices in {name!r}")
        if option["type"] in (1, 2):
            _validate_command({**option, "type": CHAT_INPUT})


def _check_options(
    command: Mapping[str, Any], path: list[str], given: list[dict[str, Any]]
) -> None:
    """What Discord's client enforces before a slash command is sent."""
    declared = command.get("options") or []
    for name in path:
        found = next((o for o in declared if o["name"] == name and o["type"] in (1, 2)), None)
        if found is None:
            raise LookupError(f"{command['name']!r} has no subcommand {name!r}")
        declared = found.get("options") or []
    by_name = {o["name"]: o for o in declared}
    for option in given:
        spec = by_name.get(option["name"])
        if spec is None or spec["type"] != option["type"]:
            raise LookupError(f"no {option['name']!r} option of type {option['type']}")
        choices = spec.get("choices")
        if choices and option["value"] not in [c["value"] for c in choices]:
            raise LookupError(f"{option['value']!r} is not a choice of {option['name']!r}")
        low, high = spec.get("min_value"), spec.get("max_value")
        if (low is not None and option["value"] < low) or (
            high is not None and option["value"] > high
        ):
            raise LookupError(f"{option['value']!r} is out of range for {option['name']!r}")
    missing = {o["name"] for o in declared if o.get("required")} - {o["name"] for o in given}
    if missing:
        raise LookupError(f"required options missing: {sorted(missing)}")


def _validate_components(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) > 5:
        raise FakeError(400, 50035, "Invalid Form Body: more than 5 action rows")
    for row in rows:
        items = row.get("components", [])
        if row.get("type") != 1 or not 1 <= len(items) <= 5:
            raise FakeError(400, 50035, "Invalid Form Body: bad action row")
        for item in items:
            if len(item.get("custom_id", "")) > 100:
                raise FakeError(400, 50035, "Invalid Form Body: custom_id longer than 100")
            if item["type"] == BUTTON and len(item.get("label", "")) > 80:
                raise FakeError(400, 50035, "Invalid Form Body: button label longer than 80")
            options = item.get("options", [])
            if item["type"] == STRING_SELECT and (len(items) != 1 or not 1 <= len(options) <= 25):
                raise FakeError(400, 50035, "Invalid Form Body: bad select menu")
    return rows
