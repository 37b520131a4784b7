"""`toonify bench`: Measure the hot paths on this machine (printed tables)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bots.cli.common import console

app = typer.Typer(
    help="Measure the hot paths on this machine (printed tables).", no_args_is_help=True
)


@app.command("storage")
def storage(
    ops: Annotated[int, typer.Option(min=1, help="Operations per run.")] = 500,
    runs: Annotated[int, typer.Option(min=1, help="Runs; the table shows their median.")] = 5,
    tasks: Annotated[int, typer.Option(min=1, help="Coroutines in the concurrent row.")] = 16,
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Where the scratch database goes (disk matters).")
    ] = None,
) -> None:
    """Quota operations per second on a scratch SQLite database (WAL)."""
    from storage.bench import measure

    rates = asyncio.run(measure(ops, runs, tasks, folder))
    table = Table(title=f"Storage: SQLite {sqlite3.sqlite_version}, {ops} ops x {runs} runs")
    table.add_column("operation")
    for column in ("median ops/s", "min", "max"):
        table.add_column(column, justify="right")
    for rate in rates:
        table.add_row(
            rate.operation,
            f"{rate.median:,.0f}",
            f"{min(rate.per_second):,.0f}",
            f"{max(rate.per_second):,.0f}",
        )
    console.print(table)
