"""Latent inversion: the W+ codes of aligned faces in the FFHQ generator.

The StyleGAN2 projector recipe (Karras et al., stylegan2-ada-pytorch `projector.py`), batched:
N faces share one optimisation, yet each evolves as if it were alone, because the losses are
per-sample sums, the noise maps and the random latent noise are per-sample, and Adam's update
is elementwise. On a CPU that holds to rounding (tests: 1e-4). On CUDA it holds only up to the
arithmetic: cuDNN's algorithm (and so its rounding) can change with the batch size, the
backward pass of the area downsampling in perceptual_distance adds with atomics in no fixed
order, and convolutions use TF32 on Ampere and newer by default; the gap this leaves after
hundreds of steps is not yet measured on a GPU.

No step waits for the device: every step's latent noise is drawn up front and uploaded once.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)

from inference.errors import Cancelled, ModelLoadError
from inference.stages import ProgressFn, Stage, StopFn
from inference.stylegan2 import Generator

VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"

W_STATS_SAMPLES = 10_000
W_STATS_SEED = 123
LEARNING_RATE = 0.1
LR_RAMPUP = 0.05
LR_RAMPDOWN = 0.25
LATENT_NOISE = 0.05
LATENT_NOISE_RAMP = 0.75
NOISE_REGULARISATION = 1e5
PERCEPTUAL_SIZE = 256
PIXEL_MIN_SIZE = 16


class PerceptualModelError(ModelLoadError):
    """vgg16.pt is there but is not NVIDIA's network (damaged, cut short, another file)."""


class PerceptualModelMissingError(ModelLoadError):
    """NVIDIA's vgg16.pt is not where the configuration says; the message says how to get it."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the perceptual network {path} is missing: run `toonify models fetch-vgg16` "
            f'(downloads {VGG16_URL}), or set invert.loss = "pixel"'
        )
        self.path = path


@dataclass(frozen=True)
class WStats:
    mean: torch.Tensor  # [w_dim] float32, on the generator's device
    std: float


@dataclass
class Inversion:
    ws: torch.Tensor  # [N, num_ws, w_dim], CPU float32
    noises: list[torch.Tensor]  # per noise layer [N, 1, r, r], CPU float32


Distance = Callable[[torch.Tensor], torch.Tensor]
"""Maps synthesised images [N,3,R,R] in [-1, 1] to one distance per sample [N]."""

_w_stats_cache: weakref.WeakKeyDictionary[Generator, WStats] = weakref.WeakKeyDictionary()


def w_stats(generator: Generator) -> WStats:
    """Mean and spread of W from 10,000 seeded z: the start and the latent noise scale.

    Cached per generator object, since mapping 10,000 codes is not free at every request.
    """
    cached = _w_stats_cache.get(generator)
    if cached is not None:
        return cached
    device = generator.input.input.device
    z = torch.randn(
        W_STATS_SAMPLES, generator.z_dim, generator=torch.Generator().manual_seed(W_STATS_SEED)
    )
    with torch.no_grad():
        w = torch.cat([generator.mapping(chunk.to(device))[:, 0] for chunk in z.split(1000)])
    mean = w.mean(dim=0)
    std = float(((w - mean).square().sum() / W_STATS_SAMPLES).sqrt())
    stats = WStats(mean=mean, std=std)
    _w_stats_cache[generator] = stats
    return stats


def load_perceptual(path: Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """NVIDIA's TorchScript VGG16 (LPIPS-style features); no torchvision needed."""
    if not path.is_file():
        raise PerceptualModelMissingError(path)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated, but it is the only form NVIDIA publishes this network in.
            warnings.simplefilter("ignore", DeprecationWarning)
            vgg: torch.jit.ScriptModule = torch.jit.load(str(path), map_location=device).eval()
        with torch.no_grad():  # the call inversion makes, on a tiny picture
            grey = torch.full((1, 3, 32, 32), 128.0, device=device)
            vgg(grey, resize_images=False, return_lpips=True)
    except Exception as exc:  # torch reports damaged archives and wrong networks many ways
        raise PerceptualModelError(
            f"{path} is not NVIDIA's vgg16.pt (damaged, cut short or another file): delete it "
            "and run `toonify models fetch-vgg16`"
        ) from exc
    return vgg


def perceptual_distance(vgg: Callable[..., torch.Tensor], targets: torch.Tensor) -> Distance:
    """Sum of squared differences of VGG16 features at 256 px, per sample."""

    def features(images: torch.Tensor) -> torch.Tensor:
        images = (images.float() + 1) * (255 / 2)
        if images.shape[-1] > PERCEPTUAL_SIZE:
            images = F.interpolate(images, size=(PERCEPTUAL_SIZE, PERCEPTUAL_SIZE), mode="area")
        return vgg(images, resize_images=False, return_lpips=True)

    with torch.no_grad():
        target_features = features(targets)
    return lambda images: (features(images) - target_features).square().flatten(1).sum(dim=1)


