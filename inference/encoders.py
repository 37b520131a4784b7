"""pSp and e4e encoders: an aligned face to its W+ latent in one forward pass.

The modules reproduce the public checkpoints' parameter names exactly (pSp's
GradualStyleEncoder and e4e's Encoder4Editing on an IR-SE-50 backbone), so a
checkpoint's `encoder.*` tensors load with a strict state-dict load. Every size
is read back from the tensors themselves, which also lets tests build narrow
copies with the same names. Reading and writing the files: encoder_checkpoints.py.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

from inference.checkpoints import CheckpointError

EncoderKind = Literal["psp", "e4e"]

# pSp's map2style split: styles below COARSE read the 1/16 feature map, below MIDDLE the
# 1/8 one, the rest the 1/4 one (for 18 styles: 0-2 coarse, 3-6 medium, 7-17 fine).
COARSE, MIDDLE = 3, 7
SE_REDUCTION = 16


class EncoderFormatError(CheckpointError):
    """Not a pSp/e4e encoder this module can build; str() says why, for a person."""


@dataclass(frozen=True)
class EncoderArch:
    """Everything that sizes an encoder; the defaults are the public IR-SE-50 checkpoints."""

    kind: EncoderKind = "psp"
    in_channels: int = 3
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    units: tuple[int, int, int, int] = (3, 4, 14, 3)
    style_channels: int = 512
    w_dim: int = 512
    n_styles: int = 18
    input_size: int = 256

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.input_size & (self.input_size - 1):
            raise EncoderFormatError(f"input size {self.input_size} is not a power of two >= 32")
        if any(w % SE_REDUCTION for w in self.widths):
            raise EncoderFormatError(f"widths {self.widths} are not multiples of {SE_REDUCTION}")
        if any(b <= a for a, b in itertools.pairwise(self.widths)):
            raise EncoderFormatError(f"widths {self.widths} do not grow stage by stage")
        if min(self.units) < 1 or self.n_styles < 1:
            raise EncoderFormatError("an encoder needs at least one unit per stage and one style")

    def to_metadata(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_metadata(cls, text: str) -> EncoderArch:
        data = json.loads(text)
        data["widths"] = tuple(data["widths"])
        data["units"] = tuple(data["units"])
        return cls(**data)


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their means."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // SE_REDUCTION, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // SE_REDUCTION, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(functional.relu(self.fc1(gate))))


class BottleneckIRSE(nn.Module):
    """One IR-SE unit: BN-conv-PReLU-conv-BN-SE residual over a (strided) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """StyleGAN2's equalised linear layer (lr_mul 1): weights scaled by 1/sqrt(fan_in) when used."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return functional.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """map2style: stride-2 convs down to 1x1, then an equalised linear layer to one w."""

    def __init__(self, in_channels: int, channels: int, w_dim: int, n_convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, 2, 1),
                nn.LeakyReLU(),
            ]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, w_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).flatten(1))


def _upsample_add(top: Tensor, lateral: Tensor) -> Tensor:
    up = functional.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True)
    return up + lateral


class _PyramidEncoder(nn.Module):
    """IR-SE backbone, FPN laterals and one map2style block per W+ code (shared by pSp and e4e)."""

    def __init__(self, arch: EncoderArch) -> None:
        super().__init__()
        self.arch = arch
        w0, w1, w2, w3 = arch.widths
        self.input_layer = nn.Sequential(
            nn.Conv2d(arch.in_channels, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.PReLU(w0)
        )
        units: list[nn.Module] = []
        in_channels = w0
        for depth, count in zip(arch.widths, arch.units, strict=True):
            units.append(BottleneckIRSE(in_channels, depth, 2))
            units += [BottleneckIRSE(depth, depth, 1) for _ in range(count - 1)]
            in_channels = depth
        self.body = nn.Sequential(*units)
        self._taps = (sum(arch.units[:2]) - 1, sum(arch.units[:3]) - 1)
        fine_convs = int(math.log2(arch.input_size // 4))
        self.styles = nn.ModuleList(
            GradualStyleBlock(w3, arch.style_channels, arch.w_dim, fine_convs - 2 + _level(i))
            for i in range(arch.n_styles)
        )
        self.latlayer1 = nn.Conv2d(w2, w3, 1)
        self.latlayer2 = nn.Conv2d(w1, w3, 1)

    def pyramid(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Feature maps at 1/16, 1/8 and 1/4 of the input (c3, p2, p1 in the papers)."""
        x = self.input_layer(x)
        c1 = c2 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._taps[0]:
                c1 = x
            elif i == self._taps[1]:
                c2 = x
        p2 = _upsample_add(x, self.latlayer1(c2))
        p1 = _upsample_add(p2, self.latlayer2(c1))
        return x, p2, p1

    def codes(self, x: Tensor) -> Tensor:
        """One w per style block, each read from its level of the pyramid: [B, n_styles, w_dim]."""
        features = self.pyramid(x)
        return torch.stack(
            [style(features[_level(i)]) for i, style in enumerate(self.styles)], dim=1
        )


