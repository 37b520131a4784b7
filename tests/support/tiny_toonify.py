"""A real Toonifier in a second: tiny FFHQ and toon generators in the canonical format.

For any test that needs the whole pipeline (worker, service, adapters):

    config = write_tiny_models(tmp_path / "models")
    toonifier = Toonifier.from_config(Settings(**config))

The generators are random, so the "toons" are coloured noise, but every stage runs for real:
decoding, dlib detection, FFHQ alignment, inversion (pixel loss, a few steps), blending,
rendering and paste-back.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inference.checkpoints import save_generator
from inference.encoder_checkpoints import import_encoder, read_encoder_checkpoint
from inference.invert import w_stats
from inference.stylegan2 import Generator
from tests.support.tiny_encoders import tiny_encoder, write_public_checkpoint
from tests.support.tiny_models import tiny_generator

# Trained generators add noise as fine detail only; tiny_generator's random noise strengths
# are large enough to drown the image, which no latent could then reproduce.
NOISE_STRENGTH_SCALE = 0.05
SOURCE = "tests.support.tiny_toonify"
# A [styles] entry for the model write_psp_style writes.
PSP_STYLE = {"kind": "psp", "model": "psp", "label": "pSp"}


def tiny_face_generator(resolution: int = 32, seed: int = 0) -> Generator:
    """A tiny random "FFHQ" generator whose noise stays a detail, as in a trained one."""
    generator = tiny_generator(resolution, seed=seed)
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if name.endswith("noise.weight"):
                param.mul_(NOISE_STRENGTH_SCALE)
    return generator


def tiny_toon_generator(face: Generator, seed: int = 1) -> Generator:
    """A "fine-tune" of `face`: same architecture, every synthesis weight nudged."""
    toon = copy.deepcopy(face)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in toon.named_parameters():
            if name.endswith("conv.weight") or name == "input.input":
                param.add_(0.5 * torch.randn(param.shape, generator=rng))
    return toon


def write_tiny_models(
    models_dir: Path,
    *,
    resolution: int = 32,
    styles: Sequence[str] = ("toon",),
    steps: int = 4,
) -> dict[str, Any]:
    """Write `ffhq` and one toon model per style name into `models_dir` (canonical
    .safetensors), and return a config dict for bots.config.Settings(**config): CPU, dlib
    faces, pixel loss with `steps` steps, strengths [8, 16, 32] (default 16) per style.
    """
    face = tiny_face_generator(resolution)
    save_generator(face, models_dir / "ffhq.safetensors", source=SOURCE)
    for seed, name in enumerate(styles, start=1):
        toon = tiny_toon_generator(face, seed=seed)
        save_generator(
            toon, models_dir / f"{name}.safetensors", source="tests.support.tiny_toonify"
        )
    strengths = [r for r in (8, 16, 32) if r <= resolution]
    return {
        "models": {"dir": str(models_dir), "face": "ffhq", "device": "cpu"},
        "styles": {
            name: {
                "label": name.title(),
                "model": name,
                "strengths": strengths,
                "default_strength": 16 if 16 in strengths else strengths[-1],
            }
            for name in styles
        },
        "style": styles[0],
        "faces": {"backend": "dlib"},
        "invert": {"loss": "pixel", "steps": steps},
    }


def write_psp_style(models_dir: Path, resolution: int = 32) -> None:
    """pSp's toonify for the face model of `write_tiny_models`, written as the public `.pt`
    and imported (as `toonify models import` does) as the model of PSP_STYLE: one rendering,
    at full resolution, whatever strengths the config lists."""
    face = tiny_face_generator(resolution)
    encoder = tiny_encoder(
        "psp", n_styles=face.num_ws, w_dim=face.w_dim, input_size=32, latent_avg=w_stats(face).mean
    )
    toon = tiny_toon_generator(face, seed=7)
    name = PSP_STYLE["model"]
    public = write_public_checkpoint(models_dir / f"{name}.pt", encoder, decoder=toon.state_dict())
    target = models_dir / f"{name}.safetensors"
    import_encoder(read_encoder_checkpoint(public), target, source=SOURCE)
