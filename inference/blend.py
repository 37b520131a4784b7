"""Resolution-dependent model blending (layer swapping), the toonify recipe.

Rules of Pinkney's blend_models.py, on rosinality parameter names:
- A synthesis layer at resolution r has position 2*log2(r/4) + level, where level 0 is the
  4x4 constant input or a block's upsampling conv (Const / Conv0_up) and level 1 is the
  block's second conv or any ToRGB (Conv1 / ToRGB).
- mid is the position of (swap_resolution, level 0) and x = position - mid.
- Hard switch: the texture model's tensor iff x > 1, i.e. every layer above the swap
  resolution; the swap resolution itself comes from the structure model.
- Smooth (blend_width w): texture weight sigmoid(x / w), structure weight 1 - that.
- Never blended, always the structure model's: the mapping network, w_avg, the 4x4 conv
  (`conv1`), the noise buffers and the fixed blur/upsample kernels.

A hard blend copies nothing: its tensors are those of the two source models (so the pipeline
can keep several blends per style in memory for the price of one model each).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from inference.errors import ModelLoadError
from inference.stylegan2 import Generator


class BlendError(ModelLoadError):
    """The two models cannot be blended, or the swap resolution does not fit them."""


def layer_position(key: str) -> int | None:
    """Blend position of a synthesis parameter, or None if it is never blended."""
    if key == "input.input":
        return 0
    if key.endswith(".kernel"):
        return None
    if key.startswith("to_rgb1."):
        return 1
    if m := re.match(r"convs\.(\d+)\.", key):
        index = int(m[1])
        return 2 * (index // 2 + 1) + index % 2
    if m := re.match(r"to_rgbs\.(\d+)\.", key):
        return 2 * (int(m[1]) + 1) + 1
    return None


def texture_weight(key: str, swap_resolution: int, blend_width: float | None = None) -> float:
    """How much of the texture (FFHQ) model goes into tensor `key`: 0 = all structure."""
    position = layer_position(key)
    if position is None:
        return 0.0
    x = position - 2 * (int(math.log2(swap_resolution)) - 2)
    if blend_width is None:
        return 1.0 if x > 1 else 0.0
    return _sigmoid(x / blend_width)


def _sigmoid(t: float) -> float:
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


def blend(
    structure: Generator,
    texture: Generator,
    swap_resolution: int,
    blend_width: float | None = None,
) -> Generator:
    """Low resolutions (up to and including `swap_resolution`) from `structure` (the toon
    model), higher ones from `texture` (FFHQ); with `blend_width`, a smooth transition."""
    _check_compatible(structure, texture)
    res = structure.resolution
    if swap_resolution < 4 or swap_resolution > res or swap_resolution & (swap_resolution - 1):
        raise BlendError(
            f"swap resolution {swap_resolution} does not fit these {res} px models: "
            f"use a power of two from 4 to {res}"
        )
    if blend_width is not None and not blend_width > 0:
        raise BlendError(f"blend width {blend_width} must be positive")
    textures = texture.state_dict()
    state: dict[str, Tensor] = {}
    for key, mine in structure.state_dict().items():
        y = texture_weight(key, swap_resolution, blend_width)
        if y == 0.0:
            state[key] = mine.detach()
        elif y == 1.0:
            state[key] = textures[key].detach()
        else:
            state[key] = torch.lerp(mine.detach(), textures[key].detach().to(mine.dtype), y)
    return Generator.from_tensors(structure.arch, state, structure.w_avg)


def _check_compatible(structure: Generator, texture: Generator) -> None:
    mine, theirs = structure.state_dict(), texture.state_dict()
    if mine.keys() != theirs.keys():
        raise BlendError(
            f"different architectures: {structure.resolution} px with {len(mine)} tensors vs "
            f"{texture.resolution} px with {len(theirs)} tensors"
        )
    for key, value in mine.items():
        other = theirs[key]
        if value.shape != other.shape:
            raise BlendError(
                f"different architectures: {key} is {list(value.shape)} in the structure "
                f"model and {list(other.shape)} in the texture model"
            )
        if value.device != other.device:
            raise BlendError(f"models on different devices ({value.device}, {other.device})")
