"""Where the Discord side talks to: discord.py's REST base and gateway, and the downloads of
attachments (only from Discord's CDN or the configured API host, refused past the size limit
while they stream)."""

from __future__ import annotations

import logging

import aiohttp
import discord
import yarl

from bots import texts
from bots.config import DiscordSettings
from bots.service import RefusalKind, Refused

log = logging.getLogger(__name__)

DISCORD_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=60)
DOWNLOAD_CHUNK = 64 * 1024


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


def _download_failed() -> Refused:
    return Refused(RefusalKind.RESEND, texts.DISCORD_DOWNLOAD_FAILED)


class Downloads:
    """Attachments by URL, through one HTTP session opened once the event loop runs."""

    def __init__(self, settings: DiscordSettings, max_bytes: int) -> None:
        self._origins = download_origins(settings)
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._session = self._session or aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> bytes:
        """The attachment's bytes; Refused for a host we do not trust, a failed download or a
        file past the limit."""
        parsed = yarl.URL(url)
        if (parsed.scheme, parsed.host or "", parsed.port) not in self._origins:
            log.warning("refusing to download an attachment from %s", parsed.host)
            raise _download_failed()
        if self._session is None:
            raise RuntimeError("the bot has not started")
        data = bytearray()
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise _download_failed()
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                    data += chunk
                    if len(data) > self._max_bytes:
                        raise Refused(RefusalKind.TOO_LARGE, texts.too_large(self._max_bytes))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("attachment download failed: %s", type(exc).__name__)
            raise _download_failed() from None
        return bytes(data)
