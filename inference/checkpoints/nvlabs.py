"""NVlabs stylegan2-ada-pytorch / stylegan3 pickles: `{"G_ema": persistent Generator, ...}`.

The persistent objects carry their source code; it is never executed: their classes are
mapped to stubs that keep only the pickled state (parameters and buffers), which is then
renamed to the rosinality layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from inference.checkpoints.errors import CheckpointError
from inference.checkpoints.rosinality import build, infer_architecture
from inference.stylegan2 import Generator


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
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
}


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


def from_pickle(path: Path, g_ema: Any) -> Generator:
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
    arch = infer_architecture(state, lr_mlp, what)
    return build(arch, state, w_avg, what)


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
