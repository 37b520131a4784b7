"""Read every public StyleGAN2 checkpoint format into a `Generator`; write the canonical one.

Formats (detected from the file's content, not its name):
- rosinality stylegan2-pytorch `.pt`: `{"g_ema": state_dict, "latent_avg"?: [w_dim], ...}`.
- NVlabs stylegan2-ada-pytorch / stylegan3 `.pkl`: `{"G_ema": persistent Generator, ...}`.
  The persistent objects carry their source code; it is never executed: their classes are
  mapped to stubs that keep only the pickled state (parameters and buffers).
- Original TensorFlow StyleGAN2 `.pkl`: `(G, D, Gs)` of `dnnlib.tflib.network.Network`, each
  a state dict of numpy variables; `Gs` is converted without TensorFlow.
- The project's canonical `.safetensors`: the rosinality state dict plus `w_avg`, with the
  architecture and provenance in the metadata.
All pickles go through `inference.safe_pickle` (one restricted unpickler, explicit allow-list).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from inference.safe_pickle import ARGPARSE_NAMESPACE, UnsafePickleError, restricted_load
from inference.stylegan2 import Architecture, Generator, make_kernel

CheckpointFormat = Literal["rosinality", "nvlabs", "tensorflow", "canonical"]

CANONICAL_FORMAT = "toonify-stylegan2"
CANONICAL_VERSION = "1"
W_AVG_SAMPLES = 10_000


class CheckpointError(Exception):
    """A file that cannot be read as a StyleGAN2 generator; str() says why, for a person."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    generator: Generator
    format: CheckpointFormat


@dataclass(frozen=True)
class ModelInfo:
    """What the canonical file's metadata says, read without loading the weights."""

    path: Path
    architecture: Architecture
    source: str
    created: str
    size_bytes: int


# ---------------------------------------------------------------- stubs for the pickles


class TFNetworkStub:
    """Stands in for dnnlib.tflib.network.Network: keeps the pickled state, runs nothing
    (the real class execs `build_module_src` and builds a TensorFlow graph)."""

    state: dict[str, Any]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


class PersistentStub:
    """What torch_utils.persistence would rebuild, minus the class: its name and state."""

    def __init__(self, class_name: str, state: Mapping[str, Any]) -> None:
        self.class_name = class_name
        self.state = state


def _reconstruct_persistent_obj(meta: Mapping[str, Any]) -> PersistentStub:
    """Replaces torch_utils.persistence._reconstruct_persistent_obj; ignores `module_src`."""
    if not isinstance(meta, Mapping) or meta.get("type") != "class":
        raise CheckpointError("unexpected persistent object in NVlabs pickle")
    state = meta.get("state")
    return PersistentStub(str(meta.get("class_name")), state if isinstance(state, Mapping) else {})


class EasyDictStub(dict[str, Any]):
    """dnnlib.util.EasyDict is a plain dict with attribute access; a dict is enough here."""


PICKLE_STUBS: Mapping[tuple[str, str], Any] = {
    ("dnnlib.tflib.network", "Network"): TFNetworkStub,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
    **ARGPARSE_NAMESPACE,
}


# ---------------------------------------------------------------- public API


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Any supported checkpoint -> Generator in eval mode, gradients off, on `device`."""
    return load_checkpoint(path, device).generator


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Like load_generator, also saying which format the file was."""
    path = Path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        generator = _load_canonical(path)
        fmt: CheckpointFormat = "canonical"
    else:
        fmt, generator = _from_pickled(path, _unpickle(path))
    return LoadedCheckpoint(generator.to(device), fmt)


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
    arch = _infer_architecture(tensors, lr_mlp, what)
    return _build(arch, tensors, w_avg, what)


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
    metadata = _canonical_metadata(path)
    return ModelInfo(
        path=path,
        architecture=_metadata_architecture(path, metadata),
        source=metadata.get("source", ""),
        created=metadata.get("created", ""),
        size_bytes=path.stat().st_size,
    )


