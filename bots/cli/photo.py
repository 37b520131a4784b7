"""`toonify photo`: toonify one picture on this machine, without any chat platform."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bots import texts
from bots.cli.common import check_output, console, fail, settings
from bots.config import Settings

if TYPE_CHECKING:
    from inference.pipeline import BadChoice, Finished, Toonifier
    from inference.stages import Stage


def photo(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="The photo (JPEG, PNG, WebP, HEIC, GIF).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.")],
    style: Annotated[
        str | None, typer.Option(help="A name under [styles] in the config (default: its style).")
    ] = None,
    strength: Annotated[
        int | None, typer.Option(help="Swap resolution among the style's strengths.")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="Optimisation steps (default: invert.steps or invert.refine_steps)."
        ),
    ] = None,
    side_by_side: Annotated[
        bool, typer.Option("--side-by-side", help="The original beside the toon.")
    ] = False,
    faces_only: Annotated[
        bool,
        typer.Option(
            "--faces-only",
            help="Only the toon faces, in a row (below the originals' row with --side-by-side).",
        ),
    ] = False,
) -> None:
    """Toonify every face of a photo and write the result (format from OUT's extension)."""
    # torch loads here, not when any other command starts.
    from inference.errors import ModelLoadError
    from inference.images import ImageError
    from inference.pipeline import BadChoice, Toonifier
    from inference.prepare import NoFace

    check_output(output)
    config = settings(ctx)
    if steps is not None:
        config = _with_steps(config, steps)
    try:
        data = source.read_bytes()
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")
    with console.status("loading models"):
        try:
            toonifier = Toonifier.from_config(config)
        except ModelLoadError as exc:
            fail(str(exc))
    try:
        toonifier.pick(style, strength)
        finished = _run(toonifier, data, style, strength)
    except BadChoice as exc:
        fail(_bad_choice(exc, toonifier))
    except ImageError as exc:
        fail(texts.image_problem(exc))
    except NoFace as exc:
        fail(texts.no_face(exc.skipped))
    start = time.perf_counter()
    picture = _compose(finished, side_by_side, faces_only)
    try:
        picture.save(output, quality=95)
    except (OSError, ValueError) as exc:
        fail(f"cannot write {output}: {exc}")
    finished.timings["encode"] = time.perf_counter() - start
    for skipped in finished.skipped:
        console.print(f"[yellow]skipped:[/yellow] {texts.skipped_face(skipped)}", highlight=False)
    console.print(
        f"{output}: {len(finished.faces)} face(s), {finished.style} strength {finished.strength}"
    )
    console.print(
        format_timings(finished.timings, toonifier.steps), highlight=False, soft_wrap=True
    )


def _bad_choice(error: BadChoice, toonifier: Toonifier) -> str:
    if error.strength is None:
        return texts.unknown_style(error.style, list(toonifier.styles))
    info = toonifier.styles[error.style]
    return texts.bad_strength(error.strength, info.label, info.strengths)


def _with_steps(config: Settings, steps: int) -> Settings:
    """The same config with `steps` optimisation steps, from w_avg or from the encoder."""
    invert = config.invert.model_copy(update={"steps": steps, "refine_steps": steps})
    return config.model_copy(update={"invert": invert})


def _run(toonifier: Toonifier, data: bytes, style: str | None, strength: int | None) -> Finished:
    """prepare, invert, finish under one progress bar whose label follows the stage."""
    columns = (
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("detect", total=None)
        prepared = toonifier.prepare(data)

        def progress(stage: Stage, step: int, total: int) -> None:
            bar.update(task, description=stage, completed=step, total=total)

        (latents,) = toonifier.invert([prepared], progress)
        bar.update(task, description="render", completed=0, total=1)
        return toonifier.finish(prepared, latents, style, strength)


def _compose(finished: Finished, side_by_side: bool, faces_only: bool) -> Image.Image:
    """The pasted-back photo or the toon faces, with the originals beside them on request."""
    if faces_only:
        rows = [finished.faces]
        if side_by_side:
            rows.insert(0, [face.image for face in finished.source.faces])
        return _grid(rows)
    if side_by_side:
        return _grid([[finished.source.photo, finished.photo]])
    return finished.photo


def _grid(rows: list[list[Image.Image]]) -> Image.Image:
    """Same-size images in rows, left to right."""
    width, height = rows[0][0].size
    sheet = Image.new("RGB", (width * len(rows[0]), height * len(rows)))
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            sheet.paste(image, (x * width, y * height))
    return sheet


def format_timings(timings: dict[str, float], steps: int) -> str:
    """One line: each stage's seconds in pipeline order, inversion with its per-step time."""
    parts = []
    for stage, seconds in timings.items():
        text = f"{stage} {seconds:.2f} s"
        if stage == "invert" and steps:
            text += f" ({steps} steps, {seconds / steps * 1000:.0f} ms/step)"
        parts.append(text)
    return " · ".join(parts)
