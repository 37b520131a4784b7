"""The StyleGAN2 config-f generator in pure PyTorch, with the NVlabs call convention.

The module tree (and so the state dict) is rosinality/stylegan2-pytorch's `Generator`:
`style.N`, `input.input`, `conv1`, `to_rgb1`, `convs.N`, `to_rgbs.N`, `noises.noise_N` and the
blur/upsample kernel buffers, so a rosinality `g_ema` loads with `load_state_dict` as it is.
On top sits the NVlabs API the rest of the project uses: `G.mapping(z) -> ws [B, num_ws,
w_dim]`, `G.synthesis(ws, noise_mode=...) -> [B, 3, R, R]`, and the attributes `resolution`,
`num_ws`, `w_dim`, `z_dim`, `w_avg`.

Speed (measured on CPU, see bench/README.md; the reasoning holds on CUDA):
- Each modulated convolution takes the cheaper of two exact formulations per layer: fold the
  per-sample styles into per-sample weights and run one grouped convolution (cheap where the
  weights are small next to the feature maps: the high-resolution layers), or scale the
  activations by the styles and convolve with the one shared weight (cheap where the weights
  are big: the 512-channel low-resolution layers, which a grouped convolution handles badly).
- A modulated 1x1 convolution (ToRGB) is one batched matrix product with per-sample weights.
- upfirdn2d is written with stock operators, no CUDA extension to compile: a depthwise
  transposed convolution (stride 2) for the RGB skip upsampling and a depthwise convolution
  for the blur after each stride-2 transposed convolution, i.e. the reference algorithm.
  Alternatives measured on CPU and dropped: fusing the upsampling conv with its blur into four
  polyphase 3x3 kernels (4x the multiply-adds; no faster), and the binomial blur as three 2x2
  average pools (slower than the depthwise conv).
- Mapping, modulation and demodulation run in float32, and so does everything else unless
  `synthesis(..., dtype=torch.float16)` (or bfloat16) asks for reduced precision. Then, as
  NVlabs runs its generators, only the blocks of the top four resolutions (never below 8 px)
  convolve in that dtype, with weights cast on the fly from the float32 parameters (so several
  blends can keep sharing one set of tensors), activations clamped to +-256 (`conv_clamp`) and
  styles and weights pre-normalised where float16 sums could overflow. The RGB skip path is
  accumulated in float32 and the output is float32. How close that is to float32 on trained
  weights, and how much faster on a GPU, is not yet measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from torch import Tensor, nn

from inference.architecture import Architecture

NoiseMode = Literal["const", "random", "none"]

SQRT2 = math.sqrt(2.0)
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
# Reduced precision the way NVlabs runs StyleGAN2 (stylegan2-ada-pytorch's num_fp16_res=4,
# conv_clamp=256): only the blocks of the top four resolutions, never below 8 px, with their
# activations clamped to +-256; float16 ends at 65504.
REDUCED_RESOLUTIONS = 4
REDUCED_MIN_RESOLUTION = 8
CONV_CLAMP = 256.0


def assert_shape(tensor: Tensor, shape: Sequence[int | None], what: str) -> None:
    """Raise a readable error unless `tensor` has `shape` (None matches any size)."""
    ok = tensor.ndim == len(shape) and all(
        want is None or have == want for have, want in zip(tensor.shape, shape, strict=True)
    )
    if not ok:
        expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{what} has shape {list(tensor.shape)}, expected {expected}")


def make_kernel(taps: Sequence[float] = BLUR_TAPS, gain: float = 1.0) -> Tensor:
    """The 2-D FIR filter: the outer product of `taps`, normalised to sum to `gain`."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum() * gain


def blur_2d(x: Tensor, kernel: Tensor, pad: tuple[int, int]) -> Tensor:
    """upfirdn2d with up=down=1: pad, then convolve every channel with `kernel`."""
    channels = x.shape[1]
    k = kernel.flip([0, 1]).to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), k, groups=channels)


