"""`toonify quota`: Show and change per-user quotas."""

from __future__ import annotations

import typer

app = typer.Typer(help="Show and change per-user quotas.", no_args_is_help=True)
