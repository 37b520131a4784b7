"""`toonify bench`: Measure the hot paths on this machine (printed tables)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from bots.cli.common import console, fail, settings
from inference.faces import FaceBackendError, FaceDetector, make_backend, make_detector
from inference.images import ImageError

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
    from bench.storage import measure

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


@app.command("faces")
def faces(
    ctx: typer.Context,
    photos: Annotated[
        list[Path] | None,
        typer.Argument(
            exists=True, dir_okay=False, help="Photos (default: test photos from scikit-image)."
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per photo (median shown).")] = 5,
    size: Annotated[int, typer.Option(min=16, max=4096, help="Aligned crop size.")] = 1024,
    threads: Annotated[
        int, typer.Option(min=1, help="torch threads (prepare processes run with 1).")
    ] = 1,
) -> None:
    """Decode, detection (+ landmarks), alignment, all three together, and paste-back time."""
    from bench.faces import STAGES, measure, sample_photos

    config = settings(ctx)
    if photos:
        named = {path.name: path.read_bytes() for path in photos}
    else:
        try:
            named = sample_photos()
        except ImportError:
            fail("pass photos, or install the dev extra (scikit-image) for the sample photos")
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    table = Table(
        "photo", "backend", "faces", *STAGES,
        title=f"Faces at {size} px, {threads} torch thread(s), load average {load:.1f} at start",
    )  # fmt: skip
    missing = []
    for name in ("face-alignment", "dlib"):
        try:
            backend = make_backend(name, config.models.device)
        except FaceBackendError as exc:
            missing.append(f"{name} is unavailable: {exc}")
            continue
        where = getattr(backend, "device", "cpu")
        detector = FaceDetector(backend, config.faces.max_faces, config.faces.min_size)
        try:
            rows = measure(detector, named, config.limits, size, runs)
        except ImageError as exc:
            fail(str(exc))
        for row in rows:
            table.add_row(
                f"{row.photo} {row.size[0]}x{row.size[1]}",
                f"{name} ({where})",
                str(row.faces),
                *(f"{row.seconds[stage] * 1000:.0f} ms" for stage in STAGES),
            )
    console.print(table)
    for line in missing:
        console.print(f"[yellow]{line}[/yellow]")


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    photos: Annotated[
        list[Path] | None,
        typer.Argument(
            exists=True, dir_okay=False, help="Photos (default: test photos from scikit-image)."
        ),
    ] = None,
    processes: Annotated[str, typer.Option(help="Prepare processes to compare.")] = "1,2",
    copies: Annotated[int, typer.Option(min=1, help="Copies of each photo per run.")] = 4,
    runs: Annotated[int, typer.Option(min=1, help="Runs (median shown).")] = 3,
    size: Annotated[int, typer.Option(min=16, max=4096, help="Aligned face size.")] = 1024,
) -> None:
    """Photos per second through the prepare pool (decode, faces, align), all sent at once."""
    from bench.faces import sample_photos
    from bench.prepare import pool_throughput, thread_throughput
    from inference.prepare_pool import PrepareSpec

    config = settings(ctx)
    if photos:
        named = {path.name: path.read_bytes() for path in photos}
    else:
        try:
            named = sample_photos()
        except ImportError:
            fail("pass photos, or install the dev extra (scikit-image) for the sample photos")
    burst = [data for data in named.values() for _ in range(copies)]
    try:
        detector = make_detector(config.faces, config.models.device)
    except FaceBackendError as exc:
        fail(str(exc))
    spec = PrepareSpec.of(detector, config.faces, config.limits, size)
    load = os.getloadavg()[0]
    rows = [asyncio.run(thread_throughput(detector, spec, burst, runs))]
    for count in _ints(processes):
        rows.append(asyncio.run(pool_throughput(spec, count, burst, runs)))
    title = (
        f"Prepare: {len(burst)} photos at once ({', '.join(named)}), {detector.backend}, "
        f"{os.cpu_count()} cores, {runs} runs, load average {load:.1f} at start"
    )
    table = Table(
        "preparation", "median photos/s", "min", "max", "CPU ms / photo", "of which the bot's",
        "photos/s per core", title=title,
    )  # fmt: skip
    for row in rows:
        name = f"{row.processes} process(es)" if row.processes else "1 thread in the bot"
        table.add_row(
            name,
            f"{row.median:.2f}",
            f"{min(row.per_second):.2f}",
            f"{max(row.per_second):.2f}",
            f"{1000 / row.per_core:.0f}",
            f"{1000 * statistics.median(row.bot_cpu_per_photo):.0f}",
            f"{row.per_core:.2f}",
        )
    console.print(table)


@app.command("pipeline")
def pipeline(
    ctx: typer.Context,
    steps: Annotated[int, typer.Option(min=2, help="Inversion steps timed (first skipped).")] = 5,
    runs: Annotated[int, typer.Option(min=1, help="Runs of the other stages (median).")] = 3,
    resolution: Annotated[int, typer.Option(help="Generator resolution.")] = 1024,
) -> None:
    """Per-stage times of a toon with random-weight generators: 1 face and 4 faces."""
    from bench.networks import describe
    from bench.pipeline import STAGES, group_photos, measure, random_toonifier
    from inference.devices import resolve_device
    from inference.invert import PerceptualModelMissingError
    from inference.pipeline import distance_factory

    config = settings(ctx)
    device = resolve_device(config.models.device)
    loss = config.invert.loss
    try:
        make_distance = distance_factory(config.invert, config.models, device)
    except PerceptualModelMissingError as exc:
        console.print(f"[yellow]{exc}; timing the pixel loss instead[/yellow]")
        loss = "pixel"
        pixel = config.invert.model_copy(update={"loss": loss})
        make_distance = distance_factory(pixel, config.models, device)
    try:
        detector = FaceDetector(
            make_backend(config.faces.backend, str(device)),
            max(config.faces.max_faces, 4),
            config.faces.min_size,
        )
    except FaceBackendError as exc:
        fail(str(exc))
    dtype = getattr(torch, config.models.dtype)
    with console.status(f"building random {resolution} px generators on {device}"):
        toonifier = random_toonifier(
            resolution, device, dtype, detector, config.limits, make_distance
        )
    try:
        photos = group_photos()
    except ImportError:
        fail("install the dev extra (scikit-image) for the sample photos")
    rows = measure(toonifier, photos, steps, runs)
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    title = (
        f"Pipeline: {resolution} px random generators on {describe(device)}{threads}, "
        f"{config.models.dtype} render, {loss} loss, {steps} steps, {runs} runs"
    )
    table = Table("photo", "faces", *STAGES, title=title)
    for row in rows:
        table.add_row(
            row.photo, str(row.faces), *(f"{row.seconds[s] * 1000:,.0f} ms" for s in STAGES)
        )
    console.print(table)


@app.command("encoder")
def encoder(
    ctx: typer.Context,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per row (median shown).")] = 5,
) -> None:
    """Forward time per face of a full-size e4e encoder (random weights), batch 1 and 8, in
    models.runtime."""
    from bench.networks import describe, encoder_seconds
    from inference.devices import resolve_device
    from inference.runtime import RuntimeUnavailable

    models = settings(ctx).models
    device = resolve_device(models.device)
    load = os.getloadavg()[0]
    table = Table(
        title=f"Encoder forward (IR-SE-50, 256 px, float32) on {describe(device)}, "
        f"{models.runtime}, load average {load:.1f} at start"
    )
    for column in ("batch", "ms / batch", "ms / face", "faces / s", "conversion s"):
        table.add_column(column, justify="right")
    for batch in (1, 8):
        try:
            timing = encoder_seconds(batch, runs, device, models.runtime)
        except RuntimeUnavailable as exc:
            fail(str(exc))
        table.add_row(
            str(batch),
            f"{timing.seconds * 1e3:.1f}",
            f"{timing.seconds * 1e3 / batch:.1f}",
            f"{batch / timing.seconds:.1f}",
            f"{timing.setup:.1f}",
        )
    console.print(table)


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


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
    """Images per second of the StyleGAN2 synthesis network (random config-f weights), in
    models.runtime."""
    from bench.networks import describe, synthesis_seconds
    from inference.runtime import RuntimeUnavailable

    runtime = settings(ctx).models.runtime
    setting = device or settings(ctx).models.device
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(setting)
    dtypes = [torch.float32]
    if target.type == "cuda":
        dtypes += [torch.float16, torch.bfloat16]
    threads = f", {torch.get_num_threads()} threads" if target.type == "cpu" else ""
    load = os.getloadavg()[0]
    table = Table(
        "Resolution", "Batch", "dtype", "Median ms", "Images/s", "conversion s",
        title=f"StyleGAN2 synthesis on {describe(target)}{threads}, {runtime}, median of "
        f"{runs}, load average {load:.1f} at start",
    )  # fmt: skip
    for resolution in _ints(resolutions):
        for dtype in dtypes:
            for batch in _ints(batches):
                with console.status(f"{resolution} px, batch {batch}, {dtype}"):
                    try:
                        timing = synthesis_seconds(resolution, batch, runs, dtype, target, runtime)
                    except RuntimeUnavailable as exc:
                        fail(str(exc))
                table.add_row(
                    str(resolution),
                    str(batch),
                    str(dtype).removeprefix("torch."),
                    f"{timing.seconds * 1e3:.0f}",
                    f"{batch / timing.seconds:.2f}",
                    f"{timing.setup:.1f}",
                )
    console.print(table)


@app.command("e2e")
def e2e(
    ctx: typer.Context,
    photo: Annotated[
        Path | None,
        typer.Argument(exists=True, dir_okay=False, help="A selfie (default: the astronaut)."),
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Inversion methods, comma-separated.")
    ] = "encoder,encoder+optimize,optimize",
    steps: Annotated[
        int, typer.Option(min=1, help="Optimisation steps run (K), scaled to the configured.")
    ] = 2,
    runs: Annotated[int, typer.Option(min=1, help="Jobs one at a time per method.")] = 5,
    users: Annotated[int, typer.Option(min=0, help="Users sending at once (0: skip).")] = 4,
    resolution: Annotated[int, typer.Option(help="Generator resolution (1024: full size).")] = 1024,
) -> None:
    """Selfie -> toon through the service (prepare processes, worker, delivery), random weights."""
    from bench.e2e import METHODS, STAGES, measure

    config = settings(ctx)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    if unknown := sorted(set(chosen) - set(METHODS)):
        raise typer.BadParameter(f"{', '.join(unknown)}: the methods are {', '.join(METHODS)}")
    if photo is not None:
        data = photo.read_bytes()
    else:
        try:
            from bench.pipeline import group_photos
        except ImportError:
            fail("pass a photo, or install the dev extra (scikit-image) for the astronaut")
        data = group_photos()["astronaut.jpg"]
    load = os.getloadavg()[0]
    with console.status(f"writing and loading random {resolution} px models"):
        figures = asyncio.run(
            measure(
                config, data, methods=chosen, steps=steps, runs=runs, users=users,
                resolution=resolution,
            )
        )  # fmt: skip
    threads = f", {torch.get_num_threads()} threads" if figures.device == "cpu" else ""
    title = (
        f"Selfie -> toon on {figures.device}{threads} ({figures.runtime}), {resolution} px random "
        f"models, {figures.loss} loss, {figures.prepare_processes} prepare processes, "
        f"{runs} runs, load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    table = Table("method", "steps", *(f"{s} p50" for s in STAGES), "p50", "p95", title=title)
    table.add_column(f"photos/s, {users} at once", justify="right")
    for row in figures.methods:
        steps_cell = f"{row.measured_steps} -> {row.steps}" if row.steps else "-"
        table.add_row(
            row.method,
            steps_cell,
            *(f"{statistics.median(row.stages[s]) * 1000:,.0f} ms" for s in STAGES),
            f"{row.p50:,.2f} s",
            f"{row.p95:,.2f} s",
            "-" if row.per_second is None else f"{row.per_second:.2f}",
        )
    console.print(table)
    console.print(
        f"models loaded in {figures.load_seconds:.1f} s (runtime {figures.runtime}); "
        "steps K -> N: K steps run, the inversion scaled to N; photos/s ran the K steps"
    )


@app.command("service")
def service(
    jobs: Annotated[int, typer.Option(min=1, help="Jobs per run.")] = 20,
    runs: Annotated[int, typer.Option(min=1, help="Runs; the table shows their median.")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Inversion steps per job.")] = 2,
    batches: Annotated[str, typer.Option(help="worker.max_batch values to compare.")] = "1,4",
) -> None:
    """Per-job overhead outside inference and throughput by max_batch, on tiny models (CPU)."""
    from bench.service import measure, median

    figures = asyncio.run(measure(jobs, runs, steps, _ints(batches)))
    table = Table(title=f"Service: {jobs} jobs x {runs} runs, tiny 32 px models, {steps} steps")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    overhead = figures.overhead_ms
    table.add_row(
        "overhead per job (ms)",
        f"{median(overhead):.1f}",
        f"{min(overhead):.1f}",
        f"{max(overhead):.1f}",
    )
    for batch, rates in figures.throughput.items():
        table.add_row(
            f"jobs/s, {jobs} users at once, max_batch {batch}",
            f"{median(rates):.2f}",
            f"{min(rates):.2f}",
            f"{max(rates):.2f}",
        )
    console.print(table)


@app.command("broker")
def broker(
    redis: Annotated[
        str, typer.Option(help="Redis URL (flushed!); default: a redis-server of its own.")
    ] = "",
    jobs: Annotated[int, typer.Option(min=1, help="Jobs per run.")] = 12,
    runs: Annotated[int, typer.Option(min=1, help="Runs; the table shows their median.")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Inversion steps per job.")] = 20,
    workers: Annotated[str, typer.Option(help="Numbers of `toonify worker`s to compare.")] = "1,2",
) -> None:
    """The broker's overhead per job and throughput by number of workers, on tiny models."""
    from bench.broker import measure, redis_server
    from bench.service import median

    with redis_server(redis or None) as url:
        figures = asyncio.run(measure(url, jobs, runs, steps, _ints(workers)))
    table = Table(title=f"Broker: {jobs} jobs x {runs} runs, tiny 32 px models, {steps} steps")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    rows = [
        ("overhead per job, embedded (ms)", figures.embedded_ms),
        ("overhead per job, through Redis (ms)", figures.brokered_ms),
    ]
    rows += [
        (f"jobs/s, {jobs} users at once, {count} worker(s)", rates)
        for count, rates in figures.throughput.items()
    ]
    for name, values in rows:
        table.add_row(name, f"{median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}")
    console.print(table)
