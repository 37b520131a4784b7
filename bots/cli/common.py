"""What every CLI command shares: the configuration it was started with, and how it fails."""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from bots.config import ConfigError, Settings, load_config
from bots.logs import setup_logging

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line reason in red and exit non-zero."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def check_output(path: Path) -> None:
    """Fail now, not after minutes of work, when `path` cannot be written as an image.

    Creates its folder, as the write would need it anyway."""
    from PIL import Image

    if path.is_dir():
        fail(f"{path} is a folder; name the image file to write")
    Image.init()
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        fail(
            f"{path}: {path.suffix or 'no extension'} is not an image format "
            "(use .jpg, .png or .webp)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"cannot write {path}: the file is read-only")


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
