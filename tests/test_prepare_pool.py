"""The prepare pool: real processes, real photos, a decoder made to hang, a process killed."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from inference.errors import ShuttingDown
from inference.images import ImageError, ImageProblem
from inference.prepare import NoFace
from inference.prepare_pool import (
    PoolStartError,
    PrepareCrashed,
    PreparePool,
    PrepareSpec,
    PrepareTimeout,
)
from inference.settings import FacesSettings, LimitsSettings
from tests.support import prepare_hooks
from tests.support.service_fixtures import cat_jpeg, face_jpeg

RESOLUTION = 32
BUDGET = 8.0


def spec(setup: Callable[[], None] | None = None) -> PrepareSpec:
    return PrepareSpec(FacesSettings(backend="dlib"), "cpu", LimitsSettings(), RESOLUTION, setup)


@pytest.fixture
async def pool() -> AsyncIterator[PreparePool]:
    pool = PreparePool(spec(prepare_hooks.hang_marked_photos), processes=2, timeout=BUDGET)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def _pid(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


async def pid_in(path: Path) -> int:
    """The process id a hanging photo reported from its prepare process."""
    async with asyncio.timeout(30):
        while (pid := _pid(path)) is None:
            await asyncio.sleep(0.02)
    return pid


async def test_photos_are_prepared_in_processes_with_their_refusals_intact(
    pool: PreparePool,
) -> None:
    prepared = await pool.prepare(face_jpeg())
    assert len(prepared.faces) == 1
    assert prepared.faces[0].image.size == (RESOLUTION, RESOLUTION)
    assert prepared.photo.size == (512, 512)
    assert set(prepared.timings) == {"decode", "detect", "align"}
    with pytest.raises(NoFace):
        await pool.prepare(cat_jpeg())
    with pytest.raises(ImageError) as refused:
        await pool.prepare(b"not an image at all")
    assert refused.value.problem is ImageProblem.NOT_AN_IMAGE


async def test_a_photo_over_budget_is_refused_while_other_photos_go_on(
    pool: PreparePool, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    hanging = asyncio.create_task(pool.prepare(prepare_hooks.hang_marker(pid_file)))
    stuck = await pid_in(pid_file)
    fine = await pool.prepare(face_jpeg())
    assert fine.faces and not hanging.done()
    with pytest.raises(PrepareTimeout):
        await hanging
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)  # killed, not left to hang
    assert len(await asyncio.gather(pool.prepare(face_jpeg()), pool.prepare(face_jpeg()))) == 2


async def test_a_killed_process_fails_only_its_own_photo(pool: PreparePool, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    doomed = asyncio.create_task(pool.prepare(prepare_hooks.hang_marker(pid_file)))
    other = asyncio.create_task(pool.prepare(face_jpeg()))
    os.kill(await pid_in(pid_file), signal.SIGKILL)
    with pytest.raises(PrepareCrashed):
        await doomed
    assert (await other).faces
    assert (await pool.prepare(face_jpeg())).faces  # its replacement works


async def test_stopping_ends_photos_still_in_preparation(tmp_path: Path) -> None:
    pool = PreparePool(spec(prepare_hooks.hang_marked_photos), processes=1, timeout=BUDGET)
    await pool.start()
    pid_file = tmp_path / "pid"
    held = asyncio.create_task(pool.prepare(prepare_hooks.hang_marker(pid_file)))
    waiting = asyncio.create_task(pool.prepare(face_jpeg()))
    stuck = await pid_in(pid_file)
    await pool.stop()
    for task in (held, waiting):
        with pytest.raises(ShuttingDown):
            await task
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)
    with pytest.raises(ShuttingDown):
        await pool.prepare(face_jpeg())


def fail_to_start() -> None:
    raise RuntimeError("no detector here")


async def test_a_process_that_cannot_start_says_why() -> None:
    pool = PreparePool(spec(functools.partial(fail_to_start)), processes=1, timeout=BUDGET)
    with pytest.raises(PoolStartError, match="no detector here"):
        await pool.start()
    await pool.stop()
