"""`toonify bench`: Measure the hot paths on this machine (printed tables)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bots.cli.common import console, settings

if TYPE_CHECKING:
    import torch

app = typer.Typer(
    help="Measure the hot paths on this machine (printed tables).", no_args_is_help=True
)


def _device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


@app.command("encoder")
def encoder(
    ctx: typer.Context,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per row (median shown).")] = 5,
) -> None:
    """Forward time per face of a full-size e4e encoder (random weights), batch 1 and 8."""
    import torch

    from inference.encoders import EncoderArch, FaceEncoder

    device = torch.device(_device(settings(ctx).models.device))
    dtypes = [torch.float32]
    if device.type == "cuda":
        dtypes += [torch.float16, torch.bfloat16]
    model = FaceEncoder(EncoderArch(kind="e4e"), torch.zeros(18, 512)).eval().to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    table = Table(title=f"Encoder forward (IR-SE-50, 256 px) on {name}")
    for column in ("dtype", "batch", "ms / batch", "ms / face", "faces / s"):
        table.add_column(column, justify="right")
    for dtype in dtypes:
        model.to(dtype)
        for batch in (1, 8):
            faces = torch.rand(batch, 3, 256, 256, device=device, dtype=dtype) * 2 - 1
            seconds = _median_seconds(lambda x=faces: model(x), runs, device)
            table.add_row(
                str(dtype).removeprefix("torch."),
                str(batch),
                f"{seconds * 1e3:.1f}",
                f"{seconds * 1e3 / batch:.1f}",
                f"{batch / seconds:.1f}",
            )
    console.print(table)


def _median_seconds(step: Callable[[], object], runs: int, device: torch.device) -> float:
    """Median wall time of `step()` after one warm-up call, GPU work included."""
    import torch

    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)
