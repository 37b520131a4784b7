"""`toonify models doctor`: the files this configuration needs, and how to get each missing one."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from bots.cli.common import console, settings

if TYPE_CHECKING:
    from inference.model_needs import Diagnosis, Need

MARKS = {
    "ok": "[green]ok[/green]       ",
    "missing": "[red]MISSING[/red]  ",
    "optional": "optional ",
}


def doctor(
    ctx: typer.Context,
    fetch: Annotated[
        bool,
        typer.Option("--fetch", help="Download what is missing and has a direct link (needs net)."),
    ] = False,
    toon: Annotated[
        str | None,
        typer.Option(
            help="With --fetch: a file or URL to import as the default style's model if missing."
        ),
    ] = None,
) -> None:
    """List every file the configuration needs, present or missing, with the fix for each.

    Exits 1 while a needed file is missing. scripts/run runs it with --fetch."""
    # torch loads here, not when any other command starts.
    from inference.devices import resolve_device
    from inference.model_needs import diagnose

    config = settings(ctx)
    device = resolve_device(config.models.device)
    diagnosis = diagnose(config, device)
    failed: list[str] = []
    if fetch:
        failed = _get(diagnosis, config.models.dir, toon, config.styles[config.style].model)
        diagnosis = diagnose(config, device)
    _print(diagnosis, config.models.dir, failed)
    if diagnosis.missing:
        raise typer.Exit(1)


def _get(diagnosis: Diagnosis, models_dir: Path, toon: str | None, toon_name: str) -> list[str]:
    """Import --toon, then fetch each missing file with a direct link; a failure is printed and
    the next file tried, so that one run gets everything the network allows. Returns the
    names of the files that failed."""
    from inference.checkpoints import CheckpointError
    from inference.model_needs import fetch
    from inference.model_store import ModelStore, ModelStoreError

    store = ModelStore(models_dir)
    # Each job takes progress=: (bytes received, total) -> None.
    jobs: list[tuple[str, str, Callable[..., object]]] = []
    for need in diagnosis.needs:
        if toon is not None and need.name == toon_name and need.missing:
            importing = partial(store.import_checkpoint, toon, toon_name)
            jobs.append((need.path.name, f"importing {toon} as {toon_name}", importing))
    for need in diagnosis.needs:
        if need.fetchable:
            fetching = partial(fetch, need, store)
            jobs.append((need.path.name, f"fetching {need.path.name} from {need.url}", fetching))
    failed = []
    for name, title, job in jobs:
        console.print(title, highlight=False, markup=False, soft_wrap=True)
        try:
            with _bar() as bar:
                task = bar.add_task("downloading", total=None)
                job(progress=partial(_advance, bar, task))
        except (ModelStoreError, CheckpointError) as exc:
            console.print(f"[red]failed:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            failed.append(name)
    return failed


def _advance(bar: Progress, task: TaskID, done: int, total: int | None) -> None:
    bar.update(task, completed=done, total=total)


def _bar() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    return Progress(
        *columns,
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _print(diagnosis: Diagnosis, models_dir: Path, failed: list[str]) -> None:
    console.print(
        f"models for this configuration, on {diagnosis.device.type} "
        f"(invert.method resolves to {diagnosis.method}); models.dir is {models_dir}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for need in diagnosis.needs:
        _print_need(need)
    missing = diagnosis.missing
    if not missing:
        console.print("everything needed is there", highlight=False)
        return
    fetchable = [n.path.name for n in missing if n.fetchable and n.path.name not in failed]
    summary = f"{len(missing)} needed file{'s' if len(missing) > 1 else ''} missing"
    if fetchable:
        summary += f"; `--fetch` (and scripts/run) download: {', '.join(fetchable)}"
    if failed:
        summary += f"; could not get {', '.join(failed)} here: see the fix above"
    console.print(summary, highlight=False, markup=False, soft_wrap=True)


def _print_need(need: Need) -> None:
    state = "ok" if need.problem is None else "missing" if need.required else "optional"
    problem = "" if need.problem in (None, "missing") else f": {need.problem}"
    console.print(MARKS[state], end="", highlight=False)
    console.print(f"{need.path}{problem}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"         {need.what}", highlight=False, markup=False, soft_wrap=True)
    if need.problem is None:
        return
    for i, line in enumerate(need.fix):
        lead = "    fix: " if i == 0 else "         "
        console.print(f"{lead}{line}", highlight=False, markup=False, soft_wrap=True)