def upsample_2d(x: Tensor, kernel: Tensor) -> Tensor:
    """upfirdn2d with up=2 and pad (2, 1) for a 4-tap filter, as a strided transposed conv.

    Zero-stuffing, padding by (2, 1) and correlating with the flipped kernel is the transposed
    convolution with the kernel itself and padding 1: both give out[n] = sum_m x[m] k[n + 1 - 2m].
    """
    channels = x.shape[1]
    k = kernel.to(x.dtype)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv_transpose2d(x, k, stride=2, padding=1, groups=channels)


ConvOp = Callable[[Tensor, Tensor, int], Tensor]


def modulated_conv(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    dcoefs: Tensor | None,
    conv: ConvOp,
    *,
    transposed: bool = False,
) -> Tensor:
    """Convolve every sample with `weight` scaled by its styles (per input channel) and dcoefs
    (per output channel): `weight` [out, in, kh, kw] as stored, styles and dcoefs in float32,
    `conv(x, w, groups)`.

    Per-sample weights + one grouped conv where the weights are small next to the activations,
    else activations scaled by the styles + one conv with the shared weight (same result).
    """
    batch, in_ch, height, width = x.shape
    dtype = x.dtype
    out_ch, _, kh, kw = weight.shape
    if out_ch * kh * kw <= height * width:
        w = weight.float().unsqueeze(0) * styles.view(batch, 1, in_ch, 1, 1)
        if dcoefs is not None:
            w = w * dcoefs.view(batch, out_ch, 1, 1, 1)
        if transposed:
            w = w.transpose(1, 2)
        w = w.reshape(-1, *w.shape[2:]).to(dtype)
        out = conv(x.reshape(1, batch * in_ch, height, width), w, batch)
        return out.reshape(batch, out_ch, *out.shape[2:])
    if dtype != torch.float32 and dcoefs is not None:
        # Summing in_ch * kh * kw products of raw weights can pass float16's 65504: bring the
        # styles (per sample) and the weights (per output channel, over the fan-in) down to at
        # most 1, as NVlabs does; the demodulation coefficients make up for it exactly.
        style_peak = styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)  # [B, 1]
        weight_peak = weight.float().abs().amax(dim=(1, 2, 3)) * math.sqrt(in_ch * kh * kw)
        styles = styles / style_peak
        weight = weight.float() / weight_peak.view(out_ch, 1, 1, 1)
        dcoefs = dcoefs * style_peak * weight_peak
    shared = (weight.transpose(0, 1) if transposed else weight).to(dtype)
    out = conv(x * styles.to(dtype).view(batch, in_ch, 1, 1), shared, 1)
    if dcoefs is not None:
        out = out * dcoefs.to(dtype).view(batch, out_ch, 1, 1)
    return out


