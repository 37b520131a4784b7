"""The rosinality stylegan2-pytorch layout: our Generator's own parameter names.

Every other format is converted to this state dict, so the architecture is read off its tensor
shapes and the Generator built from it here. A rosinality `.pt` is
`{"g_ema": state_dict, "latent_avg"?: [w_dim], ...}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference.architecture import Architecture
from inference.checkpoints.errors import CheckpointError
from inference.stylegan2 import Generator, make_kernel

W_AVG_SAMPLES = 10_000


def from_pickle(path: Path, obj: Mapping[str, Any]) -> Generator:
    """The generator of an unpickled rosinality checkpoint (a dict with `g_ema`)."""
    state = obj["g_ema"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: g_ema is not a state dict")
    w_avg = obj.get("latent_avg")
    w_avg = w_avg.reshape(-1) if isinstance(w_avg, Tensor) else None
    return generator_from_state_dict(state, w_avg=w_avg, what=str(path))


def generator_from_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    w_avg: Tensor | None = None,
    lr_mlp: float = 0.01,
    what: str = "state dict",
) -> Generator:
    """Build a Generator from a rosinality-layout state dict (e.g. a pSp `decoder.*` with the
    prefix stripped). The architecture is read off the tensor shapes; `lr_mlp` cannot be, and
    rosinality's default is 0.01. Without `w_avg` it is estimated from the mapping network.
    Tensors are assigned, not copied (float32 ones are shared with `state_dict`)."""
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
    arch = infer_architecture(tensors, lr_mlp, what)
    return build(arch, tensors, w_avg, what)


def estimate_w_avg(generator: Generator, num_samples: int = W_AVG_SAMPLES, seed: int = 0) -> Tensor:
    """Mean of w over `num_samples` seeded z (for checkpoints that do not store w_avg)."""
    device = generator.input.input.device
    z = torch.randn(num_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.style(z.to(device)).mean(0)


def infer_architecture(tensors: Mapping[str, Tensor], lr_mlp: float, what: str) -> Architecture:
    try:
        n_mlp = sum(1 for k in tensors if re.fullmatch(r"style\.\d+\.weight", k))
        w_dim = int(tensors["style.1.weight"].shape[1])
        channels = {4: int(tensors["input.input"].shape[1])}
        blocks = sum(1 for k in tensors if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
        for k in range(blocks):
            channels[2 ** (k + 3)] = int(tensors[f"convs.{2 * k}.conv.weight"].shape[1])
    except KeyError as exc:
        raise CheckpointError(f"{what}: missing tensor {exc.args[0]}") from None
    try:
        return Architecture.from_channel_table(channels, w_dim=w_dim, n_mlp=n_mlp, lr_mlp=lr_mlp)
    except ValueError as exc:
        raise CheckpointError(f"{what}: unsupported generator layout ({exc})") from None


def build(
    arch: Architecture, tensors: Mapping[str, Tensor], w_avg: Tensor | None, what: str
) -> Generator:
    with torch.device("meta"):
        expected = Generator(arch).state_dict()
    state = {k: v.detach().to(torch.float32) for k, v in tensors.items() if k in expected}
    for key in expected:
        if key.endswith(("blur.kernel", "upsample.kernel")) and key not in state:
            state[key] = make_kernel(gain=4.0)
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{what}: missing tensors {', '.join(missing[:3])}{more}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{what}: unexpected tensors {', '.join(unexpected[:3])}")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"{what}: {key} has shape {list(state[key].shape)}, expected {list(value.shape)}"
            )
    if w_avg is not None and w_avg.shape != (arch.w_dim,):
        raise CheckpointError(
            f"{what}: w_avg has shape {list(w_avg.shape)}, expected [{arch.w_dim}]"
        )
    generator = Generator.from_tensors(arch, state, torch.zeros(arch.w_dim))
    generator.w_avg = (estimate_w_avg(generator) if w_avg is None else w_avg).detach().float()
    return generator
