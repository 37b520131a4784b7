"""A whole running application on tiny models: what the service and adapter tests build on.

    async with tiny_app(tmp_path, quota={"daily": 2}) as app:
        ticket = await submit(app, who, face_jpeg(), reply)

Everything is real (SQLite in tmp_path, prepare processes with dlib faces, inversion with the
pixel loss, blending, paste-back); only the generators are tiny and random. Requests of the
"test" platform fetch their photo from PHOTOS by the name in their reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
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
from bots.service import Refused, Requester, Toon, ToonService, Upload
from inference.pipeline import Toonifier
from inference.prepare_pool import PreparePool
from storage import Store
from tests.support.tiny_toonify import write_tiny_models

PLATFORM = "test"
# The photos the "test" platform serves, by the name its requests carry in their reference.
PHOTOS: dict[str, bytes] = {}


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
    config["worker"] = {"progress_interval": 0.05, "prepare_processes": 1}
    config["quota"] = {"cooldown": 0}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return Settings(**config)


class Photos:
    """The "test" platform's side of a job: its photo by name, a recorded reply per photo."""

    def __init__(self) -> None:
        self.replies: dict[str, RecordingReply] = {}

    async def fetch(self, ref: dict[str, Any]) -> bytes:
        return PHOTOS[ref["photo"]]

    def reply_for(self, ref: dict[str, Any]) -> RecordingReply:
        return self.replies.setdefault(ref["photo"], RecordingReply())


@contextlib.asynccontextmanager
async def tiny_app(
    tmp_path: Path,
    adapters: Callable[[Settings, ToonService], list[Any]] | None = None,
    toonifier: Toonifier | None = None,
    pool: Callable[[Settings, Toonifier], PreparePool] | None = None,
    engine: Any = None,
    **sections: dict[str, Any],
) -> AsyncIterator[App]:
    """A started App (prepare pool, worker, service, storage, ops when configured); stopped on
    exit. `pool(config, toonifier)` builds another prepare pool; `engine` stands in for the
    Toonifier on the worker (a wrapper that gates or breaks it)."""
    config = settings(tmp_path, **sections)
    toonifier = toonifier or await asyncio.to_thread(Toonifier.from_config, config)
    store = await Store.open(config.storage.url, config.quota)
    app = App(config, toonifier, store, pool(config, toonifier) if pool else None, engine)
    app.service.register(PLATFORM, Photos())
    try:
        await app.start(adapters(config, app.service) if adapters else [])
        yield app
    finally:
        await app.stop()


@dataclass
class RecordingReply:
    """A scripted adapter's reply: records what the user would see."""

    queued_texts: list[str] = field(default_factory=list)
    progress_texts: list[str] = field(default_factory=list)
    toons: list[Toon] = field(default_factory=list)
    failures: list[Refused] = field(default_factory=list)
    tidied: int = 0
    starts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    news: asyncio.Event = field(default_factory=asyncio.Event)

    async def queued(self, text: str) -> None:
        self.queued_texts.append(text)
        self.news.set()

    async def started(self) -> None:
        self.starts += 1

    async def progress(self, text: str) -> None:
        self.progress_texts.append(text)

    async def deliver(self, toon: Toon) -> None:
        self.toons.append(toon)

    async def delivered(self) -> None:
        self.tidied += 1
        self.done.set()

    async def fail(self, error: Refused) -> None:
        self.failures.append(error)
        self.news.set()
        self.done.set()

    async def wait(self, timeout: float = 60.0) -> None:
        """Until the job is done (its toon delivered) or failed."""
        await asyncio.wait_for(self.done.wait(), timeout)
        self.done.clear()


@dataclass(frozen=True)
class Ticket:
    """An admitted job and the first status its user saw."""

    job_id: str
    text: str

    @property
    def position(self) -> int:
        """The place in line the status named ("toonifying now" is the first)."""
        found = re.search(r"#(\d+) in line", self.text)
        return int(found[1]) if found else 1


async def submit(
    app: App, who: Requester, image: bytes, reply: RecordingReply, **options: Any
) -> Ticket:
    """Admit `image` as `who`, then wait until it is queued on the worker; raises the Refused
    of its admission or of its preparation."""
    name = uuid.uuid4().hex
    PHOTOS[name] = image
    job_id = await app.service.admit(
        who, Upload(len(image), None), reply, ref={"photo": name}, **options
    )
    assert job_id is not None
    await asyncio.wait_for(reply.news.wait(), 60)
    if reply.failures:
        raise reply.failures[0]
    return Ticket(job_id, reply.queued_texts[0])
