"""What every CLI command shares: the configuration it was started with, and how it fails."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from bots.config import ConfigError, Settings, load_config
from bots.logs import setup_logging

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line reason in red and exit non-zero."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@cache
def _load(path: Path | None) -> Settings:
    return load_config(path)


def settings(ctx: typer.Context) -> Settings:
    """The validated configuration named by the root --config option; sets up logging once."""
    path: Path | None = ctx.find_root().params.get("config")
    try:
        config = _load(path)
    except ConfigError as exc:
        fail(str(exc), code=2)
    setup_logging(config.logging.level, config.secrets())
    return config
