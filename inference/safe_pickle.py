"""Restricted unpickling: build only allow-listed objects, import and run nothing else.

Model files are pickles, and a pickle can call any importable function while it loads
(`os.system` included). Every pickle this project reads goes through `RestrictedUnpickler`:
a global the file names is resolved only through an explicit allow-list of harmless
constructors (containers, tensors and storages, numpy arrays) plus the stubs a caller adds;
any other global raises `UnsafePickleError` before anything is called. Torch files (zip or
legacy) are read with `torch.load(pickle_module=...)` so they go through the same unpickler.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch._utils

from inference.errors import InferenceError

Allowed = Mapping[tuple[str, str], Any]
Extra = Allowed | Iterable[Any]

ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (pre-1.6) format starts with this pickled number.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(InferenceError, pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing it names was called."""

    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{module}.{name}"
        super().__init__(f"the pickle needs {self.qualname}, which is not on the allow-list")


def _numpy_multiarray() -> types.ModuleType:
    core = getattr(np, "_core", None) or np.core
    multiarray: types.ModuleType = core.multiarray
    return multiarray


def _storage_from_bytes(data: bytes) -> Any:
    """Stand-in for torch.storage._load_from_bytes (plain-pickled tensors), restricted too."""
    return restricted_load(data)


def _base_allowed() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): _latin1_encode,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): (
            torch._utils._rebuild_parameter_with_state
        ),
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for name in dir(torch):
        if isinstance(getattr(torch, name), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles spell bytes; only the text codecs they use are accepted."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected codec {encoding!r} in pickle")
    return text.encode("latin1")


BASE_ALLOWED: Allowed = types.MappingProxyType(_base_allowed())
# Harmless classes that training checkpoints carry (rosinality `args`, pSp `opts`).
ARGPARSE_NAMESPACE: Allowed = {("argparse", "Namespace"): argparse.Namespace}


def allow_list(extra: Extra = ()) -> dict[tuple[str, str], Any]:
    """BASE_ALLOWED plus `extra`: a {(module, name): object} map, or objects named by their
    own __module__/__qualname__ (e.g. `[argparse.Namespace]`)."""
    allowed = dict(BASE_ALLOWED)
    if isinstance(extra, Mapping):
        allowed.update(extra)
    else:
        objects: Iterable[Any] = extra
        allowed.update({(obj.__module__, obj.__qualname__): obj for obj in objects})
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come only from `allowed`; no persistent ids."""

    def __init__(self, file: IO[bytes], allowed: Allowed, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name) from None


def _pickle_module(allowed: Allowed) -> types.ModuleType:
    """A stand-in for the `pickle` module that torch.load accepts as `pickle_module`."""

    class Unpickler(RestrictedUnpickler):
        def __init__(self, file: IO[bytes], **kwargs: Any) -> None:
            super().__init__(file, allowed, **kwargs)

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType("restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def restricted_load(source: str | Path | bytes | IO[bytes], extra: Extra = ()) -> Any:
    """Load a torch file (zip or legacy) or a plain pickle, building only allowed objects.

    Raises UnsafePickleError naming the first global outside the allow-list; other failures
    (truncated or damaged files) surface as the underlying pickle/torch/OS errors.
    """
    allowed = allow_list(extra)
    if isinstance(source, str | Path):
        with Path(source).open("rb") as file:
            return _load_file(file, allowed)
    if isinstance(source, bytes):
        return _load_file(io.BytesIO(source), allowed)
    return _load_file(source, allowed)


def _load_file(file: IO[bytes], allowed: Allowed) -> Any:
    start = file.tell()
    head = file.read(4)
    file.seek(start)
    if head == ZIP_MAGIC:
        return _torch_load(file, allowed)
    result = RestrictedUnpickler(file, allowed, encoding="latin1").load()
    if isinstance(result, int) and result == TORCH_LEGACY_MAGIC:
        file.seek(start)
        return _torch_load(file, allowed)
    return result


def _torch_load(file: IO[bytes], allowed: Allowed) -> Any:
    return torch.load(
        file, map_location="cpu", weights_only=False, pickle_module=_pickle_module(allowed)
    )
