"""`toonify models`: Import, blend, list and sample StyleGAN2 checkpoints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from bots.cli.common import check_output, console, fail, settings
from inference.blend import BlendError
from inference.checkpoints import CheckpointError
from inference.model_store import DownloadError, ModelStore, ModelStoreError, is_url
from inference.samples import render_seeds, to_grid_image

app = typer.Typer(
    help="Import, blend, list and sample StyleGAN2 checkpoints.", no_args_is_help=True
)

ERRORS = (CheckpointError, ModelStoreError, BlendError)


def _store(ctx: typer.Context) -> ModelStore:
    return ModelStore(settings(ctx).models.dir)


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Checkpoint file, or an http(s) URL to download.")],
    name: Annotated[str, typer.Option("--name", help="Name in the models directory.")],
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Refuse the file unless its SHA-256 matches.")
    ] = None,
) -> None:
    """Convert a rosinality .pt, NVlabs .pkl, TensorFlow .pkl, canonical or pSp/e4e file to NAME.

    A pSp/e4e checkpoint becomes the encoder NAME and its generator NAME-decoder."""
    store = _store(ctx)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(f"downloading {name}", total=None, visible=is_url(source))

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            result = store.import_checkpoint(source, name, sha256=sha256, progress=progress)
    except DownloadError as exc:
        fail(f"{exc}; or download it elsewhere, then: toonify models import FILE --name {name}")
    except ERRORS as exc:
        fail(str(exc))
    if result.encoder is not None:
        arch = result.encoder.arch
        console.print(
            f"[green]imported[/green] {name}: {arch.kind} encoder ({arch.n_styles} codes) "
            f"-> {result.encoder.path} (sha256 {result.sha256})"
        )
    if result.info is not None:
        label = f"{name}-decoder" if result.encoder is not None else name
        console.print(
            f"[green]imported[/green] {label}: {result.info.architecture.resolution} px "
            f"{result.format} checkpoint -> {result.info.path} (sha256 {result.sha256})"
        )


@app.command("blend")
def blend_(
    ctx: typer.Context,
    structure: Annotated[str, typer.Option(help="Model for the low resolutions (the toon).")],
    texture: Annotated[str, typer.Option(help="Model for the high resolutions (FFHQ).")],
    resolution: Annotated[
        int, typer.Option(help="Swap resolution: it and below come from --structure.")
    ],
    name: Annotated[str, typer.Option(help="Name of the blended model.")],
    blend_width: Annotated[
        float | None,
        typer.Option(help="Smooth transition over this many layers instead of a hard switch."),
    ] = None,
) -> None:
    """Blend two models by resolution (the toonify layer swap) and save the result as NAME."""
    try:
        info = _store(ctx).blend(
            name,
            structure=structure,
            texture=texture,
            resolution=resolution,
            blend_width=blend_width,
        )
    except ERRORS as exc:
        fail(str(exc))
    console.print(f"[green]blended[/green] {name} -> {info.path}")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Show the models in the models directory."""
    store = _store(ctx)
    entries = store.entries()
    if not entries:
        console.print(f"no models in {store.directory} (add one with `toonify models import`)")
        return
    table = Table("Name", "Resolution", "Size", "Source", title=str(store.directory))
    for entry in entries:
        if entry.encoder is not None:
            size = f"{entry.encoder.size_bytes / 1e6:.1f} MB"
            what = f"{entry.encoder.arch.kind} encoder"
            table.add_row(entry.name, what, size, entry.encoder.source)
            continue
        if entry.info is None:
            table.add_row(entry.name, "-", "-", f"[red]{entry.error}[/red]")
            continue
        size = f"{entry.info.size_bytes / 1e6:.1f} MB"
        table.add_row(
            entry.name, f"{entry.info.architecture.resolution} px", size, entry.info.source
        )
    console.print(table)


def parse_seeds(text: str) -> list[int]:
    """'1-8' or '1,5,10-12' -> the seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise typer.BadParameter(f"{part!r} is not a seed or a range like 1-8")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise typer.BadParameter(f"{part!r}: the range runs backwards")
        seeds.extend(range(first, last + 1))
    return seeds


def _device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@app.command("sample")
def sample(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    seeds: Annotated[str, typer.Option(help="Seeds: 1-8, or 1,5,10-12.")] = "1-8",
    psi: Annotated[float, typer.Option(help="Truncation psi (1: none).")] = 0.7,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file to write.")] = Path(
        "grid.jpg"
    ),
) -> None:
    """Render random faces from NAME into one grid image (seeds as in NVlabs' generate.py)."""
    check_output(output)
    config = settings(ctx).models
    seed_list = parse_seeds(seeds)
    try:
        generator = _store(ctx).load(name, _device(config.device))
    except ERRORS as exc:
        fail(str(exc))
    generator = generator.to(getattr(torch, config.dtype))
    with console.status(f"rendering {len(seed_list)} faces at {generator.resolution} px"):
        grid = to_grid_image(render_seeds(generator, seed_list, psi))
    try:
        grid.save(output, quality=92)
    except (OSError, ValueError) as exc:
        fail(f"cannot write {output}: {exc}")
    console.print(f"[green]wrote[/green] {output} ({len(seed_list)} faces)")
