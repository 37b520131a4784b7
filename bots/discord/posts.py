"""What the bot posts on Discord: a toon as a file under the upload limit, its caption, and
texts cut to what a message holds."""

from __future__ import annotations

import asyncio
import io
import math

import discord
from PIL import Image

from bots.service import Toon

MESSAGE_LIMIT = 2000
SHRUNK_QUALITY = 90
PING_USERS = discord.AllowedMentions(everyone=False, roles=False, users=True)


def clip(text: str) -> str:
    """Discord refuses messages over 2000 characters."""
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def caption(toon: Toon, owner_id: int, *, in_server: bool) -> str:
    """In a server the requester is named, since anyone may see (and press) the result."""
    return clip(f"<@{owner_id}> {toon.caption}" if in_server else toon.caption)


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


async def toon_file(toon: Toon, limit: int) -> discord.File:
    image = toon.image
    if len(image) > limit:
        image = await asyncio.to_thread(shrink_jpeg, image, limit)
    return discord.File(io.BytesIO(image), filename=toon.filename)
