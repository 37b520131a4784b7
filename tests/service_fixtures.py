"""A whole running application on tiny models: what the service and adapter tests build on.

    async with tiny_app(tmp_path, quota={"daily": 2}) as app:
        ticket = await app.service.submit(who, face_jpeg(), reply, ref={})

Everything is real (SQLite in tmp_path, dlib faces, inversion with the pixel loss, blending,
paste-back); only the generators are tiny and random.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data

from bots.app import App
from bots.config import Settings
from bots.service import Refused, Toon, ToonService
from inference.pipeline import Toonifier
from storage import Store
from tests.tiny_toonify import write_tiny_models


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@cache
def face_jpeg() -> bytes:
    """A real photo with one face (NASA's portrait of Eileen Collins, shipped by scikit-image)."""
    return jpeg(data.astronaut())


@cache
def cat_jpeg() -> bytes:
    return jpeg(data.chelsea())


def settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Tiny models written under tmp_path, SQLite there too; `sections` override the rest."""
    config = write_tiny_models(tmp_path / "models", steps=4)
    config["storage"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'toonify.db'}"}
    config["worker"] = {"progress_interval": 0.05}
    config["quota"] = {"cooldown": 0}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return Settings(**config)


@contextlib.asynccontextmanager
async def tiny_app(
    tmp_path: Path,
    adapters: Callable[[Settings, ToonService], list[Any]] | None = None,
    toonifier: Toonifier | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[App]:
    """A started App (worker, service, storage, ops when configured); stopped on exit."""
    config = settings(tmp_path, **sections)
    engine = toonifier or await asyncio.to_thread(Toonifier.from_config, config)
    store = await Store.open(config.storage.url, config.quota)
    app = App(config, engine, store)
    await app.start(adapters(config, app.service) if adapters else [])
    try:
        yield app
    finally:
        await app.stop()


@dataclass
class RecordingReply:
    """A scripted adapter's reply: records what the user would see."""

    progress_texts: list[str] = field(default_factory=list)
    toons: list[Toon] = field(default_factory=list)
    failures: list[Refused] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def progress(self, text: str) -> None:
        self.progress_texts.append(text)

    async def deliver(self, toon: Toon) -> None:
        self.toons.append(toon)
        self.done.set()

    async def fail(self, error: Refused) -> None:
        self.failures.append(error)
        self.done.set()

    async def wait(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self.done.wait(), timeout)
        self.done.clear()