def _level(style: int) -> int:
    return 0 if style < COARSE else 1 if style < MIDDLE else 2


class GradualStyleEncoder(_PyramidEncoder):
    """pSp: every W+ code predicted on its own."""

    def forward(self, x: Tensor) -> Tensor:
        return self.codes(x)


class Encoder4Editing(_PyramidEncoder):
    """e4e (inference stage): one base w from the coarsest block, the other blocks add deltas."""

    def forward(self, x: Tensor) -> Tensor:
        codes = self.codes(x)
        base = codes[:, :1]
        return torch.cat([base, codes[:, 1:] + base], dim=1)


class FaceEncoder(nn.Module):
    """A loaded encoder as its checkpoint meant it: images in [-1, 1] -> W+ (+ latent_avg).

    Parameter names are the public ones (`encoder.body.0.res_layer.1.weight` ...);
    `latent_avg` is a buffer only when the checkpoint carried one.
    """

    latent_avg: Tensor | None

    def __init__(self, arch: EncoderArch, latent_avg: Tensor | None = None) -> None:
        super().__init__()
        self.arch = arch
        cls = GradualStyleEncoder if arch.kind == "psp" else Encoder4Editing
        self.encoder = cls(arch)
        if latent_avg is None:
            self.latent_avg = None
        else:
            self.register_buffer("latent_avg", _latent_avg_rows(latent_avg, arch))

    @property
    def num_ws(self) -> int:
        return self.arch.n_styles

    @property
    def w_dim(self) -> int:
        return self.arch.w_dim

    def forward(self, images: Tensor) -> Tensor:
        """images [B, C, H, W] in [-1, 1] (any size; resized like pSp's 256 px transform)."""
        return self.codes(self.resize_input(images))

    def resize_input(self, images: Tensor) -> Tensor:
        """images at the encoder's input size (antialiased bilinear), unchanged if they are."""
        size = self.arch.input_size
        if images.shape[-2:] == (size, size):
            return images
        return functional.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )

    def codes(self, inputs: Tensor) -> Tensor:
        """W+ codes [B, num_ws, w_dim] of images already at the input size."""
        ws = self.encoder(inputs)
        if self.latent_avg is not None:
            ws = ws + self.latent_avg
        return ws


def _latent_avg_rows(latent_avg: Tensor, arch: EncoderArch) -> Tensor:
    """latent_avg as [n_styles, w_dim]: checkpoints store [n, w_dim], [1, w_dim] or [w_dim]."""
    avg = latent_avg.detach().float().reshape(-1, latent_avg.shape[-1])
    if avg.shape[-1] != arch.w_dim or avg.shape[0] not in (1, arch.n_styles):
        raise EncoderFormatError(
            f"latent_avg has shape {list(latent_avg.shape)}, expected "
            f"[{arch.n_styles}, {arch.w_dim}] or [{arch.w_dim}]"
        )
    return avg.expand(arch.n_styles, -1).clone()


def infer_arch(state: Mapping[str, Tensor], kind: EncoderKind) -> EncoderArch:
    """Read an encoder's sizes from its tensors (keys without the `encoder.` prefix)."""
    try:
        stem = state["input_layer.0.weight"]
        n_units = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
        n_styles = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("styles."))
        style_conv = state["styles.0.convs.0.weight"]
        coarse_convs = sum(
            1 for k in state if k.startswith("styles.0.convs.") and k.endswith(".weight")
        )
        w_dim = state["styles.0.linear.weight"].shape[0]
        # A stage starts where the unit's channel count changes (its shortcut is a conv);
        # the first stage starts at unit 0 (its shortcut is a strided identity).
        convs = (i for i in range(1, n_units) if f"body.{i}.shortcut_layer.0.weight" in state)
        starts = [0, *convs]
        widths = [state[f"body.{i}.res_layer.1.weight"].shape[0] for i in starts]
    except (KeyError, ValueError, IndexError) as exc:
        raise EncoderFormatError(f"not a pSp/e4e IR-SE encoder (missing {exc})") from None
    if len(starts) != 4:
        raise EncoderFormatError(f"expected 4 backbone stages, found {len(starts)}")
    bounds = [*starts, n_units]
    units = tuple(b - a for a, b in itertools.pairwise(bounds))
    return EncoderArch(
        kind=kind,
        in_channels=stem.shape[1],
        widths=(widths[0], widths[1], widths[2], widths[3]),
        units=(units[0], units[1], units[2], units[3]),
        style_channels=style_conv.shape[0],
        w_dim=w_dim,
        n_styles=n_styles,
        input_size=16 * 2**coarse_convs,
    )


def build_encoder(
    state: Mapping[str, Tensor], kind: EncoderKind, latent_avg: Tensor | None = None
) -> FaceEncoder:
    """A FaceEncoder holding `state` (encoder tensors, no prefix), checked strictly."""
    arch = infer_arch(state, kind)
    model = FaceEncoder(arch, latent_avg)
    try:
        model.encoder.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise EncoderFormatError(f"encoder tensors do not fit {arch}: {exc}") from None
    return model.eval().requires_grad_(False)
