"""Original TensorFlow StyleGAN2 pickles: `(G, D, Gs)` of `dnnlib.tflib.network.Network`.

Each Network pickles as a state dict of numpy variables, so `Gs` is converted to the
rosinality layout without TensorFlow: its class maps to a stub that runs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.checkpoints.errors import CheckpointError
from inference.checkpoints.rosinality import build, infer_architecture
from inference.stylegan2 import Generator


class TFNetworkStub:
    """Stands in for dnnlib.tflib.network.Network: keeps the pickled state, runs nothing
    (the real class execs `build_module_src` and builds a TensorFlow graph)."""

    state: dict[str, Any]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


PICKLE_STUBS: Mapping[tuple[str, str], Any] = {("dnnlib.tflib.network", "Network"): TFNetworkStub}


def gs_of(obj: Any) -> TFNetworkStub | None:
    """The generator of an unpickled TF checkpoint: a Gs alone or the last of (G, D, Gs)."""
    if isinstance(obj, TFNetworkStub):
        return obj
    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetworkStub) for n in obj):
        gs: TFNetworkStub = obj[2]
        return gs
    return None


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


def from_pickle(path: Path, gs: TFNetworkStub) -> Generator:
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
    arch = infer_architecture(state, float(kwargs.get("mapping_lrmul", 0.01)), what)
    return build(arch, state, w_avg, what)


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