def _modulated_1x1(x: Tensor, weight: Tensor, styles: Tensor, dcoefs: Tensor | None) -> Tensor:
    """A modulated 1x1 conv (ToRGB) is a batched matrix product with per-sample weights."""
    w = weight[:, :, 0, 0].float().unsqueeze(0) * styles.unsqueeze(1)  # [B, out, in]
    if dcoefs is not None:
        w = w * dcoefs.unsqueeze(2)
    batch, in_ch, height, width = x.shape
    out = torch.bmm(w.to(x.dtype), x.reshape(batch, in_ch, height * width))
    return out.reshape(batch, -1, height, width)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate: raw weights, runtime scale; float32."""

    def __init__(
        self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        # Scaling the [B, out] result, not the weight, spares a copy of the weight per call.
        return (
            F.linear(x.float(), self.weight.float()) * self.scale + self.bias.float() * self.lr_mul
        )


class MappingLayer(EqualLinear):
    """EqualLinear followed by the leaky ReLU (slope 0.2, gain sqrt 2) of the mapping network."""

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(super().forward(x), 0.2) * SQRT2


class Blur(nn.Module):
    kernel: Tensor  # a buffer

    def __init__(self, pad: tuple[int, int], gain: float) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(gain=gain))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return blur_2d(x, self.kernel, self.pad)


class Upsample(nn.Module):
    kernel: Tensor  # a buffer

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(gain=4.0))

    def forward(self, x: Tensor) -> Tensor:
        return upsample_2d(x, self.kernel)


class ModulatedConv2d(nn.Module):
    """Weight [1, out, in, k, k] modulated by an affine map of w; demodulated unless ToRGB."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        w_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(1, out_channel, in_channel, kernel_size, kernel_size)
        )
        self.modulation = EqualLinear(w_dim, in_channel, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            # After the stride-2 transposed 3x3 conv (2H+1 px), blur back to 2H px.
            self.blur = Blur(pad=(1, 1), gain=4.0)

    def forward(self, x: Tensor, w: Tensor, gain: float = 1.0) -> Tensor:
        """The modulated convolution times `gain` (folded into the per-channel factors)."""
        # The equalised-lr scale rides on the styles, so the stored weight is used as it is.
        styles = self.modulation(w) * self.scale
        weight = self.weight[0]
        dcoefs = None
        if self.demodulate:
            power = weight.float().square().sum((2, 3))  # [out, in]
            dcoefs = torch.rsqrt(styles.square() @ power.T + 1e-8) * gain
        else:
            styles = styles * gain
        if weight.shape[-1] == 1:
            return _modulated_1x1(x, weight, styles, dcoefs)
        if not self.upsample:
            return modulated_conv(
                x,
                weight,
                styles,
                dcoefs,
                lambda i, k, g: F.conv2d(i, k, padding=self.padding, groups=g),
            )
        out = modulated_conv(
            x,
            weight,
            styles,
            dcoefs,
            lambda i, k, g: F.conv_transpose2d(i, k, stride=2, groups=g),
            transposed=True,
        )
        return self.blur(out)


class NoiseInjection(nn.Module):
    """Holds the per-layer noise strength; StyledConv applies it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    """Holds the bias of the bias + leaky ReLU (0.2) + gain sqrt 2 op; StyledConv applies it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, w_dim: int, *, upsample: bool) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, w_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(
        self, x: Tensor, w: Tensor, noise: Tensor | None, clamp: float | None = None
    ) -> Tensor:
        """lrelu(conv + strength * noise + bias, 0.2) * sqrt 2, in three passes over the
        activations: the gain is positive, so it is folded into the conv and the addends.
        Runs in x's dtype; `clamp` bounds the result to +-clamp."""
        out = self.conv(x, w, gain=SQRT2)
        if noise is not None:
            strength = self.noise.weight.to(out.dtype) * SQRT2
            out = torch.addcmul(out, noise.to(out.dtype), strength)
        out = out.add_(self.activate.bias.to(out.dtype).view(1, -1, 1, 1) * SQRT2)
        out = F.leaky_relu(out, 0.2, inplace=True)
        return out if clamp is None else out.clamp_(-clamp, clamp)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, w_dim: int, *, upsample: bool) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channel, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self, x: Tensor, w: Tensor, skip: Tensor | None, clamp: float | None = None
    ) -> Tensor:
        """The RGB image so far (float32), plus this layer's, bounded to +-clamp if given."""
        out = self.conv(x, w).float() + self.bias.float()
        if clamp is not None:
            out = out.clamp_(-clamp, clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator: rosinality's parameters, NVlabs' mapping/synthesis API."""

    w_avg: Tensor  # a buffer, not saved in the state dict

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.resolution = arch.resolution
        self.w_dim = arch.w_dim
        self.z_dim = arch.w_dim
        self.num_ws = arch.num_ws
        self.num_noises = arch.num_noises
        w_dim = arch.w_dim

        self.style = nn.Sequential(
            PixelNorm(),
            *(MappingLayer(w_dim, w_dim, lr_mul=arch.lr_mlp) for _ in range(arch.n_mlp)),
        )
        ch4 = arch.channels(4)
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, w_dim, upsample=False)
        self.to_rgb1 = ToRGB(ch4, w_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch4
        for log_res in range(3, arch.log2_resolution + 1):
            out_ch = arch.channels(2**log_res)
            self.convs.append(StyledConv(in_ch, out_ch, w_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, w_dim, upsample=False))
            self.to_rgbs.append(ToRGB(out_ch, w_dim, upsample=True))
            in_ch = out_ch
        self.noises = nn.Module()
        for i in range(self.num_noises):
            size = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, size, size))
        # Not in rosinality's state dict: the canonical file stores it beside the weights.
        self.register_buffer("w_avg", torch.zeros(w_dim), persistent=False)

    @classmethod
    def from_tensors(
        cls, arch: Architecture, state_dict: dict[str, Tensor], w_avg: Tensor
    ) -> Generator:
        """A generator in eval mode, gradients off, that uses the given tensors (assigned, not
        copied: built on the meta device, so nothing is initialised and then thrown away)."""
        with torch.device("meta"):
            generator = cls(arch)
        generator.load_state_dict(state_dict, assign=True)
        generator.w_avg = w_avg
        return generator.eval().requires_grad_(False)

    def noise_buffers(self) -> list[Tensor]:
        """The stored per-layer noise maps [1, 1, r, r] in layer order (noise_mode="const")."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_noises)]

    def mapping(
        self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        """z [B, z_dim] -> ws [B, num_ws, w_dim] (float32), truncated towards w_avg."""
        assert_shape(z, [None, self.z_dim], "z")
        w = self.style(z.float())
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1.0:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.float().lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def synthesis(
        self,
        ws: Tensor,
        noise_mode: NoiseMode = "const",
        noise: Sequence[Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """ws [B, num_ws, w_dim] -> images [B, 3, R, R], float32, roughly in [-1, 1].

        noise_mode: "const" uses the stored noise buffers (reproducible, as the references
        render with randomize_noise=False), "random" draws fresh noise, "none" adds none.
        `noise`, one map per layer broadcastable to [B, 1, r, r], overrides the mode (inversion
        optimises these). `dtype` float16 or bfloat16 runs the blocks of `reduced_resolutions`
        in it (weights cast on the fly, activations clamped to +-CONV_CLAMP); the others, the
        mapping, the modulation and the RGB sum stay float32.
        """
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.float()
        batch = ws.shape[0]
        noises = self._noises(batch, noise_mode, noise)
        reduced = set(self.reduced_resolutions()) if dtype != torch.float32 else set()
        x = self.input.input.float().expand(batch, -1, -1, -1)
        x = self.conv1(x, ws[:, 0], noises[0])
        img = self.to_rgb1(x, ws[:, 1], None)
        for k, to_rgb in enumerate(self.to_rgbs):
            clamp = CONV_CLAMP if 2 ** (k + 3) in reduced else None
            if clamp is not None and x.dtype != dtype:  # entering the reduced blocks
                x = x.clamp(-clamp, clamp).to(dtype)
            x = self.convs[2 * k](x, ws[:, 2 * k + 1], noises[2 * k + 1], clamp)
            x = self.convs[2 * k + 1](x, ws[:, 2 * k + 2], noises[2 * k + 2], clamp)
            img = to_rgb(x, ws[:, 2 * k + 3], img, clamp)
        return img

    def reduced_resolutions(self) -> list[int]:
        """The block resolutions a float16/bfloat16 synthesis runs in that dtype."""
        top = self.arch.log2_resolution
        return [
            2**log_res
            for log_res in range(top - REDUCED_RESOLUTIONS + 1, top + 1)
            if 2**log_res >= REDUCED_MIN_RESOLUTION
        ]

    def forward(
        self,
        z: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
    ) -> Tensor:
        return self.synthesis(self.mapping(z, truncation_psi, truncation_cutoff), noise_mode)

    def _noises(
        self, batch: int, mode: NoiseMode, override: Sequence[Tensor] | None
    ) -> list[Tensor | None]:
        buffers = self.noise_buffers()
        if override is not None:
            if len(override) != self.num_noises:
                raise ValueError(f"noise has {len(override)} maps, expected {self.num_noises}")
            for i, (given, buf) in enumerate(zip(override, buffers, strict=True)):
                assert_shape(given, [None, 1, buf.shape[2], buf.shape[3]], f"noise[{i}]")
            return list(override)
        if mode == "const":
            return list(buffers)
        if mode == "random":
            return [
                torch.randn(batch, 1, *buf.shape[2:], device=buf.device, dtype=buf.dtype)
                for buf in buffers
            ]
        if mode == "none":
            return [None] * self.num_noises
        raise ValueError(f"noise_mode {mode!r} is not one of const, random, none")
