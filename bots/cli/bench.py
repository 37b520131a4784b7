"""`toonify bench`: Measure the hot paths on this machine (printed tables)."""

from __future__ import annotations

import statistics
import time
from typing import Annotated

import torch
import typer
from rich.table import Table

from bots.cli.common import console, settings
from inference.stylegan2 import Architecture, Generator

app = typer.Typer(
    help="Measure the hot paths on this machine (printed tables).", no_args_is_help=True
)


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


def _synthesis_seconds(generator: Generator, batch: int, runs: int) -> list[float]:
    """Wall time of `runs` synthesis calls after one warm-up call (device synchronised)."""
    device = generator.input.input.device
    z = torch.randn(batch, generator.z_dim, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        ws = generator.mapping(z.to(device))
        for i in range(runs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            generator.synthesis(ws, noise_mode="const")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return times


@app.command("generator")
def generator(
    ctx: typer.Context,
    resolutions: Annotated[str, typer.Option(help="Output sizes (config-f).")] = "256,512,1024",
    batches: Annotated[str, typer.Option(help="Batch sizes.")] = "1,8",
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per cell (median).")] = 5,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:N (default: models.device).")
    ] = None,
) -> None:
    """Images per second of the StyleGAN2 synthesis network (random config-f weights)."""
    setting = device or settings(ctx).models.device
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(setting)
    dtypes = [torch.float32]
    if target.type == "cuda":
        dtypes += [torch.float16, torch.bfloat16]
    threads = f", {torch.get_num_threads()} threads" if target.type == "cpu" else ""
    table = Table(
        "Resolution", "Batch", "dtype", "Median ms", "Images/s",
        title=f"StyleGAN2 synthesis on {_describe(target)}{threads}, median of {runs}",
    )  # fmt: skip
    for resolution in _ints(resolutions):
        base = Generator(Architecture(resolution)).eval().requires_grad_(False)
        for dtype in dtypes:
            model = base.to(target, dtype)
            for batch in _ints(batches):
                with console.status(f"{resolution} px, batch {batch}, {dtype}"):
                    median = statistics.median(_synthesis_seconds(model, batch, runs))
                table.add_row(
                    str(resolution),
                    str(batch),
                    str(dtype).removeprefix("torch."),
                    f"{median * 1e3:.0f}",
                    f"{batch / median:.2f}",
                )
    console.print(table)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
