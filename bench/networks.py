"""Forward-pass times of the two big networks, with random weights of the real sizes:
the StyleGAN2 synthesis network and the e4e encoder, in either runtime (inference/runtime.py).
Random weights cost what trained ones do.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from inference.architecture import Architecture
from inference.encoders import EncoderArch, FaceEncoder
from inference.runtime import Runtime, load_networks
from inference.stylegan2 import Generator


@dataclass(frozen=True)
class Timing:
    """Median seconds of one call over the timed runs, and the batch it processed."""

    batch: int
    seconds: float
    setup: float = 0.0  # seconds to convert the network for the runtime


def describe(device: torch.device) -> str:
    """The GPU's name, or the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def synthesis_seconds(
    resolution: int,
    batch: int,
    runs: int,
    dtype: torch.dtype,
    device: torch.device,
    runtime: Runtime = "torch",
) -> Timing:
    """Median of `runs` renders (synthesis with the stored noise) of a random config-f
    generator in `runtime`, after a warm-up; `setup` is the runtime's conversion."""
    generator = Generator(Architecture(resolution)).eval().requires_grad_(False).to(device)
    z = torch.randn(batch, generator.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ws = generator.mapping(z.to(device))
    start = time.perf_counter()
    networks = load_networks(runtime, device, dtype, [generator], [])
    setup = time.perf_counter() - start
    seconds = _median(runs, lambda: networks.synthesis(generator, ws, dtype))
    return Timing(batch, seconds, setup)


def encoder_seconds(
    batch: int, runs: int, device: torch.device, runtime: Runtime = "torch"
) -> Timing:
    """Median of `runs` forward passes of a full-size e4e encoder (IR-SE-50, 256 px) in
    `runtime`; `setup` is the runtime's conversion."""
    model = FaceEncoder(EncoderArch(kind="e4e"), torch.zeros(18, 512)).eval().to(device)
    model.requires_grad_(False)
    faces = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    start = time.perf_counter()
    networks = load_networks(runtime, device, torch.float32, [], [model])
    setup = time.perf_counter() - start
    return Timing(batch, _median(runs, lambda: networks.encode(model, faces)), setup)


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
