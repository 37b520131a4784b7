"""The real `toonify` command in a subprocess, for the tests that kill it; one test hook.

    python -m tests.support.bot_process --config config.toml run

TEST_PREPARE_GATE=path: every photo waits in decoding, inside its prepare process, while that
file exists (tests/support/prepare_hooks.py), so a test can stop the bot with photos in preparation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from bots.cli import app
from inference.prepare_pool import PrepareSpec
from tests.support import prepare_hooks

GATE = "TEST_PREPARE_GATE"


def _hold_photos_while(gate: Path) -> None:
    """Every PrepareSpec the bot builds gets the hold_while hook."""
    build = PrepareSpec.of

    def held(*args: Any, **kwargs: Any) -> PrepareSpec:
        hook = functools.partial(prepare_hooks.hold_while, gate)
        return dataclasses.replace(build(*args, **kwargs), setup=hook)

    PrepareSpec.of = held  # type: ignore[method-assign]


if __name__ == "__main__":
    if gate := os.environ.get(GATE):
        _hold_photos_while(Path(gate))
    app()
