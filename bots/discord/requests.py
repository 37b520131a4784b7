"""A Discord request on its way to the service: `/toonify`, the message menu and DM photos.

A request's job row is written before its interaction is acknowledged (Discord allows 3 s;
when writing takes longer than ADMIT_BEFORE_ACK, the acknowledgement goes first), so a crash
after the row was written is resumed at the next start. The row's reference holds what is
needed to answer after a restart: no token, no photo, only its Discord URL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import discord

from bots import texts
from bots.adapter import refusing
from bots.discord.client import PLATFORM, ToonifyClient
from bots.discord.replies import ChannelReply, InteractionReply
from bots.service import RefusalKind, Refused, Requester, Upload

# Seconds the job row may take before the interaction is acknowledged first (Discord: 3 s).
ADMIT_BEFORE_ACK = 1.5


def pick_attachment(attachments: list[discord.Attachment]) -> discord.Attachment | None:
    """The first image; else the first file, so that the refusal names what is wrong."""
    for attachment in attachments:
        if (attachment.content_type or "").startswith("image/"):
            return attachment
    return attachments[0] if attachments else None


def job_ref(
    user: discord.abc.User,
    channel_id: int | None,
    guild_id: int | None,
    attachment: discord.Attachment,
    message_id: int | None,
) -> dict[str, Any]:
    """Enough to fetch the photo and answer after a restart (bots.service.JobSource)."""
    return {
        "user_id": str(user.id),
        "channel_id": str(channel_id),
        "guild_id": str(guild_id) if guild_id is not None else None,
        "url": attachment.url,
        "message_id": str(message_id) if message_id is not None else None,
    }


def reply_for(client: ToonifyClient, ref: dict[str, Any]) -> ChannelReply:
    """How a job resumed after a restart answers: through the channel it came from."""
    message_id = ref.get("message_id")
    return ChannelReply(
        client,
        int(ref["channel_id"]),
        int(ref["user_id"]),
        reference=int(message_id) if message_id else None,
        private=ref.get("guild_id") is None,
    )


async def toonify(
    interaction: discord.Interaction[ToonifyClient],
    attachment: discord.Attachment | None,
    style: str | None,
    level: int | None,
    *,
    source: discord.Message | None,
) -> None:
    """Admit, then acknowledge: a crash in between leaves a job row that is resumed."""
    client = interaction.client
    reply = InteractionReply(client, interaction)
    try:
        if attachment is None:
            raise Refused(RefusalKind.NOT_IMAGE, texts.DISCORD_NO_IMAGE)
        # A level of /toonify may be one the chosen style lacks.
        style, strength = client.service.choose_level(style, level)
        who = client.requester(interaction.user, interaction.guild_id)
        ref = job_ref(
            interaction.user,
            interaction.channel_id,
            interaction.guild_id,
            attachment,
            source.id if source else None,
        )
        key = f"{PLATFORM}:interaction:{interaction.id}"
        admission = asyncio.ensure_future(
            _admit(client, who, attachment, reply, ref, key, style, strength)
        )
        if not (await asyncio.wait({admission}, timeout=ADMIT_BEFORE_ACK))[0]:
            await reply.acknowledge()  # the row is slow to come: keep the interaction
        await admission
    except Refused as refused:
        await reply.fail(refused)
        return
    await reply.acknowledge()


async def toonify_dm(client: ToonifyClient, message: discord.Message) -> None:
    """A photo sent in a DM is toonified; anything else there gets the help text."""
    attachment = pick_attachment(message.attachments)
    if attachment is None:
        await message.channel.send(texts.DISCORD_HELP)
        return
    reply = ChannelReply(
        client, message.channel.id, message.author.id, reference=message.id, private=True
    )
    who = client.requester(message.author, None)
    ref = job_ref(message.author, message.channel.id, None, attachment, message.id)
    key = f"{PLATFORM}:message:{message.id}"
    try:
        await _admit(client, who, attachment, reply, ref, key, None, None)
    except Refused as refused:
        await reply.fail(refused)
        return
    reply.working()


async def _admit(
    client: ToonifyClient,
    who: Requester,
    attachment: discord.Attachment,
    reply: InteractionReply | ChannelReply,
    ref: dict[str, Any],
    key: str,
    style: str | None,
    strength: int | None,
) -> None:
    """The service judges what Discord says about the file and writes the job row."""
    upload = Upload(attachment.size, attachment.content_type, attachment.filename)
    with refusing("a Discord request"):
        await client.service.admit(
            who, upload, reply, ref=ref, key=key, style=style, strength=strength
        )
