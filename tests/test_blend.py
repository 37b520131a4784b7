from __future__ import annotations

import math
import re

import pytest
import torch

from inference.architecture import Architecture
from inference.blend import BlendError, blend, texture_weight
from inference.stylegan2 import Generator
from tests.support.tiny_models import random_ws, render, tiny_generator


def layer_of(key: str) -> tuple[int, int] | None:
    """(resolution, level) of a blendable tensor, from the published layer names; None for
    the mapping network, the 4x4 conv, noise buffers and the fixed FIR kernels."""
    if key.startswith(("style.", "noises.", "conv1.")) or key.endswith(".kernel"):
        return None
    if key == "input.input":
        return 4, 0
    if key.startswith("to_rgb1."):
        return 4, 1
    if m := re.match(r"convs\.(\d+)\.", key):
        return 2 ** (int(m[1]) // 2 + 3), int(m[1]) % 2
    if m := re.match(r"to_rgbs\.(\d+)\.", key):
        return 2 ** (int(m[1]) + 3), 1
    raise AssertionError(f"unclassified tensor {key}")


def from_texture(key: str, swap: int) -> bool:
    """The toonify rule: layers above the swap resolution come from the texture model."""
    layer = layer_of(key)
    return layer is not None and layer[0] > swap


@pytest.fixture(scope="module")
def pair() -> tuple[Generator, Generator]:
    return tiny_generator(64, seed=1), tiny_generator(64, seed=2)


@pytest.mark.parametrize("swap", [4, 8, 16, 32, 64])
def test_hard_blend_takes_each_tensor_from_the_right_model(
    pair: tuple[Generator, Generator], swap: int
) -> None:
    structure, texture = pair
    blended = blend(structure, texture, swap).state_dict()
    mine, theirs = structure.state_dict(), texture.state_dict()
    assert blended.keys() == mine.keys()
    for key, value in blended.items():
        chosen, other = (theirs, mine) if from_texture(key, swap) else (mine, theirs)
        assert torch.equal(value, chosen[key]), key
        if not key.endswith(".kernel"):
            assert not torch.equal(value, other[key]), key
    assert torch.equal(blend(structure, texture, swap).w_avg, structure.w_avg)


def test_key_level_rule_on_the_full_1024_model() -> None:
    with torch.device("meta"):
        structure, texture = Generator(Architecture(1024)), Generator(Architecture(1024))
    keys = list(structure.state_dict())
    for swap in [4, 8, 16, 32, 64, 128, 256, 512, 1024]:
        weights = {key: texture_weight(key, swap) for key in keys}
        assert weights == {key: float(from_texture(key, swap)) for key in keys}
        assert blend(structure, texture, swap).resolution == 1024  # runs on meta tensors
    # e.g. swap at 32: the 64 px upsampling conv is the first texture layer.
    assert texture_weight("convs.5.conv.weight", 32) == 0.0
    assert texture_weight("convs.6.conv.weight", 32) == 1.0
    assert texture_weight("to_rgbs.2.conv.weight", 32) == 0.0
    assert texture_weight("to_rgbs.3.bias", 32) == 1.0


def test_swap_at_the_top_resolution_reproduces_the_structure_model(
    pair: tuple[Generator, Generator],
) -> None:
    structure, texture = pair
    blended = blend(structure, texture, 64)
    ws = random_ws(structure, batch=2)
    assert torch.equal(render(blended, ws), render(structure, ws))
    z = torch.randn(2, structure.z_dim)
    assert torch.equal(blended.mapping(z, truncation_psi=0.7), structure.mapping(z, 0.7))


def test_swap_at_4_differs_from_both(pair: tuple[Generator, Generator]) -> None:
    structure, texture = pair
    ws = random_ws(structure)
    image = render(blend(structure, texture, 4), ws)
    assert not torch.allclose(image, render(structure, ws), atol=1e-3)
    assert not torch.allclose(image, render(texture, ws), atol=1e-3)


def test_smooth_blend_lies_between_with_sigmoid_weights(
    pair: tuple[Generator, Generator],
) -> None:
    structure, texture = pair
    swap, width = 16, 1.5
    blended = blend(structure, texture, swap, blend_width=width).state_dict()
    mine, theirs = structure.state_dict(), texture.state_dict()
    for key, value in blended.items():
        layer = layer_of(key)
        if layer is None:
            assert torch.equal(value, mine[key]), key
            continue
        res, level = layer
        x = 2 * math.log2(res / 4) + level - 2 * math.log2(swap / 4)
        y = 1 / (1 + math.exp(-x / width))
        assert 0 < y < 1
        low, high = torch.minimum(mine[key], theirs[key]), torch.maximum(mine[key], theirs[key])
        assert torch.all((value >= low - 1e-6) & (value <= high + 1e-6)), key
        assert torch.allclose(value, mine[key] + y * (theirs[key] - mine[key]), atol=1e-6), key


def test_hard_blend_copies_no_weights(pair: tuple[Generator, Generator]) -> None:
    structure, texture = pair
    blended = blend(structure, texture, 16)
    assert blended.convs[0].conv.weight.data_ptr() == structure.convs[0].conv.weight.data_ptr()
    assert blended.convs[-1].conv.weight.data_ptr() == texture.convs[-1].conv.weight.data_ptr()


def test_mismatched_models_and_bad_resolutions_are_refused(
    pair: tuple[Generator, Generator],
) -> None:
    structure, _ = pair
    with pytest.raises(BlendError, match="different architectures"):
        blend(structure, tiny_generator(32), 16)
    with pytest.raises(BlendError, match=r"input\.input is \[1, 16, 4, 4\] in the structure"):
        blend(structure, tiny_generator(64, channel_max=8), 16)
    for swap in (2, 48, 128):
        with pytest.raises(BlendError, match=f"swap resolution {swap} does not fit these .* px"):
            blend(structure, structure, swap)
    with pytest.raises(BlendError, match="blend width"):
        blend(structure, structure, 16, blend_width=0.0)
