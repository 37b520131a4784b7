from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from inference.stylegan2 import (
    Architecture,
    Generator,
    blur_2d,
    make_kernel,
    upsample_2d,
)
from tests.support.tiny_models import random_ws, render, tiny_generator

# ---------------------------------------------------------------- a literal reference


def upfirdn(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """upfirdn2d as defined: zero-stuff by `up`, pad, correlate with the flipped kernel."""
    b, c, h, w = x.shape
    if up > 1:
        stuffed = x.new_zeros(b, c, h * up, w * up)
        stuffed[:, :, ::up, ::up] = x
        x = stuffed
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = kernel.flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def reference_image(generator: Generator, ws: Tensor) -> Tensor:
    """rosinality's forward written out sample by sample, from the state dict alone."""
    sd = generator.state_dict()
    w_dim = generator.w_dim
    blur = make_kernel(gain=4.0)

    def modconv(x: Tensor, prefix: str, w: Tensor, demod: bool, up: bool) -> Tensor:
        outs = []
        for b in range(x.shape[0]):
            s = w[b] @ sd[f"{prefix}.modulation.weight"].T / math.sqrt(w_dim)
            s = s + sd[f"{prefix}.modulation.bias"]
            weight = sd[f"{prefix}.weight"][0]
            _, in_ch, k, _ = weight.shape
            weight = weight / math.sqrt(in_ch * k * k) * s.view(1, -1, 1, 1)
            if demod:
                weight = weight / torch.sqrt(weight.square().sum([1, 2, 3]) + 1e-8).view(
                    -1, 1, 1, 1
                )
            if up:
                y = F.conv_transpose2d(x[b : b + 1], weight.transpose(0, 1), stride=2)
                y = upfirdn(y, blur, 1, (1, 1))
            else:
                y = F.conv2d(x[b : b + 1], weight, padding=k // 2)
            outs.append(y)
        return torch.cat(outs)

    def styled(x: Tensor, prefix: str, w: Tensor, noise: Tensor, up: bool) -> Tensor:
        x = modconv(x, f"{prefix}.conv", w, True, up)
        x = x + sd[f"{prefix}.noise.weight"] * noise
        return F.leaky_relu(x + sd[f"{prefix}.activate.bias"].view(1, -1, 1, 1), 0.2) * 2**0.5

    def rgb(x: Tensor, prefix: str, w: Tensor) -> Tensor:
        return modconv(x, f"{prefix}.conv", w, False, False) + sd[f"{prefix}.bias"]

    noise = [sd[f"noises.noise_{i}"] for i in range(generator.num_noises)]
    x = sd["input.input"].repeat(ws.shape[0], 1, 1, 1)
    x = styled(x, "conv1", ws[:, 0], noise[0], False)
    img = rgb(x, "to_rgb1", ws[:, 1])
    for k in range(len(generator.to_rgbs)):
        x = styled(x, f"convs.{2 * k}", ws[:, 2 * k + 1], noise[2 * k + 1], True)
        x = styled(x, f"convs.{2 * k + 1}", ws[:, 2 * k + 2], noise[2 * k + 2], False)
        img = rgb(x, f"to_rgbs.{k}", ws[:, 2 * k + 3]) + upfirdn(img, blur, 2, (2, 1))
    return img


def reference_mapping(generator: Generator, z: Tensor) -> Tensor:
    sd = generator.state_dict()
    lr = generator.arch.lr_mlp
    x = z / torch.sqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(1, generator.arch.n_mlp + 1):
        x = (
            x @ (sd[f"style.{i}.weight"] * lr / math.sqrt(x.shape[1])).T
            + sd[f"style.{i}.bias"] * lr
        )
        x = F.leaky_relu(x, 0.2) * 2**0.5
    return x


# ---------------------------------------------------------------- the full architecture


def config_f_shapes() -> dict[str, tuple[int, ...]]:
    """rosinality's g_ema at 1024 px, config-f, written out from the published layout."""
    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, 9):
        shapes[f"style.{i}.weight"] = (512, 512)
        shapes[f"style.{i}.bias"] = (512,)

    def styled(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{name}.conv.modulation.weight"] = (cin, 512)
        shapes[f"{name}.conv.modulation.bias"] = (cin,)
        shapes[f"{name}.noise.weight"] = (1,)
        shapes[f"{name}.activate.bias"] = (cout,)

    def torgb(name: str, cin: int) -> None:
        shapes[f"{name}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{name}.conv.modulation.weight"] = (cin, 512)
        shapes[f"{name}.conv.modulation.bias"] = (cin,)
        shapes[f"{name}.bias"] = (1, 3, 1, 1)

    shapes["input.input"] = (1, 512, 4, 4)
    styled("conv1", 512, 512)
    torgb("to_rgb1", 512)
    for k, res in enumerate([8, 16, 32, 64, 128, 256, 512, 1024]):
        styled(f"convs.{2 * k}", channels[res // 2], channels[res])
        shapes[f"convs.{2 * k}.conv.blur.kernel"] = (4, 4)
        styled(f"convs.{2 * k + 1}", channels[res], channels[res])
        torgb(f"to_rgbs.{k}", channels[res])
        shapes[f"to_rgbs.{k}.upsample.kernel"] = (4, 4)
    for i in range(17):
        r = 2 ** ((i + 5) // 2)
        shapes[f"noises.noise_{i}"] = (1, 1, r, r)
    return shapes


def test_full_config_f_has_rosinality_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        generator = Generator(Architecture(1024))
    got = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    assert got == config_f_shapes()
    assert (generator.num_ws, generator.w_dim, generator.z_dim) == (18, 512, 512)

    # From first principles: mapping 8 x (512*512 + 512); const 512*16; a styled conv
    # out*in*9 + (512*in + in) + 1 + out; a ToRGB 3*in + (512*in + in) + 3.
    def styled(cin: int, cout: int) -> int:
        return cout * cin * 9 + 512 * cin + cin + 1 + cout

    def torgb(cin: int) -> int:
        return 3 * cin + 512 * cin + cin + 3

    channels = [512, 512, 512, 512, 512, 256, 128, 64, 32]  # 4 .. 1024 px
    total = 8 * (512 * 512 + 512) + 512 * 16 + styled(512, 512) + torgb(512)
    for cin, cout in itertools.pairwise(channels):
        total += styled(cin, cout) + styled(cout, cout) + torgb(cout)
    assert total == 30_370_060
    assert sum(p.numel() for p in generator.parameters()) == total


def test_architecture_channel_table() -> None:
    arch = Architecture(1024, channel_multiplier=1)
    assert [arch.channels(2**i) for i in range(2, 11)] == [512] * 4 + [256, 128, 64, 32, 16]
    assert Architecture(256).num_ws == 14
    with pytest.raises(ValueError, match="power of two"):
        Architecture(48)


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("batch", [1, 3])
def test_synthesis_matches_the_literal_reference(batch: int) -> None:
    # 64 px exercises both formulations: shared weights with scaled activations at 4 and 8 px
    # (out * 3 * 3 > h * w), per-sample weights above.
    generator = tiny_generator(64)
    ws = random_ws(generator, batch)
    ws = ws + 0.3 * torch.randn_like(ws)  # a different w per layer
    expected = reference_image(generator, ws)
    got = render(generator, ws)
    assert got.shape == (batch, 3, 64, 64)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()


def test_mapping_and_truncation() -> None:
    generator = tiny_generator(32)
    z = torch.randn(4, generator.z_dim)
    w = reference_mapping(generator, z)
    ws = generator.mapping(z)
    assert ws.shape == (4, generator.num_ws, generator.w_dim)
    assert torch.allclose(ws, w[:, None].expand_as(ws), atol=1e-5)
    truncated = generator.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    avg = generator.w_avg
    assert torch.allclose(truncated[:, :3], avg + 0.5 * (w[:, None] - avg), atol=1e-5)
    assert torch.allclose(truncated[:, 3:], ws[:, 3:])
    assert torch.allclose(generator.mapping(z, truncation_psi=0.0), avg.expand_as(ws))


def test_fir_helpers_match_upfirdn_with_an_asymmetric_kernel() -> None:
    # An asymmetric kernel catches a flipped kernel, which [1,3,3,1] would hide.
    kernel = torch.rand(4, 4)
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(upsample_2d(x, kernel), upfirdn(x, kernel, 2, (2, 1)), atol=1e-6)
    assert torch.allclose(blur_2d(x, kernel, (1, 1)), upfirdn(x, kernel, 1, (1, 1)), atol=1e-6)


def test_batch_rows_are_rendered_independently() -> None:
    generator = tiny_generator(64)
    ws = random_ws(generator, 3)
    together = render(generator, ws)
    alone = torch.cat([render(generator, ws[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def render_in(generator: Generator, ws: Tensor, dtype: torch.dtype) -> Tensor:
    with torch.no_grad():
        return generator.synthesis(ws, noise_mode="const", dtype=dtype)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.03), (torch.float16, 0.005)])
def test_half_precision_stays_close_to_float32(dtype: torch.dtype, tolerance: float) -> None:
    generator = tiny_generator(64)
    ws = random_ws(generator)
    expected = render(generator, ws)
    got = render_in(generator, ws, dtype)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() < tolerance * expected.abs().max()
    assert all(p.dtype == torch.float32 for p in generator.parameters()), "weights untouched"


def test_reduced_precision_runs_only_the_top_four_resolutions() -> None:
    generator = tiny_generator(256)
    seen: dict[int, torch.dtype] = {}

    def record(module: torch.nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        seen[out.shape[-1]] = out.dtype

    hooks = [conv.register_forward_hook(record) for conv in [generator.conv1, *generator.convs]]
    render_in(generator, random_ws(generator), torch.float16)
    for hook in hooks:
        hook.remove()
    assert generator.reduced_resolutions() == [32, 64, 128, 256]
    assert seen == {4: torch.float32, 8: torch.float32, 16: torch.float32} | {
        r: torch.float16 for r in (32, 64, 128, 256)
    }
    assert tiny_generator(16).reduced_resolutions() == [8, 16]  # never the 4 px block


def test_float16_activations_are_clamped_instead_of_overflowing() -> None:
    generator = tiny_generator(64)
    with torch.no_grad():
        generator.convs[-2].activate.bias.fill_(1e5)  # past float16's 65504 at 64 px
    ws = random_ws(generator)
    assert render(generator, ws).isfinite().all()
    assert render_in(generator, ws, torch.float16).isfinite().all()


def test_float16_convolutions_with_large_styles_do_not_overflow() -> None:
    # Styles this large overflow a float16 sum over the fan-in unless styles and weights are
    # brought to at most 1 first; the 8 px block runs the shared-weight formulation.
    generator = tiny_generator(64)
    with torch.no_grad():
        for conv in generator.convs[:2]:
            conv.conv.modulation.bias.mul_(3e4)
    ws = random_ws(generator)
    expected = render(generator, ws)
    got = render_in(generator, ws, torch.float16)
    assert (got - expected).abs().max() < 0.005 * expected.abs().max()


# ---------------------------------------------------------------- noise and shapes


def test_noise_modes() -> None:
    generator = tiny_generator(32)
    ws = random_ws(generator)
    const = generator.synthesis(ws, noise_mode="const")
    assert torch.equal(const, generator.synthesis(ws, noise_mode="const"))
    random_a = generator.synthesis(ws, noise_mode="random")
    assert not torch.allclose(random_a, generator.synthesis(ws, noise_mode="random"))
    none = generator.synthesis(ws, noise_mode="none")
    zeros = [torch.zeros_like(b) for b in generator.noise_buffers()]
    assert torch.allclose(none, generator.synthesis(ws, noise=zeros))
    assert not torch.allclose(none, const)
    assert torch.equal(generator.synthesis(ws, noise=generator.noise_buffers()), const)
    generator.noises.noise_3.mul_(-1)
    assert not torch.allclose(generator.synthesis(ws, noise_mode="const"), const)
    with pytest.raises(ValueError, match="noise_mode"):
        generator.synthesis(ws, noise_mode="fixed")  # type: ignore[arg-type]


def test_wrong_shapes_are_refused_with_a_reason() -> None:
    generator = tiny_generator(32)
    with pytest.raises(ValueError, match=r"ws has shape \[2, 5, 32\], expected \[\*, 8, 32\]"):
        generator.synthesis(torch.zeros(2, 5, 32))
    with pytest.raises(ValueError, match="z has shape"):
        generator.mapping(torch.zeros(2, 31))
    with pytest.raises(ValueError, match="noise has 1 maps"):
        generator.synthesis(torch.zeros(1, 8, 32), noise=[torch.zeros(1, 1, 4, 4)])


def test_a_rosinality_state_dict_loads_as_is() -> None:
    source = tiny_generator(32, seed=3)
    target = Generator(source.arch)
    target.load_state_dict(source.state_dict())  # strict: same keys, same shapes
    target.w_avg = source.w_avg
    ws = random_ws(source)
    assert torch.equal(render(target.eval(), ws), render(source, ws))
