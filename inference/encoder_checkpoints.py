"""pSp/e4e checkpoint files: the public `.pt` (read safely) and the project's canonical ones.

Public files (pSp's and e4e's training coach): `{"state_dict": net.state_dict(), "opts":
vars(opts) or an argparse.Namespace, "latent_avg"?}` with `encoder.*` and `decoder.*` (a
rosinality generator) tensors, unpickled with nothing but tensors, containers and Namespace.
Canonical: `<name>.safetensors` with the public `encoder.*` names, `latent_avg` when there is
one, the architecture in the metadata, and the decoder as its own generator `<name>-decoder`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from inference.checkpoints import generator_from_state_dict, load_generator, save_generator
from inference.encoders import (
    EncoderArch,
    EncoderFormatError,
    EncoderKind,
    FaceEncoder,
    build_encoder,
)
from inference.safe_pickle import ARGPARSE_NAMESPACE, UnsafePickleError, restricted_load
from inference.stylegan2 import Generator

ENCODER_FORMAT = "toonify-encoder"
ENCODER_FORMAT_VERSION = "1"
MISSING = "no such file (bring a pSp/e4e checkpoint in with `toonify models import`)"


class NotAnEncoderError(EncoderFormatError):
    """The file is no pSp/e4e encoder at all (another checkpoint, refused or unreadable), as
    opposed to an encoder this project cannot use."""


def detect_kind(opts: Mapping[str, Any]) -> EncoderKind:
    """pSp or e4e from the training options saved with the checkpoint."""
    encoder_type = opts.get("encoder_type")
    if encoder_type == "GradualStyleEncoder":
        return "psp"
    if encoder_type == "Encoder4Editing":
        return "e4e"
    if encoder_type is not None:
        raise EncoderFormatError(
            f"encoder_type {encoder_type!r} is not supported "
            "(GradualStyleEncoder and Encoder4Editing are)"
        )
    # Options only e4e's training script has (its progressive deltas and W discriminator).
    if {"progressive_steps", "delta_norm_lambda", "w_discriminator_lambda"} & set(opts):
        return "e4e"
    raise EncoderFormatError("the checkpoint's opts do not say which encoder it is")


@dataclass
class EncoderCheckpoint:
    """What a public pSp/e4e file holds: the encoder, its generator's tensors and its options."""

    encoder: FaceEncoder
    decoder: dict[str, Tensor] | None  # rosinality Generator state dict, `decoder.` removed
    opts: dict[str, Any]


def is_encoder_checkpoint(ckpt: object) -> bool:
    """True for an unpickled pSp/e4e checkpoint (a dict whose state_dict has `encoder.` keys)."""
    state = ckpt.get("state_dict") if isinstance(ckpt, Mapping) else None
    return isinstance(state, Mapping) and any(
        isinstance(k, str) and k.startswith("encoder.") for k in state
    )


def from_public_checkpoint(ckpt: Mapping[str, Any]) -> EncoderCheckpoint:
    """Build the encoder of an unpickled pSp/e4e checkpoint: `state_dict`, `opts`, `latent_avg`."""
    if not is_encoder_checkpoint(ckpt):
        raise NotAnEncoderError("not a pSp/e4e checkpoint (no encoder.* tensors in state_dict)")
    opts = ckpt.get("opts") or {}
    opts = dict(opts if isinstance(opts, Mapping) else vars(opts))
    state: Mapping[str, Tensor] = ckpt["state_dict"]
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    decoder = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    latent_avg = ckpt.get("latent_avg")
    return EncoderCheckpoint(
        encoder=build_encoder(encoder, detect_kind(opts), latent_avg),
        decoder=decoder or None,
        opts=opts,
    )


def decoder_generator(ckpt: EncoderCheckpoint, what: str) -> Generator:
    """The StyleGAN2 generator a pSp/e4e checkpoint was trained with (its `decoder.*`)."""
    if ckpt.decoder is None:
        raise EncoderFormatError(f"{what}: the checkpoint holds no decoder (generator)")
    return generator_from_state_dict(ckpt.decoder, what=f"{what} decoder")


