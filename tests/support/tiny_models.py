"""Tiny StyleGAN2 generators and writers for every checkpoint format the project reads.

Other test areas reuse these: `tiny_generator()` gives a fast random generator whose every
tensor matters (biases, noise strengths and modulation biases are non-trivial), and the
`write_*` functions save its weights with the key names and layouts of the real public files:
- rosinality `.pt` (torch.save of {"g_ema", "latent_avg"}, or a training checkpoint),
- NVlabs stylegan2-ada-pytorch `.pkl` (torch_utils.persistence objects, written without
  that package: the pickle names the classes the real files name),
- original TensorFlow `.pkl` ((G, D, Gs) of dnnlib.tflib.network.Network, numpy variables),
- the canonical `.safetensors` (through the production writer).
"""

from __future__ import annotations

import argparse
import collections
import math
import pickle
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from inference.architecture import Architecture
from inference.checkpoints import save_generator
from inference.stylegan2 import Generator

# Source code that a careless loader would execute; tests check the marker never appears.
HARMLESS_SRC = "# network module source (never executed by toonify)\n"


def marker_src(marker: Path) -> str:
    """Module source that creates `marker` if anything ever executes it."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"


def tiny_architecture(
    resolution: int = 32,
    channel_multiplier: int = 1,
    *,
    channel_max: int = 16,
    channel_base: int = 256,
    w_dim: int = 32,
    n_mlp: int = 3,
) -> Architecture:
    """Channels min(256*cm/r, 16): 16 up to 16 px, then 8, 4, ... (so in != out somewhere)."""
    return Architecture(
        resolution,
        channel_multiplier=channel_multiplier,
        w_dim=w_dim,
        n_mlp=n_mlp,
        channel_max=channel_max,
        channel_base=channel_base,
    )


def tiny_generator(
    resolution: int = 32,
    channel_multiplier: int = 1,
    seed: int = 0,
    **overrides: Any,
) -> Generator:
    """A random generator (eval, no grad) in which no tensor is left at a trivial value."""
    arch = tiny_architecture(resolution, channel_multiplier, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(arch)
        with torch.no_grad():
            for name, param in generator.named_parameters():
                if name.endswith("modulation.bias"):
                    param.copy_(1.0 + 0.3 * torch.randn_like(param))
                elif name.endswith((".bias", "noise.weight")):
                    param.copy_(0.3 * torch.randn_like(param) / _lr_scale(name, arch))
            generator.w_avg = generator.style(torch.randn(64, arch.w_dim)).mean(0)
    return generator.eval().requires_grad_(False)


def _lr_scale(name: str, arch: Architecture) -> float:
    """Mapping biases are stored divided by lr_mlp (equalised learning rate)."""
    return arch.lr_mlp if name.startswith("style.") else 1.0


def random_ws(generator: Generator, batch: int = 2, seed: int = 1) -> Tensor:
    z = torch.randn(batch, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.mapping(z, truncation_psi=0.8)


def render(generator: Generator, ws: Tensor) -> Tensor:
    with torch.no_grad():
        return generator.synthesis(ws, noise_mode="const")


# ---------------------------------------------------------------- rosinality .pt


def write_rosinality(
    generator: Generator, path: Path, *, latent_avg: bool = True, training: bool = False
) -> Path:
    """convert_weight.py output ({"g_ema", "latent_avg"}) or a train.py checkpoint."""
    state = {k: v.clone() for k, v in generator.state_dict().items()}
    ckpt: dict[str, Any] = {"g_ema": state}
    if latent_avg:
        ckpt["latent_avg"] = generator.w_avg.clone()
    if training:
        ckpt |= {
            "g": {k: v + 0.5 for k, v in state.items()},
            "d": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)},
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
            "d_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
            "args": argparse.Namespace(size=generator.resolution, channel_multiplier=2, iter=800),
            "ada_aug_p": 0.0,
        }
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------- pickles with real names


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
    raise AssertionError("stand-in for torch_utils.persistence; only its name is pickled")


class EasyDict(dict[str, Any]):
    """Pickled under the name dnnlib.util.EasyDict."""


class Network:
    """Pickled under the name dnnlib.tflib.network.Network, with the real __getstate__ dict."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def __getstate__(self) -> dict[str, Any]:
        return self._state


