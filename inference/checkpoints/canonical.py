"""The project's own format: the rosinality state dict plus `w_avg` in a `.safetensors` file,
with the architecture and provenance in its metadata. Safe to read, quick to load.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from inference.architecture import Architecture
from inference.checkpoints.errors import CheckpointError
from inference.checkpoints.rosinality import build
from inference.stylegan2 import Generator

CANONICAL_FORMAT = "toonify-stylegan2"
CANONICAL_VERSION = "1"


@dataclass(frozen=True)
class ModelInfo:
    """What the canonical file's metadata says, read without loading the weights."""

    path: Path
    architecture: Architecture
    source: str
    created: str
    size_bytes: int


def save_generator(generator: Generator, path: str | Path, *, source: str) -> None:
    """Write the canonical .safetensors (atomically): weights, w_avg, architecture, source."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in _weights(generator)}
    metadata = {
        "format": CANONICAL_FORMAT,
        "format_version": CANONICAL_VERSION,
        "architecture": json.dumps(generator.arch.to_dict()),
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_model_info(path: str | Path) -> ModelInfo:
    """Architecture and provenance of a canonical file, without reading its tensors."""
    path = Path(path)
    metadata = _metadata(path)
    return ModelInfo(
        path=path,
        architecture=_architecture(path, metadata),
        source=metadata.get("source", ""),
        created=metadata.get("created", ""),
        size_bytes=path.stat().st_size,
    )


def load(path: Path) -> Generator:
    arch = _architecture(path, _metadata(path))
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated safetensors file ({exc})") from None
    w_avg = tensors.pop("w_avg", None)
    if w_avg is None:
        raise CheckpointError(f"{path}: missing tensor w_avg")
    return build(arch, tensors, w_avg, str(path))


def _weights(generator: Generator) -> list[tuple[str, Tensor]]:
    return [*generator.state_dict().items(), ("w_avg", generator.w_avg)]


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (safetensors.SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated safetensors file ({exc})") from None
    if metadata.get("format") != CANONICAL_FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a toonify generator")
    return metadata


def _architecture(path: Path, metadata: Mapping[str, str]) -> Architecture:
    try:
        return Architecture.from_dict(json.loads(metadata["architecture"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad architecture metadata ({exc})") from None
