"""`toonify bench`: Measure the hot paths on this machine (printed tables)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Measure the hot paths on this machine (printed tables).", no_args_is_help=True
)
