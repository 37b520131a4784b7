"""Selfie -> toon through the real service, with full-size models of random weights.

Everything a request meets runs for real: admission and the job rows (SQLite), the prepare
processes (decode, detect, align), the worker's inversion by each method, rendering in the
configured runtime, paste-back, JPEG encoding and delivery. Random weights cost what trained
ones cost, so the figures hold before any model is downloaded.

Inversion by optimisation runs K steps and is extrapolated to the configured number: the
encoder's share (`encoder+optimize`) is measured on its own and the steps scale linearly.
Throughput is N users sending at once, with the K steps actually run.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from bench.networks import describe
from bench.platform import PLATFORM, BenchPlatform, BenchReply, submit
from bots.app import App
from bots.config import Settings
from inference.architecture import Architecture
from inference.checkpoints import save_generator
from inference.encoder_checkpoints import save_encoder
from inference.encoders import EncoderArch, FaceEncoder
from inference.pipeline import Toonifier, to_tensor
from inference.settings import StyleSettings
from inference.stylegan2 import Generator
from storage import Store

METHODS = ("encoder", "encoder+optimize", "optimize")
STAGES = ("decode", "detect", "align", "invert", "render", "paste", "other")
FULL_SIZE = 1024  # below it, a narrow encoder stands in for e4e (smoke tests)
SOURCE = "bench.e2e"


@dataclass(frozen=True)
class MethodFigures:
    """One method's runs: seconds per stage and in all, each run's; `steps` is what the
    inversion was extrapolated to, `measured_steps` what ran."""

    method: str
    steps: int
    measured_steps: int
    stages: dict[str, list[float]]
    totals: list[float]
    per_second: float | None  # photos per second with `users` at once

    @property
    def p50(self) -> float:
        return statistics.median(self.totals)

    @property
    def p95(self) -> float:
        return percentile(self.totals, 95)


@dataclass(frozen=True)
class Figures:
    device: str
    runtime: str
    resolution: int
    loss: str
    prepare_processes: int
    users: int
    load_seconds: float  # loading (and converting) the models at start-up
    methods: list[MethodFigures]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (with 5 runs, p95 is the slowest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def measure(
    config: Settings,
    photo: bytes,
    *,
    methods: Sequence[str],
    steps: int,
    runs: int,
    users: int,
    resolution: int,
) -> Figures:
    """Each method `runs` times one job at a time (after one warm-up job), then `users` jobs
    at once. `config` gives the device, runtime, dtype, loss, prepare processes and batching;
    the models are random ones written to a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings = _settings(config, folder, steps, resolution, users)
        start = time.perf_counter()
        toonifier = await asyncio.to_thread(Toonifier.from_config, settings)
        load_seconds = time.perf_counter() - start
        encoder = toonifier.encoder
        store = await Store.open(settings.storage.url, settings.quota)
        app = App(settings, toonifier, store)
        app.service.register(PLATFORM, BenchPlatform(photo))
        await app.start([])
        try:
            figures = []
            for method in methods:
                toonifier.encoder = None if method == "optimize" else encoder
                toonifier.steps = 0 if method == "encoder" else steps
                target = _configured_steps(method, config)
                figures.append(await _method(app, toonifier, method, target, steps, runs, users))
        finally:
            await app.stop()
    return Figures(
        device=describe(toonifier.device),
        runtime=settings.models.runtime,
        resolution=resolution,
        loss=settings.invert.loss,
        prepare_processes=settings.worker.prepare_processes,
        users=users,
        load_seconds=load_seconds,
        methods=figures,
    )


def _configured_steps(method: str, config: Settings) -> int:
    if method == "encoder":
        return 0
    return config.invert.refine_steps if method == "encoder+optimize" else config.invert.steps


async def _method(
    app: App, toonifier: Toonifier, method: str, target: int, steps: int, runs: int, users: int
) -> MethodFigures:
    encoding = 0.0
    if method == "encoder+optimize":
        encoding = await asyncio.to_thread(_encoder_seconds, toonifier)
    await _one(app, "warm-up")
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals = []
    for run in range(runs):
        latency, timings = await _one(app, f"run-{run}")
        invert = timings.get("invert", 0.0)
        if target:  # the optimisation's steps, scaled from those run to those configured
            invert = encoding + (invert - encoding) * target / steps
        for stage in STAGES[:-1]:
            stages[stage].append(invert if stage == "invert" else timings.get(stage, 0.0))
        stages["other"].append(latency - sum(timings.get(s, 0.0) for s in STAGES[:-1]))
        totals.append(latency - timings.get("invert", 0.0) + invert)
    per_second = await _at_once(app, users) if users else None
    return MethodFigures(method, target, steps if target else 0, stages, totals, per_second)


