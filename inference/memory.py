"""Accelerator memory: recognise running out of it, give it back, and read what is in use.

The GPU is shared by every job, so a failure must not keep the memory it held, and an
operator must see how much of it the process holds (reserved) and uses (allocated).
"""

from __future__ import annotations

import gc
import re
import traceback
from dataclasses import dataclass

import torch

# How out-of-memory reads when it arrives as a plain RuntimeError: CUDA's and MPS's caching
# allocators, and the CPU allocator (through TorchScript, NVIDIA's vgg16.pt, every one of them
# arrives wrapped in "The following operation failed in the TorchScript interpreter").
_OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory", re.IGNORECASE)


@dataclass(frozen=True)
class DeviceMemory:
    allocated: int  # bytes in live tensors
    reserved: int  # bytes the caching allocator holds (allocated + cached), as nvidia-smi sees


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and for the RuntimeError TorchScript turns it into."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and bool(_OUT_OF_MEMORY.search(str(exc)))


def detach_frames(exc: BaseException) -> BaseException:
    """Clear the local variables of the finished frames in `exc`'s tracebacks (and in its
    causes'), so an exception kept as a job's outcome keeps no tensors alive; file and line
    stay for the log. Returns `exc`."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        current = chain.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        chain += [current.__cause__, current.__context__]
    return exc


def release_memory() -> None:
    """Free what unreachable objects still hold and hand cached blocks back to the device.

    Call it outside any `except` block: the exception being handled keeps its frames alive.
    """
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def device_memory(device: torch.device) -> DeviceMemory:
    """Memory of `device` as its caching allocator counts it; zeros for the CPU.

    Safe from any thread: it reads the allocator's counters under their lock, names the device
    (so `cuda:1` is not read as the calling thread's current device), never initialises CUDA
    and never synchronises.
    """
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return DeviceMemory(0, 0)
    return DeviceMemory(torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))
