"""Per-stage times of the whole pipeline with full-size generators of random weights.

Random weights cost exactly what trained ones cost, so no checkpoint is needed: the figures
say what a request costs on this device before any model is downloaded.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from inference.architecture import Architecture
from inference.faces import FaceDetector
from inference.images import encode_jpeg
from inference.invert import Distance
from inference.pipeline import Latents, StyleInfo, Toonifier, prepare_blends
from inference.prepare import Prepared
from inference.settings import LimitsSettings
from inference.stylegan2 import Generator

STAGES = ("decode", "detect", "align", "invert/step", "render", "paste", "encode")


@dataclass(frozen=True)
class StageTimes:
    """Median seconds per stage for one photo; `faces` is the batch size of invert and render."""

    photo: str
    faces: int
    seconds: dict[str, float]


def random_toonifier(
    resolution: int,
    device: torch.device,
    dtype: torch.dtype,
    detector: FaceDetector,
    limits: LimitsSettings,
    make_distance: Callable[[torch.Tensor], Distance],
    strength: int = 32,
) -> Toonifier:
    """A Toonifier over random FFHQ-sized generators (one style, one strength)."""
    arch = Architecture(resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        face = Generator(arch).to(device).eval().requires_grad_(False)
        toon = Generator(arch).to(device).eval().requires_grad_(False)
    style = StyleInfo("bench", "Bench", [strength], strength)
    return Toonifier(
        face=face,
        blends={"bench": prepare_blends(toon, face, [strength], None)},
        styles={"bench": style},
        default_style="bench",
        detector=detector,
        limits=limits,
        steps=1,
        make_distance=make_distance,
        dtype=dtype,
    )


def measure(
    toonifier: Toonifier, photos: dict[str, bytes], steps: int, runs: int
) -> list[StageTimes]:
    """Medians over `runs` (stages before inversion and after it) and over `steps` steps.

    The first step and a first render, which warm up, are not counted (so `steps` >= 2).
    """
    toonifier.steps = steps
    rows = []
    for name, data in photos.items():
        prepared = [toonifier.prepare(data) for _ in range(runs)]
        latents, step_times = _timed_inversion(toonifier, prepared[0])
        finished = [toonifier.finish(prepared[0], latents) for _ in range(runs + 1)][1:]
        encodes = [_seconds(encode_jpeg, result.photo) for result in finished]
        seconds = {
            stage: statistics.median(p.timings[stage] for p in prepared)
            for stage in ("decode", "detect", "align")
        }
        seconds["invert/step"] = statistics.median(step_times)
        for stage in ("render", "paste"):
            seconds[stage] = statistics.median(r.timings[stage] for r in finished)
        seconds["encode"] = statistics.median(encodes)
        rows.append(StageTimes(name, len(prepared[0].faces), seconds))
    return rows


def _timed_inversion(toonifier: Toonifier, prepared: Prepared) -> tuple[Latents, list[float]]:
    """The latents and the seconds of every step after the first."""
    stamps: list[float] = []

    def stamp(*_: object) -> None:
        if toonifier.device.type == "cuda":
            torch.cuda.synchronize(toonifier.device)
        stamps.append(time.perf_counter())

    (latents,) = toonifier.invert([prepared], progress=stamp)
    return latents, [b - a for a, b in itertools.pairwise(stamps)]


def group_photos() -> dict[str, bytes]:
    """The astronaut alone (batch 1) and four of her in a 2x2 grid (batch 4).

    Raises ImportError without scikit-image (the dev extra).
    """
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    grid = Image.new("RGB", (astronaut.width * 2, astronaut.height * 2))
    for x in (0, astronaut.width):
        for y in (0, astronaut.height):
            grid.paste(astronaut, (x, y))
    return {"astronaut.jpg": encode_jpeg(astronaut), "astronaut-x4.jpg": encode_jpeg(grid)}


def _seconds(work: Callable[[Image.Image], object], image: Image.Image) -> float:
    start = time.perf_counter()
    work(image)
    return time.perf_counter() - start
