"""`python -m bots` is the `toonify` command."""

from bots.cli import app

app()
