"""`toonify run`: start the bot."""

from __future__ import annotations

import asyncio

import typer

from bots.cli.common import fail, settings
from bots.config import ENV_PREFIX, Settings


def missing_tokens(config: Settings) -> list[str]:
    """The environment variables an enabled adapter still needs."""
    missing = []
    for name in ("telegram", "discord"):
        section = getattr(config, name)
        if section.enabled and section.token is None:
            missing.append(f"{ENV_PREFIX}{name.upper()}_TOKEN")
    return missing


def run(ctx: typer.Context) -> None:
    """Start the enabled chat adapters and the GPU worker; stop cleanly on Ctrl-C or SIGTERM."""
    config = settings(ctx)
    if not (config.telegram.enabled or config.discord.enabled):
        fail(
            "no adapter is enabled: set telegram.enabled or discord.enabled "
            f"(or {ENV_PREFIX}TELEGRAM_ENABLED=true)"
        )
    if missing := missing_tokens(config):
        fail(f"an enabled adapter has no token: set {' and '.join(missing)}")
    from bots.app import serve
    from inference.pipeline import MODEL_LOAD_ERRORS

    try:
        asyncio.run(serve(config))
    except MODEL_LOAD_ERRORS as exc:
        fail(f"cannot start: {exc}")
