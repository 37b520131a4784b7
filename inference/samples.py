"""Random faces from a generator, for checking at a glance that a model loaded right."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from inference.stylegan2 import Generator


def seed_latents(seeds: Sequence[int], z_dim: int) -> Tensor:
    """z for each seed as NVlabs' generate.py draws it, so a seed shows the same face there."""
    return torch.from_numpy(
        np.stack([np.random.RandomState(seed).randn(z_dim) for seed in seeds]).astype(np.float32)
    )


def render_seeds(
    generator: Generator, seeds: Sequence[int], psi: float = 0.7, batch_size: int = 4
) -> Tensor:
    """Images [N, 3, R, R] in [-1, 1] (clamped), const noise, truncated with `psi`."""
    device = generator.input.input.device
    z = seed_latents(seeds, generator.z_dim)
    images = []
    with torch.no_grad():
        for chunk in z.split(batch_size):
            ws = generator.mapping(chunk.to(device), truncation_psi=psi)
            images.append(generator.synthesis(ws, noise_mode="const").clamp(-1, 1).cpu())
    return torch.cat(images)


def to_grid_image(images: Tensor, columns: int | None = None) -> Image.Image:
    """Tile [N, 3, H, W] images in [-1, 1] into one RGB picture, row by row."""
    n, _, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    grid = torch.zeros(3, rows * h, columns * w, dtype=torch.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return Image.fromarray(grid.permute(1, 2, 0).numpy())
