from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)

from inference.errors import Cancelled
from inference.invert import (
    PerceptualModelMissingError,
    invert,
    latent_noise_scale,
    learning_rate,
    load_perceptual,
    noise_regulariser,
    perceptual_distance,
    pixel_distance,
    w_stats,
)
from inference.stylegan2 import Generator
from tests.support.tiny_models import random_ws, render
from tests.support.tiny_toonify import tiny_face_generator

# The invert.steps a test configuration would use at 32 px.
STEPS = 100


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generator() -> Generator:
    return tiny_face_generator(32)


@pytest.fixture(scope="module")
def targets(generator: Generator) -> torch.Tensor:
    """Images of three known latents."""
    return render(generator, random_ws(generator, 3, seed=5))


def errors(generator: Generator, ws: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error of the codes rendered as the pipeline renders them."""
    return (render(generator, ws) - targets).square().mean(dim=(1, 2, 3))


class FakeVgg16(torch.nn.Module):
    """Stands in for NVIDIA's vgg16.pt: same call, unit-normalised features of two convs."""

    def __init__(self) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(0)
        self.conv1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=rng) / 5)
        self.conv2 = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=rng) / 8)

    def forward(
        self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False
    ) -> torch.Tensor:
        assert not resize_images, "the projector resizes itself"
        assert return_lpips, "the projector compares LPIPS features"
        assert float(img.max()) > 2.0, "images must come in 0..255"
        f1 = F.relu(F.conv2d(img / 127.5 - 1, self.conv1, stride=2, padding=1))
        f2 = F.relu(F.conv2d(f1, self.conv2, stride=2, padding=1))
        parts = []
        for f in [f1, f2]:
            f = f / (f.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            parts.append(f.flatten(1) / math.sqrt(f.shape[2] * f.shape[3]))
        return torch.cat(parts, dim=1)


def test_known_latents_are_inverted_back(generator: Generator, targets: torch.Tensor) -> None:
    start = w_stats(generator).mean.repeat(3, generator.num_ws, 1)
    before = errors(generator, start, targets)
    found = invert(generator, pixel_distance(targets), steps=STEPS, seeds=[0, 1, 2])
    assert found.ws.shape == (3, generator.num_ws, generator.w_dim)
    after = errors(generator, found.ws, targets)
    assert (before / after >= 10).all(), (before, after)


def test_batch_equals_separate_runs_with_the_same_seeds(
    generator: Generator, targets: torch.Tensor
) -> None:
    together = invert(generator, pixel_distance(targets), steps=30, seeds=[7, 8, 9])
    for i, seed in enumerate([7, 8, 9]):
        alone = invert(generator, pixel_distance(targets[i : i + 1]), steps=30, seeds=[seed])
        torch.testing.assert_close(alone.ws[0], together.ws[i], atol=1e-4, rtol=0)
        for mine, batched in zip(alone.noises, together.noises, strict=True):
            torch.testing.assert_close(mine[0], batched[i], atol=1e-4, rtol=0)
    # The seed matters: the same face with another seed lands elsewhere.
    other = invert(generator, pixel_distance(targets[:1]), steps=30, seeds=[8])
    assert (other.ws[0] - together.ws[0]).abs().max() > 0.01


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_perceptual_path_loads_torchscript_and_descends(
    tmp_path: Path, generator: Generator, targets: torch.Tensor
) -> None:
    path = tmp_path / "vgg16.pt"
    torch.jit.save(torch.jit.script(FakeVgg16()), str(path))
    vgg = load_perceptual(path)
    distance = perceptual_distance(vgg, targets)
    start = w_stats(generator).mean.repeat(3, generator.num_ws, 1)
    before = distance(render(generator, start))
    found = invert(generator, distance, steps=50, seeds=[0, 1, 2])
    after = distance(render(generator, found.ws))
    assert (before / after >= 4).all(), (before, after)


def test_missing_perceptual_network_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(PerceptualModelMissingError) as info:
        load_perceptual(tmp_path / "vgg16.pt")
    message = str(info.value)
    assert "toonify models fetch-vgg16" in message
    assert "nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt" in message
    assert 'invert.loss = "pixel"' in message


def test_should_stop_cancels_between_steps(generator: Generator, targets: torch.Tensor) -> None:
    seen: list[tuple[str, int, int]] = []
    with pytest.raises(Cancelled):
        invert(
            generator,
            pixel_distance(targets),
            steps=STEPS,
            seeds=[0, 1, 2],
            progress=lambda *event: seen.append(event),
            should_stop=lambda: len(seen) >= 3,
        )
    assert seen == [("invert", 1, STEPS), ("invert", 2, STEPS), ("invert", 3, STEPS)]


def test_schedules_follow_the_projector() -> None:
    assert learning_rate(0.0) == 0.0
    assert learning_rate(0.025) == pytest.approx(0.05)
    assert learning_rate(0.05) == pytest.approx(0.1)
    assert learning_rate(0.5) == pytest.approx(0.1)
    assert learning_rate(0.875) == pytest.approx(0.05)
    assert learning_rate(1.0) == pytest.approx(0.0)
    assert latent_noise_scale(0.0, 2.0) == pytest.approx(0.1)
    assert latent_noise_scale(0.375, 2.0) == pytest.approx(0.025)
    assert latent_noise_scale(0.75, 2.0) == 0.0
    assert latent_noise_scale(0.9, 2.0) == 0.0


def test_noise_regulariser_is_per_sample() -> None:
    rng = torch.Generator().manual_seed(0)
    white = torch.randn(1, 1, 32, 32, generator=rng)
    smooth = F.interpolate(torch.randn(1, 1, 4, 4, generator=rng), size=32, mode="bilinear")
    smooth = (smooth - smooth.mean()) / smooth.std()
    both = noise_regulariser([torch.cat([white, smooth])])
    assert both[1] > 100 * both[0]  # correlated maps are penalised, white noise hardly
    torch.testing.assert_close(both[0], noise_regulariser([white])[0])
    torch.testing.assert_close(both[1], noise_regulariser([smooth])[0])


def test_w_stats_are_computed_once_per_generator(generator: Generator) -> None:
    first = w_stats(generator)
    assert w_stats(generator) is first
    assert first.mean.shape == (generator.w_dim,)
    assert first.std > 0
    assert w_stats(tiny_face_generator(32, seed=3)) is not first