class Persistent:
    """Pickles like a torch_utils.persistence object: _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str) -> None:
        self.class_name = class_name
        self.state = state
        self.module_src = module_src

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[dict[str, Any]]]:
        meta = {
            "type": "class",
            "version": 6,
            "module_src": self.module_src,
            "class_name": self.class_name,
            "state": self.state,
        }
        return _reconstruct_persistent_obj, (meta,)


REAL_NAMES: dict[Any, tuple[str, str]] = {
    _reconstruct_persistent_obj: ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    EasyDict: ("dnnlib.util", "EasyDict"),
    Network: ("dnnlib.tflib.network", "Network"),
}


class RealNamesPickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Writes REAL_NAMES' globals under the module/name the real files carry, and numpy's
    under `numpy.core` as numpy 1.x (which wrote the public checkpoints) did."""

    # The base class dispatches functions to its own save_global; route them to ours.
    dispatch: ClassVar[dict[Any, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    dispatch[types.FunctionType] = lambda self, obj: self.save_global(obj)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module, qualname = REAL_NAMES.get(obj, (obj.__module__, name or obj.__qualname__))
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core") :]
        elif obj not in REAL_NAMES:
            super().save_global(obj, name)
            return
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def write_pickle(obj: Any, path: Path, protocol: int) -> Path:
    with path.open("wb") as f:
        RealNamesPickler(f, protocol=protocol).dump(obj)
    return path


# ---------------------------------------------------------------- NVlabs stylegan2-ada .pkl


def persistent_module(
    class_name: str, src: str, params=None, buffers=None, modules=None, **attrs
) -> Any:  # type: ignore[no-untyped-def]
    """A persistent module as torch pickles it: its __dict__, hooks and all."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, torch.nn.Parameter(v.detach().clone(), requires_grad=False))
            for k, v in (params or {}).items()
        ),
        "_buffers": collections.OrderedDict(
            (k, v.detach().clone()) for k, v in (buffers or {}).items()
        ),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(modules or {}),
        "_init_args": (),
        "_init_kwargs": EasyDict(attrs.pop("init_kwargs", {})),
        **attrs,
    }
    return Persistent(class_name, state, src)


def nvlabs_generator(generator: Generator, src: str = HARMLESS_SRC) -> Any:
    """The G_ema object of a stylegan2-ada-pytorch pickle holding `generator`'s weights."""
    sd = generator.state_dict()
    arch = generator.arch
    w_dim = arch.w_dim
    fir = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64

    def affine(prefix: str) -> Any:
        weight = sd[f"{prefix}.conv.modulation.weight"]
        return persistent_module(
            "FullyConnectedLayer",
            src,
            {"weight": weight, "bias": sd[f"{prefix}.conv.modulation.bias"]},
            activation="linear",
            in_features=w_dim,
            out_features=weight.shape[0],
            weight_gain=1 / math.sqrt(w_dim),
            bias_gain=1.0,
        )

    def layer(prefix: str, noise: int, res: int, up: int) -> Any:
        return persistent_module(
            "SynthesisLayer",
            src,
            {
                "weight": sd[f"{prefix}.conv.weight"][0],
                "bias": sd[f"{prefix}.activate.bias"],
                "noise_strength": sd[f"{prefix}.noise.weight"].reshape(()),
            },
            {"resample_filter": fir, "noise_const": sd[f"noises.noise_{noise}"][0, 0]},
            {"affine": affine(prefix)},
            resolution=res,
            up=up,
            use_noise=True,
            activation="lrelu",
            conv_clamp=None,
            padding=1,
            act_gain=math.sqrt(2),
        )

    def torgb(prefix: str) -> Any:
        return persistent_module(
            "ToRGBLayer",
            src,
            {"weight": sd[f"{prefix}.conv.weight"][0], "bias": sd[f"{prefix}.bias"].reshape(3)},
            modules={"affine": affine(prefix)},
            conv_clamp=None,
            channels_last=False,
        )

    blocks: dict[str, Any] = {
        "b4": persistent_module(
            "SynthesisBlock",
            src,
            {"const": sd["input.input"][0]},
            {"resample_filter": fir},
            {"conv1": layer("conv1", 0, 4, 1), "torgb": torgb("to_rgb1")},
            in_channels=0,
            resolution=4,
            architecture="skip",
            use_fp16=False,
        )
    }
    for k in range(arch.log2_resolution - 2):
        res = 2 ** (k + 3)
        blocks[f"b{res}"] = persistent_module(
            "SynthesisBlock",
            src,
            buffers={"resample_filter": fir},
            modules={
                "conv0": layer(f"convs.{2 * k}", 2 * k + 1, res, 2),
                "conv1": layer(f"convs.{2 * k + 1}", 2 * k + 2, res, 1),
                "torgb": torgb(f"to_rgbs.{k}"),
            },
            resolution=res,
            architecture="skip",
            use_fp16=False,
        )
    synthesis = persistent_module(
        "SynthesisNetwork",
        src,
        modules=blocks,
        w_dim=w_dim,
        img_resolution=arch.resolution,
        block_resolutions=[2**i for i in range(2, arch.log2_resolution + 1)],
        num_ws=arch.num_ws,
    )
    fcs = {
        f"fc{i}": persistent_module(
            "FullyConnectedLayer",
            src,
            {"weight": sd[f"style.{i + 1}.weight"], "bias": sd[f"style.{i + 1}.bias"]},
            activation="lrelu",
            weight_gain=arch.lr_mlp / math.sqrt(w_dim),
            bias_gain=arch.lr_mlp,
        )
        for i in range(arch.n_mlp)
    }
    mapping = persistent_module(
        "MappingNetwork",
        src,
        buffers={"w_avg": generator.w_avg},
        modules=fcs,
        z_dim=w_dim,
        c_dim=0,
        w_dim=w_dim,
        num_ws=arch.num_ws,
        num_layers=arch.n_mlp,
        w_avg_beta=0.995,
    )
    init_kwargs = {
        "z_dim": w_dim,
        "c_dim": 0,
        "w_dim": w_dim,
        "img_resolution": arch.resolution,
        "img_channels": 3,
        "mapping_kwargs": EasyDict(num_layers=arch.n_mlp),
        "synthesis_kwargs": EasyDict(channel_base=arch.channel_base, num_fp16_res=0),
    }
    return persistent_module(
        "Generator",
        src,
        modules={"synthesis": synthesis, "mapping": mapping},
        init_kwargs=init_kwargs,
        z_dim=w_dim,
        c_dim=0,
        w_dim=w_dim,
        img_resolution=arch.resolution,
        img_channels=3,
        num_ws=arch.num_ws,
    )


def write_nvlabs(
    generator: Generator, path: Path, *, src: str = HARMLESS_SRC, g_ema: Any = None
) -> Path:
    """A network-snapshot-*.pkl: G (other weights), D, G_ema, training_set_kwargs, augment_pipe."""
    other = tiny_generator(generator.resolution, seed=99, **_arch_overrides(generator.arch))
    snapshot = {
        "G": nvlabs_generator(other, src),
        "D": persistent_module("Discriminator", src, {"b4.fc.weight": torch.randn(2, 2)}),
        "G_ema": nvlabs_generator(generator, src) if g_ema is None else g_ema,
        "training_set_kwargs": EasyDict(path="faces.zip", resolution=generator.resolution),
        "augment_pipe": None,
    }
    return write_pickle(snapshot, path, protocol=4)


def _arch_overrides(arch: Architecture) -> dict[str, Any]:
    return {
        "channel_max": arch.channel_max,
        "channel_base": arch.channel_base,
        "w_dim": arch.w_dim,
        "n_mlp": arch.n_mlp,
    }


# ---------------------------------------------------------------- TensorFlow .pkl


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def tf_variables(generator: Generator) -> tuple[list[Any], list[Any], list[Any]]:
    """(Gs own, mapping, synthesis) variables with TF names and layouts."""
    sd = generator.state_dict()
    mapping = []
    for i in range(generator.arch.n_mlp):
        mapping.append((f"Dense{i}/weight", _np(sd[f"style.{i + 1}.weight"]).T.copy()))
        mapping.append((f"Dense{i}/bias", _np(sd[f"style.{i + 1}.bias"])))

    def modulated(dst: str, src: str, *, flip: bool = False, torgb: bool = False) -> list[Any]:
        weight = _np(sd[f"{src}.conv.weight"][0]).transpose(2, 3, 1, 0)  # [kh, kw, in, out]
        if flip:
            weight = weight[::-1, ::-1]
        out = [
            (f"{dst}/weight", np.ascontiguousarray(weight)),
            (f"{dst}/mod_weight", _np(sd[f"{src}.conv.modulation.weight"]).T.copy()),
            (f"{dst}/mod_bias", _np(sd[f"{src}.conv.modulation.bias"]) - 1.0),
        ]
        if torgb:
            return [*out, (f"{dst}/bias", _np(sd[f"{src}.bias"]).reshape(3))]
        strength = np.float32(sd[f"{src}.noise.weight"].item())
        return [
            *out,
            (f"{dst}/noise_strength", strength),
            (f"{dst}/bias", _np(sd[f"{src}.activate.bias"])),
        ]

    synthesis = [("4x4/Const/const", _np(sd["input.input"]))]
    synthesis += modulated("4x4/Conv", "conv1")
    synthesis += modulated("4x4/ToRGB", "to_rgb1", torgb=True)
    for k in range(generator.arch.log2_resolution - 2):
        res = 2 ** (k + 3)
        synthesis += modulated(f"{res}x{res}/Conv0_up", f"convs.{2 * k}", flip=True)
        synthesis += modulated(f"{res}x{res}/Conv1", f"convs.{2 * k + 1}")
        synthesis += modulated(f"{res}x{res}/ToRGB", f"to_rgbs.{k}", torgb=True)
    synthesis += [(f"noise{i}", _np(sd[f"noises.noise_{i}"])) for i in range(generator.num_noises)]
    own = [("lod", np.float32(0.0)), ("dlatent_avg", _np(generator.w_avg))]
    return own, mapping, synthesis


def _tf_network(name: str, func: str, src: str, variables: list[Any], **kwargs: Any) -> Network:
    components = kwargs.pop("components", {})
    return Network(
        {
            "version": 4,
            "name": name,
            "static_kwargs": kwargs,
            "components": components,
            "build_module_src": src,
            "build_func_name": func,
            "variables": variables,
        }
    )


def tf_gs(generator: Generator, src: str = HARMLESS_SRC, **synthesis_kwargs: Any) -> Network:
    own, mapping, synthesis = tf_variables(generator)
    arch = generator.arch
    return _tf_network(
        "G",
        "G_main",
        src,
        own,
        components={
            "mapping": _tf_network(
                "G_mapping",
                "G_mapping",
                src,
                mapping,
                mapping_layers=arch.n_mlp,
                mapping_lrmul=arch.lr_mlp,
                dlatent_size=arch.w_dim,
                latent_size=arch.w_dim,
            ),
            "synthesis": _tf_network(
                "G_synthesis",
                "G_synthesis_stylegan2",
                src,
                synthesis,
                resolution=arch.resolution,
                fmap_base=arch.channel_base * arch.channel_multiplier // 2,
                fmap_max=arch.channel_max,
                dlatent_size=arch.w_dim,
                **synthesis_kwargs,
            ),
        },
    )


def write_tensorflow(
    generator: Generator, path: Path, *, src: str = HARMLESS_SRC, gs: Network | None = None
) -> Path:
    """The (G, D, Gs) tuple of stylegan2-ffhq-config-f.pkl; G has other weights than Gs."""
    other = tiny_generator(generator.resolution, seed=98, **_arch_overrides(generator.arch))
    d = _tf_network("D", "D_stylegan2", src, [("4x4/Conv/weight", np.ones((3, 3, 4, 4), "f4"))])
    networks = (tf_gs(other, src), d, gs or tf_gs(generator, src))
    return write_pickle(networks, path, protocol=3)


def write_canonical(generator: Generator, path: Path) -> Path:
    save_generator(generator, path, source="tests.support.tiny_models")
    return path
