"""Forward-pass times of the two big networks, with random weights of the real sizes:
the StyleGAN2 synthesis network and the e4e encoder. Random weights cost what trained ones do.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from inference.architecture import Architecture
from inference.encoders import EncoderArch, FaceEncoder
from inference.stylegan2 import Generator


@dataclass(frozen=True)
class Timing:
    """Median seconds of one call over the timed runs, and the batch it processed."""

    batch: int
    seconds: float


def describe(device: torch.device) -> str:
    """The GPU's name, or the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def synthesis_seconds(
    resolution: int, batch: int, runs: int, dtype: torch.dtype, device: torch.device
) -> Timing:
    """Median of `runs` synthesis calls of a random config-f generator, after a warm-up."""
    generator = Generator(Architecture(resolution)).eval().requires_grad_(False).to(device)
    z = torch.randn(batch, generator.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ws = generator.mapping(z.to(device))
        seconds = _median(runs, lambda: generator.synthesis(ws, noise_mode="const", dtype=dtype))
    return Timing(batch, seconds)


def encoder_seconds(batch: int, runs: int, device: torch.device) -> Timing:
    """Median of `runs` forward passes of a full-size e4e encoder (IR-SE-50, 256 px)."""
    model = FaceEncoder(EncoderArch(kind="e4e"), torch.zeros(18, 512)).eval().to(device)
    faces = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    with torch.inference_mode():
        return Timing(batch, _median(runs, lambda: model(faces)))


def _median(runs: int, work: Callable[[], object]) -> float:
    """Median wall time of `runs` calls after one warm-up call, device work included."""
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        work()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if run:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
