"""`toonify models`: Import, blend, list and sample StyleGAN2 checkpoints."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Import, blend, list and sample StyleGAN2 checkpoints.", no_args_is_help=True
)
