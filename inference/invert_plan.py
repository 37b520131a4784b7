"""Which inversion a configuration gets on this machine, and what one face costs there.

`invert.method = "auto"` exists because the right choice depends on the machine: on a GPU the
optimisation takes seconds and is the most faithful, while on a CPU one step of a 1024 px
generator takes tens of seconds, so 300 of them cost most of an hour and an encoder's single
forward pass is the only path a user would wait for. The estimate is measured, not guessed:
one step, one encoder pass and one render on the real models at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import torch

from inference.invert import invert
from inference.settings import InvertSettings

if TYPE_CHECKING:
    from inference.pipeline import Toonifier

log = logging.getLogger(__name__)

Method = Literal["optimize", "encoder", "encoder+optimize"]
T = TypeVar("T")


def resolve_method(settings: InvertSettings, device: torch.device, has_encoder: bool) -> Method:
    """The configured method, or for "auto" the best one this device and models directory allow."""
    if settings.method != "auto":
        return settings.method
    if device.type == "cpu":
        return "encoder" if has_encoder else "optimize"
    return "encoder+optimize" if has_encoder else "optimize"


def method_steps(method: Method, settings: InvertSettings) -> int:
    """Optimisation steps per face: from w_avg, from the encoder's answer, or none."""
    return {"optimize": settings.steps, "encoder": 0, "encoder+optimize": settings.refine_steps}[
        method
    ]


@dataclass(frozen=True)
class Estimate:
    """Seconds of GPU or CPU time one face costs, as measured on the loaded models."""

    method: Method
    device: str
    steps: int
    step_seconds: float  # one optimisation step of one face (0 without steps)
    encode_seconds: float  # one encoder pass (0 without an encoder)
    render_seconds: float  # one render with the default style and strength

    @property
    def seconds(self) -> float:
        return self.encode_seconds + self.steps * self.step_seconds + self.render_seconds

    def describe(self) -> str:
        parts = []
        if self.encode_seconds:
            parts.append(f"encoder {self.encode_seconds:.2f} s")
        if self.steps:
            parts.append(f"{self.steps} steps x {self.step_seconds:.3g} s")
        parts.append(f"render {self.render_seconds:.2f} s")
        return (
            f"invert.method {self.method} on {self.device}: about {_duration(self.seconds)} "
            f"per face ({' + '.join(parts)})"
        )


def measure(toonifier: Toonifier) -> Estimate:
    """Time one face through the inversion the toonifier was built with, on its device and in
    its runtime.

    On an accelerator the first call of each kernel pays for loading and autotuning, so each
    part runs once untimed first there (cheap on a GPU); on a CPU a step is the expensive part
    and runs once.
    """
    device = toonifier.device
    size = toonifier.resolution
    targets = torch.zeros(1, 3, size, size, device=device)
    start = None
    encode_seconds = 0.0
    if toonifier.encoder is not None:
        encoder = toonifier.encoder
        start, encode_seconds = _timed(
            device, lambda: toonifier.networks.encode(encoder, targets).float()
        )
    step_seconds = 0.0
    if toonifier.steps:
        distance = toonifier.make_distance(targets)
        _, step_seconds = _timed(
            device,
            lambda: invert(toonifier.face, distance, steps=1, seeds=[0], start=start).ws,
        )
    style, strength = toonifier.pick(None, None)
    model = toonifier.blends[style][strength]
    ws = toonifier.face.w_avg.to(device).repeat(1, model.num_ws, 1)
    _, render_seconds = _timed(
        device, lambda: toonifier.networks.synthesis(model, ws, toonifier.dtype)
    )
    return Estimate(
        method=method_of(toonifier),
        device=str(device),
        steps=toonifier.steps,
        step_seconds=step_seconds,
        encode_seconds=encode_seconds,
        render_seconds=render_seconds,
    )


def method_of(toonifier: Toonifier) -> Method:
    if toonifier.encoder is None:
        return "optimize"
    return "encoder+optimize" if toonifier.steps else "encoder"


def log_expected_speed(toonifier: Toonifier, settings: InvertSettings) -> Estimate:
    """One INFO line with the seconds per face; one WARNING with the fix when a CPU optimises."""
    estimate = measure(toonifier)
    log.info("%s", estimate.describe())
    if toonifier.device.type == "cpu" and estimate.steps:
        log.warning(
            "%d optimisation steps per face on the CPU take about %s per face. Faster: an FFHQ "
            "encoder (`toonify models import e4e_ffhq_encode.pt --name %s`, see the README's "
            'Encoders) with invert.method = "auto" or "encoder", fewer invert.steps, or a GPU',
            estimate.steps,
            _duration(estimate.seconds),
            settings.encoder,
        )
    return estimate


def _timed(device: torch.device, work: Callable[[], T]) -> tuple[T, float]:
    """`work`'s result and its seconds, waiting for the device; warmed up first off the CPU."""
    if device.type != "cpu":
        work()
        _sync(device)
    begin = time.perf_counter()
    result = work()
    _sync(device)
    return result, time.perf_counter() - begin


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
