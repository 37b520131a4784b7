"""The real `toonify` command in a subprocess, for the tests that kill it; one test hook.

    python -m tests.support.bot_process --config config.toml run

TEST_PREPARE_GATE=path: every photo waits in decoding, inside its prepare process, while that
file exists (tests/support/prepare_hooks.py), so a test can stop the bot with photos in preparation.
TEST_INFERENCE_GATE=path: every inversion waits while that file exists (bounded), so a test can
kill a `toonify worker` in the middle of a job.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any

from bots.cli import app
from inference.pipeline import Toonifier
from inference.prepare_pool import PrepareSpec
from tests.support import prepare_hooks

GATE = "TEST_PREPARE_GATE"
INFERENCE_GATE = "TEST_INFERENCE_GATE"
# The inference gate holds a job at most this long, so an orphaned worker ends by itself.
HOLD_SECONDS = 120.0


def _hold_photos_while(gate: Path) -> None:
    """Every PrepareSpec the bot builds gets the hold_while hook."""
    build = PrepareSpec.of

    def held(*args: Any, **kwargs: Any) -> PrepareSpec:
        hook = functools.partial(prepare_hooks.hold_while, gate)
        return dataclasses.replace(build(*args, **kwargs), setup=hook)

    PrepareSpec.of = held  # type: ignore[method-assign]


def _hold_inference_while(gate: Path) -> None:
    """Toonifier.invert first waits, on the inference thread, until `gate` is gone."""
    invert = Toonifier.invert

    def held(self: Toonifier, *args: Any, **kwargs: Any) -> Any:
        until = time.monotonic() + HOLD_SECONDS
        while gate.exists() and time.monotonic() < until:
            time.sleep(0.05)
        return invert(self, *args, **kwargs)

    Toonifier.invert = held  # type: ignore[method-assign]


if __name__ == "__main__":
    if gate := os.environ.get(GATE):
        _hold_photos_while(Path(gate))
    if gate := os.environ.get(INFERENCE_GATE):
        _hold_inference_while(Path(gate))
    app()
