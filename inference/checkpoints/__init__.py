"""Read every public StyleGAN2 checkpoint format into a `Generator`; write the canonical one.

Formats, detected from the file's content, not its name, one module each:
- `rosinality`: stylegan2-pytorch `.pt` (`g_ema`), and the layout every format converts to.
- `nvlabs`: stylegan2-ada-pytorch / stylegan3 `.pkl` (`G_ema`, persistent objects as stubs).
- `tensorflow`: the original StyleGAN2 `.pkl` (`(G, D, Gs)`), converted without TensorFlow.
- `canonical`: the project's `.safetensors` (state dict, `w_avg`, architecture metadata).
All pickles go through `inference.safe_pickle` (one restricted unpickler, explicit allow-list):
nothing a pickle carries is ever executed.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from inference.checkpoints import canonical, nvlabs, rosinality, tensorflow
from inference.checkpoints.canonical import ModelInfo, read_model_info, save_generator
from inference.checkpoints.errors import CheckpointError
from inference.checkpoints.rosinality import estimate_w_avg, generator_from_state_dict
from inference.safe_pickle import ARGPARSE_NAMESPACE, UnsafePickleError, restricted_load
from inference.stylegan2 import Generator

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "LoadedCheckpoint",
    "ModelInfo",
    "estimate_w_avg",
    "generator_from_state_dict",
    "load_checkpoint",
    "load_generator",
    "read_model_info",
    "save_generator",
]

CheckpointFormat = Literal["rosinality", "nvlabs", "tensorflow", "canonical"]

PICKLE_STUBS: Mapping[tuple[str, str], Any] = {
    **nvlabs.PICKLE_STUBS,
    **tensorflow.PICKLE_STUBS,
    **ARGPARSE_NAMESPACE,
}


@dataclass(frozen=True)
class LoadedCheckpoint:
    generator: Generator
    format: CheckpointFormat


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Any supported checkpoint -> Generator in eval mode, gradients off, on `device`."""
    return load_checkpoint(path, device).generator


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Like load_generator, also saying which format the file was."""
    path = Path(path)
    if _sniff(path) == "safetensors":
        fmt: CheckpointFormat = "canonical"
        generator = canonical.load(path)
    else:
        fmt, generator = _from_pickled(path, _unpickle(path))
    return LoadedCheckpoint(generator.to(device), fmt)


def _sniff(path: Path) -> Literal["safetensors", "pickle"]:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(9)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated safetensors file")
        return "safetensors"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a pickle, a torch file nor safetensors)"
    )


def _unpickle(path: Path) -> Any:
    try:
        return restricted_load(path, PICKLE_STUBS)
    except UnsafePickleError as exc:
        raise CheckpointError(
            f"{path}: refused: the pickle needs {exc.qualname}, which is not a checkpoint "
            "class (a pickle can run code while it loads, so only known classes are built)"
        ) from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (EOFError, pickle.UnpicklingError, RuntimeError, OSError) as exc:
        # A short pickle ends early (EOFError, UnpicklingError); torch's zip reader raises
        # RuntimeError ("failed finding central directory") for a cut-off .pt.
        raise CheckpointError(f"{path}: truncated or damaged file ({exc})") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None


def _from_pickled(path: Path, obj: Any) -> tuple[CheckpointFormat, Generator]:
    if isinstance(obj, Mapping) and "g_ema" in obj:
        return "rosinality", rosinality.from_pickle(path, obj)
    if isinstance(obj, Mapping) and "G_ema" in obj:
        return "nvlabs", nvlabs.from_pickle(path, obj["G_ema"])
    if (gs := tensorflow.gs_of(obj)) is not None:
        return "tensorflow", tensorflow.from_pickle(path, gs)
    if isinstance(obj, Mapping):
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(
            f"{path}: no generator in this checkpoint (expected g_ema or G_ema; has {keys})"
        )
    raise CheckpointError(f"{path}: not a StyleGAN2 checkpoint ({type(obj).__name__})")
