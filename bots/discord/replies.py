"""How a request answers on Discord: a private status, then the toon posted with its controls.

The service drives these through its `JobReply` protocol; everything here is about which
Discord message to send, edit or delete, so the service never learns an interaction token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord

from bots.discord.client import ToonifyClient
from bots.discord.controls import toon_view
from bots.discord.posts import PING_USERS, caption, clip, toon_file
from bots.service import Refused, Toon

log = logging.getLogger(__name__)


class InteractionReply:
    """Answers `/toonify` and the message menu: a private status, then a public toon.

    A refusal at admission is the interaction's (ephemeral) response. An admitted request is
    acknowledged with an ephemeral deferral, which is then edited with the place in the queue
    (always before the toon can arrive: a followup sent while the deferral is still
    "thinking" would replace it and stay private) and progress, and removed once the toon is
    posted as a public followup. Interaction tokens last 15 minutes; after that, or when the
    acknowledgement came too late, answers go through the channel instead.
    """

    def __init__(self, client: ToonifyClient, interaction: discord.Interaction) -> None:
        self._client = client
        self._interaction = interaction
        self._owner_id = interaction.user.id
        self._lock = asyncio.Lock()
        self._finished = False
        self._acknowledged = asyncio.Event()
        self._lost = False  # the interaction could not be acknowledged in time

    def _channel_reply(self) -> ChannelReply:
        channel_id = self._interaction.channel_id or 0
        private = self._interaction.guild_id is None
        owner_id = self._owner_id
        return ChannelReply(self._client, channel_id, owner_id, reference=None, private=private)

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

    async def started(self) -> None:
        """The status already says where the job stands."""

    async def progress(self, text: str) -> None:
        await self._acknowledged.wait()
        async with self._lock:
            if not self._finished and not self._gone():
                await self._interaction.edit_original_response(content=clip(text))

    async def deliver(self, toon: Toon) -> None:
        """Returns once Discord has the toon; raises when it refused it for good."""
        await self._acknowledged.wait()
        async with self._lock:
            self._finished = True
            if self._gone():
                await self._channel_reply().deliver(toon)
                return
            await self._interaction.followup.send(
                caption(toon, self._owner_id, in_server=self._interaction.guild_id is not None),
                file=await toon_file(toon, self._interaction.filesize_limit),
                view=toon_view(toon, self._owner_id),
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
                await self._interaction.response.send_message(clip(error.text), ephemeral=True)
                return
            if self._gone():
                await self._channel_reply().fail(error)
                return
            await self._interaction.edit_original_response(content=clip(error.text))


class ChannelReply:
    """Answers in a channel: photos sent by DM, and jobs resumed after a restart.

    In a DM a status message is edited in place. In a server channel (a resumed slash
    command) only the toon is posted, and a refusal goes to the requester's DMs instead.
    """

    def __init__(
        self,
        client: ToonifyClient,
        channel_id: int,
        owner_id: int,
        *,
        reference: int | None,
        private: bool,
    ) -> None:
        self._client = client
        self._channel = client.get_partial_messageable(channel_id)
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
            self._typing = self._client.background.run(self._type())

    async def _type(self) -> None:
        async with self._channel.typing():
            await asyncio.Event().wait()  # until cancelled by the first news

    def _news(self) -> None:
        if self._typing is not None:
            self._typing.cancel()

    async def queued(self, text: str) -> None:
        self._news()
        await self.progress(text)

    async def started(self) -> None:
        """The status (in a DM) already says where the job stands."""

    async def progress(self, text: str) -> None:
        if not self._private:
            return
        async with self._lock:
            if self._finished:
                return
            if self._status is None:
                self._status = await self._channel.send(clip(text), **self._replying())
            else:
                await self._status.edit(content=clip(text))

    async def deliver(self, toon: Toon) -> None:
        async with self._lock:
            self._finished = True
            await self._channel.send(
                caption(toon, self._owner_id, in_server=not self._private),
                file=await toon_file(toon, discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES),
                view=toon_view(toon, self._owner_id),
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
                await self._status.edit(content=clip(error.text))
            elif self._private:
                await self._channel.send(clip(error.text), **self._replying())
            else:
                dm = await self._client.create_dm(discord.Object(self._owner_id))
                await dm.send(clip(error.text))