async def _one(app: App, user: str) -> tuple[float, dict[str, float]]:
    """Seconds from admission to delivery, and the job's own timings per stage."""
    reply = BenchReply()
    start = time.perf_counter()
    job_id = await submit(app, user, reply)
    await reply.done.wait()
    latency = time.perf_counter() - start
    record = await app.store.jobs.get(job_id) if job_id else None
    return latency, dict(record.timings) if record else {}


async def _at_once(app: App, users: int) -> float:
    """Photos per second with `users` users sending at the same moment."""
    replies = [BenchReply() for _ in range(users)]
    start = time.perf_counter()
    await asyncio.gather(*(submit(app, f"user-{n}", r) for n, r in enumerate(replies)))
    await asyncio.gather(*(reply.done.wait() for reply in replies))
    return users / (time.perf_counter() - start)


def _encoder_seconds(toonifier: Toonifier) -> float:
    """Median seconds of the encoder's forward pass on one face (its share of
    `encoder+optimize`), called the way the Toonifier calls it."""
    encoder = toonifier.encoder
    assert encoder is not None
    size = toonifier.resolution
    targets = to_tensor([Image.new("RGB", (size, size), (128, 100, 90))], toonifier.device)
    times = []
    for _ in range(4):  # the first warms up
        start = time.perf_counter()
        toonifier.networks.encode(encoder, targets)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _settings(config: Settings, folder: Path, steps: int, resolution: int, users: int) -> Settings:
    """`config` with random models in `folder`, one style, every method's file present, SQLite
    in `folder`, no quota in the way and no chat adapter."""
    _write_models(folder, resolution)
    strength = min(32, resolution // 2)
    vgg = config.models.dir / config.models.perceptual
    loss = config.invert.loss
    if loss == "perceptual" and vgg.is_file():
        (folder / config.models.perceptual).symlink_to(vgg.resolve())
    else:
        loss = "pixel"
    style = StyleSettings(
        label="Bench", model="toon", strengths=[strength], default_strength=strength
    )
    return config.model_copy(
        update={
            "models": config.models.model_copy(update={"dir": folder, "face": "ffhq"}),
            "styles": {"bench": style},
            "style": "bench",
            "invert": config.invert.model_copy(
                update={
                    "method": "encoder+optimize",
                    "encoder": "e4e",
                    "refine_steps": steps,
                    "steps": steps,
                    "loss": loss,
                }
            ),
            "worker": config.worker.model_copy(update={"queue_size": max(users, 1) + 1}),
            "quota": config.quota.model_copy(
                update={"daily": 1_000_000, "cooldown": 0, "max_in_flight": max(users, 1)}
            ),
            "storage": config.storage.model_copy(
                update={"url": f"sqlite+aiosqlite:///{folder / 'bench.db'}"}
            ),
            "telegram": config.telegram.model_copy(update={"enabled": False}),
            "discord": config.discord.model_copy(update={"enabled": False}),
            "ops": config.ops.model_copy(update={"port": 0}),
        }
    )


def _write_models(folder: Path, resolution: int) -> None:
    """Random config-f FFHQ and toon generators and an e4e encoder, in the canonical files."""
    arch = Architecture(resolution)
    with _seeded(0):
        for name in ("ffhq", "toon"):
            save_generator(Generator(arch), folder / f"{name}.safetensors", source=SOURCE)
        encoder = FaceEncoder(_encoder_arch(resolution, arch.num_ws), torch.zeros(arch.num_ws, 512))
    save_encoder(encoder.eval(), folder / "e4e.safetensors", source=SOURCE)


def _encoder_arch(resolution: int, num_ws: int) -> EncoderArch:
    """e4e's IR-SE-50 at full size; a narrow one for the smaller sizes smoke tests run."""
    if resolution >= FULL_SIZE:
        return EncoderArch(kind="e4e", n_styles=num_ws)
    return EncoderArch(
        kind="e4e", widths=(16, 32, 48, 64), units=(1, 1, 1, 1), style_channels=16,
        n_styles=num_ws, input_size=64,
    )  # fmt: skip


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
