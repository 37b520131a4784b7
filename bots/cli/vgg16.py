"""`toonify models fetch-vgg16`: download the perceptual network the inversion compares with."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from bots.cli.common import console, fail, settings


def fetch_vgg16(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="A mirror of the file (default: NVIDIA's address).")
    ] = None,
) -> None:
    """Download NVIDIA's TorchScript VGG16 to models.dir/models.perceptual (resumable)."""
    # torch loads here, not when any other command starts.
    from inference.invert import VGG16_URL
    from inference.model_store import ModelStoreError, fetch_perceptual

    config = settings(ctx)
    target = config.models.dir / config.models.perceptual
    if target.is_file():
        console.print(f"{target} is already there")
        return
    source = url or VGG16_URL
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(f"downloading {target.name}", total=None)
            fetch_perceptual(
                source,
                target,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except ModelStoreError as exc:
        fail(f"{exc}; or download {source} elsewhere and copy it to {target}")
    console.print(f"[green]fetched[/green] {target}")
