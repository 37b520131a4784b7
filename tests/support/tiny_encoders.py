"""Narrow pSp/e4e encoders with the public key names, and the public checkpoint writer.

`tiny_encoder()` has IR-SE stages of 16-64 channels and one unit or two each, 16-channel
map2style blocks and a 64 px input by default, but every key of the real checkpoints' layout
(`encoder.body.N.res_layer...`, `encoder.styles.N.convs...`, `encoder.latlayer1`, ...).
`write_public_checkpoint()` saves it the way pSp/e4e's training coach does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from inference.encoders import EncoderArch, EncoderKind, FaceEncoder


def tiny_encoder(
    kind: EncoderKind = "psp",
    *,
    n_styles: int = 18,
    w_dim: int = 512,
    input_size: int = 64,
    latent_avg: torch.Tensor | None = None,
    seed: int = 0,
) -> FaceEncoder:
    """A random narrow encoder in eval mode, with trained-looking batch-norm statistics."""
    arch = EncoderArch(
        kind=kind,
        widths=(16, 32, 48, 64),
        units=(1, 2, 2, 1),
        style_channels=16,
        w_dim=w_dim,
        n_styles=n_styles,
        input_size=input_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FaceEncoder(arch, latent_avg)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


def write_public_checkpoint(
    path: Path,
    model: FaceEncoder,
    *,
    namespace: bool = True,
    decoder: dict[str, torch.Tensor] | None = None,
) -> Path:
    """torch.save of what the pSp/e4e coach saves: net.state_dict() (`encoder.*`, `decoder.*`),
    the options (vars(opts); an argparse.Namespace when `namespace`) and `latent_avg` when the
    encoder was trained from it."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in (decoder or {}).items()}
    encoder_type = "GradualStyleEncoder" if model.arch.kind == "psp" else "Encoder4Editing"
    opts = {
        "encoder_type": encoder_type,
        "dataset_type": "ffhq_encode",
        "input_nc": 3,
        "start_from_latent_avg": model.latent_avg is not None,
    }
    ckpt: dict[str, Any] = {
        "state_dict": state,
        "opts": argparse.Namespace(**opts) if namespace else opts,
    }
    if model.latent_avg is not None:
        ckpt["latent_avg"] = model.latent_avg.clone()
    torch.save(ckpt, path)
    return path