def read_encoder_checkpoint(path: Path) -> EncoderCheckpoint:
    """A public pSp/e4e `.pt`, unpickled with nothing but tensors, containers and Namespace."""
    try:
        ckpt = restricted_load(path, ARGPARSE_NAMESPACE)
    except FileNotFoundError:
        raise NotAnEncoderError(f"{path}: {MISSING}") from None
    except UnsafePickleError as exc:
        raise NotAnEncoderError(
            f"{path}: refused: the pickle needs {exc.qualname}, which a pSp/e4e checkpoint "
            "does not hold (a pickle can run code while it loads)"
        ) from None
    except (EOFError, pickle.UnpicklingError, RuntimeError, OSError) as exc:
        raise NotAnEncoderError(f"{path}: truncated, damaged or unreadable ({exc})") from None
    try:
        return from_public_checkpoint(ckpt)
    except EncoderFormatError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def save_encoder(
    model: FaceEncoder, path: Path, *, source: str, decoder: str | None = None
) -> None:
    """The canonical file (atomically): public tensor names, `latent_avg`, the architecture,
    and the name of the generator file the encoder was trained with, when there is one."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "architecture": model.arch.to_metadata(),
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if decoder is not None:
        metadata["decoder"] = decoder
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def read_encoder_metadata(path: Path) -> dict[str, str]:
    """The canonical encoder file's metadata; NotAnEncoderError for any other file."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except FileNotFoundError:
        raise NotAnEncoderError(f"{path}: {MISSING}") from None
    except (SafetensorError, OSError) as exc:
        raise NotAnEncoderError(f"{path}: damaged or truncated safetensors file ({exc})") from None
    if metadata.get("format") != ENCODER_FORMAT:
        raise NotAnEncoderError(f"{path}: a safetensors file, but not a toonify encoder")
    return metadata


@dataclass(frozen=True)
class EncoderInfo:
    """What a canonical encoder file's metadata says, read without loading the weights."""

    path: Path
    arch: EncoderArch
    source: str
    decoder: str | None
    size_bytes: int


def read_encoder_info(path: Path) -> EncoderInfo:
    metadata = read_encoder_metadata(path)
    return EncoderInfo(
        path=path,
        arch=_metadata_arch(path, metadata),
        source=metadata.get("source", ""),
        decoder=metadata.get("decoder"),
        size_bytes=path.stat().st_size,
    )


def _metadata_arch(path: Path, metadata: Mapping[str, str]) -> EncoderArch:
    try:
        return EncoderArch.from_metadata(metadata["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EncoderFormatError(f"{path}: bad architecture metadata ({exc})") from None


def _read_canonical(path: Path) -> FaceEncoder:
    arch = _metadata_arch(path, read_encoder_metadata(path))
    tensors = load_file(str(path))
    model = FaceEncoder(arch, tensors.pop("latent_avg", None))
    state = {k.removeprefix("encoder."): v for k, v in tensors.items()}
    try:
        model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderFormatError(f"{path}: tensors do not fit the metadata ({exc})") from None
    return model.eval().requires_grad_(False)


def load_encoder(path: Path, device: torch.device | str = "cpu") -> FaceEncoder:
    """An encoder from the canonical `.safetensors` or a public pSp/e4e `.pt`, on `device`."""
    if path.suffix == ".safetensors":
        return _read_canonical(path).to(device)
    return read_encoder_checkpoint(path).encoder.to(device)


def import_encoder(ckpt: EncoderCheckpoint, target: Path, *, source: str) -> Path | None:
    """Write a public checkpoint as canonical files: the encoder as `target`, and its
    generator (when it has one) beside it as `<name>-decoder`, a model like any other.
    Returns the decoder's path."""
    if ckpt.decoder is None:
        save_encoder(ckpt.encoder, target, source=source)
        return None
    decoder = f"{target.name.removesuffix('.safetensors')}-decoder"
    decoder_path = target.with_name(f"{decoder}.safetensors")
    save_generator(decoder_generator(ckpt, source), decoder_path, source=f"{source} (decoder)")
    save_encoder(ckpt.encoder, target, source=source, decoder=decoder)
    return decoder_path


def load_psp_style(path: Path, device: torch.device | str = "cpu") -> tuple[FaceEncoder, Generator]:
    """pSp's toonify: an imported encoder file and the generator it encodes into (the
    `<name>-decoder` written beside it)."""
    decoder = read_encoder_metadata(path).get("decoder")
    if decoder is None:
        raise EncoderFormatError(f"{path}: this encoder file names no decoder")
    generator = load_generator(path.with_name(f"{decoder}.safetensors"), device)
    return _read_canonical(path).to(device), generator