def estimate_w_avg(generator: Generator, num_samples: int = W_AVG_SAMPLES, seed: int = 0) -> Tensor:
    """Mean of w over `num_samples` seeded z (for checkpoints that do not store w_avg)."""
    device = generator.input.input.device
    z = torch.randn(num_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.style(z.to(device)).mean(0)


# ---------------------------------------------------------------- detection and unpickling


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
        state = obj["g_ema"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: g_ema is not a state dict")
        w_avg = obj.get("latent_avg")
        w_avg = w_avg.reshape(-1) if isinstance(w_avg, Tensor) else None
        return "rosinality", generator_from_state_dict(state, w_avg=w_avg, what=str(path))
    if isinstance(obj, Mapping) and "G_ema" in obj:
        return "nvlabs", _from_nvlabs(path, obj["G_ema"])
    if isinstance(obj, TFNetworkStub):  # a pickled Gs on its own
        return "tensorflow", _from_tensorflow(path, obj)
    if (
        isinstance(obj, tuple)
        and len(obj) == 3
        and all(isinstance(net, TFNetworkStub) for net in obj)
    ):
        return "tensorflow", _from_tensorflow(path, obj[2])  # (G, D, Gs)
    if isinstance(obj, Mapping):
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(
            f"{path}: no generator in this checkpoint (expected g_ema or G_ema; has {keys})"
        )
    raise CheckpointError(f"{path}: not a StyleGAN2 checkpoint ({type(obj).__name__})")


# ---------------------------------------------------------------- building a Generator


def _infer_architecture(tensors: Mapping[str, Tensor], lr_mlp: float, what: str) -> Architecture:
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


def _build(
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


def _weights(generator: Generator) -> list[tuple[str, Tensor]]:
    return [*generator.state_dict().items(), ("w_avg", generator.w_avg)]


# ---------------------------------------------------------------- canonical safetensors


def _canonical_metadata(path: Path) -> dict[str, str]:
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


def _metadata_architecture(path: Path, metadata: Mapping[str, str]) -> Architecture:
    try:
        return Architecture.from_dict(json.loads(metadata["architecture"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad architecture metadata ({exc})") from None


def _load_canonical(path: Path) -> Generator:
    arch = _metadata_architecture(path, _canonical_metadata(path))
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated safetensors file ({exc})") from None
    w_avg = tensors.pop("w_avg", None)
    if w_avg is None:
        raise CheckpointError(f"{path}: missing tensor w_avg")
    return _build(arch, tensors, w_avg, str(path))


# ---------------------------------------------------------------- NVlabs (ADA / stylegan3)


def _module_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Flatten a persistent module's pickled state into `name.param` -> tensor."""
    if not isinstance(obj, PersistentStub):
        raise CheckpointError(f"expected a persistent module at {prefix or 'G_ema'}")
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (obj.state.get(group) or {}).items():
            if isinstance(value, Tensor):
                out[prefix + name] = value
    for name, child in (obj.state.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _submodule(obj: PersistentStub, name: str) -> PersistentStub | None:
    child = (obj.state.get("_modules") or {}).get(name)
    return child if isinstance(child, PersistentStub) else None


def _from_nvlabs(path: Path, g_ema: Any) -> Generator:
    what = str(path)
    try:
        tensors = _module_tensors(g_ema)
    except CheckpointError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    if any(k.startswith("synthesis.input.") or re.match(r"synthesis\.L\d+_", k) for k in tensors):
        raise CheckpointError(
            f"{what}: an alias-free StyleGAN3 generator (synthesis.input / L<idx>_ layers); "
            "only StyleGAN2 generators can be loaded and blended"
        )
    if any(k.startswith("mapping.embed.") for k in tensors):
        raise CheckpointError(f"{what}: a class-conditional generator; only unconditional ones")
    synthesis = _submodule(g_ema, "synthesis")
    blocks = (synthesis.state.get("_modules") or {}) if synthesis else {}
    for block in blocks.values():
        arch = block.state.get("architecture", "skip") if isinstance(block, PersistentStub) else ""
        if arch != "skip":
            raise CheckpointError(
                f"{what}: synthesis architecture {arch!r}; only 'skip' (config-f)"
            )
    mapping = _submodule(g_ema, "mapping")
    fc0 = _submodule(mapping, "fc0") if mapping else None
    lr_mlp = float(fc0.state.get("bias_gain", 0.01)) if fc0 else 0.01
    state, w_avg = _nvlabs_to_rosinality(tensors, what)
    arch = _infer_architecture(state, lr_mlp, what)
    return _build(arch, state, w_avg, what)


def _nvlabs_to_rosinality(
    tensors: Mapping[str, Tensor], what: str
) -> tuple[dict[str, Tensor], Tensor | None]:
    """ADA names -> rosinality names; the weights need no flip between these two."""
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in tensors:
            raise CheckpointError(f"{what}: missing tensor {key}")
        used.add(key)
        return tensors[key]

    state: dict[str, Tensor] = {}
    fcs = sorted(int(m[1]) for k in tensors if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    for i in fcs:
        state[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        state[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")
    w_avg = tensors.get("mapping.w_avg")
    used.add("mapping.w_avg")

    def layer(dst: str, src: str, noise: int) -> None:
        state[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        state[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        state[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        state[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
        state[f"{dst}.activate.bias"] = take(f"{src}.bias")
        state[f"noises.noise_{noise}"] = take(f"{src}.noise_const")[None, None]

    def torgb(dst: str, src: str) -> None:
        state[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        state[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        state[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        state[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, -1, 1, 1)

    state["input.input"] = take("synthesis.b4.const").unsqueeze(0)
    layer("conv1", "synthesis.b4.conv1", 0)
    torgb("to_rgb1", "synthesis.b4.torgb")
    sizes = sorted({int(m[1]) for k in tensors if (m := re.match(r"synthesis\.b(\d+)\.", k))} - {4})
    for k, res in enumerate(sizes):
        layer(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1)
        layer(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2)
        torgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
    leftover = sorted(k for k in set(tensors) - used if not k.endswith("resample_filter"))
    if leftover:
        raise CheckpointError(f"{what}: unsupported tensors {', '.join(leftover[:3])}")
    return state, w_avg


# ---------------------------------------------------------------- TensorFlow StyleGAN2


def _tf_variables(net: TFNetworkStub, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a Network state: own variables, then components as `component/name`."""
    out = {prefix + name: np.asarray(value) for name, value in net.state.get("variables", [])}
    for name, component in (net.state.get("components") or {}).items():
        if not isinstance(component, TFNetworkStub):
            raise CheckpointError(f"component {name} is not a Network")
        out.update(_tf_variables(component, f"{prefix}{name}/"))
    return out


def _tf_kwargs(net: TFNetworkStub) -> dict[str, Any]:
    """Static kwargs of the network and its components (G passes its own down)."""
    kwargs: dict[str, Any] = {}
    for component in (net.state.get("components") or {}).values():
        if isinstance(component, TFNetworkStub):
            kwargs.update(component.state.get("static_kwargs") or {})
    kwargs.update(net.state.get("static_kwargs") or {})
    return kwargs


def _from_tensorflow(path: Path, gs: TFNetworkStub) -> Generator:
    what = str(path)
    try:
        variables = _tf_variables(gs)
    except CheckpointError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    kwargs = _tf_kwargs(gs)
    architecture = kwargs.get("architecture", "skip")
    if architecture != "skip":
        raise CheckpointError(f"{what}: synthesis architecture {architecture!r}; only 'skip'")
    if list(kwargs.get("resample_kernel", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        raise CheckpointError(f"{what}: resample kernel other than [1, 3, 3, 1]")
    if not kwargs.get("normalize_latents", True):
        raise CheckpointError(f"{what}: a mapping network without latent normalisation")
    state, w_avg = _tf_to_rosinality(variables, what)
    arch = _infer_architecture(state, float(kwargs.get("mapping_lrmul", 0.01)), what)
    return _build(arch, state, w_avg, what)


def _tf_to_rosinality(
    variables: Mapping[str, np.ndarray], what: str
) -> tuple[dict[str, Tensor], Tensor | None]:
    """TF layouts -> rosinality: transpose, flip Conv0_up, add 1 to mod_bias."""
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in variables:
            raise CheckpointError(f"{what}: missing variable {key}")
        used.add(key)
        return np.asarray(variables[key], dtype=np.float32)

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    state: dict[str, Tensor] = {}
    dense = sorted(
        int(m[1]) for k in variables if (m := re.fullmatch(r"mapping/Dense(\d+)/weight", k))
    )
    for i in dense:
        state[f"style.{i + 1}.weight"] = tensor(take(f"mapping/Dense{i}/weight").T)
        state[f"style.{i + 1}.bias"] = tensor(take(f"mapping/Dense{i}/bias"))

    def modulation(dst: str, src: str) -> None:
        state[f"{dst}.conv.modulation.weight"] = tensor(take(f"{src}/mod_weight").T)
        state[f"{dst}.conv.modulation.bias"] = tensor(take(f"{src}/mod_bias") + 1.0)

    def layer(dst: str, src: str, noise: int, *, flip: bool = False) -> None:
        weight = take(f"{src}/weight")  # [kh, kw, in, out]
        if flip:
            weight = weight[::-1, ::-1]
        state[f"{dst}.conv.weight"] = tensor(weight.transpose(3, 2, 0, 1)[None])
        modulation(dst, src)
        state[f"{dst}.noise.weight"] = tensor(take(f"{src}/noise_strength").reshape(1))
        state[f"{dst}.activate.bias"] = tensor(take(f"{src}/bias"))
        state[f"noises.noise_{noise}"] = tensor(take(f"synthesis/noise{noise}"))

    def torgb(dst: str, src: str) -> None:
        state[f"{dst}.conv.weight"] = tensor(take(f"{src}/weight").transpose(3, 2, 0, 1)[None])
        modulation(dst, src)
        state[f"{dst}.bias"] = tensor(take(f"{src}/bias").reshape(1, -1, 1, 1))

    state["input.input"] = tensor(take("synthesis/4x4/Const/const"))
    layer("conv1", "synthesis/4x4/Conv", 0)
    torgb("to_rgb1", "synthesis/4x4/ToRGB")
    sizes = sorted(
        {int(m[1]) for k in variables if (m := re.match(r"synthesis/(\d+)x\1/", k))} - {4}
    )
    for k, res in enumerate(sizes):
        block = f"synthesis/{res}x{res}"
        layer(f"convs.{2 * k}", f"{block}/Conv0_up", 2 * k + 1, flip=True)
        layer(f"convs.{2 * k + 1}", f"{block}/Conv1", 2 * k + 2)
        torgb(f"to_rgbs.{k}", f"{block}/ToRGB")
    w_avg = tensor(take("dlatent_avg")) if "dlatent_avg" in variables else None
    ignored = {"lod", "synthesis/lod", "mapping/lod"}
    leftover = sorted(k for k in set(variables) - used - ignored if "/" in k)
    if leftover:
        raise CheckpointError(f"{what}: unsupported variables {', '.join(leftover[:3])}")
    return state, w_avg
