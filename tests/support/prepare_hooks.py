"""Test-only hooks that run inside prepare processes (`PrepareSpec.setup`): slow decoding down.

Every wait is bounded, so a process orphaned by a test that killed the bot ends by itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from inference import prepare
from inference.settings import LimitsSettings

# A photo `HANG + path` writes its process id to `path`, then decodes for HANG_SECONDS.
HANG = b"HANG:"
HANG_SECONDS = 60.0
POLL = 0.05


def hang_marked_photos() -> None:
    """Photos that start with HANG hang in decoding; the others decode as usual."""
    decode = prepare.decode_image

    def hanging(data: bytes, limits: LimitsSettings) -> Image.Image:
        if data.startswith(HANG):
            Path(data[len(HANG) :].decode()).write_text(str(os.getpid()))
            time.sleep(HANG_SECONDS)
        return decode(data, limits)

    prepare.decode_image = hanging


def hold_while(gate: Path) -> None:
    """Every photo waits in decoding while `gate` exists, after appending a line to `gate`."""
    decode = prepare.decode_image

    def held(data: bytes, limits: LimitsSettings) -> Image.Image:
        if gate.exists():
            with gate.open("a") as seen:
                seen.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + HANG_SECONDS
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(POLL)
        return decode(data, limits)

    prepare.decode_image = held


def hang_marker(pid_file: Path) -> bytes:
    """A photo that `hang_marked_photos` hangs on, reporting its process id in `pid_file`."""
    return HANG + str(pid_file).encode()
