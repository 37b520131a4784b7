"""Which torch device `models.device` means on this machine, and why one cannot be used."""

from __future__ import annotations

import torch

from inference.errors import ModelLoadError


class DeviceError(ModelLoadError):
    """models.device names a device this machine does not have; str() says the fix."""


def resolve_device(name: str) -> torch.device:
    """`auto` means CUDA when this machine has it, else the CPU; DeviceError for a device this
    machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if problem := device_problem(name):
        raise DeviceError(f"models.device {name!r}: {problem}")
    return torch.device(name)


def device_problem(name: str) -> str | None:
    """Why `name` (a models.device value) cannot be used here, with the fix; None if it can."""
    if name == "auto":
        return None
    fix = 'set models.device = "cpu" (or "auto")'
    device = torch.device(name)
    if device.type == "cuda":
        if torch.version.cuda is None:
            return f"this PyTorch is a CPU-only build: {fix}, or install a CUDA build (TORCH_SPEC)"
        count = torch.cuda.device_count()
        if count == 0:
            return f"no CUDA GPU is visible: {fix}, or check the driver and CUDA_VISIBLE_DEVICES"
        if (device.index or 0) >= count:
            return f"there are {count} CUDA GPU(s), numbered from 0: {fix} or a smaller number"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"Apple's MPS is not available on this machine: {fix}"
    return None