def _pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    levels = [images.float()]
    while levels[-1].shape[-1] > PIXEL_MIN_SIZE:
        levels.append(F.avg_pool2d(levels[-1], kernel_size=2))
    return levels


def pixel_distance(targets: torch.Tensor) -> Distance:
    """Mean squared error at full size and every 2x-downsampled size down to 16 px, per sample.

    The coarse levels pull colour and layout into place early; the fine ones sharpen.
    """
    target_levels = _pyramid(targets)

    def distance(images: torch.Tensor) -> torch.Tensor:
        levels = _pyramid(images)
        return sum(  # type: ignore[return-value]
            (a - b).square().flatten(1).mean(dim=1)
            for a, b in zip(levels, target_levels, strict=True)
        )

    return distance


def learning_rate(t: float) -> float:
    """The projector's schedule: linear ramp-up over 5 %, cosine ramp-down over the last 25 %."""
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return LEARNING_RATE * ramp * min(1.0, t / LR_RAMPUP)


def latent_noise_scale(t: float, w_std: float) -> float:
    """Random exploration of W that fades out quadratically by 75 % of the steps."""
    return w_std * LATENT_NOISE * max(0.0, 1.0 - t / LATENT_NOISE_RAMP) ** 2


def noise_regulariser(noises: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample squared auto-correlation of each noise map and its 2x2 pyramid down to 8 px.

    It keeps the maps noise-like so the image content has to come from the latent.
    """
    total = noises[0].new_zeros(noises[0].shape[0])
    for noise in noises:
        level = noise
        while True:
            total = total + (level * level.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
            total = total + (level * level.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            if level.shape[-1] <= 8:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return total


def _draw(rngs: Sequence[torch.Generator], shape: Sequence[int], count: int = 1) -> torch.Tensor:
    """[N, count, *shape]: `count` draws of `shape` from each face's generator, in order.

    One draw per call, as a loop of `torch.randn(shape)` would make them: a single larger draw
    gives other numbers unless `shape` holds a multiple of 16 values.
    """
    out = torch.empty(len(rngs), count, *shape)
    for row, rng in zip(out, rngs, strict=True):
        for draw in row:
            torch.randn(*shape, generator=rng, out=draw)
    return out


def _upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; to CUDA from pinned memory, without waiting for the copy."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def warm_up_optimiser() -> None:
    """Create one Adam at start-up, outside any inversion.

    torch imports torch._dynamo when the first optimiser of a process is built, and that
    import leaves a reference cycle through its caller's frames: the first inversion's
    tensors would then live until the cyclic garbage collector runs.
    """
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def invert(
    generator: Generator,
    distance: Distance,
    *,
    steps: int,
    seeds: Sequence[int],
    start: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Inversion:
    """Optimise one W+ code and one set of noise maps per seed against `distance`.

    Face i draws its initial noise maps and its latent noise from `torch.Generator(seeds[i])`,
    so a batch gives the same codes as separate runs with the same seeds. The codes start at
    w_avg, or at `start` [N, num_ws, w_dim] (an encoder's answer, refined here).
    """
    device = generator.input.input.device
    stats = w_stats(generator)
    rngs = [torch.Generator().manual_seed(seed) for seed in seeds]

    if start is None:
        start = stats.mean.repeat(len(seeds), generator.num_ws, 1)
    w_opt = start.detach().to(stats.mean).clone().requires_grad_(True)
    noises = [
        _upload(_draw(rngs, buffer.shape[1:])[:, 0], device).requires_grad_(True)
        for buffer in generator.noise_buffers()
    ]
    # Every step's latent noise, drawn now from each face's generator in the order the steps
    # would draw it, and uploaded once: a draw and a blocking copy per step would wait for the
    # device every step. Steps past LATENT_NOISE_RAMP add none and draw none.
    noisy_steps = sum(latent_noise_scale(step / steps, stats.std) > 0 for step in range(steps))
    w_noises = _upload(_draw(rngs, w_opt.shape[1:], noisy_steps), device)  # [N, steps, ...]
    optimiser = torch.optim.Adam([w_opt, *noises], betas=(0.9, 0.999), lr=LEARNING_RATE)

    for step in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled
        t = step / steps
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(t)
        ws = w_opt
        if step < noisy_steps:
            ws = w_opt + w_noises[:, step] * latent_noise_scale(t, stats.std)
        images = generator.synthesis(ws, noise=noises)
        loss = (distance(images) + NOISE_REGULARISATION * noise_regulariser(noises)).sum()
        grads = torch.autograd.grad(loss, [w_opt, *noises])
        for tensor, grad in zip([w_opt, *noises], grads, strict=True):
            tensor.grad = grad
        optimiser.step()
        with torch.no_grad():
            for noise in noises:
                noise -= noise.mean(dim=(1, 2, 3), keepdim=True)
                noise *= noise.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
        if progress is not None:
            progress(Stage.INVERT, step + 1, steps)

    return Inversion(
        ws=w_opt.detach().float().cpu(),
        noises=[noise.detach().float().cpu() for noise in noises],
    )
