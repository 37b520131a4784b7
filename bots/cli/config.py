"""`toonify config`: inspect the configuration before running the bot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bots.cli.common import console, fail
from bots.config import ConfigError, load_config

app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)


@app.command("check")
def check(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="TOML file (default: --config).")] = None,
) -> None:
    """Validate a configuration and print the effective values, secrets masked."""
    source = path or ctx.find_root().params.get("config")
    try:
        config = load_config(source)
    except ConfigError as exc:
        fail(str(exc), code=2)
    effective = config.model_dump(mode="json")
    console.print_json(json.dumps(effective))
    console.print(f"[green]ok[/green]: {source or 'defaults + environment'}")
