"""The `toonify` command line: the root app and its command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bots.cli import bench, config, doctor, faces, models, photo, quota, run, vgg16

app = typer.Typer(
    name="toonify",
    help="toonify-bot: turn selfies into their cartoon twins, on Telegram and Discord.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # Plain help: rich markup would eat "[styles]" in help texts, and typer's rich help shows
    # every flag as taking a <bool> value.
    rich_markup_mode=None,
)


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="TOONIFY_CONFIG",
            help="Configuration file (default: ./config.toml when present).",
        ),
    ] = None,
) -> None:
    """Every command reads the configuration named here; TOONIFY_* variables override it."""


app.add_typer(config.app, name="config")
models.app.command("fetch-vgg16")(vgg16.fetch_vgg16)
models.app.command("doctor")(doctor.doctor)
app.add_typer(models.app, name="models")
app.add_typer(quota.app, name="quota")
app.add_typer(bench.app, name="bench")
app.command("run")(run.run)
app.command("worker")(run.worker)
app.command("faces")(faces.faces)
app.command("photo")(photo.photo)
